// W4A4 on sm_100-class Blackwell (B200, GB200, B300) through the fifth-generation tensor cores
// (prepended to linear_nvfp4_tcgen05.cu and moe_experts_nvfp4_tcgen05.cu after common.cuh).
// There the FP4 MMA is `tcgen05.mma ... kind::mxf4nvf4.block_scale.scale_vec::4X`: issued by
// one thread, operands in shared memory (given by matrix descriptors), block scales and the
// f32 accumulator in tensor memory (TMEM), completion signalled on an mbarrier. sm_120 has no
// tcgen05; its path is nvfp4_mma.cuh. Activations are quantized by quantize_nvfp4.cu.
// NOT YET RUN ON sm_100 HARDWARE: descriptors and layouts follow the PTX ISA (sections
// "tcgen05 Instruction descriptor", "Shared memory descriptor", "Canonical layouts", "Block
// scaling", "Matrix fragments for tcgen05.ld"), and the tests' CPU emulator runs the
// instructions from the same sections, completing the MMAs only when their mbarrier is waited
// on, so a kernel that reuses a buffer too early computes wrong numbers there.

// A block of 128 threads (one warpgroup) multiplies 128 weight rows (the MMA's M) by up to 64
// activation rows (its N), K in stages of TC05_MMAS MMAs of 64. Two stage buffers: the loads of
// one stage overlap the MMAs of the previous.
#define TC05_ROWS 128
#define TC05_TOKENS 64
#define TC05_MMAS 2
#define TC05_STAGE_A (TC05_ROWS * 32 * TC05_MMAS)
#define TC05_STAGE_B (TC05_TOKENS * 32 * TC05_MMAS)
// Dynamic shared memory of a block: the two stage buffers.
#define TC05_SMEM (2 * (TC05_STAGE_A + TC05_STAGE_B))
// TMEM columns: the accumulator D in [0, 64) (row m in lane m, token n in column n); per stage
// buffer b, A's scales from column 64 + 16b and B's from 72 + 16b, four columns per MMA.
#define TC05_TMEM_COLS 128

// The PTX of each tcgen05 / mbarrier instruction, one wrapper each. The tests' CPU emulator
// defines these itself (tests/cuda_emulator/kernel_runtime.h).
#ifndef NEMOTRON_CUDA_EMULATOR
// The shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n"
                 "fence.mbarrier_init.release.cluster;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
// Returns once the phase of parity `parity` of `bar` has completed.
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
    asm volatile("{ .reg .pred done;\n"
                 "WAIT_%=: mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT_%=; }" ::"r"(smem_u32(bar)), "r"(parity) : "memory");
}
// Whole warp: allocates `cols` TMEM columns and stores their address at *slot.
__device__ __forceinline__ void tmem_alloc(u32* slot, u32 cols) {
    asm volatile("tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [%0], %1;\n"
                 "tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned;"
                 ::"r"(smem_u32(slot)), "r"(cols) : "memory");
}
// Whole warp.
__device__ __forceinline__ void tmem_dealloc(u32 taddr, u32 cols) {
    asm volatile("tcgen05.dealloc.cta_group::1.sync.aligned.b32 %0, %1;" ::"r"(taddr), "r"(cols) : "memory");
}
// Whole warp: lane t writes r[j] to TMEM lane (taddr's lane + t), column (taddr's + j); done on
// return (wait::st).
__device__ __forceinline__ void tmem_store8(u32 taddr, const u32 (&r)[8]) {
    asm volatile("tcgen05.st.sync.aligned.32x32b.x8.b32 [%0], {%1, %2, %3, %4, %5, %6, %7, %8};\n"
                 "tcgen05.wait::st.sync.aligned;"
                 ::"r"(taddr), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]), "r"(r[4]), "r"(r[5]),
                 "r"(r[6]), "r"(r[7]) : "memory");
}
// Whole warp: lane t reads TMEM lane (taddr's lane + t), columns (taddr's + j), j < 16; the
// wait is in the same statement, so no use of r can be scheduled before the data is there.
__device__ __forceinline__ void tmem_load16(u32 taddr, u32 (&r)[16]) {
    asm volatile("tcgen05.ld.sync.aligned.32x32b.x16.b32 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, [%16];\n"
                 "tcgen05.wait::ld.sync.aligned;"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]), "=r"(r[4]), "=r"(r[5]),
                   "=r"(r[6]), "=r"(r[7]), "=r"(r[8]), "=r"(r[9]), "=r"(r[10]), "=r"(r[11]),
                   "=r"(r[12]), "=r"(r[13]), "=r"(r[14]), "=r"(r[15])
                 : "r"(taddr) : "memory");
}
// One thread: D (+)= (A·SFA)(B·SFB), A [128, 64] and B [N, 64] E2M1 in shared memory, D f32 and
// the E4M3 scales in TMEM; `accumulate` 0 overwrites D.
__device__ __forceinline__ void tc05_mma_nvfp4(u32 d, u64 adesc, u64 bdesc, u32 idesc, u32 sfa,
                                               u32 sfb, u32 accumulate) {
    asm volatile("{ .reg .pred acc; setp.ne.b32 acc, %6, 0;\n"
                 "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X "
                 "[%0], %1, %2, %3, [%4], [%5], acc; }"
                 ::"r"(d), "l"(adesc), "l"(bdesc), "r"(idesc), "r"(sfa), "r"(sfb), "r"(accumulate)
                 : "memory");
}
// One thread: `bar` gets one arrival once every tcgen05 operation this thread issued is done.
__device__ __forceinline__ void tc05_commit(u64* bar) {
    asm volatile("tcgen05.commit.cta_group::1.mbarrier::arrive::one.shared::cluster.b64 [%0];"
                 ::"r"(smem_u32(bar)) : "memory");
}
// Order this thread's tcgen05 operations before (after) the next (last) barrier.
__device__ __forceinline__ void tc05_fence_before() {
    asm volatile("tcgen05.fence::before_thread_sync;" ::: "memory");
}
__device__ __forceinline__ void tc05_fence_after() {
    asm volatile("tcgen05.fence::after_thread_sync;" ::: "memory");
}
// Makes this thread's ordinary shared-memory stores visible to the tensor cores (async proxy).
__device__ __forceinline__ void fence_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
#endif

// Shared-memory matrix descriptor (PTX "Shared memory descriptor"): start address, leading
// (K-direction) and stride (M/N-direction) byte offsets, each >> 4; bits 46-48 the fixed 0b001
// of sm_100; base offset 0, relative LBO, no swizzle.
__device__ __forceinline__ u64 smem_desc(u32 addr, u32 lbo, u32 sbo) {
    return (u64)((addr & 0x3ffffu) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) |
           (1ull << 46);
}

// Instruction descriptor of kind::mxf4nvf4 (PTX "Instruction descriptor"): dense; scale
// factor ids 0 (scale_vec::4X requires it); A and B E2M1 (code 1 at bits 7-9 and 10-11), both
// K-major, not negated; N >> 3 at bits 17-22; UE4M3 scales (bit 23 clear); M >> 7 at 27-28.
__device__ __forceinline__ u32 mxf4nvf4_idesc(u32 n) {
    return (1u << 7) | (1u << 10) | ((n >> 3) << 17) | ((TC05_ROWS >> 7) << 27);
}

// The canonical K-major layout without swizzle (PTX "Canonical layouts"): 8-row by 16-byte core
// matrices of 128 contiguous bytes; the two of one MMA's K = 64 (32 bytes) 128 bytes apart
// (LBO), row groups of 8 256 bytes apart (SBO), each MMA's operand after the previous one's.
// The offset of 8-byte piece p (columns 16p .. 16p + 15 of the stage) of row r of a
// `height`-row operand.
__device__ __forceinline__ u32 tc05_offset(int r, int p, int height) {
    return (u32)((p >> 2) * height * 32 + (r >> 3) * 256 + ((p >> 1) & 1) * 128 + (r & 7) * 16 +
                 (p & 1) * 8);
}

// The 8 bytes of packed E2M1 codes of `row` of an NVFP4 matrix [*, cols] from column k
// (k % 16 == 0); 0 for a missing row or past the row's end.
__device__ __forceinline__ u64 codes16(const u8* q, long long row, int cols, int k) {
    return row >= 0 && k < cols ? *(const u64*)(q + (u64)row * (cols / 2) + k / 2) : 0ull;
}

// One block of 128 threads: for W rows row0 .. row0 + 127 (of `rows`) and activation rows
// act_row(0 .. n-1) (n <= 64; -1 for none), both NVFP4 [*, cols] with E4M3 scales per 16,
// out(c, r, Σ_k (W·ws)[r, k] (X·xs)[c, k]) for every c < n and r < rows. `smem` is TC05_SMEM
// bytes of dynamic shared memory; cols % 16 == 0; the whole block calls this.
template <class ActRow, class Out>
__device__ void fp4_tc05_tile(const u8* w, const u8* wsc, int rows, int cols, int row0,
                              const u8* xq, const u8* xs, ActRow act_row, int n, u8* smem,
                              Out out) {
    __shared__ u64 done[2]; // per stage buffer: the MMAs that read it have completed
    __shared__ u32 tmem_slot;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (warp == 0) tmem_alloc(&tmem_slot, TC05_TMEM_COLS);
    if (tid == 0) {
        mbar_init(&done[0], 1);
        mbar_init(&done[1], 1);
    }
    tc05_fence_before();
    __syncthreads();
    tc05_fence_after();
    u32 tmem = tmem_slot;
    // A warp reaches only its quarter of the TMEM lanes: warp w lanes 32w .. 32w + 31.
    u32 quarter = (u32)(32 * (warp & 3)) << 16;
    u32 idesc = mxf4nvf4_idesc((u32)max(16, (n + 15) & ~15));
    int stages = max(1, (cols + 64 * TC05_MMAS - 1) / (64 * TC05_MMAS));
    for (int s = 0; s < stages; s++) {
        int b = s & 1, k0 = s * 64 * TC05_MMAS;
        // Buffer b (shared memory and scale columns) was last read by stage s - 2's MMAs: wait
        // for them, then order this thread's next tcgen05.st and (async-proxy reads before
        // generic writes) its next stores to shared memory after their completion.
        if (s >= 2) {
            mbar_wait(&done[b], ((s - 2) >> 1) & 1);
            tc05_fence_after();
            fence_async_smem();
        }
        u8* sa = smem + b * (TC05_STAGE_A + TC05_STAGE_B);
        u8* sb = sa + TC05_STAGE_A;
        for (int q = tid; q < TC05_ROWS * 4 * TC05_MMAS; q += blockDim.x) {
            int r = q / (4 * TC05_MMAS), p = q % (4 * TC05_MMAS);
            long long row = row0 + r < rows ? row0 + r : -1;
            *(u64*)(sa + tc05_offset(r, p, TC05_ROWS)) = codes16(w, row, cols, k0 + 16 * p);
        }
        for (int q = tid; q < TC05_TOKENS * 4 * TC05_MMAS; q += blockDim.x) {
            int c = q / (4 * TC05_MMAS), p = q % (4 * TC05_MMAS);
            long long row = c < n ? act_row(c) : -1;
            *(u64*)(sb + tc05_offset(c, p, TC05_TOKENS)) = codes16(xq, row, cols, k0 + 16 * p);
        }
        // Scales (PTX "Block scaling", scale_vec::4X): row m's four of one MMA in column
        // (first + m / 32), lane m % 32 of every warp's quarter, so each warp writes the same.
        u32 sfa[8], sfb[8];
#pragma unroll
        for (int i = 0; i < TC05_MMAS; i++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int m = 32 * c + lane, k = k0 + 64 * i;
                sfa[4 * i + c] = scales4(wsc, row0 + m < rows ? row0 + m : -1, cols, k);
                sfb[4 * i + c] = m < n ? scales4(xs, act_row(m), cols, k) : 0u;
            }
        __syncwarp();
        tmem_store8(tmem + quarter + 64 + 16 * b, sfa);
        tmem_store8(tmem + quarter + 72 + 16 * b, sfb);
        fence_async_smem();
        tc05_fence_before();
        __syncthreads();
        if (tid == 0) {
            tc05_fence_after();
            u32 a0 = smem_u32(sa), b0 = smem_u32(sb);
            for (int i = 0; i < TC05_MMAS; i++)
                tc05_mma_nvfp4(tmem, smem_desc(a0 + i * TC05_ROWS * 32, 128, 256),
                               smem_desc(b0 + i * TC05_TOKENS * 32, 128, 256), idesc,
                               tmem + 64 + 16 * b + 4 * i, tmem + 72 + 16 * b + 4 * i,
                               s > 0 || i > 0);
            tc05_commit(&done[b]);
        }
    }
    // The last commit covers every MMA this thread issued.
    mbar_wait(&done[(stages - 1) & 1], ((stages - 1) >> 1) & 1);
    tc05_fence_after();
    __syncwarp();
    int m = 32 * (warp & 3) + lane;
    for (int j0 = 0; j0 < n; j0 += 16) {
        u32 d[16];
        __syncwarp();
        tmem_load16(tmem + quarter + j0, d);
        // Unrolled, so d stays in registers.
#pragma unroll
        for (int j = 0; j < 16; j++)
            if (row0 + m < rows && j0 + j < n) out(j0 + j, row0 + m, __uint_as_float(d[j]));
    }
    tc05_fence_before();
    __syncthreads();
    if (warp == 0) {
        tc05_fence_after();
        tmem_dealloc(tmem, TC05_TMEM_COLS);
    }
}
