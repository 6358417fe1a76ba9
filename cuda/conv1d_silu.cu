// conv1d_silu: causal depthwise conv over time (weight [C, K] in any stored format) continuing
// from the carried state [K-1, C] (oldest first), then SiLU; leaves the last K-1 inputs in the
// state. One thread per channel walks the tokens with the window in registers.

#define MAX_K 8

extern "C" __global__ void conv1d_silu(const float* x, int fmt, const u8* w, const u8* sc, float ts,
                                       const float* bias, int has_bias, float* state, float* y,
                                       int tokens, int channels, int kernel) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    int hist = kernel - 1;
    float win[MAX_K];
    float wk[MAX_K];
    for (int j = 0; j < kernel; j++) wk[j] = weight_at(fmt, w, sc, ts, (u64)c * kernel + j);
    for (int j = 0; j < hist; j++) win[j] = state[(u64)j * channels + c];
    float b = has_bias ? bias[c] : 0.0f;
    for (int t = 0; t < tokens; t++) {
        win[hist] = x[(u64)t * channels + c];
        float acc = b;
        for (int j = 0; j < kernel; j++) acc += wk[j] * win[j];
        y[(u64)t * channels + c] = silu(acc);
        for (int j = 0; j < hist; j++) win[j] = win[j + 1];
    }
    for (int j = 0; j < hist; j++) state[(u64)j * channels + c] = win[j];
}
