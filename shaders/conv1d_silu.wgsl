// Causal depthwise conv1d over time, continuing from a carried state, then SiLU (ARCH_NOTES §3).
// The timeline of channel c is the K-1 carried inputs (state `[K-1, C]`, oldest first) followed
// by the T new inputs x `[T, C]`; y[t, c] = silu(b[c] + Σ_j w[c, j] · timeline[t + j, c]).
// `conv`: one invocation per (t, c). `shift`: one invocation per channel, run as a second
// dispatch after `conv`, leaves the last K-1 inputs of the timeline in the state.
// The weight `[C, K]` is decoded from its stored format (`weight_at` from shaders/decode.wgsl, prepended).

override FORMAT: u32 = 0u; // 0 F32, 1 BF16, 2 F16, 3 FP8 E4M3, 4 NVFP4
const WG: u32 = 64u;

struct Params {
    tokens: u32,
    channels: u32,
    kernel: u32,
    hist: u32,
    has_bias: u32,
    tensor_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

// Element `i` of channel `c` on the timeline (carried history, then the new inputs).
fn timeline(i: u32, c: u32) -> f32 {
    if (i < p.hist) {
        return state[i * p.channels + c];
    }
    return x[(i - p.hist) * p.channels + c];
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

@compute @workgroup_size(64)
fn conv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * 65535u) * WG + lid;
    if (e >= p.tokens * p.channels) {
        return;
    }
    let t = e / p.channels;
    let c = e % p.channels;
    var acc = 0.0;
    if (p.has_bias != 0u) {
        acc = bias[c];
    }
    for (var j = 0u; j < p.kernel; j++) {
        acc += weight_at(c * p.kernel + j, p.tensor_scale) * timeline(t + j, c);
    }
    y[e] = silu(acc);
}

// Row r of the new state is timeline[T + r]; rows are rewritten in ascending order, and
// T ≥ 1 means row T + r of the old state is read before anything overwrites it.
@compute @workgroup_size(64)
fn shift(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = (wid.x + wid.y * 65535u) * WG + lid;
    if (c >= p.channels) {
        return;
    }
    for (var r = 0u; r < p.hist; r++) {
        state[r * p.channels + c] = timeline(p.tokens + r, c);
    }
}
