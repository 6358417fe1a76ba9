// Gated grouped RMSNorm of the Mamba-2 mixer (ARCH_NOTES §3, gate before norm):
//   v = y · silu(z);  out = w · v · 1/sqrt(mean(v²) + eps), the mean over each group of
//   `width / groups` columns. One workgroup per (row, group); 64 threads stride over the group
//   and reduce Σv² in shared memory.

const WG: u32 = 64u;

struct Params {
    rows: u32,
    width: u32,
    groups: u32,
    group_width: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> yv: array<f32>;
@group(0) @binding(2) var<storage, read> zv: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, WG>;

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = wid.x + wid.y * 65535u;
    // Uniform per workgroup, so the early return keeps the barriers in uniform control flow.
    if (idx >= p.rows * p.groups) {
        return;
    }
    let row = idx / p.groups;
    let g = idx % p.groups;
    let base = row * p.width + g * p.group_width;
    var acc = 0.0;
    for (var i = lid; i < p.group_width; i += WG) {
        let v = yv[base + i] * silu(zv[base + i]);
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
    let r = 1.0 / sqrt(partial[0] / f32(p.group_width) + p.eps);
    for (var i = lid; i < p.group_width; i += WG) {
        let v = yv[base + i] * silu(zv[base + i]);
        out[base + i] = w[g * p.group_width + i] * (v * r);
    }
}
