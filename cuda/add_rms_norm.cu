// add_rms_norm: residual += delta, then out = rms_norm(residual); one block per row, one pass
// over the residual.

extern "C" __global__ void add_rms_norm(float* res, const float* delta, const float* w,
                                        float* out, int cols, float eps) {
    u64 base = (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = res[base + c] + delta[base + c];
        res[base + c] = v;
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[base + c] = w[c] * (res[base + c] * r);
}
