// Throughput of single AVX2 instructions and pairs of them on this CPU: eight (pairs: sixteen)
// instructions per loop iteration, cycles per eight at the clock given on the command line
// (GHz; measure it with the scalar add chain this program prints first). It explains why a
// kernel is compute-bound where a table of port assignments says it should not be; see
// docs/benchmarks.md. Build and run: cc -O2 scripts/op-throughput.c -o /tmp/op && /tmp/op
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define N 100000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define CLOBBER                                                                              \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
        "xmm11", "xmm12", "xmm13"
#define EIGHT(op) op "0\n" op "1\n" op "2\n" op "3\n" op "4\n" op "5\n" op "6\n" op "7\n"
// An FMA reads its destination, so each of its registers is a chain four cycles long: a pair
// keeps eight of them (registers 0-7, as EIGHT does) so that latency never sets the pace, and
// the other instruction writes registers 8-13.
#define PAIRS(a, b)                                                                            \
    a "0\n" b "8\n" a "1\n" b "9\n" a "2\n" b "10\n" a "3\n" b "11\n" a "4\n" b "12\n" a "5\n" b \
      "13\n" a "6\n" b "8\n" a "7\n" b "9\n"
#define RUN_PER(name, body, per)                                                      \
    {                                                                                 \
        double t = now();                                                             \
        for (long i = 0; i < N; i++) __asm__ volatile(body ::"r"(buf) : CLOBBER);     \
        printf("%-34s %5.2f cycles per 8\n", name, (now() - t) * ghz * 1e9 / N / per); \
    }
#define RUN(name, body) RUN_PER(name, body, 1)
#define RUN_PAIRS(name, a, b) RUN_PER(name, PAIRS(a, b), 2)

#define FMA "vfmadd231ps %%ymm14, %%ymm15, %%ymm"
#define FMA_LOAD "vfmadd231ps (%0), %%ymm15, %%ymm"
#define LOAD "vmovups (%0), %%ymm"
#define SHUFB "vpshufb %%ymm14, %%ymm15, %%ymm"
#define UNPCK "vpunpcklbw %%ymm14, %%ymm15, %%ymm"
#define SLLD "vpslld $16, %%ymm14, %%ymm"
#define AND "vpand %%ymm14, %%ymm15, %%ymm"
#define ADDD "vpaddd %%ymm14, %%ymm15, %%ymm"
#define ADDPS "vaddps %%ymm14, %%ymm15, %%ymm"
#define BLENDW "vpblendw $0xaa, %%ymm14, %%ymm15, %%ymm"
#define MADDUBS "vpmaddubsw %%ymm14, %%ymm15, %%ymm"

int main(int argc, char** argv) {
    static char buf[64] __attribute__((aligned(32)));
    double t = now();
    long x = 0;
    for (long i = 0; i < N; i++) __asm__ volatile("add $1, %0\n add $1, %0\n add $1, %0\n add $1, %0" : "+r"(x));
    double measured = 4.0 * N / (now() - t) / 1e9;
    double ghz = argc > 1 ? atof(argv[1]) : measured;
    printf("clock: %.2f GHz from a dependent add chain (using %.2f)\n", measured, ghz);
    RUN("vfmadd231ps", EIGHT(FMA));
    RUN("vfmadd231ps with a load", EIGHT(FMA_LOAD));
    RUN("vmovups load", EIGHT(LOAD));
    RUN("vpshufb", EIGHT(SHUFB));
    RUN("vpunpcklbw", EIGHT(UNPCK));
    RUN("vpslld", EIGHT(SLLD));
    RUN("vpand", EIGHT(AND));
    RUN("vpaddd", EIGHT(ADDD));
    RUN("vaddps", EIGHT(ADDPS));
    RUN("vpblendw", EIGHT(BLENDW));
    RUN("vpmaddubsw", EIGHT(MADDUBS));
    RUN_PAIRS("vfmadd231ps + vpshufb", FMA, SHUFB);
    RUN_PAIRS("vfmadd231ps + vaddps", FMA, ADDPS);
    RUN_PAIRS("vfmadd231ps + vpaddd", FMA, ADDD);
    RUN_PAIRS("vpshufb + vpslld", SHUFB, SLLD);
    RUN_PAIRS("vpshufb + vpand", SHUFB, AND);
    return 0;
}
