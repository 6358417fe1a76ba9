// argmax: index of the first maximum of each row; NaN never wins unless the row is all NaN
// (then 0), as `sampling::argmax` does. One block per row.

__device__ __forceinline__ bool beats(float a, int ia, float b, int ib) {
    if (isnan(a)) return isnan(b) && ia < ib;
    if (isnan(b)) return true;
    return a > b || (a == b && ia < ib);
}

extern "C" __global__ void argmax(const float* x, u32* out, int cols) {
    __shared__ float bv[1024];
    __shared__ int bi[1024];
    const float* xr = x + (u64)blockIdx.x * cols;
    float best = __int_as_float(0x7fc00000);
    int besti = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        if (beats(xr[c], c, best, besti)) {
            best = xr[c];
            besti = c;
        }
    }
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = besti;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && beats(bv[threadIdx.x + s], bi[threadIdx.x + s], bv[threadIdx.x], bi[threadIdx.x])) {
            bv[threadIdx.x] = bv[threadIdx.x + s];
            bi[threadIdx.x] = bi[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi[0] == 0x7fffffff ? 0u : (u32)bi[0];
}
