// moe_experts, W4A4 on sm_100-class Blackwell (tcgen05.cuh): as moe_experts_nvfp4_mma.cu does
// on sm_120, each slot's input quantized with its expert's own input scale (quantize_nvfp4.cu),
// then the chosen experts' up and down projections as block-scaled FP4 MMAs over the slots
// grouped by expert (moe_group and moe_combine of moe_experts.cu group and sum them). The
// entries are in fp4_experts.cuh; this file gives them the family's tile.

// One block of 128 threads: 128 rows (from blockIdx.y·128) of the expert of tile blockIdx.x
// by the tile's slots; out(slot, row, value) receives ts·input_scale·Σ. TC05_SMEM bytes of
// dynamic shared memory.
template <class Out>
__device__ void fp4_expert_tile(const u8* w, const u8* wsc, const float* ts,
                                const float* input_scales, const u32* counts, const u32* starts,
                                const u32* tile_base, const u32* order, const u8* xq, const u8* xs,
                                int rows, int cols, int experts, Out out) {
    extern __shared__ __align__(16) u8 tc05_smem[]; // descriptors need 16-byte alignment
    __shared__ u32 slot_of[64];
    int e;
    u32 n;
    if (!tile_slots(counts, starts, tile_base, order, experts, slot_of, &e, &n)) return;
    u64 ex = (u64)e;
    float s = ts[e] * input_scales[e];
    fp4_tc05_tile(w + ex * rows * (cols / 2), wsc + ex * rows * (cols / 16), rows, cols,
                  blockIdx.y * TC05_ROWS, xq, xs,
                  [&](int c) { return c < (int)n ? (long long)slot_of[c] : -1ll; }, (int)n,
                  tc05_smem, [&](int c, int r, float v) { out(slot_of[c], r, v * s); });
}
