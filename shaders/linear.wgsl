// y[t, row0 + r] = W[r] · x[t] (+ bias) for the rows of one weight chunk, the weight decoded
// from its stored format inside the loop (never expanded in memory); `weight_at()` comes from
// decode.wgsl. One workgroup per (row, token); 64 threads stride over the input width and
// reduce, through subgroups where the adapter has them (`main_subgroup`).

override FORMAT: u32 = 0u; // 0 F32, 1 BF16, 2 F16, 3 FP8 E4M3, 4 NVFP4
const WG: u32 = 64u;

struct Params {
    cols: u32,
    tokens: u32,
    chunk_rows: u32,
    row0: u32,
    out_cols: u32,
    has_bias: u32,
    tensor_scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

fn dot_row(r: u32, t: u32, lid: u32) -> f32 {
    var acc = 0.0;
    let base = r * p.cols;
    for (var c = lid; c < p.cols; c += WG) {
        acc += weight_at(base + c, p.tensor_scale) * x[t * p.cols + c];
    }
    return acc;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * 65535u;
    let t = wid.z;
    if (r >= p.chunk_rows) {
        return;
    }
    partial[lid] = dot_row(r, t, lid);
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        store(t, r, partial[0]);
    }
}

fn store(t: u32, r: u32, sum: f32) {
    var v = sum;
    if (p.has_bias != 0u) {
        v += bias[p.row0 + r];
    }
    y[t * p.out_cols + p.row0 + r] = v;
}

