// moe_experts: Σ_j w_j · down_{id_j}(relu(up_{id_j} x)²) per token, touching only the chosen
// experts, in two launches for any number of tokens and slots:
//   moe_up:   h[slot] = relu2(up_{id[slot]} · x[token of slot]), grid (T·k, row blocks)
//   moe_down: out[t, r] = Σ_j w[t, j] · down_{id[t, j]}[r] · h[t·k + j], grid (T, row blocks);
//             the weighted sum runs over slots in ascending expert order, as the CPU adds it.
// Expert e's rows start at e·rows·row_bytes in one stacked buffer; `ts` holds each expert's
// tensor scale. Tokens and slots run along grid x (no 65535 limit there); a warp computes four
// output rows with 16-byte weight loads (warp_rows_dot in common.cuh).

// Rows per warp (the host sizes the grid as 4 warps x MOE_NR rows per block).
#define MOE_NR 4

extern "C" __global__ void moe_up(int fmt, const u8* w, const u8* sc, const float* ts,
                                  const u32* ids, const float* x, float* h, int rows, int cols,
                                  int k) {
    int row0 = (blockIdx.y * (blockDim.x / WARP) + (threadIdx.x >> 5)) * MOE_NR;
    if (row0 >= rows) return;
    int slot = blockIdx.x;
    int t = slot / k;
    u64 e = ids[slot];
    u64 rb = row_bytes(fmt, cols);
    float acc[MOE_NR][1];
    warp_rows_dot_any<1, MOE_NR>(fmt, w + e * rows * rb, sc + e * rows * (u64)(cols / 16), ts[e],
                                 cols, row0, rows, x + (u64)t * cols, cols, acc);
    if ((threadIdx.x & 31) != 0) return;
    for (int r = 0; r < MOE_NR && row0 + r < rows; r++) {
        float v = fmaxf(acc[r][0], 0.0f);
        h[(u64)slot * rows + row0 + r] = v * v;
    }
}

extern "C" __global__ void moe_down(int fmt, const u8* w, const u8* sc, const float* ts,
                                    const u32* ids, const float* weights, const float* h,
                                    float* out, int rows, int cols, int k) {
    int row0 = (blockIdx.y * (blockDim.x / WARP) + (threadIdx.x >> 5)) * MOE_NR;
    if (row0 >= rows) return;
    int t = blockIdx.x;
    u64 rb = row_bytes(fmt, cols);
    float total[MOE_NR];
    for (int r = 0; r < MOE_NR; r++) total[r] = 0.0f;
    for (int j = 0; j < k; j++) {
        u64 slot = (u64)t * k + j;
        u64 e = ids[slot];
        float acc[MOE_NR][1];
        warp_rows_dot_any<1, MOE_NR>(fmt, w + e * rows * rb, sc + e * rows * (u64)(cols / 16),
                                     ts[e], cols, row0, rows, h + slot * cols, cols, acc);
        float wj = weights[slot];
        for (int r = 0; r < MOE_NR; r++) total[r] += wj * acc[r][0];
    }
    if ((threadIdx.x & 31) != 0) return;
    for (int r = 0; r < MOE_NR && row0 + r < rows; r++) out[(u64)t * rows + row0 + r] = total[r];
}
