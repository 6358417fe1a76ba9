// linear: y[t, r] = W[r] · x[t] (+ b[r]) for a weight in any stored format, decoded in registers.
//
// linear_gemv (decode, few tokens): a warp per four output rows and up to four tokens, so each
// weight byte is read once from DRAM as 16-byte loads (four in flight per lane) and meets
// every token in registers; f32 accumulation and a warp-shuffle reduction.
// linear_gemm / linear_gemm_tc (prefill): 64x64 output tiles (gemm_tile.cuh), each weight
// decoded once per 64 tokens, in f32 on the CUDA cores or exactly into bf16 for the tensor
// cores with the activations split into bf16 terms.

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

// y[t, r] for a 64-row x 64-token tile (gemm_tile.cuh): column j of the tile is token t0 + j.
template <int KIND>
__device__ void gemm_tile_rows(int fmt, const u8* w, const u8* sc, float ts, const float* bias,
                               int has_bias, const float* x, float* y, int rows, int cols, int tokens) {
    __shared__ long long xrow[TILE];
    int r0 = blockIdx.x * TILE, t0 = blockIdx.y * TILE;
    for (int j = threadIdx.x; j < TILE; j += blockDim.x)
        xrow[j] = t0 + j < tokens ? (long long)(t0 + j) * cols : -1;
    __syncthreads();
    float acc[16];
    tile_product<KIND>(fmt, w, sc, ts, rows, cols, r0, x, xrow, acc);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        int rr, j;
        tile_coord<KIND>(i, &rr, &j);
        int r = r0 + rr, t = t0 + j;
        if (r < rows && t < tokens) y[(u64)t * rows + r] = acc[i] + (has_bias ? bias[r] : 0.0f);
    }
}

// f32 on the CUDA cores, any stored format. Grid (row tiles, token tiles), 256 threads.
extern "C" __global__ void __launch_bounds__(256) linear_gemm(
    int fmt, const u8* w, const u8* sc, float ts, const float* bias, int has_bias,
    const float* x, float* y, int rows, int cols, int tokens) {
    gemm_tile_rows<0>(fmt, w, sc, ts, bias, has_bias, x, y, rows, cols, tokens);
}

// bf16 tensor cores (sm_80+; BF16, FP8 and NVFP4 weights) with activations in `terms` bf16
// terms (1-3). Same grid as linear_gemm.
extern "C" __global__ void __launch_bounds__(256) linear_gemm_tc(
    int terms, int fmt, const u8* w, const u8* sc, float ts, const float* bias, int has_bias,
    const float* x, float* y, int rows, int cols, int tokens) {
    switch (terms) {
    case 1: gemm_tile_rows<1>(fmt, w, sc, ts, bias, has_bias, x, y, rows, cols, tokens); break;
    case 2: gemm_tile_rows<2>(fmt, w, sc, ts, bias, has_bias, x, y, rows, cols, tokens); break;
    default: gemm_tile_rows<3>(fmt, w, sc, ts, bias, has_bias, x, y, rows, cols, tokens); break;
    }
}
