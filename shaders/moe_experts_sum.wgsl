// The last step of `moe_experts`: y[t, c] = Σ_j o[t * top_k + j, c], summed in slot order
// starting from 0 (ids are ascending per row, so this is ascending expert order, as the CPU
// reference accumulates). One invocation per output element of one batch of tokens.

const WG: u32 = 64u;

struct Params {
    tokens: u32,
    top_k: u32,
    cols: u32,
    t0: u32, // first token of this batch; o holds only the batch's slots
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> o: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * 65535u) * WG + lid;
    if (i >= p.tokens * p.cols) {
        return;
    }
    let t = i / p.cols;
    let c = i % p.cols;
    var acc = 0.0;
    for (var j = 0u; j < p.top_k; j++) {
        acc += o[(t * p.top_k + j) * p.cols + c];
    }
    y[p.t0 * p.cols + i] = acc;
}
