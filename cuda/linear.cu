// linear: y[t, r] = W[r] · x[t] (+ b[r]) for a weight in any stored format, decoded in registers.
//
// linear_gemv (decode, few tokens): a warp per four output rows and up to four tokens, so each
// weight byte is read once from DRAM as 16-byte loads (four in flight per lane) and meets
// every token in registers; f32 accumulation and a warp-shuffle reduction.
// linear_gemm (prefill): 64x64 output tiles; a 64-row x 32-column slice of W is decoded once
// into shared memory and reused by 64 tokens. All f32, so prefill agrees with decode.

// A warp computes NR rows for NT tokens (warp_rows_dot in common.cuh) and writes them.
template <int FMT, int NT, int NR>
__device__ void gemv_tile(const u8* w, const u8* sc, float ts, const float* bias, int has_bias,
                          const float* x, float* y, int rows, int cols, int t0, int row0) {
    if (row0 >= rows) return;
    float acc[NR][NT];
    warp_rows_dot<FMT, NT, NR>(w, sc, ts, cols, row0, rows, x + (u64)t0 * cols, cols, acc);
    if ((threadIdx.x & 31) != 0) return;
#pragma unroll
    for (int r = 0; r < NR; r++) {
        int row = row0 + r;
        if (row >= rows) break;
#pragma unroll
        for (int t = 0; t < NT; t++)
            y[(u64)(t0 + t) * rows + row] = acc[r][t] + (has_bias ? bias[row] : 0.0f);
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
