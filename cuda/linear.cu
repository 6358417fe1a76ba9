// linear: y[t, r] = W[r] · x[t] (+ b[r]) for a weight in any stored format, decoded in registers.
//
// linear_gemv (decode, few tokens): a warp per four output rows and up to four tokens, so each
// weight byte is read once from DRAM as 16-byte loads (four in flight per lane) and meets
// every token in registers; f32 accumulation and a warp-shuffle reduction.
// linear_gemm (prefill): 64x64 output tiles; a 64-row x 32-column slice of W is decoded once
// into shared memory and reused by 64 tokens. All f32, so prefill agrees with decode.

// The 16 bytes `q` of a row decoded into E floats (E = elems16<FMT>()).
template <int FMT>
__device__ __forceinline__ void decode16(uint4 q, u32 s2, float ts, float* out) {
    u32 words[4] = {q.x, q.y, q.z, q.w};
    if (FMT == FMT_F32) {
#pragma unroll
        for (int i = 0; i < 4; i++) out[i] = __uint_as_float(words[i]);
    } else if (FMT == FMT_BF16 || FMT == FMT_F16) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            u32 h = (words[i >> 1] >> ((i & 1) * 16)) & 0xffffu;
            out[i] = FMT == FMT_BF16 ? bf16(h) : f16(h);
        }
    } else if (FMT == FMT_FP8) {
#pragma unroll
        for (int i = 0; i < 16; i++) out[i] = e4m3((words[i >> 2] >> ((i & 3) * 8)) & 0xffu) * ts;
    } else {
        float bs0 = e4m3(s2 & 0xffu) * ts, bs1 = e4m3((s2 >> 8) & 0xffu) * ts;
#pragma unroll
        for (int i = 0; i < 32; i++)
            out[i] = e2m1((words[i >> 3] >> ((i & 7) * 4)) & 0xfu) * (i < 16 ? bs0 : bs1);
    }
}

// A warp computes NR consecutive rows for NT tokens. Each lane loads its slice of x once per
// step (float4 loads) and reuses it for all NR rows, so x costs 1/NR of what it would per row
// and the loop stays bound by the 16-byte weight loads.
template <int FMT, int NT, int NR>
__device__ void gemv_tile(const u8* w, const u8* sc, float ts, const float* bias, int has_bias,
                          const float* x, float* y, int rows, int cols, int t0, int row0) {
    constexpr int E = elems16<FMT>();
    int lane = threadIdx.x & 31;
    if (row0 >= rows) return;
    u64 rb = row_bytes(FMT, cols);
    float acc[NR][NT];
#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[r][t] = 0.0f;
    bool vec = rb % 16 == 0 && ((u64)w & 15) == 0;
    if (vec) {
        u64 nv = rb / 16;
        for (u64 v = lane; v < nv; v += WARP) {
            // All NR weight loads are issued before any math: several 16-byte loads in flight.
            uint4 q[NR];
            u32 s2[NR];
#pragma unroll
            for (int r = 0; r < NR; r++) {
                int row = min(row0 + r, rows - 1);
                q[r] = __ldg((const uint4*)(w + (u64)row * rb) + v);
                s2[r] = FMT == FMT_NVFP4 ? (u32)__ldg((const u16*)(sc + (u64)row * (cols / 16)) + v) : 0u;
            }
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float xv[E];
                const float4* xp = (const float4*)(x + (u64)(t0 + t) * cols + v * E);
#pragma unroll
                for (int i = 0; i < E / 4; i++) {
                    float4 f = __ldg(xp + i);
                    xv[4 * i] = f.x;
                    xv[4 * i + 1] = f.y;
                    xv[4 * i + 2] = f.z;
                    xv[4 * i + 3] = f.w;
                }
#pragma unroll
                for (int r = 0; r < NR; r++) {
                    float wv[E];
                    decode16<FMT>(q[r], s2[r], ts, wv);
#pragma unroll
                    for (int i = 0; i < E; i++) acc[r][t] += wv[i] * xv[i];
                }
            }
        }
    } else {
        for (int c = lane; c < cols; c += WARP) {
#pragma unroll
            for (int r = 0; r < NR; r++) {
                int row = min(row0 + r, rows - 1);
                float wv = weight_at(FMT, w + (u64)row * rb, sc + (u64)row * (cols / 16), ts, c);
#pragma unroll
                for (int t = 0; t < NT; t++) acc[r][t] += wv * x[(u64)(t0 + t) * cols + c];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        int row = row0 + r;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float s = warp_sum(acc[r][t]);
            if (lane == 0 && row < rows) y[(u64)(t0 + t) * rows + row] = s + (has_bias ? bias[row] : 0.0f);
        }
    }
}

// Rows per warp: four for a single token (decode), as tiles of fewer rows for 2-4 tokens so
// the registers holding x stay bounded.
#define GEMV_NR 4

template <int FMT>
__device__ void gemv_fmt(const u8* w, const u8* sc, float ts, const float* bias, int has_bias,
                         const float* x, float* y, int rows, int cols, int tokens) {
    int t0 = blockIdx.y * 4;
    int base = (blockIdx.x * (blockDim.x / WARP) + (threadIdx.x >> 5)) * GEMV_NR;
    switch (min(4, tokens - t0)) {
    case 1:
        gemv_tile<FMT, 1, 4>(w, sc, ts, bias, has_bias, x, y, rows, cols, t0, base);
        break;
    case 2:
        for (int r = 0; r < GEMV_NR; r += 2)
            gemv_tile<FMT, 2, 2>(w, sc, ts, bias, has_bias, x, y, rows, cols, t0, base + r);
        break;
    case 3:
        for (int r = 0; r < GEMV_NR; r++)
            gemv_tile<FMT, 3, 1>(w, sc, ts, bias, has_bias, x, y, rows, cols, t0, base + r);
        break;
    default:
        for (int r = 0; r < GEMV_NR; r++)
            gemv_tile<FMT, 4, 1>(w, sc, ts, bias, has_bias, x, y, rows, cols, t0, base + r);
        break;
    }
}

// grid (row blocks of 4 warps x GEMV_NR rows, token groups of 4), 128 threads.
extern "C" __global__ void linear_gemv(int fmt, const u8* w, const u8* sc, float ts,
                                       const float* bias, int has_bias, const float* x, float* y,
                                       int rows, int cols, int tokens) {
    switch (fmt) {
    case FMT_BF16: gemv_fmt<FMT_BF16>(w, sc, ts, bias, has_bias, x, y, rows, cols, tokens); break;
    case FMT_F16: gemv_fmt<FMT_F16>(w, sc, ts, bias, has_bias, x, y, rows, cols, tokens); break;
    case FMT_FP8: gemv_fmt<FMT_FP8>(w, sc, ts, bias, has_bias, x, y, rows, cols, tokens); break;
    case FMT_NVFP4: gemv_fmt<FMT_NVFP4>(w, sc, ts, bias, has_bias, x, y, rows, cols, tokens); break;
    default: gemv_fmt<FMT_F32>(w, sc, ts, bias, has_bias, x, y, rows, cols, tokens); break;
    }
}

#define TM 64
#define TN 64
#define TK 32

// 256 threads; thread (ty, tx) computes rows r0+ty*4.., tokens t0+tx*4.. of the tile.
extern "C" __global__ void __launch_bounds__(256) linear_gemm(
    int fmt, const u8* w, const u8* sc, float ts, const float* bias, int has_bias,
    const float* x, float* y, int rows, int cols, int tokens) {
    __shared__ float ws[TK][TM + 1];
    __shared__ float xs[TK][TN + 1];
    int r0 = blockIdx.x * TM, t0 = blockIdx.y * TN;
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < cols; k0 += TK) {
        for (int i = threadIdx.x; i < TM * TK; i += blockDim.x) {
            int rr = i / TK, kk = i % TK;
            int r = r0 + rr, k = k0 + kk;
            ws[kk][rr] = (r < rows && k < cols) ? weight_at(fmt, w, sc, ts, (u64)r * cols + k) : 0.0f;
            int t = t0 + rr;
            xs[kk][rr] = (t < tokens && k < cols) ? x[(u64)t * cols + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = ws[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = xs[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int r = r0 + ty * 4 + i;
        if (r >= rows) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int t = t0 + tx * 4 + j;
            if (t < tokens) y[(u64)t * rows + r] = acc[i][j] + (has_bias ? bias[r] : 0.0f);
        }
    }
}
