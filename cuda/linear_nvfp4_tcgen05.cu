// linear, W4A4 on sm_100-class Blackwell (tcgen05.cuh): the activations quantized to NVFP4 with
// the checkpoint's input scale (quantize_nvfp4.cu), then the block-scaled FP4 MMA of the
// fifth-generation tensor cores. sm_120's is linear_nvfp4_mma.cu; the exact path is linear.cu.

// y[t, r] = input_scale · ts · Σ_k (A·sa)(B·sb) (+ bias). A block covers 128 rows by 64 tokens.
// Grid (row blocks of 128, token blocks of 64), 128 threads, TC05_SMEM bytes of dynamic shared
// memory; cols % 16 == 0.
extern "C" __global__ void linear_fp4(const u8* w, const u8* wsc, float ts, const u8* xq,
                                      const u8* xsc, float input_scale, const float* bias,
                                      int has_bias, float* y, int rows, int cols, int tokens) {
    extern __shared__ __align__(16) u8 tc05_smem[]; // descriptors need 16-byte alignment
    int n0 = blockIdx.y * TC05_TOKENS, n = min(TC05_TOKENS, tokens - n0);
    float s = input_scale * ts;
    fp4_tc05_tile(w, wsc, rows, cols, blockIdx.x * TC05_ROWS, xq, xsc,
                  [&](int c) { return c < n ? (long long)(n0 + c) : -1ll; }, n, tc05_smem,
                  [&](int c, int r, float v) {
                      y[(u64)(n0 + c) * rows + r] = v * s + (has_bias ? bias[r] : 0.0f);
                  });
}
