// linear, W4A4 on sm_120-class Blackwell (nvfp4_mma.cuh): the activations quantized to NVFP4
// with the checkpoint's input scale (quantize_nvfp4.cu), then the block-scaled FP4 MMA. sm_100's
// is linear_nvfp4_tcgen05.cu; the exact path is linear.cu.

// y[t, r] = input_scale · ts · Σ_k (A·sa)(B·sb) (+ bias). A block of 4 warps covers 64 rows by
// 64 tokens, each warp 16 rows by the block's tokens (its A fragments reused for each 8 of
// them). Grid (row blocks, token blocks of 64), 128 threads; cols % 16 == 0.
extern "C" __global__ void linear_fp4(const u8* w, const u8* wsc, float ts, const u8* xq,
                                      const u8* xsc, float input_scale, const float* bias,
                                      int has_bias, float* y, int rows, int cols, int tokens) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int r0 = (blockIdx.x * 4 + warp) * 16, n0 = blockIdx.y * 64;
    if (r0 >= rows) return;
    int n = min(64, tokens - n0);
    float d[8][4] = {};
    fp4_warp_rows<8>(w, wsc, rows, cols, r0, xq, xsc,
                     [&](int c) { return c < n ? (long long)(n0 + c) : -1ll; }, n, d);
    float s = input_scale * ts;
    for (int j = 0; j < 8; j++)
        for (int c = 0; c < 4; c++) {
            int r = r0 + (lane >> 2) + 8 * (c >> 1), col = 8 * j + 2 * (lane & 3) + (c & 1);
            if (r < rows && col < n)
                y[(u64)(n0 + col) * rows + r] = d[j][c] * s + (has_bias ? bias[r] : 0.0f);
        }
}
