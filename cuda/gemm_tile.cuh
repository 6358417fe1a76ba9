// One 64-row x 64-column tile of W · Xᵀ, the core of the prefill GEMMs (linear_gemm and the
// MoE expert tiles; prepended to linear.cu and moe_experts.cu after common.cuh). 256 threads.
// Column j of the tile reads input row xrow[j] of x (an element offset; -1 past the end), so
// the same tile serves plain token rows and the gathered slots of one expert.
//
// KIND 0: f32 on the CUDA cores. A 64-row x 32-column slice of W is decoded into shared memory
//         once and reused by the 64 columns; thread (ty, tx) accumulates 4 x 4 outputs.
// KIND 1-3: bf16 tensor cores (mma.m16n8k16, sm_80+). Stored weights are decoded to bf16
//         *exactly*: BF16 as is, FP8 and E2M1 codes as their values (the tensor and NVFP4 block
//         scales are kept out); each 16-column step, which is one NVFP4 block, is multiplied in
//         its own MMA from zero and then scaled in f32 by that block's scale as the CPU decodes
//         it (block scale · tensor scale), so a weight read through a one-hot input is the
//         CPU's weight bit for bit. Activations are split into KIND bf16 terms, x ≈ h0 + h1 +
//         h2 (each the bf16 nearest to what the earlier ones leave), and every term multiplies
//         the same weights: 3 terms carry 24 bits of x, f32's precision; 1 term is bf16
//         activations, faster and lossy.

#define TILE 64
#define TILE_K 32
// bf16 row stride of the tensor-core tiles in shared memory (40 halves = 20 words): the eight
// rows x four lanes of a fragment load fall on 32 different banks.
#define TC_LD (TILE_K + 8)

// The bf16 nearest to v (ties to even), as its 16 bits; NaN stays NaN.
__device__ __forceinline__ u32 bf16_bits(float v) {
    u32 b = __float_as_uint(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
    return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
}

// d = A·B + d for one 16x8x16 bf16 tile on the tensor cores (sm_80 and newer; the host never
// launches a kernel that reaches it on older GPUs). The tests' CPU emulator, which cannot run
// PTX, defines this itself from the PTX ISA's fragment layouts.
#ifndef NEMOTRON_CUDA_EMULATOR
__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    asm volatile("trap;");
#endif
}
#endif

// Where accumulator i of this thread sits in the tile.
template <int KIND>
__device__ __forceinline__ void tile_coord(int i, int* row, int* col) {
    if (KIND == 0) {
        *row = (threadIdx.x >> 4) * 4 + i / 4;
        *col = (threadIdx.x & 15) * 4 + i % 4;
    } else {
        // Warp w: rows 32·(w & 1) .. +32 as two 16-row MMA tiles, columns 16·(w >> 1) .. +16
        // as two 8-column ones; i = 8·mi + 4·ni + c, c the accumulator register.
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        int mi = i >> 3, ni = (i >> 2) & 1, c = i & 3;
        *row = (warp & 1) * 32 + mi * 16 + (lane >> 2) + 8 * (c >> 1);
        *col = (warp >> 1) * 16 + ni * 8 + 2 * (lane & 3) + (c & 1);
    }
}

__device__ void tile_f32(int fmt, const u8* w, const u8* sc, float ts, int rows, int cols, int r0,
                         const float* x, const long long* xrow, float (&acc)[16]) {
    __shared__ float ws[TILE_K][TILE + 1];
    __shared__ float xs[TILE_K][TILE + 1];
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    float a4[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) a4[i][j] = 0.0f;
    for (int k0 = 0; k0 < cols; k0 += TILE_K) {
        for (int i = threadIdx.x; i < TILE * TILE_K; i += blockDim.x) {
            int rr = i / TILE_K, kk = i % TILE_K;
            int r = r0 + rr, k = k0 + kk;
            ws[kk][rr] = (r < rows && k < cols) ? weight_at(fmt, w, sc, ts, (u64)r * cols + k) : 0.0f;
            xs[kk][rr] = (xrow[rr] >= 0 && k < cols) ? x[xrow[rr] + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TILE_K; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = ws[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = xs[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) a4[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 16; i++) acc[i] = a4[i / 4][i % 4];
}

// Weight element i as an exact bf16 with its scales kept out (see above).
__device__ __forceinline__ u32 weight_bf16_unscaled(int fmt, const u8* w, u64 i) {
    switch (fmt) {
    case FMT_BF16: return ((const u16*)w)[i];
    case FMT_FP8: return __float_as_uint(e4m3(w[i])) >> 16;
    default: return __float_as_uint(e2m1((w[i >> 1] >> ((i & 1) * 4)) & 0xfu)) >> 16;
    }
}

// The scale that multiplies the 16-column block holding element i: the NVFP4 block scale
// times the tensor scale (multiplied first, as the CPU decodes), the FP8 tensor scale, or 1.
__device__ __forceinline__ float weight_block_scale(int fmt, const u8* sc, float ts, u64 i) {
    return fmt == FMT_NVFP4 ? e4m3(sc[i >> 4]) * ts : (fmt == FMT_FP8 ? ts : 1.0f);
}

// Eight consecutive weights of row r from column k (k % 8 == 0, all inside the row) as bf16
// pairs, with one vector load: 4 bytes of NVFP4, 8 of FP8, 16 of BF16.
__device__ __forceinline__ uint4 weight8_bf16(int fmt, const u8* w, u64 i) {
    u32 h[8];
    if (fmt == FMT_NVFP4) {
        u32 q = *(const u32*)(w + i / 2);
#pragma unroll
        for (int j = 0; j < 8; j++) h[j] = __float_as_uint(e2m1((q >> (4 * j)) & 0xfu)) >> 16;
    } else if (fmt == FMT_FP8) {
        uint2 q = *(const uint2*)(w + i);
#pragma unroll
        for (int j = 0; j < 8; j++)
            h[j] = __float_as_uint(e4m3(((j < 4 ? q.x : q.y) >> (8 * (j & 3))) & 0xffu)) >> 16;
    } else {
        return *(const uint4*)((const u16*)w + i);
    }
    return uint4{h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16)};
}

// The tensor-core tile's shared memory, one copy for every number of terms.
struct __align__(16) TcTileShared {
    u16 w[TILE * TC_LD];
    float scale[TILE][TILE_K / 16];
    u16 x[3][TILE * TC_LD];
};

__device__ __forceinline__ TcTileShared& tc_tile_shared() {
    __shared__ TcTileShared s;
    return s;
}

__device__ __forceinline__ u32 smem_pair(const u16* base, int row, int k) {
    return *(const u32*)(base + row * TC_LD + k);
}

template <int TERMS>
__device__ void tile_tc(int fmt, const u8* w, const u8* sc, float ts, int rows, int cols, int r0,
                        const float* x, const long long* xrow, float (&acc)[16]) {
    TcTileShared& sm = tc_tile_shared();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int wrow = (warp & 1) * 32, wcol = (warp >> 1) * 16;
    // Each thread fills eight consecutive columns of one row of the W slice and of the X slice.
    int fr = threadIdx.x >> 2, fk = (threadIdx.x & 3) * 8;
    bool w_vec = cols % 8 == 0 && ((u64)w & 15) == 0;
    bool x_vec = cols % 4 == 0 && ((u64)x & 15) == 0;
#pragma unroll
    for (int i = 0; i < 16; i++) acc[i] = 0.0f;
    for (int k0 = 0; k0 < cols; k0 += TILE_K) {
        int r = r0 + fr, k = k0 + fk;
        uint4 wq = uint4{0u, 0u, 0u, 0u};
        if (r < rows && w_vec && k + 8 <= cols) {
            wq = weight8_bf16(fmt, w, (u64)r * cols + k);
        } else if (r < rows) {
            u32 h[8];
            for (int j = 0; j < 8; j++) h[j] = k + j < cols ? weight_bf16_unscaled(fmt, w, (u64)r * cols + k + j) : 0u;
            wq = uint4{h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16)};
        }
        *(uint4*)(sm.w + fr * TC_LD + fk) = wq;
        if (fk % 16 == 0)
            sm.scale[fr][fk / 16] = (r < rows && k < cols) ? weight_block_scale(fmt, sc, ts, (u64)r * cols + k) : 0.0f;
        float xv[8];
        long long xr = xrow[fr];
        if (xr >= 0 && x_vec && k + 8 <= cols) {
            float4 p = *(const float4*)(x + xr + k), q = *(const float4*)(x + xr + k + 4);
            xv[0] = p.x; xv[1] = p.y; xv[2] = p.z; xv[3] = p.w;
            xv[4] = q.x; xv[5] = q.y; xv[6] = q.z; xv[7] = q.w;
        } else {
            for (int j = 0; j < 8; j++) xv[j] = (xr >= 0 && k + j < cols) ? x[xr + k + j] : 0.0f;
        }
#pragma unroll
        for (int term = 0; term < TERMS; term++) {
            u32 h[8];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                h[j] = bf16_bits(xv[j]);
                xv[j] -= bf16(h[j]); // exact: what the term leaves for the next one
            }
            *(uint4*)(sm.x[term] + fr * TC_LD + fk) =
                uint4{h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16)};
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < TILE_K / 16; ks++) {
            int kb = ks * 16 + 2 * t;
            u32 a[2][4];
            float s[2][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                int row = wrow + mi * 16 + g;
                a[mi][0] = smem_pair(sm.w, row, kb);
                a[mi][1] = smem_pair(sm.w, row + 8, kb);
                a[mi][2] = smem_pair(sm.w, row, kb + 8);
                a[mi][3] = smem_pair(sm.w, row + 8, kb + 8);
                s[mi][0] = sm.scale[row][ks];
                s[mi][1] = sm.scale[row + 8][ks];
            }
#pragma unroll
            for (int ni = 0; ni < 2; ni++) {
                int col = wcol + ni * 8 + g;
                float p[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
                // Smallest term first, so the large products are added last.
#pragma unroll
                for (int term = TERMS - 1; term >= 0; term--) {
                    u32 b[2] = {smem_pair(sm.x[term], col, kb), smem_pair(sm.x[term], col, kb + 8)};
#pragma unroll
                    for (int mi = 0; mi < 2; mi++) mma_bf16_16x8x16(p[mi], a[mi], b);
                }
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
#pragma unroll
                    for (int c = 0; c < 4; c++) acc[mi * 8 + ni * 4 + c] += p[mi][c] * s[mi][c >> 1];
            }
        }
        __syncthreads();
    }
}

// The tile product of kind KIND (0 = f32, 1-3 = tensor cores with that many terms).
template <int KIND>
__device__ __forceinline__ void tile_product(int fmt, const u8* w, const u8* sc, float ts, int rows,
                                             int cols, int r0, const float* x, const long long* xrow,
                                             float (&acc)[16]) {
    if (KIND == 0)
        tile_f32(fmt, w, sc, ts, rows, cols, r0, x, xrow, acc);
    else
        tile_tc<KIND == 0 ? 1 : KIND>(fmt, w, sc, ts, rows, cols, r0, x, xrow, acc);
}
