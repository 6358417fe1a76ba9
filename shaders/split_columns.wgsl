// One column block of a split: y[r, c] = x[r, offset + c] for c < width, x being [rows, total].
// The host dispatches once per block. One thread per output element.

const WG: u32 = 256u;

struct Params {
    rows: u32,
    total: u32,
    offset: u32,
    width: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * 65535u) * WG + lid;
    if (i >= p.rows * p.width) {
        return;
    }
    let r = i / p.width;
    let c = i - r * p.width;
    y[i] = x[r * p.total + p.offset + c];
}
