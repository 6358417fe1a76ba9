// split_columns: out[r, c] = x[r, offset + c] for one column block of width `width`.

extern "C" __global__ void split_columns(const float* x, float* out, int rows, int total,
                                         int offset, int width) {
    u64 n = (u64)rows * width;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / width, c = i % width;
        out[i] = x[r * total + offset + c];
    }
}
