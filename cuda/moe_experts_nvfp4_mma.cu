// moe_experts, W4A4 on sm_120-class Blackwell (nvfp4_mma.cuh): each slot's input quantized to
// NVFP4 with its expert's own input scale (as the reference quantizes per expert module), then
// the chosen experts' up and down projections as block-scaled FP4 MMAs over the slots grouped
// by expert. moe_group and moe_combine of moe_experts.cu group the slots and add the
// contributions in slot order; the exact path is moe_experts.cu. The entries are in
// fp4_experts.cuh; this file gives them the family's tile.

// One block of 128 threads: 64 rows (warp w the 16 from blockIdx.y·64 + 16w) of the expert of
// tile blockIdx.x by the tile's slots; out(slot, row, value) receives ts·input_scale·Σ.
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
