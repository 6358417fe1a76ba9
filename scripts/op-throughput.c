// Throughput of single AVX2 instructions and pairs of them on this CPU: eight independent
// instructions per loop iteration, cycles per iteration at the clock given on the command line
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

#define CLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7"
#define EIGHT(op) op "0\n" op "1\n" op "2\n" op "3\n" op "4\n" op "5\n" op "6\n" op "7\n"
#define PAIRS(a, b) a "0\n" b "1\n" a "2\n" b "3\n" a "4\n" b "5\n" a "6\n" b "7\n"
#define RUN(name, body)                                                           \
    {                                                                             \
        double t = now();                                                         \
        for (long i = 0; i < N; i++) __asm__ volatile(body ::"r"(buf) : CLOBBER); \
        printf("%-34s %5.2f cycles per 8\n", name, (now() - t) * ghz * 1e9 / N);  \
    }

#define FMA "vfmadd231ps %%ymm8, %%ymm9, %%ymm"
#define FMA_LOAD "vfmadd231ps (%0), %%ymm9, %%ymm"
#define LOAD "vmovups (%0), %%ymm"
#define SHUFB "vpshufb %%ymm8, %%ymm9, %%ymm"
#define UNPCK "vpunpcklbw %%ymm8, %%ymm9, %%ymm"
#define SLLD "vpslld $16, %%ymm8, %%ymm"
#define AND "vpand %%ymm8, %%ymm9, %%ymm"
#define ADDD "vpaddd %%ymm8, %%ymm9, %%ymm"
#define ADDPS "vaddps %%ymm8, %%ymm9, %%ymm"
#define BLENDW "vpblendw $0xaa, %%ymm8, %%ymm9, %%ymm"
#define MADDUBS "vpmaddubsw %%ymm8, %%ymm9, %%ymm"

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
    RUN("vfmadd231ps + vpshufb", PAIRS(FMA, SHUFB));
    RUN("vfmadd231ps + vaddps", PAIRS(FMA, ADDPS));
    RUN("vfmadd231ps + vpaddd", PAIRS(FMA, ADDD));
    RUN("vpshufb + vpslld", PAIRS(SHUFB, SLLD));
    RUN("vpshufb + vpand", PAIRS(SHUFB, AND));
    return 0;
}
