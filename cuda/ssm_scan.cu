// ssm_scan: the Mamba-2 selective scan. One warp per (head, channel) keeps that channel's N
// state values in registers (lanes stride over N) for the whole call, so a decode step reads
// and writes the state once; prefill walks the tokens in order (the plain recurrence, the same
// math as the reference's chunked SSD).
// xbc: [T, I + 2GN] (x, B, C); dt: [T, H] raw; state: [H, P, N]; y: [T, I] including D·x.

#define MAX_NQ 8

extern "C" __global__ void ssm_scan(const float* xbc, const float* dt, const float* a_log,
                                    const float* d, const float* dt_bias, float* state, float* y,
                                    int tokens, int heads, int head_dim, int groups, int n,
                                    int use_dt_min, float dt_min) {
    int lane = threadIdx.x & 31;
    int wid = blockIdx.x * (blockDim.x / WARP) + (threadIdx.x >> 5);
    if (wid >= heads * head_dim) return;
    int h = wid / head_dim, i = wid % head_dim;
    int g = h / (heads / groups);
    u64 inner = (u64)heads * head_dim;
    u64 width = inner + 2 * (u64)groups * n;
    float* s = state + (u64)wid * n;
    float st[MAX_NQ];
#pragma unroll
    for (int q = 0; q < MAX_NQ; q++) {
        int j = lane + q * WARP;
        st[q] = j < n ? s[j] : 0.0f;
    }
    float a = -expf(a_log[h]);
    for (int t = 0; t < tokens; t++) {
        const float* row = xbc + (u64)t * width;
        float xi = row[(u64)h * head_dim + i];
        const float* bv = row + inner + (u64)g * n;
        const float* cv = row + inner + (u64)groups * n + (u64)g * n;
        float raw = dt[(u64)t * heads + h] + dt_bias[h];
        // torch's softplus with its threshold of 20.
        float step = raw > 20.0f ? raw : log1pf(expf(raw));
        if (use_dt_min) step = fmaxf(step, dt_min);
        float decay = expf(step * a);
        float dx = step * xi;
        float acc = 0.0f;
#pragma unroll
        for (int q = 0; q < MAX_NQ; q++) {
            int j = lane + q * WARP;
            if (j < n) {
                st[q] = st[q] * decay + dx * bv[j];
                acc += st[q] * cv[j];
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) y[(u64)t * inner + (u64)h * head_dim + i] = acc + d[h] * xi;
    }
#pragma unroll
    for (int q = 0; q < MAX_NQ; q++) {
        int j = lane + q * WARP;
        if (j < n) s[j] = st[q];
    }
}
