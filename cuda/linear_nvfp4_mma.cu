// linear on Blackwell (sm_100a / sm_120a): W4A4 through the block-scaled FP4 tensor cores.
// Activations are quantized to NVFP4 with the checkpoint's `input_scale` (E2M1 values, one E4M3
// scale per 16, the f32 input scale per tensor), then
// `mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X` multiplies them
// with the stored weights, both scale vectors feeding the instruction directly. Not bit-faithful
// to the reference (the activations are rounded to 4 bits); the exact path is linear.cu.
// NOT YET RUN ON BLACKWELL HARDWARE: the fragment and scale layouts follow the PTX ISA.

// Round to the nearest E2M1 (ties to even code), saturating at 6.
__device__ __forceinline__ u32 f32_to_e2m1(float v) {
    float a = fabsf(v);
    u32 m = a <= 0.25f ? 0u : a < 0.75f ? 1u : a <= 1.25f ? 2u : a < 1.75f ? 3u
          : a <= 2.5f ? 4u : a < 3.5f ? 5u : a <= 5.0f ? 6u : 7u;
    return m | (v < 0.0f && m != 0u ? 8u : 0u);
}

// x [T, K] f32 -> packed [T, K/2] (low nibble = even element) and E4M3 scales [T, K/16], as
// ModelOpt quantizes with a fixed global scale (src/codec/nvfp4.rs does the same on the host):
// block scale amax / (6 · input_scale) with the product formed first, an all-zero block's
// scale 1, clamped to E4M3's range; elements divided by block scale · input_scale.
extern "C" __global__ void quantize_nvfp4(const float* x, u8* packed, u8* scales, int tokens,
                                          int cols, float input_scale) {
    u64 blocks = (u64)tokens * (cols / 16);
    for (u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += (u64)gridDim.x * blockDim.x) {
        const float* xb = x + b * 16;
        float amax = 0.0f;
        for (int i = 0; i < 16; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float ratio = amax / (6.0f * input_scale);
        ratio = ratio == 0.0f ? 1.0f : fminf(fmaxf(ratio, 0.001953125f), 448.0f);
        u32 sc = f32_to_e4m3(ratio);
        scales[b] = (u8)sc;
        float s = e4m3(sc) * input_scale;
        for (int i = 0; i < 16; i += 2) {
            u32 lo = s > 0.0f ? f32_to_e2m1(xb[i] / s) : 0u;
            u32 hi = s > 0.0f ? f32_to_e2m1(xb[i + 1] / s) : 0u;
            packed[b * 8 + i / 2] = (u8)(lo | (hi << 4));
        }
    }
}

__device__ __forceinline__ u32 load_u32(const u8* p, bool ok) { return ok ? *(const u32*)p : 0u; }

// d = (A·SFA)(B·SFB) + d for one 16x8x64 tile, selectors {0, 0}. The tests' CPU emulator,
// which cannot run PTX, defines this itself from the PTX ISA's fragment and scale layouts.
#ifndef NEMOTRON_CUDA_EMULATOR
__device__ __forceinline__ void mma_fp4_16x8x64(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2],
                                                u32 sfa, u32 sfb) {
    asm volatile(
        "mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X"
        ".f32.e2m1.e2m1.f32.ue4m3 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3}, "
        "%10, {0, 0}, %11, {0, 0};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(sfa), "r"(sfb));
}
#endif

// y[t, r] = input_scale · ts · Σ_k (A·sa)(B·sb) (+ bias). A warp computes 16 rows x 8 tokens;
// a block of 4 warps 64 rows. Requires cols % 64 == 0 (the host checks).
extern "C" __global__ void linear_nvfp4_mma(const u8* w, const u8* wsc, float ts, const u8* xq,
                                            const u8* xsc, float input_scale, const float* bias,
                                            int has_bias, float* y, int rows, int cols, int tokens) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, tq = lane & 3;
    int r0 = (blockIdx.x * 4 + warp) * 16;
    int n0 = blockIdx.y * 8;
    if (r0 >= rows) return;
    u64 kb = cols / 2, ks = cols / 16;
    int ra = r0 + g, rb = r0 + g + 8, tn = n0 + g;
    // Scale lanes: A row m sits in lane 4·(m % 8) + (m / 8) (thread-id 0); B column n in 4·n.
    // The other lanes are not read with selector {0, 0}; they load a valid duplicate anyway,
    // so the result does not hang on which lanes the hardware reads.
    int sa_row = r0 + (lane >> 2) + 8 * (lane & 1);
    int sb_tok = n0 + (lane >> 2);
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < cols; k0 += 64) {
        u64 lo = (u64)(k0 + tq * 8) / 2, hi = (u64)(k0 + 32 + tq * 8) / 2;
        u32 a[4] = {load_u32(w + (u64)ra * kb + lo, ra < rows), load_u32(w + (u64)rb * kb + lo, rb < rows),
                    load_u32(w + (u64)ra * kb + hi, ra < rows), load_u32(w + (u64)rb * kb + hi, rb < rows)};
        u32 b[2] = {load_u32(xq + (u64)tn * kb + lo, tn < tokens), load_u32(xq + (u64)tn * kb + hi, tn < tokens)};
        u32 sfa = load_u32(wsc + (u64)sa_row * ks + k0 / 16, sa_row < rows);
        u32 sfb = load_u32(xsc + (u64)sb_tok * ks + k0 / 16, sb_tok < tokens);
        mma_fp4_16x8x64(d, a, b, sfa, sfb);
    }
    float s = input_scale * ts;
    int t0 = n0 + tq * 2;
    for (int i = 0; i < 4; i++) {
        int r = i < 2 ? ra : rb;
        int t = t0 + (i & 1);
        if (r < rows && t < tokens) y[(u64)t * rows + r] = d[i] * s + (has_bias ? bias[r] : 0.0f);
    }
}
