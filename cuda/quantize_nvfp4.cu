// Activations to NVFP4 for the W4A4 tensor-core paths (linear_nvfp4_mma.cu and
// moe_experts_nvfp4_mma.cu on sm_120, linear_nvfp4_tcgen05.cu and moe_experts_nvfp4_tcgen05.cu
// on sm_100), quantized with the checkpoint's `input_scale` exactly as ModelOpt quantizes them.
// Plain CUDA, built for every architecture.

// Round to the nearest E2M1 (ties to even code), saturating at 6.
__device__ __forceinline__ u32 f32_to_e2m1(float v) {
    float a = fabsf(v);
    u32 m = a <= 0.25f ? 0u : a < 0.75f ? 1u : a <= 1.25f ? 2u : a < 1.75f ? 3u
          : a <= 2.5f ? 4u : a < 3.5f ? 5u : a <= 5.0f ? 6u : 7u;
    return m | (v < 0.0f && m != 0u ? 8u : 0u);
}

// 16 values to 8 packed bytes (low nibble = even element) and their E4M3 scale, returned, as
// ModelOpt quantizes with a fixed global scale (src/codec/nvfp4.rs does the same on the host):
// block scale amax / (6 · input_scale) with the product formed first, an all-zero block's scale
// 1, clamped to E4M3's range; elements divided by block scale · input_scale.
__device__ __forceinline__ u8 quantize_block16(const float* src, float input_scale, u8* packed) {
    float amax = 0.0f;
    for (int i = 0; i < 16; i++) amax = fmaxf(amax, fabsf(src[i]));
    float ratio = amax / (6.0f * input_scale);
    ratio = ratio == 0.0f ? 1.0f : fminf(fmaxf(ratio, 0.001953125f), 448.0f);
    u32 sc = f32_to_e4m3(ratio);
    float s = e4m3(sc) * input_scale;
    for (int i = 0; i < 16; i += 2) {
        u32 lo = s > 0.0f ? f32_to_e2m1(src[i] / s) : 0u;
        u32 hi = s > 0.0f ? f32_to_e2m1(src[i + 1] / s) : 0u;
        packed[i / 2] = (u8)(lo | (hi << 4));
    }
    return (u8)sc;
}

// x [T, K] f32 -> packed [T, K/2] and E4M3 scales [T, K/16] (quantize_block16).
extern "C" __global__ void quantize_nvfp4(const float* x, u8* packed, u8* scales, int tokens,
                                          int cols, float input_scale) {
    u64 blocks = (u64)tokens * (cols / 16);
    for (u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += (u64)gridDim.x * blockDim.x)
        scales[b] = quantize_block16(x + b * 16, input_scale, packed + b * 8);
}

// Slot s's input row x[s / per_row] ([*, cols] f32; per_row = k for tokens, 1 for slots) to
// packed [S, cols/2] and scales [S, cols/16], with input_scales[ids[s]].
extern "C" __global__ void quantize_slots_nvfp4(const float* x, int per_row, const u32* ids,
                                                const float* input_scales, u8* packed, u8* scales,
                                                int slots, int cols) {
    u64 nb = cols / 16, blocks = (u64)slots * nb;
    for (u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += (u64)gridDim.x * blockDim.x) {
        u64 s = b / nb, blk = b % nb;
        const float* src = x + (s / per_row) * cols + blk * 16;
        scales[b] = quantize_block16(src, input_scales[ids[s]], packed + b * 8);
    }
}
