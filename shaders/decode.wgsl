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

