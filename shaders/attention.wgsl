// Causal GQA softmax attention (no RoPE) of `tokens` new queries over a KV cache that already
// holds them: token t sees cached positions 0 ..= start + t. Query head h reads kv head
// h / (heads / kv_heads). f32 throughout.
//
// One workgroup per (token, head). Positions are visited in tiles of WG: each thread scores one
// position of the tile, the tile's max and exp-sum are reduced in workgroup memory, and the
// output row (which doubles as the accumulator, so head_dim is unbounded) is rescaled by
// exp(old_max - new_max) before the tile's weighted V rows are added (online softmax).
// Finally the row is divided by the total exp-sum.

const WG: u32 = 64u;

struct Params {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    start: u32,
    width: u32, // kv_heads * head_dim
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<f32>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

var<workgroup> prob: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

fn reduce_max(lid: u32) {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
}

fn reduce_sum(lid: u32) {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let idx = wid.x + wid.y * 65535u;
    if (idx >= p.tokens * p.heads) {
        return;
    }
    let t = idx / p.heads;
    let h = idx % p.heads;
    let hd = p.head_dim;
    let kvh = h / (p.heads / p.kv_heads);
    let qbase = t * p.heads * hd + h * hd;
    let obase = qbase;
    let kvoff = kvh * hd;
    let visible = p.start + t + 1u;

    for (var d = lid; d < hd; d += WG) {
        o[obase + d] = 0.0;
    }
    var m = bitcast<f32>(0xff800000u); // -inf
    var l = 0.0;
    for (var base = 0u; base < visible; base += WG) {
        let j = base + lid;
        var s = bitcast<f32>(0xff800000u);
        if (j < visible) {
            var acc = 0.0;
            let kb = j * p.width + kvoff;
            for (var d = 0u; d < hd; d++) {
                acc += q[qbase + d] * kc[kb + d];
            }
            s = acc * p.scale;
        }
        red[lid] = s;
        workgroupBarrier();
        reduce_max(lid);
        let m_new = max(m, red[0]);
        // exp(-inf) = 0 on the first tile, where the accumulators are still zero.
        let alpha = exp(m - m_new);
        var e = 0.0;
        if (j < visible) {
            e = exp(s - m_new);
        }
        workgroupBarrier(); // everyone has read red[0]
        prob[lid] = e;
        red[lid] = e;
        workgroupBarrier();
        reduce_sum(lid);
        l = l * alpha + red[0];
        let n = min(WG, visible - base);
        for (var d = lid; d < hd; d += WG) {
            var acc = o[obase + d] * alpha;
            for (var i = 0u; i < n; i++) {
                acc += prob[i] * vc[(base + i) * p.width + kvoff + d];
            }
            o[obase + d] = acc;
        }
        m = m_new;
        workgroupBarrier(); // prob and red are rewritten by the next tile
    }
    let inv = 1.0 / l;
    for (var d = lid; d < hd; d += WG) {
        o[obase + d] = o[obase + d] * inv;
    }
}
