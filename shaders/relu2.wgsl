// y = relu(x)², elementwise. The sign/NaN test is done on the bits so that NaN gives 0 like
// the CPU's `f32::max(x, 0.0)` even where the compiler assumes no NaNs.
// 256 threads per workgroup, workgroups split over x and y (index wid.x + wid.y * 65535).

const WG: u32 = 256u;

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * 65535u) * WG + lid;
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    // +0 .. +inf have bit patterns 0 ..= 0x7f800000; negatives and NaNs are above.
    let r = select(0.0, v, bitcast<u32>(v) <= 0x7f800000u);
    y[i] = r * r;
}
