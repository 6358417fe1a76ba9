// y[r] = w * (x[r] * (1 / sqrt(mean(x[r]²) + eps))), computed like the CPU reference (a true
// division by a square root, not inverseSqrt, whose accuracy WGSL leaves loose).
// One workgroup per row; 256 threads stride over the row and reduce in shared memory.

const WG: u32 = 256u;

struct Params {
    cols: u32,
    rows: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * 65535u;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    var acc = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[base + c];
        acc += v * v;
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let ms = partial[0] / f32(p.cols);
    let inv = 1.0 / sqrt(ms + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        y[base + c] = w[c] * (x[base + c] * inv);
    }
}
