// out[r] = index of the first maximum of row r, exactly like `crate::sampling::argmax`: NaN
// never wins (an all-NaN row gives 0), ties go to the lower index, -0 equals +0.
// Values are compared as order-preserving integer keys built from their bits, so the result
// does not depend on how the compiler treats NaN in float comparisons: NaN -> 0, and every
// other value (-0 folded into +0) to a key >= 0x007fffff (that of -inf) ordered like the value.
// One workgroup per row: 256 threads each scan a stride of the row, then reduce (key, index).

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

struct Params {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> keys: array<u32, WG>;
var<workgroup> idxs: array<u32, WG>;

fn key(v: f32) -> u32 {
    var b = bitcast<u32>(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return 0u; // NaN
    }
    if (b == 0x80000000u) {
        b = 0u; // -0 == +0
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

// Whether (k, i) beats (bk, bi): a larger key, or an equal key at a lower index.
fn better(k: u32, i: u32, bk: u32, bi: u32) -> bool {
    return k > bk || (k == bk && i < bi);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * 65535u;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    var bk = 0u;
    var bi = NONE;
    for (var c = lid; c < p.cols; c += WG) {
        let k = key(x[base + c]);
        if (better(k, c, bk, bi)) {
            bk = k;
            bi = c;
        }
    }
    keys[lid] = bk;
    idxs[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let k = keys[lid + s];
            let i = idxs[lid + s];
            if (better(k, i, keys[lid], idxs[lid])) {
                keys[lid] = k;
                idxs[lid] = i;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        out[r] = idxs[0];
    }
}
