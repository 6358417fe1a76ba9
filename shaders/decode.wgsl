// Weight decoding shared by every shader that reads stored weights (prepended to their
// source). The including shader declares `w: array<u32>` (weight bytes), `scales: array<u32>`
// (NVFP4 block-scale bytes) and `override FORMAT: u32`.

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

// Element `i` (counted from the start of the bound buffer); `ts` is the FP8 / NVFP4 tensor
// scale (ignored by the dense formats).
fn weight_at(i: u32, ts: f32) -> f32 {
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
            return e4m3(b) * ts;
        }
        case 4u: {
            let code = (w[i >> 3u] >> ((i & 7u) * 4u)) & 0xfu;
            let s = i >> 4u;
            let sb = (scales[s >> 2u] >> ((s & 3u) * 8u)) & 0xffu;
            // The two scales are multiplied first, exactly as ModelOpt dequantizes.
            return E2M1[code] * (e4m3(sb) * ts);
        }
        default: {
            return bitcast<f32>(w[i]);
        }
    }
}


// Whole 16-element blocks, for kernels whose rows start on a block boundary (cols % 16 == 0):
// one load per word instead of per element, the NVFP4 block scale read once per block, and no
// table lookup (a dynamically indexed constant array is a per-lane memory gather on CPU
// drivers). Block `blk` holds elements 16 * blk .. 16 * blk + 16 of the bound buffer.
struct Block {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
}

// E2M1 code (sign bit 3, exponent bits 2..1, mantissa bit 0) by arithmetic; "-0" gives +0 as in
// ModelOpt's table.
fn e2m1(code: u32) -> f32 {
    let m = code & 7u;
    let e = m >> 1u;
    let normal = bitcast<f32>(((e + 126u) << 23u) | ((m & 1u) << 22u));
    let mag = select(f32(m) * 0.5, normal, e != 0u);
    return select(mag, -mag, (code & 8u) != 0u && m != 0u);
}

fn e2m1x4(word: u32) -> vec4<f32> {
    return vec4<f32>(e2m1(word & 0xfu), e2m1((word >> 4u) & 0xfu), e2m1((word >> 8u) & 0xfu),
                     e2m1((word >> 12u) & 0xfu));
}

fn e4m3x4(word: u32) -> vec4<f32> {
    return vec4<f32>(e4m3(word & 0xffu), e4m3((word >> 8u) & 0xffu), e4m3((word >> 16u) & 0xffu),
                     e4m3(word >> 24u));
}

fn bf16x4(lo: u32, hi: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<f32>(lo << 16u), bitcast<f32>(lo & 0xffff0000u),
                     bitcast<f32>(hi << 16u), bitcast<f32>(hi & 0xffff0000u));
}

fn f16x4(lo: u32, hi: u32) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
}

fn f32x4(o: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(w[o], w[o + 1u], w[o + 2u], w[o + 3u]));
}

// The block's values before its scale (`block_scale`): E2M1 or E4M3 codes, or the dense values.
fn load_block(blk: u32) -> Block {
    switch FORMAT {
        case 1u: {
            let o = blk * 8u;
            return Block(bf16x4(w[o], w[o + 1u]), bf16x4(w[o + 2u], w[o + 3u]),
                         bf16x4(w[o + 4u], w[o + 5u]), bf16x4(w[o + 6u], w[o + 7u]));
        }
        case 2u: {
            let o = blk * 8u;
            return Block(f16x4(w[o], w[o + 1u]), f16x4(w[o + 2u], w[o + 3u]),
                         f16x4(w[o + 4u], w[o + 5u]), f16x4(w[o + 6u], w[o + 7u]));
        }
        case 3u: {
            let o = blk * 4u;
            return Block(e4m3x4(w[o]), e4m3x4(w[o + 1u]), e4m3x4(w[o + 2u]), e4m3x4(w[o + 3u]));
        }
        case 4u: {
            let lo = w[blk * 2u];
            let hi = w[blk * 2u + 1u];
            return Block(e2m1x4(lo), e2m1x4(lo >> 16u), e2m1x4(hi), e2m1x4(hi >> 16u));
        }
        default: {
            let o = blk * 16u;
            return Block(f32x4(o), f32x4(o + 4u), f32x4(o + 8u), f32x4(o + 12u));
        }
    }
}

// What a block's dot product is multiplied by: the NVFP4 block scale times the tensor scale
// (in that order, as ModelOpt dequantizes), the FP8 tensor scale, or 1. A one-hot input thus
// reads back exactly `weight_at`.
fn block_scale(blk: u32, ts: f32) -> f32 {
    switch FORMAT {
        case 3u: {
            return ts;
        }
        case 4u: {
            return e4m3((scales[blk >> 2u] >> ((blk & 3u) * 8u)) & 0xffu) * ts;
        }
        default: {
            return 1.0;
        }
    }
}

fn block_dot(b: Block, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
    return (dot(b.a, x0) + dot(b.b, x1)) + (dot(b.c, x2) + dot(b.d, x3));
}
