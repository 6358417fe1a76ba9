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

// Round to the nearest E4M3 (ties to even), saturating at 448; v >= 0.
__device__ __forceinline__ u32 f32_to_e4m3(float v) {
    if (!(v > 0.0f)) return 0u;
    if (v >= 448.0f) return 0x7eu;
    if (v < 0.015625f) return (u32)rintf(v * 512.0f); // subnormals step 2^-9; 8 is 2^-6, normal
    int e = (int)((__float_as_uint(v) >> 23) & 0xff) - 127;
    // 2^-e built from bits (e is in [-6, 8] here), so the scaling is exact by construction.
    float m = rintf((v * __uint_as_float((u32)(127 - e) << 23) - 1.0f) * 8.0f);
    if (m >= 8.0f) {
        m = 0.0f;
        e += 1;
    }
    u32 code = ((u32)(e + 7) << 3) | (u32)m;
    return code > 0x7eu ? 0x7eu : code;
}

// Signed E4M3 rounding: the FP8 KV cache stores round(x / scale).
__device__ __forceinline__ u32 f32_to_e4m3_signed(float v) {
    u32 m = f32_to_e4m3(fabsf(v));
    return (v < 0.0f && m != 0u) ? (m | 0x80u) : m;
}

// E2M1 as ModelOpt decodes it: magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6; code 8 ("-0") is +0.
__device__ __forceinline__ float e2m1(u32 code) {
    u32 m = code & 7u;
    u32 bits = m == 0u ? 0u : (m == 1u ? 0x3f000000u : (((126u + (m >> 1)) << 23) | ((m & 1u) << 22)));
    if (m != 0u) bits |= (code & 8u) << 28;
    return __uint_as_float(bits);
}

__device__ __forceinline__ float bf16(u32 h) { return __uint_as_float(h << 16); }

// IEEE half: bias 15; subnormals are m * 2^-24, which f32 holds exactly.
__device__ __forceinline__ float f16(u32 h) {
    u32 sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0u) return __uint_as_float(__float_as_uint((float)m * 5.9604644775390625e-8f) | sign);
    if (e == 31u) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
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

// Eight E2M1 codes (one word) of `row` of a packed [*, cols] matrix from column k (k % 8 == 0);
// 0 for a missing row or past the row's end (cols % 16 == 0, so a word is all in or all out).
__device__ __forceinline__ u32 codes8(const u8* q, long long row, int cols, int k) {
    return row >= 0 && k < cols ? *(const u32*)(q + (u64)row * (cols / 2) + k / 2) : 0u;
}

// The four block scales of `row` for columns k0 .. k0 + 63 (byte j = columns k0 + 16j ..),
// 0 for a missing row or past the row's end.
__device__ __forceinline__ u32 scales4(const u8* sc, long long row, int cols, int k0) {
    if (row < 0) return 0u;
    int nb = cols / 16, b0 = k0 / 16;
    const u8* p = sc + (u64)row * nb + b0;
    if (b0 + 4 <= nb && ((u64)p & 3) == 0) return *(const u32*)p;
    u32 v = 0u;
    for (int j = 0; j < 4 && b0 + j < nb; j++) v |= (u32)p[j] << (8 * j);
    return v;
}

template <int FMT>
__device__ constexpr int elems16() {
    return FMT == FMT_F32 ? 4 : (FMT == FMT_FP8 ? 16 : (FMT == FMT_NVFP4 ? 32 : 8));
}

// Element i (i < elems16<FMT>(), known at compile time once unrolled) of the 16 bytes `q` of
// a row; `s2` holds the two NVFP4 block scales of those 32 elements.
template <int FMT>
__device__ __forceinline__ float decode_at(uint4 q, u32 s2, float ts, int i) {
    constexpr int per_word = FMT == FMT_F32 ? 1 : (FMT == FMT_FP8 ? 4 : (FMT == FMT_NVFP4 ? 8 : 2));
    int wi = i / per_word, sub = i % per_word;
    u32 word = wi == 0 ? q.x : wi == 1 ? q.y : wi == 2 ? q.z : q.w;
    if (FMT == FMT_F32) return __uint_as_float(word);
    if (FMT == FMT_BF16) return bf16((word >> (sub * 16)) & 0xffffu);
    if (FMT == FMT_F16) return f16((word >> (sub * 16)) & 0xffffu);
    if (FMT == FMT_FP8) return e4m3((word >> (sub * 8)) & 0xffu) * ts;
    return e2m1((word >> (sub * 4)) & 0xfu) * (e4m3((s2 >> (i < 16 ? 0 : 8)) & 0xffu) * ts);
}

// out[r][t] = W[row0 + r] · x[t] for NR consecutive rows (rows past `rows` repeat the last one
// and are for the caller to drop) and NT tokens (x rows `xs` apart), reduced over the warp:
// every lane gets the sums. `w` and `sc` point at row 0 of the matrix. Rows whose byte length
// is a multiple of 16 stream as 16-byte loads, the NR rows' loads issued before any math;
// each lane loads its slice of x once per step (float4) and reuses it for all NR rows, so x
// costs 1/NR of the weight traffic in L1. Other widths use element loads (small test shapes).
template <int FMT, int NT, int NR>
__device__ __forceinline__ void warp_rows_dot(const u8* w, const u8* sc, float ts, int cols,
                                              int row0, int rows, const float* x, u64 xs,
                                              float (&out)[NR][NT]) {
    constexpr int E = elems16<FMT>();
    int lane = threadIdx.x & 31;
    u64 rb = row_bytes(FMT, cols), sb = (u64)(cols / 16);
#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) out[r][t] = 0.0f;
    if (rb % 16 == 0 && ((u64)w & 15) == 0) {
        u64 nv = rb / 16;
        for (u64 v = lane; v < nv; v += WARP) {
            uint4 q[NR];
            u32 s2[NR];
#pragma unroll
            for (int r = 0; r < NR; r++) {
                u64 row = (u64)min(row0 + r, rows - 1);
                q[r] = __ldg((const uint4*)(w + row * rb) + v);
                s2[r] = FMT == FMT_NVFP4 ? (u32)__ldg((const u16*)(sc + row * sb) + v) : 0u;
            }
            // Four columns at a time: x's float4 for every token, then the rows' weights there,
            // so few of the E decoded weights and x values are live at once (the multi-token
            // tiles stay within the register file). Each sum still runs in column order.
#pragma unroll
            for (int c = 0; c < E / 4; c++) {
                float4 xv[NT];
#pragma unroll
                for (int t = 0; t < NT; t++) xv[t] = __ldg((const float4*)(x + t * xs + v * E) + c);
#pragma unroll
                for (int r = 0; r < NR; r++) {
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float wv = decode_at<FMT>(q[r], s2[r], ts, 4 * c + j);
#pragma unroll
                        for (int t = 0; t < NT; t++) {
                            float xj = j == 0 ? xv[t].x : j == 1 ? xv[t].y : j == 2 ? xv[t].z : xv[t].w;
                            out[r][t] += wv * xj;
                        }
                    }
                }
            }
        }
    } else {
        for (int c = lane; c < cols; c += WARP) {
#pragma unroll
            for (int r = 0; r < NR; r++) {
                u64 row = (u64)min(row0 + r, rows - 1);
                float wv = weight_at(FMT, w + row * rb, sc + row * sb, ts, c);
#pragma unroll
                for (int t = 0; t < NT; t++) out[r][t] += wv * x[t * xs + c];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) out[r][t] = warp_sum(out[r][t]);
}

// warp_rows_dot for a format known only at run time (uniform across the grid).
template <int NT, int NR>
__device__ __forceinline__ void warp_rows_dot_any(int fmt, const u8* w, const u8* sc, float ts,
                                                  int cols, int row0, int rows, const float* x,
                                                  u64 xs, float (&out)[NR][NT]) {
    switch (fmt) {
    case FMT_BF16: warp_rows_dot<FMT_BF16, NT, NR>(w, sc, ts, cols, row0, rows, x, xs, out); break;
    case FMT_F16: warp_rows_dot<FMT_F16, NT, NR>(w, sc, ts, cols, row0, rows, x, xs, out); break;
    case FMT_FP8: warp_rows_dot<FMT_FP8, NT, NR>(w, sc, ts, cols, row0, rows, x, xs, out); break;
    case FMT_NVFP4: warp_rows_dot<FMT_NVFP4, NT, NR>(w, sc, ts, cols, row0, rows, x, xs, out); break;
    default: warp_rows_dot<FMT_F32, NT, NR>(w, sc, ts, cols, row0, rows, x, xs, out); break;
    }
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
