// rms_norm: out = w * (x * rsqrt(mean(x²) + eps)) per row; one block per row.

extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int cols, float eps) {
    const float* xr = x + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss);
    // A true division and square root, as the CPU computes it (rsqrtf is approximate).
    float r = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        out[(u64)blockIdx.x * cols + c] = w[c] * (xr[c] * r);
}
