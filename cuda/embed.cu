// embed: out[t] = table[ids[t]], the row decoded from its stored format.

extern "C" __global__ void embed(int fmt, const u8* w, const u8* sc, float ts, const u32* ids,
                                 float* out, int cols) {
    int t = blockIdx.x;
    u64 id = ids[t];
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < cols; c += gridDim.y * blockDim.x)
        out[(u64)t * cols + c] = weight_at(fmt, w, sc, ts, id * cols + c);
}
