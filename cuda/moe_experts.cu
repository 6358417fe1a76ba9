// moe_experts: Σ_j w_j · down_{id_j}(relu(up_{id_j} x)²) per token, touching only the chosen
// experts, in two launches for any number of tokens and slots:
//   moe_up:   h[slot] = relu2(up_{id[slot]} · x[token of slot]), grid (T·k, row blocks)
//   moe_down: out[t, r] = Σ_j w[t, j] · down_{id[t, j]}[r] · h[t·k + j], grid (T, row groups
//             of MOE_NR); the weighted sum runs over slots in ascending expert order, as the
//             CPU adds it.
// Expert e's rows start at e·rows·row_bytes in one stacked buffer; `ts` holds each expert's
// tensor scale. Tokens and slots run along grid x (no 65535 limit there); a warp computes four
// output rows with 16-byte weight loads (warp_rows_dot in common.cuh).

// Rows per warp (moe_up blocks are 4 warps x MOE_NR rows; moe_down blocks MOE_NR rows).
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

// The block's warps share the k slots of one token (warp w takes slots w, w + nwarps, ...) for
// the same MOE_NR rows, so a decode step has k times more warps in flight than one warp per
// row group would; each slot's weighted product goes to shared memory and one thread per row
// adds them in slot order. Dynamic shared memory: k x MOE_NR floats. At most 128 registers
// (ptxas gives 136-168 unasked, spilling nothing either way), so an SM holds two blocks of
// eight warps rather than one.
extern "C" __global__ void __launch_bounds__(256, 2) moe_down(int fmt, const u8* w, const u8* sc, const float* ts,
                                    const u32* ids, const float* weights, const float* h,
                                    float* out, int rows, int cols, int k) {
    extern __shared__ float part[];
    int row0 = blockIdx.y * MOE_NR;
    int t = blockIdx.x;
    int warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    u64 rb = row_bytes(fmt, cols);
    for (int j = warp; j < k; j += nw) {
        u64 slot = (u64)t * k + j;
        u64 e = ids[slot];
        float acc[MOE_NR][1];
        warp_rows_dot_any<1, MOE_NR>(fmt, w + e * rows * rb, sc + e * rows * (u64)(cols / 16),
                                     ts[e], cols, row0, rows, h + slot * cols, cols, acc);
        if ((threadIdx.x & 31) == 0)
            for (int r = 0; r < MOE_NR; r++) part[j * MOE_NR + r] = weights[slot] * acc[r][0];
    }
    __syncthreads();
    int r = threadIdx.x;
    if (r < MOE_NR && row0 + r < rows) {
        float total = 0.0f;
        for (int j = 0; j < k; j++) total += part[j * MOE_NR + r];
        out[(u64)t * rows + row0 + r] = total;
    }
}

// ---- Prefill: experts run as grouped GEMMs, each chosen expert's weights read once per 64
// of its tokens instead of once per token. Four launches:
//   moe_group:   slots grouped by expert (stable), and the tiles of 64 slots each expert owns
//   moe_up_tiles / moe_down_tiles: a 64-row x 64-slot tile of one expert per block
//                (gemm_tile.cuh), f32 on the CUDA cores, or on the bf16 tensor cores (_tc)
//   moe_combine: out[t] = Σ_j contribution[t·k + j], in slot (= ascending expert) order

// One block. counts/starts/tile_base have E (+1) entries; order has S = T·k.
extern "C" __global__ void moe_group(const u32* ids, int slots, int experts, u32* counts,
                                     u32* starts, u32* tile_base, u32* order) {
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        u32 n = 0;
        for (int s = 0; s < slots; s++) n += ids[s] == (u32)e;
        counts[e] = n;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 at = 0, tiles = 0;
        for (int e = 0; e < experts; e++) {
            starts[e] = at;
            tile_base[e] = tiles;
            at += counts[e];
            tiles += (counts[e] + 63) / 64;
        }
        tile_base[experts] = tiles;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        u32 at = starts[e];
        for (int s = 0; s < slots; s++)
            if (ids[s] == (u32)e) order[at++] = (u32)s;
    }
}

// The block's tile: which expert, which of its slots (`slot_of`, `n` of them), and the product
// (gemm_tile.cuh, kind KIND) of its 64 weight rows from blockIdx.y·64 with those slots' input
// rows, x[slot / per_row] (per_row = k when x holds tokens, 1 when it holds slots). False for
// blocks past the last tile.
template <int KIND>
__device__ bool expert_tile(int fmt, const u8* w, const u8* sc, const float* ts, const u32* counts,
                            const u32* starts, const u32* tile_base, const u32* order,
                            const float* x, int per_row, int rows, int cols, int experts,
                            u32* slot_of, u32* n, float (&acc)[16]) {
    __shared__ long long xrow[64];
    int e;
    if (!tile_slots(counts, starts, tile_base, order, experts, slot_of, &e, n)) return false;
    for (int i = threadIdx.x; i < 64; i += blockDim.x)
        xrow[i] = i < (int)*n ? (long long)(slot_of[i] / per_row) * cols : -1;
    __syncthreads();
    u64 rb = row_bytes(fmt, cols);
    tile_product<KIND>(fmt, w + (u64)e * rows * rb, sc + (u64)e * rows * (cols / 16), ts[e], rows,
                       cols, blockIdx.y * 64, x, xrow, acc);
    return true;
}

// h[slot] = relu2(up_e · x[token of slot]) for one tile.
template <int KIND>
__device__ void up_tile(int fmt, const u8* w, const u8* sc, const float* ts, const u32* counts,
                        const u32* starts, const u32* tile_base, const u32* order, const float* x,
                        float* h, int rows, int cols, int k, int experts) {
    __shared__ u32 slot_of[64];
    u32 n;
    float acc[16];
    if (!expert_tile<KIND>(fmt, w, sc, ts, counts, starts, tile_base, order, x, k, rows, cols,
                           experts, slot_of, &n, acc))
        return;
    for (int i = 0; i < 16; i++) {
        int rr, c;
        tile_coord<KIND>(i, &rr, &c);
        int r = blockIdx.y * 64 + rr;
        if (r < rows && c < (int)n) {
            float v = fmaxf(acc[i], 0.0f);
            h[(u64)slot_of[c] * rows + r] = v * v;
        }
    }
}

// contrib[slot] = weight[slot] · (down_e · h[slot]) for one tile.
template <int KIND>
__device__ void down_tile(int fmt, const u8* w, const u8* sc, const float* ts, const u32* counts,
                          const u32* starts, const u32* tile_base, const u32* order,
                          const float* weights, const float* h, float* contrib, int rows, int cols,
                          int experts) {
    __shared__ u32 slot_of[64];
    u32 n;
    float acc[16];
    if (!expert_tile<KIND>(fmt, w, sc, ts, counts, starts, tile_base, order, h, 1, rows, cols,
                           experts, slot_of, &n, acc))
        return;
    for (int i = 0; i < 16; i++) {
        int rr, c;
        tile_coord<KIND>(i, &rr, &c);
        int r = blockIdx.y * 64 + rr;
        if (r < rows && c < (int)n) {
            u32 s = slot_of[c];
            contrib[(u64)s * rows + r] = weights[s] * acc[i];
        }
    }
}

// Grid (max tiles, row blocks of 64), 256 threads; f32 on the CUDA cores.
extern "C" __global__ void __launch_bounds__(256) moe_up_tiles(
    int fmt, const u8* w, const u8* sc, const float* ts, const u32* counts, const u32* starts,
    const u32* tile_base, const u32* order, const float* x, float* h, int rows, int cols, int k,
    int experts) {
    up_tile<0>(fmt, w, sc, ts, counts, starts, tile_base, order, x, h, rows, cols, k, experts);
}

extern "C" __global__ void __launch_bounds__(256) moe_down_tiles(
    int fmt, const u8* w, const u8* sc, const float* ts, const u32* counts, const u32* starts,
    const u32* tile_base, const u32* order, const float* weights, const float* h, float* contrib,
    int rows, int cols, int experts) {
    down_tile<0>(fmt, w, sc, ts, counts, starts, tile_base, order, weights, h, contrib, rows, cols,
                 experts);
}

// The same on the bf16 tensor cores (sm_80+; BF16, FP8 and NVFP4 experts), activations in
// `terms` bf16 terms (1-3).
extern "C" __global__ void __launch_bounds__(256) moe_up_tiles_tc(
    int terms, int fmt, const u8* w, const u8* sc, const float* ts, const u32* counts,
    const u32* starts, const u32* tile_base, const u32* order, const float* x, float* h, int rows,
    int cols, int k, int experts) {
    switch (terms) {
    case 1: up_tile<1>(fmt, w, sc, ts, counts, starts, tile_base, order, x, h, rows, cols, k, experts); break;
    case 2: up_tile<2>(fmt, w, sc, ts, counts, starts, tile_base, order, x, h, rows, cols, k, experts); break;
    default: up_tile<3>(fmt, w, sc, ts, counts, starts, tile_base, order, x, h, rows, cols, k, experts); break;
    }
}

extern "C" __global__ void __launch_bounds__(256) moe_down_tiles_tc(
    int terms, int fmt, const u8* w, const u8* sc, const float* ts, const u32* counts,
    const u32* starts, const u32* tile_base, const u32* order, const float* weights, const float* h,
    float* contrib, int rows, int cols, int experts) {
    switch (terms) {
    case 1: down_tile<1>(fmt, w, sc, ts, counts, starts, tile_base, order, weights, h, contrib, rows, cols, experts); break;
    case 2: down_tile<2>(fmt, w, sc, ts, counts, starts, tile_base, order, weights, h, contrib, rows, cols, experts); break;
    default: down_tile<3>(fmt, w, sc, ts, counts, starts, tile_base, order, weights, h, contrib, rows, cols, experts); break;
    }
}

// out[t, r] = Σ_j contrib[t·k + j, r], j ascending from 0 as the CPU adds them.
extern "C" __global__ void moe_combine(const float* contrib, float* out, int tokens, int rows, int k) {
    u64 n = (u64)tokens * rows;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 t = i / rows, r = i % rows;
        float s = 0.0f;
        for (int j = 0; j < k; j++) s += contrib[(t * k + j) * rows + r];
        out[i] = s;
    }
}
