// moe_experts, W4A4 on sm_120-class Blackwell (nvfp4_mma.cuh): each slot's input quantized to
// NVFP4 with its expert's own input scale (as the reference quantizes per expert module), then
// the chosen experts' up and down projections as block-scaled FP4 MMAs over the slots grouped
// by expert. moe_group and moe_combine of moe_experts.cu group the slots and add the
// contributions in slot order; the exact path is moe_experts.cu.

// One block: 64 rows (warp w the 16 from blockIdx.y·64 + 16w) of the expert of tile
// blockIdx.x by the tile's slots; out(slot, row, value) receives ts·input_scale·Σ.
template <class Out>
__device__ void fp4_expert_tile(const u8* w, const u8* wsc, const float* ts,
                                const float* input_scales, const u32* counts, const u32* starts,
                                const u32* tile_base, const u32* order, const u8* xq, const u8* xs,
                                int rows, int cols, int experts, Out out) {
    __shared__ u32 slot_of[64];
    int e;
    u32 n;
    if (!tile_slots(counts, starts, tile_base, order, experts, slot_of, &e, &n)) return;
    int lane = threadIdx.x & 31;
    int r0 = blockIdx.y * 64 + (threadIdx.x >> 5) * 16;
    if (r0 >= rows) return;
    float d[8][4] = {};
    u64 ex = (u64)e;
    fp4_warp_rows<8>(w + ex * rows * (cols / 2), wsc + ex * rows * (cols / 16), rows, cols, r0, xq,
                     xs, [&](int c) { return c < (int)n ? (long long)slot_of[c] : -1ll; }, (int)n, d);
    float s = ts[e] * input_scales[e];
    for (int j = 0; j < 8; j++)
        for (int c = 0; c < 4; c++) {
            int r = r0 + (lane >> 2) + 8 * (c >> 1), col = 8 * j + 2 * (lane & 3) + (c & 1);
            if (r < rows && col < (int)n) out(slot_of[col], r, d[j][c] * s);
        }
}

// h[slot] = relu2(up_e · xq[slot]); grid (max tiles, row blocks of 64), 128 threads.
extern "C" __global__ void moe_up_fp4(const u8* w, const u8* wsc, const float* ts,
                                      const float* input_scales, const u32* counts,
                                      const u32* starts, const u32* tile_base, const u32* order,
                                      const u8* xq, const u8* xs, float* h, int rows, int cols,
                                      int experts) {
    fp4_expert_tile(w, wsc, ts, input_scales, counts, starts, tile_base, order, xq, xs, rows, cols,
                    experts, [&](u32 slot, int r, float v) {
                        v = fmaxf(v, 0.0f);
                        h[(u64)slot * rows + r] = v * v;
                    });
}

// contrib[slot] = weight[slot] · (down_e · hq[slot]); grid (max tiles, row blocks of 64).
extern "C" __global__ void moe_down_fp4(const u8* w, const u8* wsc, const float* ts,
                                        const float* input_scales, const u32* counts,
                                        const u32* starts, const u32* tile_base, const u32* order,
                                        const u8* hq, const u8* hs, const float* weights,
                                        float* contrib, int rows, int cols, int experts) {
    fp4_expert_tile(w, wsc, ts, input_scales, counts, starts, tile_base, order, hq, hs, rows, cols,
                    experts, [&](u32 slot, int r, float v) {
                        contrib[(u64)slot * rows + r] = weights[slot] * v;
                    });
}
