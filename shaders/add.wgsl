// a += b, elementwise, in place.
// 256 threads per workgroup, workgroups split over x and y (index wid.x + wid.y * 65535).

const WG: u32 = 256u;

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * 65535u) * WG + lid;
    if (i >= p.n) {
        return;
    }
    a[i] = a[i] + b[i];
}
