// residual[r] += delta[r], then y[r] = w * (residual[r] * (1 / sqrt(mean(residual[r]²) + eps)))
// in one pass: the seam between two layers. Same arithmetic as shaders/rms_norm.wgsl.
// One workgroup per row; 256 threads stride over the row and reduce in shared memory. Each
// thread re-reads only the residual elements it wrote itself.

const WG: u32 = 256u;

struct Params {
    cols: u32,
    rows: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> residual: array<f32>;
@group(0) @binding(2) var<storage, read> delta: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

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
        let v = residual[base + c] + delta[base + c];
        residual[base + c] = v;
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
        y[base + c] = w[c] * (residual[base + c] * inv);
    }
}
