// The Mamba-2 selective scan (ARCH_NOTES §3), sequential over tokens, parallel over the
// H·P state rows. For head h (group g = h / (H/G)) and token t:
//   dt = softplus(dt_raw[t, h] + dt_bias[h])  (then max(dt, dt_min) when set)
//   S[h, p, :] = exp(dt · A[h]) · S[h, p, :] + dt · x[t, h, p] · B[t, g, :],  A = -exp(A_log)
//   y[t, h·P + p] = S[h, p, :] · C[t, g, :] + D[h] · x[t, h, p]
// A workgroup of 64 threads holds `rows` state rows of `lanes` threads each (lanes = N rounded
// up to a power of two, at most 64); each thread keeps up to MAXK state values in registers
// (n = lane + k·lanes) for the whole sequence, and the S·C dot product is reduced in shared
// memory per token. The state is read once at the start and written back at the end.

const WG: u32 = 64u;
const MAXK: u32 = 4u; // N ≤ 4 · 64

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    groups: u32,
    n: u32,
    lanes: u32,
    rows: u32,
    heads_per_group: u32,
    width: u32,
    inner: u32,
    has_dt_min: u32,
    dt_min: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> xbc: array<f32>;
@group(0) @binding(2) var<storage, read> dt: array<f32>;
@group(0) @binding(3) var<storage, read> a_log: array<f32>;
@group(0) @binding(4) var<storage, read> d: array<f32>;
@group(0) @binding(5) var<storage, read> dt_bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

// exp(v) to ~1 ulp on every device (WGSL's exp() may be off by 3 + 2|v| ulp, and its error
// compounds through the recurrence): v = k·ln2 + r with |r| ≤ ln2/2 (Cody-Waite), Taylor to
// r⁷ (truncation 5e-9 relative), then 2^k.
fn exp_acc(v: f32) -> f32 {
    let x = clamp(v, -104.0, 88.72);
    let k = round(x * 1.44269504);
    let r = (x - k * 0.693145752) - k * 1.42860677e-6;
    var q = 1.0 / 5040.0;
    q = q * r + 1.0 / 720.0;
    q = q * r + 1.0 / 120.0;
    q = q * r + 1.0 / 24.0;
    q = q * r + 1.0 / 6.0;
    q = q * r + 0.5;
    q = q * r + 1.0;
    q = q * r + 1.0;
    return ldexp(q, i32(k));
}

// log(1 + v) for 0 ≤ v ≤ 1 as 2·atanh(v / (2 + v)); |s| ≤ 1/3, so eight odd terms give
// ~1e-9 relative error without relying on the accuracy of log() near 1.
fn log1p_unit(v: f32) -> f32 {
    let s = v / (2.0 + v);
    let s2 = s * s;
    var q = 1.0 / 15.0;
    q = q * s2 + 1.0 / 13.0;
    q = q * s2 + 1.0 / 11.0;
    q = q * s2 + 1.0 / 9.0;
    q = q * s2 + 1.0 / 7.0;
    q = q * s2 + 1.0 / 5.0;
    q = q * s2 + 1.0 / 3.0;
    q = q * s2 + 1.0;
    return 2.0 * s * q;
}

// torch's softplus with threshold 20, as max(v, 0) + log1p(exp(-|v|)).
fn softplus(v: f32) -> f32 {
    if (v > 20.0) {
        return v;
    }
    return max(v, 0.0) + log1p_unit(exp_acc(-abs(v)));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = lid / p.lanes;
    let lane = lid % p.lanes;
    let hp = (wid.x + wid.y * 65535u) * p.rows + row;
    // Inactive threads (past the last row, or beyond `rows · lanes`) still take part in the
    // barriers; they only skip memory accesses.
    let live = row < p.rows && hp < p.heads * p.head_dim;
    let h = min(hp / p.head_dim, p.heads - 1u);
    let g = h / p.heads_per_group;
    let a = -exp_acc(a_log[h]);
    let bias = dt_bias[h];
    let skip = d[h];
    let b_off = p.inner + g * p.n;
    let c_off = p.inner + p.groups * p.n + g * p.n;

    var s: array<f32, MAXK>;
    for (var k = 0u; k < MAXK; k++) {
        let n = lane + k * p.lanes;
        s[k] = 0.0;
        if (live && n < p.n) {
            s[k] = state[hp * p.n + n];
        }
    }

    for (var t = 0u; t < p.tokens; t++) {
        let base = t * p.width;
        var step = softplus(dt[t * p.heads + h] + bias);
        if (p.has_dt_min != 0u) {
            step = max(step, p.dt_min);
        }
        let decay = exp_acc(step * a);
        var xv = 0.0;
        if (live) {
            xv = xbc[base + hp];
        }
        let dx = step * xv;
        var acc = 0.0;
        for (var k = 0u; k < MAXK; k++) {
            let n = lane + k * p.lanes;
            if (live && n < p.n) {
                s[k] = s[k] * decay + dx * xbc[base + b_off + n];
                acc += s[k] * xbc[base + c_off + n];
            }
        }
        partial[lid] = acc;
        workgroupBarrier();
        for (var st = p.lanes / 2u; st > 0u; st >>= 1u) {
            if (lane < st) {
                partial[lid] += partial[lid + st];
            }
            workgroupBarrier();
        }
        if (live && lane == 0u) {
            y[t * p.inner + hp] = partial[lid] + skip * xv;
        }
    }

    for (var k = 0u; k < MAXK; k++) {
        let n = lane + k * p.lanes;
        if (live && n < p.n) {
            state[hp * p.n + n] = s[k];
        }
    }
}
