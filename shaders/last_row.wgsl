// y[c] = x[rows - 1, c]: the last row of [rows, cols] as [1, cols] (the host passes its offset).

const WG: u32 = 256u;

struct Params {
    cols: u32,
    offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * 65535u) * WG + lid;
    if (i >= p.cols) {
        return;
    }
    y[i] = x[p.offset + i];
}
