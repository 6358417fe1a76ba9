// relu2: y = relu(x)².

extern "C" __global__ void relu2(const float* x, float* y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float r = fmaxf(x[i], 0.0f);
        y[i] = r * r;
    }
}
