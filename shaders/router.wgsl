// The MoE router (ARCH_NOTES §6): sigmoid scores, `choice = score + bias` used only for
// choosing, DeepSeek-V3 grouped selection (a group's score is the sum of its two best choice
// values; the best `topk_group` groups are kept, the others' experts masked to -inf), then the
// `top_k` largest choice values, ties to the lower index, NaN ranking as -inf. Weights are the
// unbiased scores, optionally divided by (sum + 1e-20), times `scaling`. Ids come out ascending.
//
// One workgroup per token; any E and any top_k (no fixed-size private arrays). Per token the
// storage scratch holds E expert keys then n_group group keys. A key is the value mapped to a
// u32 that orders like the float (NaN -> -inf first); every real key is >= 0x007fffff (-inf),
// so 0 marks "already chosen". Each pick is a parallel argmax over the keys.

const WG: u32 = 64u;

struct Params {
    tokens: u32,   // tokens in this dispatch
    experts: u32,
    top_k: u32,
    n_group: u32,  // 0 = no grouped selection
    topk_group: u32,
    per_group: u32,
    norm: u32,
    scaling: f32,
    t0: u32,       // first token of this dispatch (the scratch is indexed from it)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> keys: array<u32>;
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> weights: array<f32>;

var<workgroup> red_k: array<u32, WG>;
var<workgroup> red_i: array<u32, WG>;

const NEG_INF_BITS: u32 = 0xff800000u;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn is_nan(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

// Order-preserving map of a float (NaN counted as -inf) onto u32.
fn key_of(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    if (is_nan(x)) {
        b = NEG_INF_BITS;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

fn value_of(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) {
        return bitcast<f32>(k & 0x7fffffffu);
    }
    return bitcast<f32>(~k);
}

// Index (relative to `base`) of the largest key among keys[base .. base + n], ties to the lower
// index; the winner's key is set to 0 so the next call skips it. At least one key must be > 0.
fn pick(base: u32, n: u32, lid: u32) -> u32 {
    var bk = 0u;
    var bi = 0xffffffffu;
    for (var i = lid; i < n; i += WG) {
        let k = keys[base + i];
        if (k > bk) {
            bk = k;
            bi = i;
        }
    }
    workgroupBarrier(); // the previous pick's readers of red_i[0] are done
    red_k[lid] = bk;
    red_i[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ok = red_k[lid + s];
            let oi = red_i[lid + s];
            if (ok > red_k[lid] || (ok == red_k[lid] && oi < red_i[lid])) {
                red_k[lid] = ok;
                red_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let win = red_i[0];
    if (lid == 0u) {
        keys[base + win] = 0u;
    }
    storageBarrier();
    return win;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tl = wid.x + wid.y * 65535u;
    if (tl >= p.tokens) {
        return;
    }
    let t = p.t0 + tl;
    let ne = p.experts;
    let row = t * ne;
    let kbase = tl * (ne + p.n_group);
    let gbase = kbase + ne;

    for (var e = lid; e < ne; e += WG) {
        keys[kbase + e] = key_of(sigmoid(logits[row + e]) + bias[e]);
    }
    storageBarrier();

    if (p.n_group > 1u) {
        let per = p.per_group;
        // Group score: sum of the group's two best choice values (one when a group has one).
        for (var g = lid; g < p.n_group; g += WG) {
            var k1 = 0u;
            var i1 = 0u;
            var k2 = 0u;
            var i2 = 0u;
            for (var i = 0u; i < per; i++) {
                let k = keys[kbase + g * per + i];
                if (k > k1) {
                    k2 = k1;
                    i2 = i1;
                    k1 = k;
                    i1 = i;
                } else if (k > k2) {
                    k2 = k;
                    i2 = i;
                }
            }
            var gs = value_of(k1);
            if (per > 1u) {
                gs = gs + value_of(k2);
            }
            keys[gbase + g] = key_of(gs);
        }
        storageBarrier();
        let rounds = min(p.topk_group, p.n_group);
        for (var r = 0u; r < rounds; r++) {
            pick(gbase, p.n_group, lid);
        }
        // Kept groups now have key 0; experts of the others (not a trailing remainder that
        // belongs to no group) become -inf.
        for (var e = lid; e < ne; e += WG) {
            let g = e / per;
            if (g < p.n_group && keys[gbase + g] != 0u) {
                keys[kbase + e] = key_of(bitcast<f32>(NEG_INF_BITS));
            }
        }
        storageBarrier();
    }

    for (var r = 0u; r < p.top_k; r++) {
        pick(kbase, ne, lid);
    }

    if (lid == 0u) {
        let obase = t * p.top_k;
        var slot = 0u;
        var sum = 0.0;
        for (var e = 0u; e < ne; e++) {
            if (keys[kbase + e] == 0u) {
                let s = sigmoid(logits[row + e]);
                ids[obase + slot] = e;
                weights[obase + slot] = s;
                sum += s;
                slot++;
            }
        }
        for (var j = 0u; j < p.top_k; j++) {
            var w = weights[obase + j];
            if (p.norm != 0u) {
                w = w / (sum + 1e-20);
            }
            weights[obase + j] = w * p.scaling;
        }
    }
}
