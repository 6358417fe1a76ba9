// The W4A4 routed experts' entry points, the same for both Blackwell families (prepended to
// moe_experts_nvfp4_mma.cu and moe_experts_nvfp4_tcgen05.cu, which each define
// fp4_expert_tile: one block's weight rows of the expert of tile blockIdx.x by the tile's
// slots, with out(slot, row, ts·input_scale·Σ) for each). Grid (max tiles, row blocks of the
// family's tile height), 128 threads.

template <class Out>
__device__ void fp4_expert_tile(const u8* w, const u8* wsc, const float* ts,
                                const float* input_scales, const u32* counts, const u32* starts,
                                const u32* tile_base, const u32* order, const u8* xq, const u8* xs,
                                int rows, int cols, int experts, Out out);

// h[slot] = relu2(up_e · xq[slot]).
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

// contrib[slot] = weight[slot] · (down_e · hq[slot]).
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
