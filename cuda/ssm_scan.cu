// ssm_scan: the Mamba-2 selective scan. One warp per (head, channel) keeps that channel's N
// state values in registers (lanes stride over N), so a decode step reads and writes the state
// once and a prefill walks its tokens in order (the plain recurrence, the same math as the
// reference's chunked SSD).
// xbc: [T, I + 2GN] (x, B, C); dt: [T, H] raw; state: [H, P, N]; y: [T, I] including D·x.
//
// A long prefill on a model with few (head, channel) pairs would leave most of the GPU idle,
// so it is cut into chunks that run side by side: `ssm_chunk_state` scans each chunk from a
// zero state and keeps its end state and the product of its decays, `ssm_chunk_carry` walks
// the chunks in order to get the state entering each one (s·Π decay + chunk state), and
// `ssm_chunk_output` scans each chunk again from that state to write y. Twice the arithmetic,
// chunks times the parallelism; the host only cuts when the pairs alone cannot fill the GPU.

#define MAX_NQ 8

struct ScanShape {
    int heads, head_dim, groups, n, use_dt_min;
    float dt_min;
};

// Walks tokens [t0, t1) from the state in `st` for warp `wid`, writing y when `Y`, and
// multiplies `prod` by each token's decay.
template <bool Y>
__device__ __forceinline__ void scan_walk(float* st, float& prod, const float* xbc,
                                          const float* dt, const float* a_log, const float* d,
                                          const float* dt_bias, float* y, int t0, int t1,
                                          int wid, ScanShape s) {
    int lane = threadIdx.x & 31;
    int h = wid / s.head_dim, i = wid % s.head_dim;
    int g = h / (s.heads / s.groups);
    u64 inner = (u64)s.heads * s.head_dim;
    u64 width = inner + 2 * (u64)s.groups * s.n;
    float a = -expf(a_log[h]);
    for (int t = t0; t < t1; t++) {
        const float* row = xbc + (u64)t * width;
        float xi = row[(u64)h * s.head_dim + i];
        const float* bv = row + inner + (u64)g * s.n;
        const float* cv = row + inner + (u64)s.groups * s.n + (u64)g * s.n;
        float raw = dt[(u64)t * s.heads + h] + dt_bias[h];
        // torch's softplus with its threshold of 20.
        float step = raw > 20.0f ? raw : log1pf(expf(raw));
        if (s.use_dt_min) step = fmaxf(step, s.dt_min);
        float decay = expf(step * a);
        prod *= decay;
        float dx = step * xi;
        float acc = 0.0f;
#pragma unroll
        for (int q = 0; q < MAX_NQ; q++) {
            int j = lane + q * WARP;
            if (j < s.n) {
                st[q] = st[q] * decay + dx * bv[j];
                if (Y) acc += st[q] * cv[j];
            }
        }
        if (Y) {
            acc = warp_sum(acc);
            if (lane == 0) y[(u64)t * inner + (u64)h * s.head_dim + i] = acc + d[h] * xi;
        }
    }
}

__device__ __forceinline__ void load_state(float* st, const float* src, int n) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int q = 0; q < MAX_NQ; q++) {
        int j = lane + q * WARP;
        st[q] = j < n ? src[j] : 0.0f;
    }
}

__device__ __forceinline__ void store_state(float* dst, const float* st, int n) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int q = 0; q < MAX_NQ; q++) {
        int j = lane + q * WARP;
        if (j < n) dst[j] = st[q];
    }
}

__device__ __forceinline__ int warp_id() {
    return blockIdx.x * (blockDim.x / WARP) + (threadIdx.x >> 5);
}

extern "C" __global__ void ssm_scan(const float* xbc, const float* dt, const float* a_log,
                                    const float* d, const float* dt_bias, float* state, float* y,
                                    int tokens, int heads, int head_dim, int groups, int n,
                                    int use_dt_min, float dt_min) {
    int wid = warp_id();
    if (wid >= heads * head_dim) return;
    ScanShape s = {heads, head_dim, groups, n, use_dt_min, dt_min};
    float st[MAX_NQ], prod = 1.0f;
    load_state(st, state + (u64)wid * n, n);
    scan_walk<true>(st, prod, xbc, dt, a_log, d, dt_bias, y, 0, tokens, wid, s);
    store_state(state + (u64)wid * n, st, n);
}

// Chunk blockIdx.y from a zero state: its end state into chunk_state [C, H·P, N] and the
// product of its decays into chunk_decay [C, H].
extern "C" __global__ void ssm_chunk_state(const float* xbc, const float* dt, const float* a_log,
                                           const float* dt_bias, float* chunk_state,
                                           float* chunk_decay, int tokens, int chunk, int heads,
                                           int head_dim, int groups, int n, int use_dt_min,
                                           float dt_min) {
    int wid = warp_id(), c = blockIdx.y;
    if (wid >= heads * head_dim) return;
    ScanShape s = {heads, head_dim, groups, n, use_dt_min, dt_min};
    float st[MAX_NQ], prod = 1.0f;
#pragma unroll
    for (int q = 0; q < MAX_NQ; q++) st[q] = 0.0f;
    int t0 = c * chunk, t1 = min(tokens, t0 + chunk);
    scan_walk<false>(st, prod, xbc, dt, a_log, a_log, dt_bias, nullptr, t0, t1, wid, s);
    u64 pairs = (u64)heads * head_dim;
    store_state(chunk_state + ((u64)c * pairs + wid) * n, st, n);
    if (wid % head_dim == 0 && (threadIdx.x & 31) == 0)
        chunk_decay[(u64)c * heads + wid / head_dim] = prod;
}

// The chunks in order: chunk_state[c] becomes the state entering chunk c, and `state` the
// state after the last.
extern "C" __global__ void ssm_chunk_carry(float* state, float* chunk_state,
                                           const float* chunk_decay, int chunks, int heads,
                                           int head_dim, int n) {
    int wid = warp_id();
    if (wid >= heads * head_dim) return;
    int h = wid / head_dim;
    u64 pairs = (u64)heads * head_dim;
    float st[MAX_NQ], local[MAX_NQ];
    load_state(st, state + (u64)wid * n, n);
    for (int c = 0; c < chunks; c++) {
        float* slot = chunk_state + ((u64)c * pairs + wid) * n;
        load_state(local, slot, n);
        store_state(slot, st, n);
        float dc = chunk_decay[(u64)c * heads + h];
#pragma unroll
        for (int q = 0; q < MAX_NQ; q++) st[q] = st[q] * dc + local[q];
    }
    store_state(state + (u64)wid * n, st, n);
}

// Chunk blockIdx.y again, from the state entering it, writing y.
extern "C" __global__ void ssm_chunk_output(const float* xbc, const float* dt, const float* a_log,
                                            const float* d, const float* dt_bias,
                                            const float* chunk_state, float* y, int tokens,
                                            int chunk, int heads, int head_dim, int groups, int n,
                                            int use_dt_min, float dt_min) {
    int wid = warp_id(), c = blockIdx.y;
    if (wid >= heads * head_dim) return;
    ScanShape s = {heads, head_dim, groups, n, use_dt_min, dt_min};
    float st[MAX_NQ], prod = 1.0f;
    u64 pairs = (u64)heads * head_dim;
    load_state(st, chunk_state + ((u64)c * pairs + wid) * n, n);
    int t0 = c * chunk, t1 = min(tokens, t0 + chunk);
    scan_walk<true>(st, prod, xbc, dt, a_log, d, dt_bias, y, t0, t1, wid, s);
}
