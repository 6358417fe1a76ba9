//! FP8 E4M3FN (`torch.float8_e4m3fn`, safetensors `F8_E4M3`): 1 sign, 4 exponent (bias 7),
//! 3 mantissa bits. There is no infinity; `0x7f`/`0xff` are the only NaNs, so the largest finite
//! magnitude is 448 (`0x7e`). Exponent field 0 holds subnormals `m * 2^-9`.
//!
//! These bytes are the NVFP4 block scales and the FP8 per-tensor weights of ModelOpt
//! checkpoints, so encoding must reproduce PyTorch's cast bit for bit.

/// Largest finite E4M3FN value.
pub const E4M3_MAX: f32 = 448.0;

/// Smallest positive E4M3FN value (the subnormal `0x01`); ModelOpt clamps block scales to it.
pub const E4M3_MIN_SUBNORMAL: f32 = 1.0 / 512.0;

/// Canonical NaN byte, what the encoder returns for NaN input.
pub const E4M3_NAN: u8 = 0x7f;

const fn decode_bits(b: u8) -> u32 {
    let sign = ((b as u32) & 0x80) << 24;
    let exp = ((b >> 3) & 0x0f) as u32;
    let man = (b & 0x07) as u32;
    if exp == 0x0f && man == 0x07 {
        return sign | 0x7fc0_0000;
    }
    if exp != 0 {
        // Normal: rebias 7 -> 127 and widen the mantissa; exact by construction.
        return sign | ((exp + 120) << 23) | (man << 20);
    }
    if man == 0 {
        return sign;
    }
    // Subnormal m * 2^-9 = 1.f * 2^(p-9) with p the index of m's top bit; in f32 that is a
    // normal number, so shift the remaining bits up into the 23-bit fraction.
    let p = 31 - man.leading_zeros();
    let frac = (man & !(1 << p)) << (23 - p);
    sign | ((p + 127 - 9) << 23) | frac
}

const fn build_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f32::from_bits(decode_bits(i as u8));
        i += 1;
    }
    t
}

/// Every E4M3FN byte decoded to f32 (exact; both NaN codes decode to a quiet NaN).
pub static E4M3_TO_F32: [f32; 256] = build_table();

/// Decodes one E4M3FN byte exactly.
#[inline]
pub fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_TO_F32[b as usize]
}

/// Rounds an f32 to E4M3FN with round-to-nearest-even.
///
/// For |x| <= 464 (everything ModelOpt feeds it: block scales are clamped to [2^-9, 448]
/// beforehand) this is bit-identical to PyTorch's `x.to(torch.float8_e4m3fn)`
/// (`c10::detail::fp8e4m3fn_from_fp32_value`), including signed zeros and subnormals.
/// Departures from PyTorch, chosen so a stray value can never become a NaN scale:
/// * finite |x| > 448 and ±inf saturate to ±448 (`0x7e`/`0xfe`); PyTorch returns NaN from
///   464 (exclusive) upwards;
/// * every NaN encodes to `0x7f` (PyTorch keeps the sign: `0xff` for negative NaNs).
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return E4M3_NAN;
    }
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let abs_bits = bits & 0x7fff_ffff;
    // Bits of 464.0, the midpoint between 448 and the first value past it: anything above
    // would round away from 448, so this is where saturation starts.
    if abs_bits > 0x43e8_0000 {
        return sign | 0x7e;
    }
    let mag = if abs_bits < (121 << 23) {
        // Below 2^-6, the smallest normal: adding 2^14 puts the ulp of the f32 sum at 2^-9,
        // so the FPU's own round-to-nearest-even snaps |x| to a multiple of 2^-9, and the
        // low bits of the sum are that multiple (0..=8; 8 is the smallest normal, 0x08).
        const DENORM_MAGIC: u32 = 141 << 23;
        let sum = f32::from_bits(abs_bits) + f32::from_bits(DENORM_MAGIC);
        (sum.to_bits() - DENORM_MAGIC) as u8
    } else {
        // Normal: rebias the exponent and round the 23-bit fraction to 3 bits, half to even
        // (adding 0x7ffff plus the kept lsb carries exactly when above half, or at half with
        // an odd kept mantissa); a carry out of the mantissa bumps the exponent, which is the
        // correct result. Cannot overflow past 0x7e because of the 464 check above.
        let mant_odd = (abs_bits >> 20) & 1;
        let r = abs_bits
            .wrapping_sub((127 - 7) << 23)
            .wrapping_add(0x7_ffff)
            .wrapping_add(mant_odd);
        (r >> 20) as u8
    };
    sign | mag
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent reference: nearest finite E4M3 value by exhaustive search over the decode
    /// table, ties to the even code, out-of-range saturating.
    fn brute_force(x: f32) -> u8 {
        let a = x.abs() as f64;
        let mut best = 0u8;
        let mut best_err = f64::INFINITY;
        for code in 0u8..=0x7e {
            let err = (E4M3_TO_F32[code as usize] as f64 - a).abs();
            if err < best_err || (err == best_err && code % 2 == 0) {
                best = code;
                best_err = err;
            }
        }
        best | if x.is_sign_negative() { 0x80 } else { 0 }
    }

    #[test]
    fn table_matches_the_format_definition() {
        for b in 0u16..256 {
            let b = b as u8;
            let sign = if b & 0x80 != 0 { -1.0f64 } else { 1.0 };
            let e = i32::from((b >> 3) & 0x0f);
            let m = f64::from(b & 7);
            let v = e4m3_to_f32(b);
            if b & 0x7f == 0x7f {
                assert!(v.is_nan(), "{b:#04x}");
                continue;
            }
            let want = if e == 0 {
                sign * m * 2f64.powi(-9)
            } else {
                sign * (1.0 + m / 8.0) * 2f64.powi(e - 7)
            };
            assert_eq!(v as f64, want, "{b:#04x}");
            assert_eq!(v.is_sign_negative(), b & 0x80 != 0, "{b:#04x}");
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), E4M3_MIN_SUBNORMAL);
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0x80).to_bits(), 0x8000_0000);
    }

    #[test]
    fn round_trip_all_codes() {
        for b in 0u16..256 {
            let b = b as u8;
            let back = f32_to_e4m3(e4m3_to_f32(b));
            if b & 0x7f == 0x7f {
                assert_eq!(back, E4M3_NAN);
            } else {
                assert_eq!(back, b, "{b:#04x}");
            }
        }
    }

    #[test]
    fn ties_round_to_even() {
        // 1.0 = 0x38 (even), 1.125 = 0x39, 1.25 = 0x3a
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.1875), 0x3a);
        assert_eq!(f32_to_e4m3(f32::from_bits(1.0625f32.to_bits() + 1)), 0x39);
        assert_eq!(f32_to_e4m3(f32::from_bits(1.0625f32.to_bits() - 1)), 0x38);
        // 7/6 is closer to 1.125 than 1.25 (ModelOpt fixture: amax 7 -> scale 1.125)
        assert_eq!(f32_to_e4m3(7.0 / 6.0), 0x39);
        assert_eq!(f32_to_e4m3(-1.0625), 0xb8);
        // carry out of the mantissa into the exponent: 1.9375 is the tie 1.875 | 2.0
        assert_eq!(f32_to_e4m3(1.9375), 0x40);
        assert_eq!(f32_to_e4m3(432.0), 0x7e); // tie 416 | 448 -> 448 (mantissa 6, even)
        assert_eq!(f32_to_e4m3(400.0), 0x7c); // tie 384 | 416 -> 384 (mantissa 4, even)
    }

    #[test]
    fn subnormals() {
        let q = E4M3_MIN_SUBNORMAL;
        assert_eq!(f32_to_e4m3(q), 0x01);
        assert_eq!(f32_to_e4m3(0.5 * q), 0x00); // tie with 0 -> 0
        assert_eq!(f32_to_e4m3(f32::from_bits((0.5 * q).to_bits() + 1)), 0x01);
        assert_eq!(f32_to_e4m3(1.5 * q), 0x02); // tie 1|2 -> 2
        assert_eq!(f32_to_e4m3(2.5 * q), 0x02); // tie 2|3 -> 2
        assert_eq!(f32_to_e4m3(7.5 * q), 0x08); // tie 7 | smallest normal -> 8
        assert_eq!(f32_to_e4m3(-3.0 * q), 0x83);
        assert_eq!(f32_to_e4m3(1e-30), 0x00);
        assert_eq!(f32_to_e4m3(-1e-30), 0x80);
        assert_eq!(f32_to_e4m3(f32::from_bits(1)), 0x00);
        assert_eq!(f32_to_e4m3(0.0), 0x00);
        assert_eq!(f32_to_e4m3(-0.0), 0x80);
    }

    #[test]
    fn nan_and_saturation() {
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
        assert_eq!(f32_to_e4m3(-f32::NAN), 0x7f);
        assert_eq!(f32_to_e4m3(448.0), 0x7e);
        assert_eq!(f32_to_e4m3(464.0), 0x7e); // PyTorch also gives 448 at the tie
        assert_eq!(f32_to_e4m3(464.0001), 0x7e);
        assert_eq!(f32_to_e4m3(1e30), 0x7e);
        assert_eq!(f32_to_e4m3(f32::MAX), 0x7e);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7e);
        assert_eq!(f32_to_e4m3(-500.0), 0xfe);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xfe);
    }

    #[test]
    fn matches_brute_force_nearest_even() {
        // Every f32 in [2^-12, 512) with a stride that still hits all E4M3 midpoints (their
        // low 19 fraction bits are zero, so any stride dividing 2^19 visits them), plus their
        // neighbours one ulp either side.
        let lo = (2f32.powi(-12)).to_bits();
        let hi = 512f32.to_bits();
        let mut b = lo;
        while b < hi {
            for d in [b - 1, b, b + 1] {
                for x in [f32::from_bits(d), -f32::from_bits(d)] {
                    assert_eq!(f32_to_e4m3(x), brute_force(x), "x={x:e} bits={d:#x}");
                }
            }
            b += 1 << 13;
        }
    }
}
