// gated_group_rms_norm: v = y * silu(z), then w * rmsnorm(v) over each of `groups` column
// groups (gate before norm). One block per (token, group).

extern "C" __global__ void gated_group_rms_norm(const float* y, const float* z, const float* w,
                                                float* out, int width, int groups, float eps) {
    int t = blockIdx.x, g = blockIdx.y;
    int gw = width / groups;
    u64 base = (u64)t * width + (u64)g * gw;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < gw; c += blockDim.x) {
        float v = y[base + c] * silu(z[base + c]);
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)gw + eps);
    for (int c = threadIdx.x; c < gw; c += blockDim.x) {
        float v = y[base + c] * silu(z[base + c]);
        out[base + c] = w[g * gw + c] * (v * r);
    }
}
