// router: sigmoid scores, correction bias for choosing only, DeepSeek-V3 grouped top-k (a
// group's score is the sum of its two best biased scores), any k up to the expert count.
// One block per token; ids come out ascending, weights follow their ids. Ties go to the lower
// index and NaN never wins, as on the CPU.

__device__ __forceinline__ float key(float v) { return isnan(v) ? NEG_INF : v; }

// (a, ia) ranks before (b, ib)?
__device__ __forceinline__ bool ahead(float a, int ia, float b, int ib) {
    float ka = key(a), kb = key(b);
    return ka > kb || (ka == kb && ia < ib);
}

// Dynamic shared memory: scores[E], choice[E] (f32), taken[E] (u8).
extern "C" __global__ void router(const float* logits, const float* bias, u32* ids, float* weights,
                                  int experts, int k, int n_group, int topk_group, int norm,
                                  float scaling) {
    extern __shared__ float smem[];
    float* scores = smem;
    float* choice = smem + experts;
    u8* taken = (u8*)(smem + 2 * experts);
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    __shared__ u8 keep[64];
    int t = blockIdx.x;
    const float* row = logits + (u64)t * experts;
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        float s = 1.0f / (1.0f + expf(-row[e]));
        scores[e] = s;
        choice[e] = s + bias[e];
        taken[e] = 0;
    }
    __syncthreads();
    if (n_group > 1) {
        __shared__ float gscore[64];
        int per = experts / n_group;
        for (int g = threadIdx.x; g < n_group; g += blockDim.x) {
            const float* c = choice + g * per;
            int i0 = 0;
            for (int i = 1; i < per; i++)
                if (ahead(c[i], i, c[i0], i0)) i0 = i;
            float sum = 0.0f + c[i0];
            if (per > 1) {
                int i1 = i0 == 0 ? 1 : 0;
                for (int i = 0; i < per; i++)
                    if (i != i0 && ahead(c[i], i, c[i1], i1)) i1 = i;
                sum += c[i1];
            }
            gscore[g] = sum;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int g = 0; g < n_group; g++) keep[g] = 0;
            for (int r = 0; r < topk_group; r++) {
                int bi = -1;
                for (int g = 0; g < n_group; g++)
                    if (!keep[g] && (bi < 0 || ahead(gscore[g], g, gscore[bi], bi))) bi = g;
                if (bi >= 0) keep[bi] = 1;
            }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < experts; e += blockDim.x)
            if (!keep[e / per]) choice[e] = NEG_INF;
        __syncthreads();
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int r = 0; r < k; r++) {
        float bv = 0.0f;
        int bi = -1;
        for (int e = threadIdx.x; e < experts; e += blockDim.x)
            if (!taken[e] && (bi < 0 || ahead(choice[e], e, bv, bi))) {
                bv = choice[e];
                bi = e;
            }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi >= 0 && (bi < 0 || ahead(ov, oi, bv, bi))) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            best_v[warp] = bv;
            best_i[warp] = bi;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float v = best_v[0];
            int i = best_i[0];
            for (int w = 1; w < nw; w++)
                if (best_i[w] >= 0 && (i < 0 || ahead(best_v[w], best_i[w], v, i))) {
                    v = best_v[w];
                    i = best_i[w];
                }
            taken[i] = 1;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        // Ascending ids; the sum runs in the same order as the CPU's.
        u32* id = ids + (u64)t * k;
        float* wt = weights + (u64)t * k;
        int slot = 0;
        float sum = 0.0f;
        for (int e = 0; e < experts; e++)
            if (taken[e]) {
                id[slot] = (u32)e;
                wt[slot] = scores[e];
                sum += scores[e];
                slot++;
            }
        for (int j = 0; j < k; j++) {
            float v = wt[j];
            if (norm) v /= sum + 1e-20f;
            wt[j] = v * scaling;
        }
    }
}
