// conv1d_silu: causal depthwise conv over time (weight [C, K] in any stored format) continuing
// from the carried state [K-1, C] (oldest first), then SiLU; leaves the last K-1 inputs in the
// state. One thread per channel walks the tokens with the window in registers: the window and
// the taps are MAX_K long, right-aligned (newest input last), and every loop over them is
// unrolled, so no index is known only at run time (which would put them in local memory).

#define MAX_K 8

extern "C" __global__ void conv1d_silu(const float* x, int fmt, const u8* w, const u8* sc, float ts,
                                       const float* bias, int has_bias, float* state, float* y,
                                       int tokens, int channels, int kernel) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    int first = MAX_K - kernel; // the window's first tap; taps before it do not exist
    float win[MAX_K];
    float wk[MAX_K];
#pragma unroll
    for (int i = 0; i < MAX_K; i++) {
        wk[i] = i >= first ? weight_at(fmt, w, sc, ts, (u64)c * kernel + (i - first)) : 0.0f;
        // State row j (oldest first) sits at first + 1 + j, before the next input's slot.
        win[i] = i > first && i < MAX_K ? state[(u64)(i - first - 1) * channels + c] : 0.0f;
    }
    float b = has_bias ? bias[c] : 0.0f;
    for (int t = 0; t < tokens; t++) {
#pragma unroll
        for (int i = 0; i + 1 < MAX_K; i++) win[i] = win[i + 1];
        win[MAX_K - 1] = x[(u64)t * channels + c];
        float acc = b;
        // In tap order, as the CPU sums; missing taps are skipped, not multiplied by zero (an
        // input that has left the window must not matter even if it was infinite).
#pragma unroll
        for (int i = 0; i < MAX_K; i++)
            if (i >= first) acc += wk[i] * win[i];
        y[(u64)t * channels + c] = silu(acc);
    }
#pragma unroll
    for (int i = 0; i < MAX_K; i++)
        if (i > first) state[(u64)(i - first - 1) * channels + c] = win[i];
}
