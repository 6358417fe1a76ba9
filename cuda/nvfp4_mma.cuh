// W4A4 on sm_120-class Blackwell through the block-scaled FP4 tensor cores (prepended to
// linear_nvfp4_mma.cu and moe_experts_nvfp4_mma.cu after common.cuh). Activations are quantized
// to NVFP4 with the checkpoint's `input_scale`, then
// `mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X` multiplies them
// with the stored weights, both E4M3 scale vectors feeding the instruction directly. Not
// bit-faithful to the reference (the activations are rounded to 4 bits).
// NOT YET RUN ON BLACKWELL HARDWARE: the fragment and scale layouts follow the PTX ISA, and the
// tests' CPU emulator runs the instruction from the same layouts.

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

// d[j] += the 16x8 tile of W rows r0 .. r0 + 15 (of `rows`) by the quantized activation rows
// act_row(8j) .. act_row(8j + 7) (-1 for none), for the n-tiles j with 8j < n. W is the packed
// NVFP4 matrix [rows, cols] with its scales; xq / xs the quantized activations, rows of `cols`.
// d[j][c] is W row r0 + g + 8·(c >> 1) by activation column 8j + 2·t + (c & 1), g = lane / 4,
// t = lane % 4. The whole warp calls this (the MMA is warp-wide); cols % 16 == 0.
template <int NT, class ActRow>
__device__ __forceinline__ void fp4_warp_rows(const u8* w, const u8* wsc, int rows, int cols, int r0,
                                              const u8* xq, const u8* xs, ActRow act_row, int n,
                                              float (&d)[NT][4]) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    long long ra = r0 + g < rows ? r0 + g : -1, rb = r0 + g + 8 < rows ? r0 + g + 8 : -1;
    // Scale lanes (thread-id 0): A's row m sits in lane 4·(m % 8) + m / 8, B's column n in
    // lane 4·n. The other lanes are not read; they load a valid duplicate anyway, so the
    // result does not hang on which lanes the hardware reads.
    int sm = r0 + g + 8 * (lane & 1);
    long long sa_row = sm < rows ? sm : -1;
    for (int k0 = 0; k0 < cols; k0 += 64) {
        int lo = k0 + t * 8, hi = k0 + 32 + t * 8;
        u32 a[4] = {codes8(w, ra, cols, lo), codes8(w, rb, cols, lo), codes8(w, ra, cols, hi),
                    codes8(w, rb, cols, hi)};
        u32 sfa = scales4(wsc, sa_row, cols, k0);
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (8 * j >= n) break;
            long long xr = act_row(8 * j + g);
            u32 b[2] = {codes8(xq, xr, cols, lo), codes8(xq, xr, cols, hi)};
            mma_fp4_16x8x64(d[j], a, b, sfa, scales4(xs, xr, cols, k0));
        }
    }
}
