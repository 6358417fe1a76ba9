// attention: causal GQA softmax attention of q [T, H*hd] over a KV cache [len, KVH*hd] whose
// last T rows are this call's keys and values (appended before the launch). No RoPE.
// One block per (token, head); each warp walks every nwarps-th position with an online
// softmax (lanes split the head dimension), and the warps merge at the end, so any context
// length fits without scratch memory. `attention_fp8` reads an FP8 (E4M3) cache written by
// `kv_append_fp8`, each value times its per-tensor k_scale / v_scale.

#define MAX_DPL 8 // head_dim <= 256

template <bool FP8>
__device__ __forceinline__ float kv_at(const void* c, u64 i, float s) {
    return FP8 ? e4m3(((const u8*)c)[i]) * s : ((const float*)c)[i];
}

template <bool FP8>
__device__ void attention_body(const float* q, const void* kc, const void* vc, float* out,
                               int tokens, int start, int heads, int kv_heads, int hd, float scale,
                               float k_scale, float v_scale) {
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
        u64 kr = (u64)j * kw + (u64)kvh * hd;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < MAX_DPL; i++) {
            int dd = lane + i * WARP;
            if (dd < hd) s += qr[i] * kv_at<FP8>(kc, kr + dd, k_scale);
        }
        s = warp_sum(s) * scale;
        float mn = fmaxf(m, s);
        float corr = expf(m - mn), p = expf(s - mn);
        l = l * corr + p;
        u64 vr = (u64)j * kw + (u64)kvh * hd;
#pragma unroll
        for (int i = 0; i < MAX_DPL; i++) {
            int dd = lane + i * WARP;
            if (dd < hd) o[i] = o[i] * corr + p * kv_at<FP8>(vc, vr + dd, v_scale);
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

extern "C" __global__ void attention(const float* q, const float* kc, const float* vc, float* out,
                                     int tokens, int start, int heads, int kv_heads, int hd,
                                     float scale) {
    attention_body<false>(q, kc, vc, out, tokens, start, heads, kv_heads, hd, scale, 1.0f, 1.0f);
}

extern "C" __global__ void attention_fp8(const float* q, const u8* kc, const u8* vc, float* out,
                                         int tokens, int start, int heads, int kv_heads, int hd,
                                         float scale, float k_scale, float v_scale) {
    attention_body<true>(q, kc, vc, out, tokens, start, heads, kv_heads, hd, scale, k_scale,
                         v_scale);
}

// cache[offset + i] = E4M3(x[i] / scale), saturating at ±448.
extern "C" __global__ void kv_append_fp8(const float* x, u8* cache, u64 offset, u64 n, float scale) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        cache[offset + i] = (u8)f32_to_e4m3_signed(x[i] / scale);
}

// cache[offset + i] = x[i]: an f32 cache's append.
extern "C" __global__ void kv_append(const float* x, float* cache, u64 offset, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        cache[offset + i] = x[i];
}
