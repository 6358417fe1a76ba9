// out[t] = table[ids[t]] for the tokens whose id falls in one row chunk of the table, decoded
// from its stored format (`weight_at` from shaders/decode.wgsl, prepended). The host dispatches once per
// chunk that holds any requested id; tokens of other chunks are skipped here.
// One workgroup per token; 256 threads stride over the row.

override FORMAT: u32 = 0u; // 0 F32, 1 BF16, 2 F16, 3 FP8 E4M3, 4 NVFP4
const WG: u32 = 256u;

struct Params {
    cols: u32,
    tokens: u32,
    row0: u32,
    chunk_rows: u32,
    tensor_scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * 65535u;
    if (t >= p.tokens) {
        return;
    }
    let id = ids[t];
    if (id < p.row0 || id - p.row0 >= p.chunk_rows) {
        return;
    }
    let base = (id - p.row0) * p.cols;
    for (var c = lid; c < p.cols; c += WG) {
        y[t * p.cols + c] = weight_at(base + c, p.tensor_scale);
    }
}
