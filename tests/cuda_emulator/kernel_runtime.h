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
        if (!live) return true;
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
    static Launch* l = new Launch();
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
