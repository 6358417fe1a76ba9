// Slots grouped by expert (moe_group in moe_experts.cu) cut into tiles of up to 64 slots of one
// expert; a block takes tile blockIdx.x. Prepended to the kernels that run expert tiles.

// Which expert and which 64 of its slots tile `tile` covers; false past the last tile.
__device__ bool find_tile(const u32* tile_base, int experts, u32 tile, int* e, u32* first) {
    if (tile >= tile_base[experts]) return false;
    int lo = 0, hi = experts - 1;
    while (lo < hi) { // last e with tile_base[e] <= tile
        int mid = (lo + hi + 1) / 2;
        if (tile_base[mid] <= tile) lo = mid; else hi = mid - 1;
    }
    *e = lo;
    *first = (tile - tile_base[lo]) * 64;
    return true;
}

// The block's tile: its expert `e` and its slots, slot_of[0 .. n) (the rest 0), visible to the
// whole block on return. False, for the whole block, past the last tile.
__device__ bool tile_slots(const u32* counts, const u32* starts, const u32* tile_base,
                           const u32* order, int experts, u32* slot_of, int* e, u32* n) {
    u32 first;
    if (!find_tile(tile_base, experts, blockIdx.x, e, &first)) return false;
    *n = min(64u, counts[*e] - first);
    for (int i = threadIdx.x; i < 64; i += blockDim.x)
        slot_of[i] = i < (int)*n ? order[starts[*e] + first + i] : 0u;
    __syncthreads();
    return true;
}
