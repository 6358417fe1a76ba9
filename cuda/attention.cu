// attention: causal GQA softmax attention of q [T, H*hd] over a KV cache [len, KVH*hd] whose
// last T rows are this call's keys and values (appended before the launch). No RoPE.
// One block per (token, head); each warp walks every nwarps-th position with an online
// softmax (lanes split the head dimension), and the warps merge at the end, so any context
// length fits without scratch memory.

#define MAX_DPL 8 // head_dim <= 256

extern "C" __global__ void attention(const float* q, const float* kc, const float* vc, float* out,
                                     int tokens, int start, int heads, int kv_heads, int hd,
                                     float scale) {
    __shared__ float wm[32], wl[32];
    __shared__ float wo[4][MAX_DPL * WARP]; // launched with 4 warps
    int t = blockIdx.x, h = blockIdx.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int kvh = h / (heads / kv_heads);
    u64 kw = (u64)kv_heads * hd;
    const float* qv = q + (u64)t * heads * hd + (u64)h * hd;
    float qr[MAX_DPL], o[MAX_DPL];
#pragma unroll
    for (int i = 0; i < MAX_DPL; i++) {
        int dd = lane + i * WARP;
        qr[i] = dd < hd ? qv[dd] : 0.0f;
        o[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    int visible = start + t + 1;
    for (int j = warp; j < visible; j += nw) {
        const float* kr = kc + (u64)j * kw + (u64)kvh * hd;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < MAX_DPL; i++) {
            int dd = lane + i * WARP;
            if (dd < hd) s += qr[i] * kr[dd];
        }
        s = warp_sum(s) * scale;
        float mn = fmaxf(m, s);
        float corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
        const float* vr = vc + (u64)j * kw + (u64)kvh * hd;
#pragma unroll
        for (int i = 0; i < MAX_DPL; i++) {
            int dd = lane + i * WARP;
            if (dd < hd) o[i] = o[i] * corr + p * vr[dd];
        }
        m = mn;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < MAX_DPL; i++) wo[warp][lane + i * WARP] = o[i];
    __syncthreads();
    if (warp == 0) {
        float M = NEG_INF;
        for (int w2 = 0; w2 < nw; w2++) M = fmaxf(M, wm[w2]);
        float L = 0.0f;
        float acc[MAX_DPL];
#pragma unroll
        for (int i = 0; i < MAX_DPL; i++) acc[i] = 0.0f;
        for (int w2 = 0; w2 < nw; w2++) {
            // A warp that saw no position has m = -inf and contributes nothing.
            float f = wl[w2] > 0.0f ? expf(wm[w2] - M) : 0.0f;
            L += wl[w2] * f;
#pragma unroll
            for (int i = 0; i < MAX_DPL; i++) acc[i] += wo[w2][lane + i * WARP] * f;
        }
        float* orow = out + (u64)t * heads * hd + (u64)h * hd;
#pragma unroll
        for (int i = 0; i < MAX_DPL; i++) {
            int dd = lane + i * WARP;
            if (dd < hd) orow[dd] = acc[i] / L;
        }
    }
}
