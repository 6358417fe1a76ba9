// linear: y[t, r] = W[r] · x[t] (+ b[r]) for a weight in any stored format, decoded in registers.
//
// linear_gemv (decode, few tokens): one warp per output row and up to four tokens, so each
// weight byte is read once from DRAM as 16-byte loads and meets every token in registers;
// f32 accumulation and a warp-shuffle reduction.
// linear_gemm (prefill): 64x64 output tiles; a 64-row x 32-column slice of W is decoded once
// into shared memory and reused by 64 tokens. All f32, so prefill agrees with decode.

template <int NT>
__device__ void gemv_rows(int fmt, const u8* w, const u8* sc, float ts, const float* bias,
                          int has_bias, const float* x, float* y, int rows, int cols, int t0) {
    int row = blockIdx.x * (blockDim.x / WARP) + (threadIdx.x >> 5);
    if (row >= rows) return;
    u64 rb = row_bytes(fmt, cols);
    const u8* wr = w + (u64)row * rb;
    const u8* sr = sc + (u64)row * (cols / 16);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    warp_dot<NT>(fmt, wr, sr, ts, cols, x + (u64)t0 * cols, cols, acc);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float s = warp_sum(acc[t]);
        if ((threadIdx.x & 31) == 0) {
            if (has_bias) s += bias[row];
            y[(u64)(t0 + t) * rows + row] = s;
        }
    }
}

extern "C" __global__ void linear_gemv(int fmt, const u8* w, const u8* sc, float ts,
                                       const float* bias, int has_bias, const float* x, float* y,
                                       int rows, int cols, int tokens) {
    int t0 = blockIdx.y * 4;
    int nt = min(4, tokens - t0);
    switch (nt) {
    case 1: gemv_rows<1>(fmt, w, sc, ts, bias, has_bias, x, y, rows, cols, t0); break;
    case 2: gemv_rows<2>(fmt, w, sc, ts, bias, has_bias, x, y, rows, cols, t0); break;
    case 3: gemv_rows<3>(fmt, w, sc, ts, bias, has_bias, x, y, rows, cols, t0); break;
    default: gemv_rows<4>(fmt, w, sc, ts, bias, has_bias, x, y, rows, cols, t0); break;
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
