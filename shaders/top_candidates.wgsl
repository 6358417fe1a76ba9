// The k largest logits of one row, by value descending, ties to the lower id, NaN ranking as
// -inf (after every number), and the row's softmax mass: what seeded top-k / top-p / min-p
// sampling reads back instead of the row (src/sampling.rs `top_by_logit` and `softmax_mass`
// are the references).
//   slices: workgroup s picks the k best of logits[s·SLICE ..][..SLICE] by k rounds of a
//           parallel argmax over the slice, kept in shared memory;
//   merge:  one workgroup picks the k best of all slices' picks the same way, reading the
//           logits back by id so NaN stays NaN;
//   mass:   one workgroup sums exp(l·inv_t − max) over the row in f32, max being the best
//           pick's (sampling allows this sum a relative error of 1e-3; f32 sums of ≤ 2^20
//           positive terms in 256 strided partials stay orders of magnitude inside that).
// A value is compared through a u32 key that orders like the float (NaN -> -inf); every real
// key is >= key(-inf) = 0x007fffff, so key 0 marks "taken" or "nothing left".

const WG: u32 = 256u;
const PER: u32 = 8u;
const SLICE: u32 = 2048u; // WG * PER
const NONE: u32 = 0xffffffffu;
const NEG_INF_BITS: u32 = 0xff800000u;

struct Params {
    vocab: u32,
    k: u32,
    row: u32,    // index of the row's first logit
    picks: u32,  // candidates in the merge input (slices · k)
    inv_t: f32,  // 1 / temperature, for `mass`
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> cand_key: array<u32>;
@group(0) @binding(3) var<storage, read_write> cand_id: array<u32>;
// [k ids, k logits as bits, the mass as bits]
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

var<workgroup> keys: array<u32, SLICE>;
var<workgroup> red_k: array<u32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> red_at: array<u32, WG>;
var<workgroup> red_f: array<f32, WG>;

fn key_of(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u) {
        b = NEG_INF_BITS;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

// Whether (ka, ia) ranks before (kb, ib): larger key, then lower id.
fn before(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

// Reduces every thread's (key, id, position) to the best in red_*[0].
fn reduce(lid: u32, k: u32, i: u32, at: u32) {
    workgroupBarrier(); // the previous round's readers of red_*[0] are done
    red_k[lid] = k;
    red_i[lid] = i;
    red_at[lid] = at;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s && before(red_k[lid + s], red_i[lid + s], red_k[lid], red_i[lid])) {
            red_k[lid] = red_k[lid + s];
            red_i[lid] = red_i[lid + s];
            red_at[lid] = red_at[lid + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn slices(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = wid.x + wid.y * 65535u;
    let base = s * SLICE;
    for (var j = 0u; j < PER; j++) {
        let at = lid + j * WG;
        var key = 0u;
        if (base + at < p.vocab) {
            key = key_of(logits[p.row + base + at]);
        }
        keys[at] = key;
    }
    for (var r = 0u; r < p.k; r++) {
        workgroupBarrier(); // the previous round's mark is visible
        // Positions rise with j, so `>` keeps the lower id among equal keys.
        var bk = 0u;
        var bat = NONE;
        for (var j = 0u; j < PER; j++) {
            let at = lid + j * WG;
            if (keys[at] > bk) {
                bk = keys[at];
                bat = at;
            }
        }
        reduce(lid, bk, select(NONE, base + bat, bat != NONE), bat);
        if (lid == 0u) {
            let win_k = red_k[0];
            cand_key[s * p.k + r] = win_k;
            cand_id[s * p.k + r] = red_i[0];
            if (win_k != 0u) {
                keys[red_at[0]] = 0u;
            }
        }
    }
}

@compute @workgroup_size(256)
fn merge(@builtin(local_invocation_index) lid: u32) {
    for (var r = 0u; r < p.k; r++) {
        var bk = 0u;
        var bi = NONE;
        var bat = NONE;
        for (var at = lid; at < p.picks; at += WG) {
            let k = cand_key[at];
            let i = cand_id[at];
            if (k != 0u && before(k, i, bk, bi)) {
                bk = k;
                bi = i;
                bat = at;
            }
        }
        reduce(lid, bk, bi, bat);
        if (lid == 0u) {
            let id = red_i[0];
            out[r] = id;
            if (red_k[0] != 0u) {
                out[p.k + r] = bitcast<u32>(logits[p.row + id]);
                cand_key[red_at[0]] = 0u;
            } else {
                out[p.k + r] = NEG_INF_BITS;
            }
        }
        storageBarrier();
    }
}

@compute @workgroup_size(256)
fn mass(@builtin(local_invocation_index) lid: u32) {
    let top = bitcast<f32>(out[p.k]);
    let mx = top * p.inv_t;
    var acc = 0.0;
    // A NaN or infinite maximum is a degenerate row that sampling handles without the mass.
    if (mx == mx && abs(mx) <= 3.4e38) {
        for (var i = lid; i < p.vocab; i += WG) {
            let e = exp(logits[p.row + i] * p.inv_t - mx);
            if (e > 0.0) {
                acc += e;
            }
        }
    }
    red_f[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red_f[lid] += red_f[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[2u * p.k] = bitcast<u32>(red_f[0]);
    }
}
