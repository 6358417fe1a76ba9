// out[t] = table[ids[t]] for the tokens whose id falls in one row chunk of the table, decoded
// from its stored format (the same decode as shaders/linear.wgsl). The host dispatches once per
// chunk that holds any requested id; tokens of other chunks are skipped here.
// One workgroup per token; 256 threads stride over the row.

override FORMAT: u32 = 0u; // 0 F32, 1 BF16, 2 F16, 3 FP8 E4M3, 4 NVFP4
const WG: u32 = 256u;

struct Params {
    cols: u32,
    tokens: u32,
    row0: u32,
    chunk_rows: u32,
    tensor_scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

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

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * 65535u;
    if (t >= p.tokens) {
        return;
    }
    let id = ids[t];
    if (id < p.row0 || id - p.row0 >= p.chunk_rows) {
        return;
    }
    let base = (id - p.row0) * p.cols;
    for (var c = lid; c < p.cols; c += WG) {
        y[t * p.cols + c] = weight(base + c);
    }
}
