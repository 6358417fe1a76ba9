// y[t, row0 + r] = W[r] · x[t] (+ bias) for the rows of one weight chunk, the weight decoded
// from its stored format inside the loop (never expanded in memory).
// One workgroup per (row, token); 64 threads stride over the input width and reduce.

override FORMAT: u32 = 0u; // 0 F32, 1 BF16, 2 F16, 3 FP8 E4M3, 4 NVFP4
const WG: u32 = 64u;

struct Params {
    cols: u32,
    tokens: u32,
    chunk_rows: u32,
    row0: u32,
    out_cols: u32,
    has_bias: u32,
    tensor_scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

// ModelOpt's E2M1 table: code 8 ("-0") decodes to +0.
const E2M1 = array<f32, 16>(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                            0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0);

fn e4m3(b: u32) -> f32 {
    let sign = select(1.0, -1.0, (b & 0x80u) != 0u);
    let e = (b >> 3u) & 0xfu;
    let m = b & 7u;
    if (e == 15u && m == 7u) {
        return bitcast<f32>(0x7fc00000u);
    }
    if (e == 0u) {
        return sign * f32(m) * 0.001953125; // m * 2^-9, subnormal
    }
    return sign * ldexp(1.0 + f32(m) * 0.125, i32(e) - 7);
}

fn weight(i: u32) -> f32 {
    switch FORMAT {
        case 1u: {
            let word = w[i >> 1u];
            let h = select(word & 0xffffu, word >> 16u, (i & 1u) == 1u);
            return bitcast<f32>(h << 16u);
        }
        case 2u: {
            let v = unpack2x16float(w[i >> 1u]);
            return select(v.x, v.y, (i & 1u) == 1u);
        }
        case 3u: {
            let b = (w[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
            return e4m3(b) * p.tensor_scale;
        }
        case 4u: {
            let code = (w[i >> 3u] >> ((i & 7u) * 4u)) & 0xfu;
            let s = i >> 4u;
            let sb = (scales[s >> 2u] >> ((s & 3u) * 8u)) & 0xffu;
            // The two scales are multiplied first, exactly as ModelOpt dequantizes.
            return E2M1[code] * (e4m3(sb) * p.tensor_scale);
        }
        default: {
            return bitcast<f32>(w[i]);
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * 65535u;
    let t = wid.z;
    if (r >= p.chunk_rows) {
        return;
    }
    var acc = 0.0;
    let base = r * p.cols;
    for (var c = lid; c < p.cols; c += WG) {
        acc += weight(base + c) * x[t * p.cols + c];
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var v = partial[0];
        if (p.has_bias != 0u) {
            v += bias[p.row0 + r];
        }
        y[t * p.out_cols + p.row0 + r] = v;
    }
}
