// Shared by every kernel (prepended to each cuda/<op>.cu before NVRTC compiles it, as
// shaders/decode.wgsl is for the WGSL shaders). No CUDA headers: NVRTC from PyPI ships none,
// and the decodes below are exact integer constructions anyway.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// Stored weight formats, as `weights.rs` numbers them.
#define FMT_F32 0
#define FMT_BF16 1
#define FMT_F16 2
#define FMT_FP8 3
#define FMT_NVFP4 4

#define WARP 32
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the sum.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) part[w] = v;
    __syncthreads();
    if (w == 0) {
        float s = lane < nw ? part[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

// E4M3 (FN): bias 7, no infinities, S.1111.111 is NaN. Built bit by bit, so exact.
__device__ __forceinline__ float e4m3(u32 b) {
    u32 sign = (b & 0x80u) << 24;
    u32 e = (b >> 3) & 0xfu, m = b & 7u;
    if (e == 15u && m == 7u) return __int_as_float(0x7fc00000);
    if (e == 0u) {
        float v = (float)m * 0.001953125f; // m * 2^-9, a subnormal of E4M3 but normal in f32
        return __uint_as_float(__float_as_uint(v) | sign);
    }
    return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

// E2M1 as ModelOpt decodes it: magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6; code 8 ("-0") is +0.
__device__ __forceinline__ float e2m1(u32 code) {
    u32 m = code & 7u;
    u32 bits = m == 0u ? 0u : (m == 1u ? 0x3f000000u : (((126u + (m >> 1)) << 23) | ((m & 1u) << 22)));
    if (m != 0u) bits |= (code & 8u) << 28;
    return __uint_as_float(bits);
}

__device__ __forceinline__ float bf16(u32 h) { return __uint_as_float(h << 16); }

__device__ __forceinline__ float f16(u32 h) {
    float f;
    unsigned short s = (unsigned short)h;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
    return f;
}

// Element `i` of a stored weight (counted from `w`); `ts` is the FP8 / NVFP4 tensor scale.
// The NVFP4 block and tensor scales are multiplied first, exactly as ModelOpt dequantizes.
__device__ __forceinline__ float weight_at(int fmt, const u8* w, const u8* sc, float ts, u64 i) {
    switch (fmt) {
    case FMT_BF16: return bf16(((const u16*)w)[i]);
    case FMT_F16: return f16(((const u16*)w)[i]);
    case FMT_FP8: return e4m3(w[i]) * ts;
    case FMT_NVFP4: {
        u32 code = (w[i >> 1] >> ((i & 1) * 4)) & 0xfu;
        return e2m1(code) * (e4m3(sc[i >> 4]) * ts);
    }
    default: return ((const float*)w)[i];
    }
}

// Bytes of one stored row of `cols` weights (NVFP4: the packed nibbles only).
__device__ __forceinline__ u64 row_bytes(int fmt, u64 cols) {
    switch (fmt) {
    case FMT_BF16: case FMT_F16: return cols * 2;
    case FMT_FP8: return cols;
    case FMT_NVFP4: return cols / 2;
    default: return cols * 4;
    }
}

// Decodes the 16 bytes `v` (a uint4 load of row data starting at element `c0`) and adds their
// products with the NT token rows of `x` (stride `xs`) into acc. Elements per 16 bytes: F32 4,
// BF16/F16 8, FP8 16, NVFP4 32 (two scale blocks, `s2` their two E4M3 bytes).
template <int FMT, int NT>
__device__ __forceinline__ void dot16(uint4 v, u32 s2, float ts, const float* x, u64 xs, u64 c0,
                                      float (&acc)[NT]) {
    u32 words[4] = {v.x, v.y, v.z, v.w};
    if (FMT == FMT_F32) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float wv = __uint_as_float(words[i]);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += wv * x[t * xs + c0 + i];
        }
    } else if (FMT == FMT_BF16 || FMT == FMT_F16) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            u32 h = (words[i >> 1] >> ((i & 1) * 16)) & 0xffffu;
            float wv = FMT == FMT_BF16 ? bf16(h) : f16(h);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += wv * x[t * xs + c0 + i];
        }
    } else if (FMT == FMT_FP8) {
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float wv = e4m3((words[i >> 2] >> ((i & 3) * 8)) & 0xffu) * ts;
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += wv * x[t * xs + c0 + i];
        }
    } else {
        float bs0 = e4m3(s2 & 0xffu) * ts, bs1 = e4m3((s2 >> 8) & 0xffu) * ts;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            float wv = e2m1((words[i >> 3] >> ((i & 7) * 4)) & 0xfu) * (i < 16 ? bs0 : bs1);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += wv * x[t * xs + c0 + i];
        }
    }
}

template <int FMT>
__device__ constexpr int elems16() {
    return FMT == FMT_F32 ? 4 : (FMT == FMT_FP8 ? 16 : (FMT == FMT_NVFP4 ? 32 : 8));
}

// One warp's share of `W[row] · x[t]` for NT tokens; the caller reduces over the warp.
// Rows whose byte length is a multiple of 16 stream as 16-byte loads, four in flight per
// lane; any other width falls back to element loads (small or odd test shapes only).
template <int FMT, int NT>
__device__ __forceinline__ void warp_dot_fmt(const u8* w, const u8* sc, float ts, u64 cols,
                                             const float* x, u64 xs, float (&acc)[NT]) {
    int lane = threadIdx.x & 31;
    constexpr int E = elems16<FMT>();
    u64 rb = row_bytes(FMT, cols);
    if (rb % 16 == 0 && ((u64)w & 15) == 0) {
        const uint4* wv = (const uint4*)w;
        u64 nv = rb / 16;
#pragma unroll 4
        for (u64 v = lane; v < nv; v += WARP) {
            uint4 q = __ldg(wv + v);
            u32 s2 = 0;
            if (FMT == FMT_NVFP4) s2 = (u32)sc[v * 2] | ((u32)sc[v * 2 + 1] << 8);
            dot16<FMT, NT>(q, s2, ts, x, xs, v * E, acc);
        }
    } else {
        for (u64 c = lane; c < cols; c += WARP) {
            float wv = weight_at(FMT, w, sc, ts, c);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += wv * x[t * xs + c];
        }
    }
}

template <int NT>
__device__ __forceinline__ void warp_dot(int fmt, const u8* w, const u8* sc, float ts, u64 cols,
                                         const float* x, u64 xs, float (&acc)[NT]) {
    switch (fmt) {
    case FMT_BF16: warp_dot_fmt<FMT_BF16, NT>(w, sc, ts, cols, x, xs, acc); break;
    case FMT_F16: warp_dot_fmt<FMT_F16, NT>(w, sc, ts, cols, x, xs, acc); break;
    case FMT_FP8: warp_dot_fmt<FMT_FP8, NT>(w, sc, ts, cols, x, xs, acc); break;
    case FMT_NVFP4: warp_dot_fmt<FMT_NVFP4, NT>(w, sc, ts, cols, x, xs, acc); break;
    default: warp_dot_fmt<FMT_F32, NT>(w, sc, ts, cols, x, xs, acc); break;
    }
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
