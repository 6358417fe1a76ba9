// moe_experts: Σ_j w_j · down_{id_j}(relu(up_{id_j} x)²) per token, touching only the chosen
// experts, in two launches for any number of tokens and slots:
//   moe_up:   h[slot] = relu2(up_{id[slot]} · x[token of slot]), grid (T·k, row blocks)
//   moe_down: out[t, r] = Σ_j w[t, j] · down_{id[t, j]}[r] · h[t·k + j], grid (T, row blocks);
//             the weighted sum runs over slots in ascending expert order, as the CPU adds it.
// Expert e's rows start at e·rows·row_bytes in one stacked buffer; `ts` holds each expert's
// tensor scale. Tokens and slots run along grid x (no 65535 limit there). One warp per output row, 16-byte weight loads (common.cuh).

extern "C" __global__ void moe_up(int fmt, const u8* w, const u8* sc, const float* ts,
                                  const u32* ids, const float* x, float* h, int rows, int cols,
                                  int k) {
    int row = blockIdx.y * (blockDim.x / WARP) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int slot = blockIdx.x;
    int t = slot / k;
    u64 e = ids[slot];
    u64 rb = row_bytes(fmt, cols);
    const u8* wr = w + (e * rows + row) * rb;
    const u8* sr = sc + (e * rows + row) * (u64)(cols / 16);
    float acc[1] = {0.0f};
    warp_dot<1>(fmt, wr, sr, ts[e], cols, x + (u64)t * cols, cols, acc);
    float s = warp_sum(acc[0]);
    if ((threadIdx.x & 31) == 0) {
        float r = fmaxf(s, 0.0f);
        h[(u64)slot * rows + row] = r * r;
    }
}

extern "C" __global__ void moe_down(int fmt, const u8* w, const u8* sc, const float* ts,
                                    const u32* ids, const float* weights, const float* h,
                                    float* out, int rows, int cols, int k) {
    int row = blockIdx.y * (blockDim.x / WARP) + (threadIdx.x >> 5);
    if (row >= rows) return;
    int t = blockIdx.x;
    u64 rb = row_bytes(fmt, cols);
    float total = 0.0f;
    for (int j = 0; j < k; j++) {
        u64 slot = (u64)t * k + j;
        u64 e = ids[slot];
        const u8* wr = w + (e * rows + row) * rb;
        const u8* sr = sc + (e * rows + row) * (u64)(cols / 16);
        float acc[1] = {0.0f};
        warp_dot<1>(fmt, wr, sr, ts[e], cols, h + slot * cols, cols, acc);
        float s = warp_sum(acc[0]);
        total += weights[slot] * s;
    }
    if ((threadIdx.x & 31) == 0) out[(u64)t * rows + row] = total;
}
