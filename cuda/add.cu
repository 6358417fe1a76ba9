// add: a += b.

extern "C" __global__ void add(float* a, const float* b, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        a[i] += b[i];
}
