// The CUDA device side, emulated on the CPU: included before every kernel source that the
// emulated NVRTC (nvrtc.cpp) compiles with the host C++ compiler.
//
// Each CUDA thread of a block is a fiber on the launching OS thread. A fiber runs until it
// reaches __syncthreads or a warp shuffle, then the next one runs; a barrier opens when every
// thread of the block (or warp) that has not returned waits at it. So the kernels run with
// their real block and warp structure, and two kinds of bugs that a GPU may hide become
// errors: __syncthreads reached by only part of a block while the rest waits elsewhere (a
// deadlock here), and a full-mask shuffle after some of the warp's lanes returned.
//
// Blocks run one after another, so `__shared__` variables are function statics; launches of
// one module are serialised, since those statics are the module's. That also makes the
// scheduler's state plain statics rather than thread-locals (whose every access would be a
// call into the dynamic loader, in a library that is loaded with dlopen).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include <sys/mman.h>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(8) float2 {
    float x, y;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict
#define __align__(n) alignas(n)

namespace emu {

enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

struct Fiber {
    void* sp;
    uint3 tid;
    unsigned lane, warp;
    State state;
    unsigned shuffles;
};

constexpr int MAX_THREADS = 1024;

// One lane's registers at an `mma.sync`: A and B fragments and the block-scale words.
struct MmaRegs {
    unsigned a[4], b[2], sfa, sfb;
};

// A tcgen05 operation waiting for its completion (see "tcgen05" below): an MMA, or a commit
// (bar set) that arrives on an mbarrier once everything queued before it is done.
struct AsyncOp {
    unsigned d, idesc, sfa, sfb, accumulate;
    unsigned long long adesc, bdesc, *bar;
};
constexpr int TMEM_LANES = 128, TMEM_COLS = 512, MAX_ASYNC = 256;
// Shared-memory addresses handed out for dynamic shared memory start here, not at 0, so a
// kernel that assumes where its buffer lies computes wrong addresses.
constexpr unsigned SMEM_WINDOW = 1024;
constexpr size_t STACK_BYTES = 256 * 1024;

struct Launch {
    dim3 grid, block;
    uint3 block_idx;
    void (*body)(void**);
    void** args;
    unsigned char* dyn_smem;
    int threads;
    Fiber fibers[MAX_THREADS];
    void* sched_sp;
    // Shuffle exchange, double-buffered by the parity of each lane's shuffle count: a lane
    // can start its next shuffle only after the whole warp passed this one's barrier, and
    // the one after that only once every lane has read this one.
    unsigned long long slot[2][MAX_THREADS];
    // The operand registers of each lane at a warp-wide MMA, double-buffered as the shuffle
    // slots are (the two share the parity counter: both are warp barriers).
    MmaRegs mma[2][MAX_THREADS];
    // Per warp, the lanes that have returned or do not exist (a partial last warp).
    unsigned gone[MAX_THREADS / 32];
    const char* error;
    unsigned dyn_bytes;
    // The block's tensor memory (sm_100), its allocations (size at the first column, 0
    // elsewhere; used marks every allocated column) and its queue of tcgen05 operations.
    unsigned tmem[TMEM_LANES][TMEM_COLS];
    unsigned short tmem_size[TMEM_COLS];
    bool tmem_used[TMEM_COLS];
    bool tmem_touched;
    AsyncOp queue[MAX_ASYNC];
    int queued;
};

inline Launch* cur_launch;
inline Fiber* cur;

// Fiber stacks, each with a guard page below it so an overflow faults.
struct Stacks {
    unsigned char* base = nullptr;
    int count = 0;
    ~Stacks() {
        if (base) munmap(base, (size_t)count * STACK_BYTES);
    }
    unsigned char* top(int i) {
        if (i >= count) {
            if (base) munmap(base, (size_t)count * STACK_BYTES);
            count = MAX_THREADS;
            void* p = mmap(nullptr, (size_t)count * STACK_BYTES, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) {
                fprintf(stderr, "cuda emulator: cannot map fiber stacks\n");
                abort();
            }
            base = (unsigned char*)p;
            for (int s = 0; s < count; s++) mprotect(base + (size_t)s * STACK_BYTES, 4096, PROT_NONE);
        }
        // Stack tops a power of two apart would all fall in one cache set, and a barrier
        // round touches every one of them: stagger them by nine cache lines per fiber.
        return base + (size_t)(i + 1) * STACK_BYTES - (size_t)(i * 576) % 65536;
    }
};
inline Stacks stacks;

}  // namespace emu

// Saves the callee-saved registers and the stack pointer in *save, then resumes `to`.
extern "C" void emu_switch(void** save, void* to);
asm(R"(
    .text
    .p2align 4
    .type emu_switch,@function
    .hidden emu_switch
    .globl emu_switch
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace emu {

[[noreturn]] inline void fiber_start() {
    Launch* l = cur_launch;
    l->body(l->args);
    cur->state = DONE;
    l->gone[cur->warp] |= 1u << cur->lane;
    emu_switch(&cur->sp, l->sched_sp);
    __builtin_unreachable();
}

inline void yield_to_scheduler(State s) {
    cur->state = s;
    emu_switch(&cur->sp, cur_launch->sched_sp);
}

inline void fail(const char* why) {
    if (!cur_launch->error) cur_launch->error = why;
}

// Runs one block to completion; false if its threads can no longer make progress.
inline bool run_block(Launch& l) {
    for (int i = 0; i < l.threads; i++) {
        Fiber& f = l.fibers[i];
        unsigned bx = l.block.x, by = l.block.y;
        f.tid = uint3{i % bx, (i / bx) % by, i / (bx * by)};
        f.lane = i % 32;
        f.warp = i / 32;
        f.state = RUNNABLE;
        f.shuffles = 0;
        void** top = (void**)stacks.top(i);
        // Popped by emu_switch: six registers, then fiber_start as the return address, so
        // fiber_start begins with the stack aligned as after a call.
        top[-1] = nullptr;
        top[-2] = (void*)&fiber_start;
        for (int r = 3; r <= 8; r++) top[-r] = nullptr;
        f.sp = top - 8;
    }
    for (int w = 0; w * 32 < l.threads; w++) {
        int lanes = l.threads - w * 32 < 32 ? l.threads - w * 32 : 32;
        l.gone[w] = lanes == 32 ? 0u : ~((1u << lanes) - 1u);
    }
    // Tensor memory starts as NaN (and as block scales with the sign bit set, which the MMA
    // rejects), so reading what was never written shows.
    if (l.tmem_touched) {
        memset(l.tmem, 0xff, sizeof l.tmem);
        memset(l.tmem_size, 0, sizeof l.tmem_size);
        memset(l.tmem_used, 0, sizeof l.tmem_used);
        l.tmem_touched = false;
    }
    l.queued = 0;
    for (;;) {
        for (int i = 0; i < l.threads; i++) {
            if (l.fibers[i].state != RUNNABLE) continue;
            cur = &l.fibers[i];
            emu_switch(&l.sched_sp, cur->sp);
        }
        bool released = false, live = false;
        // A warp's barrier opens when all its lanes that have not returned wait at it.
        for (int w = 0; w * 32 < l.threads; w++) {
            int n = 0, waiting = 0;
            for (int i = w * 32; i < l.threads && i < (w + 1) * 32; i++) {
                if (l.fibers[i].state == DONE) continue;
                n++;
                waiting += l.fibers[i].state == WAIT_WARP;
            }
            if (n > 0 && waiting == n) {
                for (int i = w * 32; i < l.threads && i < (w + 1) * 32; i++)
                    if (l.fibers[i].state == WAIT_WARP) l.fibers[i].state = RUNNABLE;
                released = true;
            }
        }
        if (released) continue;
        int n = 0, waiting = 0;
        for (int i = 0; i < l.threads; i++) {
            if (l.fibers[i].state == DONE) continue;
            live = true;
            n++;
            waiting += l.fibers[i].state == WAIT_BLOCK;
        }
        if (!live) {
            for (int c = 0; c < TMEM_COLS; c++)
                if (l.tmem_used[c]) fail("tensor memory was not deallocated before the block exited");
            if (l.queued) fail("tcgen05 operations were still in flight when the block exited");
            return true;
        }
        if (waiting != n) {
            fail("deadlock: some threads of a block wait at __syncthreads while others of it "
                 "wait at a warp shuffle");
            return false;
        }
        for (int i = 0; i < l.threads; i++)
            if (l.fibers[i].state == WAIT_BLOCK) l.fibers[i].state = RUNNABLE;
    }
}

inline int launch(void (*body)(void**), void** args, dim3 grid, dim3 block, unsigned dyn_smem,
                  const char** error) {
    static std::mutex serial;
    std::lock_guard<std::mutex> hold(serial);
    static Launch* l = [] {
        Launch* n = new Launch();
        n->tmem_touched = true;
        return n;
    }();
    l->grid = grid;
    l->block = block;
    l->body = body;
    l->args = args;
    l->threads = (int)(block.x * block.y * block.z);
    l->error = nullptr;
    // Shared memory starts as NaN bytes, so a kernel reading what it never wrote shows it.
    unsigned char* smem = (unsigned char*)malloc(dyn_smem + 16);
    memset(smem, 0xff, dyn_smem + 16);
    l->dyn_smem = smem;
    l->dyn_bytes = dyn_smem;
    cur_launch = l;
    bool ok = true;
    for (unsigned z = 0; z < grid.z && ok; z++)
        for (unsigned y = 0; y < grid.y && ok; y++)
            for (unsigned x = 0; x < grid.x && ok; x++) {
                l->block_idx = uint3{x, y, z};
                ok = run_block(*l);
                if (l->error) ok = false;
            }
    free(smem);
    cur_launch = nullptr;
    cur = nullptr;
    *error = l->error;
    return ok ? 0 : 1;
}

template <class... A, size_t... I>
inline void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*(A*)args[I]...);
}

template <class... A>
inline void call(void (*f)(A...), void** args) {
    call_with(f, args, std::index_sequence_for<A...>{});
}

// The byte size of each of a kernel's parameters, for a graph node to copy them as the
// driver does.
template <class... A>
inline int arg_sizes(void (*)(A...), const unsigned** sizes) {
    static const unsigned s[] = {(unsigned)sizeof(A)..., 0u};
    *sizes = s;
    return (int)sizeof...(A);
}

// The lanes of `mask` exchange values; each returns what lane `src(lane)` gave.
template <class T, class Src>
inline T exchange(unsigned mask, T v, Src src) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    Launch& l = *cur_launch;
    unsigned base = cur->warp * 32;
    if (mask & l.gone[cur->warp])
        fail("a warp shuffle names a lane that has returned or does not exist");
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof(T));
    unsigned long long* slot = l.slot[cur->shuffles++ & 1u];
    slot[base + cur->lane] = bits;
    yield_to_scheduler(WAIT_WARP);
    T out;
    bits = slot[base + (src(cur->lane) & 31u)];
    memcpy(&out, &bits, sizeof(T));
    return out;
}

// The warp's operand registers at an `mma.sync`, once every lane has given its own. The
// instruction is `.aligned`: all 32 lanes must execute it, so a lane that has returned (or a
// partial warp) is an error here where a GPU's behaviour is undefined.
inline const MmaRegs* mma_exchange(const MmaRegs& mine) {
    Launch& l = *cur_launch;
    if (l.gone[cur->warp])
        fail("an mma.sync runs while lanes of its warp have returned or do not exist");
    MmaRegs* warp = l.mma[cur->shuffles++ & 1u] + cur->warp * 32;
    warp[cur->lane] = mine;
    yield_to_scheduler(WAIT_WARP);
    return warp;
}

inline float bf16_value(unsigned h) {
    unsigned bits = (h & 0xffffu) << 16;
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

// E2M1 and the unsigned E4M3 of block scales, decoded here independently of the kernels'
// own decodes (which are what is under test).
inline float e2m1_value(unsigned code) {
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    return (code & 8u) ? -mag[code & 7u] : mag[code & 7u];
}
inline float ue4m3_value(unsigned b) {
    if (b & 0x80u) {
        // The tensor cores read scales as unsigned; a set sign bit means the kernel feeds them
        // something the exact path would read as negative.
        fail("an mma block scale (ue4m3) has its sign bit set");
        return 0.0f;
    }
    unsigned e = (b >> 3) & 15u, m = b & 7u;
    if (e == 15u && m == 7u) return NAN;
    return e == 0u ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, (int)e - 7);
}

}  // namespace emu

// The tensor-core instructions the kernels use (their wrappers in cuda/*.cu are inline PTX,
// compiled only where NEMOTRON_CUDA_EMULATOR is not defined). The operand layouts are those of
// the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type" and "for
// mma.m16n8k64", "Block Scaling for mma.sync"), with groupID g = lane / 4 and threadID_in_group
// t = lane % 4; elements are packed low to high within a register. Products are exact in f32
// for these types; they are added in k order onto C in f32 (the hardware's order and rounding
// of the sum are unspecified, so results can differ from a GPU's in the last bits).
#define NEMOTRON_CUDA_EMULATOR 1

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: d = A·B + d.
//   A 16x16: register r holds row g + 8·(r & 1), columns 2t + 8·(r >> 1) and the next.
//   B 16x8:  register r holds column g, rows 2t + 8·r and the next.
//   C/D:     d[c] is row g + 8·(c >> 1), column 2t + (c & 1).
inline void mma_bf16_16x8x16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    emu::MmaRegs mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, 0u, 0u};
    const emu::MmaRegs* w = emu::mma_exchange(mine);
    unsigned g = emu::cur->lane >> 2, t = emu::cur->lane & 3u;
    for (unsigned c = 0; c < 4; c++) {
        unsigned row = g + 8u * (c >> 1), col = 2u * t + (c & 1u);
        float s = d[c];
        for (unsigned k = 0; k < 16; k++) {
            unsigned half = (k & 1u) * 16u;
            unsigned av = w[4u * (row % 8u) + (k % 8u) / 2u].a[(row / 8u) + 2u * (k / 8u)] >> half;
            unsigned bv = w[4u * col + (k % 8u) / 2u].b[k / 8u] >> half;
            s += emu::bf16_value(av) * emu::bf16_value(bv);
        }
        d[c] = s;
    }
}

// mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X
// .f32.e2m1.e2m1.f32.ue4m3 with selectors {0, 0}: d = (A·SFA)(B·SFB) + d.
//   A 16x64: register r holds row g + 8·(r & 1), columns 8t + 32·(r >> 1) .. +7.
//   B 64x8:  register r holds column g, rows 8t + 32·r .. +7.
//   SFA: row m's four scales (one per 16 columns, byte j for columns 16j..) in lane
//        4·(m % 8) + m / 8; SFB: column n's in lane 4·n.
inline void mma_fp4_16x8x64(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                            unsigned sfa, unsigned sfb) {
    emu::MmaRegs mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, sfa, sfb};
    const emu::MmaRegs* w = emu::mma_exchange(mine);
    unsigned g = emu::cur->lane >> 2, t = emu::cur->lane & 3u;
    for (unsigned c = 0; c < 4; c++) {
        unsigned row = g + 8u * (c >> 1), col = 2u * t + (c & 1u);
        unsigned sa = w[4u * (row % 8u) + row / 8u].sfa, sb = w[4u * col].sfb;
        float s = d[c];
        for (unsigned k = 0; k < 64; k++) {
            unsigned shift = (k % 8u) * 4u;
            unsigned av = w[4u * (row % 8u) + (k % 32u) / 8u].a[(row / 8u) + 2u * (k / 32u)] >> shift;
            unsigned bv = w[4u * col + (k % 32u) / 8u].b[k / 32u] >> shift;
            float sfa_k = emu::ue4m3_value((sa >> (8u * (k / 16u))) & 0xffu);
            float sfb_k = emu::ue4m3_value((sb >> (8u * (k / 16u))) & 0xffu);
            s += (emu::e2m1_value(av & 15u) * sfa_k) * (emu::e2m1_value(bv & 15u) * sfb_k);
        }
        d[c] = s;
    }
}

// tcgen05 on sm_100 (cuda/tcgen05.cuh), from the PTX ISA: "Tensor Memory" (128 lanes by 512
// columns of 32 bits per block; address = lane << 16 | column; a warp reaches only lanes
// 32·(warp % 4) .. + 31), "tcgen05 Instruction descriptor", "Shared memory descriptor",
// "Canonical layouts" (K-major, no swizzle), "Block scaling" (scale_vec::4X: row m's four E4M3
// scales of one MMA in column first + m / 32, lane m % 32, duplicated to all four lane quarters)
// and "Matrix fragments for tcgen05.ld / st" (.32x32b: lane t of the warp, column + j in
// register j). An MMA does not run when issued: it is queued, and runs (with whatever the
// shared and tensor memory then hold) when a thread waits on the mbarrier of a commit after
// it, the latest a GPU could complete it. So a kernel that overwrites an operand before that
// wait computes wrong numbers here. Only what cuda/tcgen05.cuh uses is emulated; anything
// else (swizzled layouts, other kinds, negation) is reported as an error.
namespace emu {

inline unsigned char* smem_at(unsigned addr, unsigned bytes) {
    Launch& l = *cur_launch;
    if (addr < SMEM_WINDOW || addr - SMEM_WINDOW + bytes > l.dyn_bytes) {
        fail("a tcgen05 operand lies outside the block's dynamic shared memory");
        return nullptr;
    }
    return l.dyn_smem + (addr - SMEM_WINDOW);
}

// The word at TMEM lane `lane`, column `col`; null (and an error) where nothing is allocated.
inline unsigned* tmem_at(unsigned lane, unsigned col) {
    Launch& l = *cur_launch;
    if (lane >= (unsigned)TMEM_LANES || col >= (unsigned)TMEM_COLS || !l.tmem_used[col]) {
        fail("a tcgen05 access reaches tensor memory that is not allocated");
        return nullptr;
    }
    return &l.tmem[lane][col];
}

// The lanes a warp may access with tcgen05.ld / st: its quarter.
inline unsigned tmem_warp_lane(unsigned taddr) {
    unsigned lane = taddr >> 16;
    if (lane != 32u * (cur->warp % 4u))
        fail("tcgen05.ld/st: a warp may access only TMEM lanes 32·(warp % 4) .. + 31");
    if (cur_launch->gone[cur->warp])
        fail("a .sync.aligned tcgen05 instruction runs while lanes of its warp have returned");
    return lane + cur->lane;
}

struct SmemDesc {
    unsigned start, lbo, sbo;
};

inline SmemDesc decode_smem_desc(unsigned long long d) {
    if (((d >> 46) & 7u) != 1u) fail("shared memory descriptor: bits 46-48 must be 0b001 on sm_100");
    if ((d >> 49) & 0x7ffu) fail("shared memory descriptor: base offset, LBO mode or bits 53-60 set");
    if (d >> 61) fail("shared memory descriptor: only SWIZZLE_NONE (0) is emulated");
    if (d & 0xc000c000ull) fail("shared memory descriptor: bits 14-15 or 30-31 set");
    return SmemDesc{(unsigned)(d & 0x3fffu) << 4, (unsigned)((d >> 16) & 0x3fffu) << 4,
                    (unsigned)((d >> 32) & 0x3fffu) << 4};
}

// E2M1 element (row, k) of a K-major operand without swizzle: 8-row by 16-byte core matrices,
// row groups SBO apart, 16-byte K chunks LBO apart; the even element in the low nibble.
inline unsigned e2m1_code(const SmemDesc& m, unsigned row, unsigned k) {
    unsigned addr = m.start + (row / 8u) * m.sbo + (k / 32u) * m.lbo + (row % 8u) * 16u + (k % 32u) / 2u;
    unsigned char* p = smem_at(addr, 1);
    return p ? (*p >> (4u * (k % 2u))) & 15u : 0u;
}

// Scale byte j of row `row` from the scale columns starting at `taddr`, which must be the
// same in all four lane quarters.
inline unsigned scale_byte(unsigned taddr, unsigned row, unsigned j) {
    if (taddr >> 16) fail("tcgen05.mma: a scale factor address must be at lane 0");
    unsigned col = (taddr & 0xffffu) + row / 32u, v = 0;
    for (unsigned q = 0; q < 4; q++) {
        unsigned* w = tmem_at(32u * q + row % 32u, col);
        if (!w) return 0u;
        if (q == 0) v = *w;
        else if (*w != v) fail("tcgen05.mma: block scales differ between TMEM lane quarters "
                               "(scale_vec::4X needs them duplicated to all four)");
    }
    return (v >> (8u * j)) & 0xffu;
}

// tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.scale_vec::4X: D[m][n] (+)= Σ_k
// (A[m][k]·SFA[m][k/16])·(B[n][k]·SFB[n][k/16]), k < 64, summed in k order in f32.
inline void run_mma(const AsyncOp& op) {
    unsigned i = op.idesc;
    if (i & 0x0700107fu) fail("instruction descriptor: reserved bits, sparsity or a scale factor id set");
    if (((i >> 7) & 7u) != 1u || ((i >> 10) & 3u) != 1u)
        fail("instruction descriptor: kind::mxf4nvf4 needs atype = btype = E2M1 (1)");
    if ((i >> 13) & 15u) fail("instruction descriptor: negate/transpose bits are not emulated");
    if ((i >> 23) & 1u) fail("instruction descriptor: UE4M3 scales need bit 23 clear");
    if (((i >> 27) & 3u) != 1u) fail("instruction descriptor: M must be 128 (M >> 7 = 1 at bits 27-28)");
    if (((i >> 29) & 3u) || (i >> 31)) fail("instruction descriptor: scale factor A id or K bit set");
    unsigned n_dim = ((i >> 17) & 63u) * 8u;
    if (n_dim < 16u || n_dim > 256u || n_dim % 16u)
        fail("instruction descriptor: N must be a multiple of 16 in 16 .. 256");
    if (op.d >> 16) fail("tcgen05.mma: D must start at lane 0");
    if (cur_launch->error) return;
    SmemDesc a = decode_smem_desc(op.adesc), b = decode_smem_desc(op.bdesc);
    // Each operand element times its block scale, exact in f32 (as the products below).
    static float av[128][64], bv[256][64];
    for (unsigned m = 0; m < 128u; m++)
        for (unsigned k = 0; k < 64u; k++)
            av[m][k] = e2m1_value(e2m1_code(a, m, k)) * ue4m3_value(scale_byte(op.sfa, m, k / 16u));
    for (unsigned n = 0; n < n_dim; n++)
        for (unsigned k = 0; k < 64u; k++)
            bv[n][k] = e2m1_value(e2m1_code(b, n, k)) * ue4m3_value(scale_byte(op.sfb, n, k / 16u));
    if (cur_launch->error) return;
    for (unsigned m = 0; m < 128u; m++)
        for (unsigned n = 0; n < n_dim; n++) {
            unsigned* d = tmem_at(m, (op.d & 0xffffu) + n);
            if (!d) return;
            float s = 0.0f;
            if (op.accumulate) memcpy(&s, d, 4);
            for (unsigned k = 0; k < 64u; k++) s += av[m][k] * bv[n][k];
            memcpy(d, &s, 4);
        }
}

// Runs the queued operations up to the first commit on `bar`; false if there is none.
inline bool complete_until(unsigned long long* bar) {
    Launch& l = *cur_launch;
    int last = -1;
    for (int q = 0; q < l.queued && last < 0; q++)
        if (l.queue[q].bar == bar) last = q;
    if (last < 0) return false;
    for (int q = 0; q <= last; q++) {
        if (!l.queue[q].bar) {
            run_mma(l.queue[q]);
            continue;
        }
        // An arrival: one fewer pending; the last one completes the phase.
        unsigned long long v = *l.queue[q].bar, pending = (v & 0xffffffffull) - 1u;
        if (pending == 0) v = (v ^ (1ull << 63)) & ~0xffffffffull, pending = (v >> 32) & 0x7fffffffull;
        *l.queue[q].bar = (v & ~0xffffffffull) | pending;
    }
    l.queued -= last + 1;
    memmove(l.queue, l.queue + last + 1, sizeof(AsyncOp) * l.queued);
    return true;
}

inline void enqueue(const AsyncOp& op) {
    Launch& l = *cur_launch;
    if (l.queued == MAX_ASYNC) {
        fail("more tcgen05 operations in flight than the emulator holds");
        return;
    }
    l.queue[l.queued++] = op;
}

}  // namespace emu

inline unsigned smem_u32(const void* p) {
    emu::Launch& l = *emu::cur_launch;
    const unsigned char* c = (const unsigned char*)p;
    if (c < l.dyn_smem || c > l.dyn_smem + l.dyn_bytes) {
        emu::fail("the emulator hands out shared-memory addresses for dynamic shared memory only");
        return 0u;
    }
    return emu::SMEM_WINDOW + (unsigned)(c - l.dyn_smem);
}

// An mbarrier: pending arrivals in bits 0-31, the expected count in 32-62, the phase in 63.
inline void mbar_init(unsigned long long* bar, unsigned count) {
    *bar = ((unsigned long long)count << 32) | count;
}
inline void mbar_wait(unsigned long long* bar, unsigned parity) {
    while ((*bar >> 63) == (parity & 1u))
        if (!emu::complete_until(bar)) {
            emu::fail("an mbarrier wait that nothing in flight will complete");
            return;
        }
}

inline void tmem_alloc(unsigned* slot, unsigned cols) {
    emu::Launch& l = *emu::cur_launch;
    if (l.gone[emu::cur->warp]) emu::fail("tcgen05.alloc runs while lanes of its warp have returned");
    if (emu::cur->lane == 0) {
        if (cols < 32u || cols > 512u || (cols & (cols - 1u)))
            emu::fail("tcgen05.alloc: the column count must be a power of 2 in 32 .. 512");
        // From the top, so a kernel that assumes its columns start at 0 is caught.
        int at = -1;
        for (int c = emu::TMEM_COLS - (int)cols; c >= 0 && at < 0; c -= (int)cols) {
            bool free = true;
            for (unsigned j = 0; j < cols; j++) free = free && !l.tmem_used[c + j];
            if (free) at = c;
        }
        if (at < 0) emu::fail("tcgen05.alloc: not enough free tensor memory (it would block forever)");
        else {
            for (unsigned j = 0; j < cols; j++) l.tmem_used[at + j] = true;
            l.tmem_size[at] = (unsigned short)cols;
            l.tmem_touched = true;
            *slot = (unsigned)at;
        }
    }
    emu::yield_to_scheduler(emu::WAIT_WARP);
}
inline void tmem_dealloc(unsigned taddr, unsigned cols) {
    emu::Launch& l = *emu::cur_launch;
    if (l.gone[emu::cur->warp]) emu::fail("tcgen05.dealloc runs while lanes of its warp have returned");
    if (emu::cur->lane == 0) {
        unsigned c = taddr & 0xffffu;
        if ((taddr >> 16) || c >= (unsigned)emu::TMEM_COLS || l.tmem_size[c] != cols)
            emu::fail("tcgen05.dealloc does not match an allocation");
        else {
            if (l.queued) emu::fail("tcgen05.dealloc while tcgen05 operations are in flight");
            for (unsigned j = 0; j < cols; j++) l.tmem_used[c + j] = false;
            l.tmem_size[c] = 0;
        }
    }
    emu::yield_to_scheduler(emu::WAIT_WARP);
}
inline void tmem_store8(unsigned taddr, const unsigned (&r)[8]) {
    unsigned lane = emu::tmem_warp_lane(taddr);
    for (unsigned j = 0; j < 8; j++)
        if (unsigned* w = emu::tmem_at(lane, (taddr & 0xffffu) + j)) *w = r[j];
}
inline void tmem_load16(unsigned taddr, unsigned (&r)[16]) {
    unsigned lane = emu::tmem_warp_lane(taddr);
    for (unsigned j = 0; j < 16; j++) {
        unsigned* w = emu::tmem_at(lane, (taddr & 0xffffu) + j);
        r[j] = w ? *w : 0xffffffffu;
    }
}
inline void tc05_mma_nvfp4(unsigned d, unsigned long long adesc, unsigned long long bdesc,
                           unsigned idesc, unsigned sfa, unsigned sfb, unsigned accumulate) {
    emu::enqueue(emu::AsyncOp{d, idesc, sfa, sfb, accumulate, adesc, bdesc, nullptr});
}
inline void tc05_commit(unsigned long long* bar) {
    emu::enqueue(emu::AsyncOp{0, 0, 0, 0, 0, 0, 0, bar});
}
// Ordering only: the emulator runs one thread at a time.
inline void tc05_fence_before() {}
inline void tc05_fence_after() {}
inline void fence_async_smem() {}

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::cur_launch->block_idx)
#define blockDim (emu::cur_launch->block)
#define gridDim (emu::cur_launch->grid)
#define warpSize 32

inline void __syncthreads() { emu::yield_to_scheduler(emu::WAIT_BLOCK); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::yield_to_scheduler(emu::WAIT_WARP); }

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu::exchange(mask, v, [&](unsigned lane) {
        unsigned src = lane ^ (unsigned)lane_mask;
        return (src / width == lane / width) ? src : lane;
    });
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    return emu::exchange(mask, v, [&](unsigned lane) {
        return (lane / width) * width + ((unsigned)src_lane % width);
    });
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu::exchange(mask, v, [&](unsigned lane) {
        unsigned src = lane + delta;
        return (src / width == lane / width) ? src : lane;
    });
}

template <class T>
inline T __ldg(const T* p) {
    return *p;
}

namespace emu {
template <class To, class From>
inline To bits_as(From v) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To t;
    memcpy(&t, &v, sizeof t);
    return t;
}
}  // namespace emu

inline float __int_as_float(int v) { return emu::bits_as<float>(v); }
inline float __uint_as_float(unsigned v) { return emu::bits_as<float>(v); }
inline unsigned __float_as_uint(float v) { return emu::bits_as<unsigned>(v); }
inline int __float_as_int(float v) { return emu::bits_as<int>(v); }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
inline float __expf(float v) { return expf(v); }
inline float __fdividef(float a, float b) { return a / b; }
using std::isfinite;
using std::isinf;
using std::isnan;
