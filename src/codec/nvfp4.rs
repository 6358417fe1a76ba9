//! NVFP4 exactly as NVIDIA ModelOpt 0.47 (`NVFP4QTensor`) quantizes, stores and dequantizes it.
//!
//! Layout of an NVFP4 weight `[rows, cols]` (see ARCH_NOTES §8):
//! * elements are 4-bit E2M1 codes `sign << 3 | mag`, `mag` indexing
//!   `{0, 0.5, 1, 1.5, 2, 3, 4, 6}`, packed two per byte with the **even** element in the low
//!   nibble (`weight`, U8 `[rows, cols/2]`);
//! * each run of 16 consecutive elements of a row shares one E4M3 scale (`weight_scale`,
//!   F8_E4M3 `[rows, cols/16]`, row-major, not swizzled);
//! * one f32 per tensor (`weight_scale_2`) multiplies every block scale.
//!
//! The value of an element is `E2M1[code] * (f32(block_scale) * tensor_scale)`, the two scales
//! multiplied first. Every kernel must reproduce [`decode_block`] bit for bit, and the
//! quantizer reproduces ModelOpt's operation order so that re-quantizing a BF16 checkpoint here
//! gives the same bytes as NVIDIA's tooling.

use super::fp8::{E4M3_MAX, E4M3_MIN_SUBNORMAL, e4m3_to_f32, f32_to_e4m3};
use crate::{Error, Result};

/// Elements sharing one E4M3 block scale.
pub const BLOCK_SIZE: usize = 16;

/// Largest E2M1 magnitude.
pub const E2M1_MAX: f32 = 6.0;

/// Decoded value of every 4-bit code. Code 8 is a "negative zero" that ModelOpt's table
/// decodes to **+0.0**; keeping that makes dequantized tensors bit-identical to ModelOpt's
/// (a product with -0.0 would flip the sign bit of zeros).
pub const E2M1_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// ModelOpt's `e2m1_bounds`: the midpoints between consecutive magnitudes.
const E2M1_BOUNDS: [f32; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];

/// E4M3 encoding of 1.0: the scale ModelOpt gives an all-zero block.
const E4M3_ONE: u8 = 0x38;

/// Encodes an already-scaled value to a 4-bit E2M1 code, as ModelOpt's `_cast_fp4` does.
///
/// `mag` = number of bounds below `|x|` (`torch.searchsorted`, left side), plus one when `|x|`
/// sits exactly on 0.75, 1.75 or 3.5; net effect: round to nearest with ties to the even
/// code, and saturation at 6 for `|x| > 5`. The sign bit is `x < 0`, so `-0.0` gives code 0
/// while a small negative that rounds to zero gives code 8. A NaN encodes to 7 (PyTorch's
/// searchsorted puts NaN past the last bound); [`quantize`] never produces one.
#[inline]
pub fn encode_e2m1(scaled: f32) -> u8 {
    let a = scaled.abs();
    // NaN counts as above every bound, like PyTorch's binary search.
    let below = E2M1_BOUNDS.iter().filter(|&&b| b < a || a.is_nan()).count() as u8;
    let tie_up = u8::from(a == 0.75 || a == 1.75 || a == 3.5);
    (u8::from(scaled < 0.0) << 3) + below + tie_up
}

/// An NVFP4-quantized 2-D tensor in checkpoint layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Nvfp4Tensor {
    pub rows: usize,
    pub cols: usize,
    /// `[rows, cols/2]`; byte `j` of a row holds element `2j` in bits 0-3 and `2j+1` in 4-7.
    pub packed: Vec<u8>,
    /// E4M3 bytes, `[rows, cols/16]` row-major.
    pub block_scales: Vec<u8>,
    /// `weight_scale_2`.
    pub tensor_scale: f32,
}

/// ModelOpt's `weight_scale_2 = amax(|x|) / (6 * 448)`, an f32 division by 2688 (not a
/// multiplication by its reciprocal, which differs in the last bit for some inputs).
/// A NaN anywhere gives NaN, as `torch.amax` does.
pub fn tensor_scale_for(x: &[f32]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, &v| {
        let a = v.abs();
        if a > m || a.is_nan() { a } else { m }
    });
    amax / (E2M1_MAX * E4M3_MAX)
}

/// Quantizes a row-major `[rows, cols]` matrix with ModelOpt's dynamic NVFP4 recipe
/// (`NVFP4QTensor.quantize(x, 16)`): the tensor scale is [`tensor_scale_for`].
///
/// BF16 weights must be widened exactly (e.g. [`super::bf16_to_f32`]) first; ModelOpt also
/// computes in f32.
///
/// An all-zero tensor gets `tensor_scale` 0, block scales 1.0 and all codes 0, so it decodes
/// to zeros. (ModelOpt itself divides 0 by 0 there and emits NaN scales.) The same applies
/// when `amax/2688` underflows to 0, i.e. every |x| < ~4e-42.
pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Result<Nvfp4Tensor> {
    check_shape(x, rows, cols)?;
    check_finite(x)?;
    quantize_inner(x, rows, cols, tensor_scale_for(x))
}

/// Like [`quantize`] but with a caller-chosen `weight_scale_2` (ModelOpt's
/// `weights_scaling_factor_2` argument), e.g. one shared by fused projections.
///
/// `tensor_scale` must be finite and >= 0; 0 is only accepted for an all-zero `x` (see
/// [`quantize`]). Block scales that would exceed 448 (a tensor scale smaller than
/// `amax/2688`) saturate at 448, and the elements then saturate at ±6.
pub fn quantize_with_tensor_scale(
    x: &[f32],
    rows: usize,
    cols: usize,
    tensor_scale: f32,
) -> Result<Nvfp4Tensor> {
    check_shape(x, rows, cols)?;
    check_finite(x)?;
    if !tensor_scale.is_finite() || tensor_scale < 0.0 {
        return Err(Error::Invalid(format!(
            "NVFP4 tensor scale must be finite and >= 0, got {tensor_scale:e}"
        )));
    }
    if tensor_scale == 0.0
        && let Some(i) = x.iter().position(|&v| v != 0.0)
    {
        return Err(Error::Invalid(format!(
            "NVFP4 tensor scale 0 cannot represent nonzero values (element {i} = {:e})",
            x[i]
        )));
    }
    quantize_inner(x, rows, cols, tensor_scale)
}

fn check_shape(x: &[f32], rows: usize, cols: usize) -> Result<()> {
    if !cols.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::Invalid(format!(
            "NVFP4 needs the column count to be a multiple of {BLOCK_SIZE}, got {rows}x{cols}"
        )));
    }
    match rows.checked_mul(cols) {
        Some(n) if n == x.len() => Ok(()),
        _ => Err(Error::Invalid(format!(
            "NVFP4 quantize: {} values given for a {rows}x{cols} matrix",
            x.len()
        ))),
    }
}

fn check_finite(x: &[f32]) -> Result<()> {
    // ModelOpt would propagate NaN/inf into every scale of the tensor; refuse instead.
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Invalid(format!(
            "NVFP4 quantize: element {i} is not finite ({})",
            x[i]
        ))),
        None => Ok(()),
    }
}

/// ModelOpt's `get_weights_scaling_factor` for one block: `amax / (6 * weight_scale_2)` with
/// the product formed first, exact zero -> 1.0 (before clamping, so only a truly zero ratio
/// becomes 1.0), clamp to the E4M3 range, round to nearest even.
fn block_scale(block_amax: f32, six_ts: f32) -> u8 {
    let s = block_amax / six_ts;
    let s = if s == 0.0 { 1.0 } else { s };
    f32_to_e4m3(s.clamp(E4M3_MIN_SUBNORMAL, E4M3_MAX))
}

fn quantize_inner(x: &[f32], rows: usize, cols: usize, tensor_scale: f32) -> Result<Nvfp4Tensor> {
    let n_blocks = x.len() / BLOCK_SIZE;
    let mut packed = vec![0u8; x.len() / 2];
    let mut block_scales = vec![E4M3_ONE; n_blocks];
    if tensor_scale == 0.0 {
        return Ok(Nvfp4Tensor {
            rows,
            cols,
            packed,
            block_scales,
            tensor_scale,
        });
    }
    let six_ts = E2M1_MAX * tensor_scale;
    for ((blk, out), sb) in x
        .chunks_exact(BLOCK_SIZE)
        .zip(packed.chunks_exact_mut(BLOCK_SIZE / 2))
        .zip(block_scales.iter_mut())
    {
        let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        *sb = block_scale(amax, six_ts);
        // ModelOpt divides by the product of the two scales; dividing by each in turn, or
        // multiplying by a reciprocal, rounds differently.
        let denom = e4m3_to_f32(*sb) * tensor_scale;
        for (pair, byte) in blk.chunks_exact(2).zip(out.iter_mut()) {
            *byte = encode_e2m1(pair[0] / denom) | (encode_e2m1(pair[1] / denom) << 4);
        }
    }
    Ok(Nvfp4Tensor {
        rows,
        cols,
        packed,
        block_scales,
        tensor_scale,
    })
}

/// Decodes one block of 16 elements (8 packed bytes): the reference decode all kernels must
/// match bit for bit. The block multiplier `f32(block_scale) * tensor_scale` is rounded to
/// f32 before it multiplies the element, as in ModelOpt's `dequantize`.
///
/// Panics if `packed` is not exactly 8 bytes.
#[inline]
pub fn decode_block(packed: &[u8], block_scale: u8, tensor_scale: f32, out: &mut [f32; 16]) {
    assert_eq!(
        packed.len(),
        BLOCK_SIZE / 2,
        "an NVFP4 block is 8 packed bytes"
    );
    let d = e4m3_to_f32(block_scale) * tensor_scale;
    for (pair, &b) in out.chunks_exact_mut(2).zip(packed) {
        pair[0] = E2M1_VALUES[usize::from(b & 0x0f)] * d;
        pair[1] = E2M1_VALUES[usize::from(b >> 4)] * d;
    }
}

/// Expands a whole tensor to f32 (tests and tools only; kernels decode block by block).
///
/// Panics if the fields of `t` are inconsistent with each other.
pub fn dequantize(t: &Nvfp4Tensor) -> Vec<f32> {
    dequantize_parts(&t.packed, &t.block_scales, t.tensor_scale, t.rows, t.cols)
        .unwrap_or_else(|e| panic!("inconsistent Nvfp4Tensor: {e}"))
}

/// Expands checkpoint tensors (`weight`, `weight_scale`, `weight_scale_2`) of a `[rows, cols]`
/// NVFP4 weight to f32, after checking their sizes.
pub fn dequantize_parts(
    packed: &[u8],
    block_scales: &[u8],
    tensor_scale: f32,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    if !cols.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::Invalid(format!(
            "NVFP4 needs the column count to be a multiple of {BLOCK_SIZE}, got {rows}x{cols}"
        )));
    }
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| Error::Invalid(format!("NVFP4 shape {rows}x{cols} overflows usize")))?;
    if packed.len() != n / 2 {
        return Err(Error::Invalid(format!(
            "NVFP4 {rows}x{cols}: packed data has {} bytes, expected {}",
            packed.len(),
            n / 2
        )));
    }
    if block_scales.len() != n / BLOCK_SIZE {
        return Err(Error::Invalid(format!(
            "NVFP4 {rows}x{cols}: {} block scales, expected {}",
            block_scales.len(),
            n / BLOCK_SIZE
        )));
    }
    let mut out = vec![0.0f32; n];
    for ((dst, src), &s) in out
        .chunks_exact_mut(BLOCK_SIZE)
        .zip(packed.chunks_exact(BLOCK_SIZE / 2))
        .zip(block_scales)
    {
        let dst: &mut [f32; 16] = dst.try_into().expect("chunk of 16");
        decode_block(src, s, tensor_scale, dst);
    }
    Ok(out)
}

/// Packs 4-bit codes two per byte, even index in the low nibble. Bits above the low four of
/// each code are ignored; an odd trailing code gets a zero high nibble.
pub fn pack_codes(codes: &[u8]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|p| (p[0] & 0x0f) | (p.get(1).copied().unwrap_or(0) << 4))
        .collect()
}

/// Inverse of [`pack_codes`]: two codes per byte, low nibble first.
pub fn unpack_codes(packed: &[u8]) -> Vec<u8> {
    packed.iter().flat_map(|&b| [b & 0x0f, b >> 4]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2m1_table_and_code_8() {
        for code in 0..8 {
            assert_eq!(E2M1_VALUES[code + 8], -E2M1_VALUES[code]);
        }
        assert_eq!(
            E2M1_VALUES[8].to_bits(),
            0,
            "code 8 decodes to +0.0 in ModelOpt"
        );
        // every magnitude encodes back to its own code
        for code in 0u8..16 {
            if code == 8 {
                continue;
            }
            assert_eq!(encode_e2m1(E2M1_VALUES[code as usize]), code);
        }
    }

    #[test]
    fn e2m1_ties_round_half_to_even_code() {
        // midpoint -> (lower code, upper code): even one wins
        let cases = [
            (0.25, 0), // 0 | 0.5
            (0.75, 2), // 0.5 | 1
            (1.25, 2), // 1 | 1.5
            (1.75, 4), // 1.5 | 2
            (2.5, 4),  // 2 | 3
            (3.5, 6),  // 3 | 4
            (5.0, 6),  // 4 | 6
        ];
        for (x, code) in cases {
            assert_eq!(encode_e2m1(x), code, "{x}");
            assert_eq!(encode_e2m1(-x), code | 8, "-{x}");
            let up = f32::from_bits(f32::to_bits(x) + 1);
            let down = f32::from_bits(f32::to_bits(x) - 1);
            assert!(encode_e2m1(up) > encode_e2m1(down), "{x}");
            assert_eq!(encode_e2m1(up) - encode_e2m1(down), 1, "{x}");
        }
    }

    #[test]
    fn e2m1_sign_saturation_and_zero() {
        assert_eq!(encode_e2m1(0.0), 0);
        assert_eq!(encode_e2m1(-0.0), 0);
        assert_eq!(encode_e2m1(-0.1), 8);
        assert_eq!(encode_e2m1(-1e-40), 8);
        assert_eq!(encode_e2m1(5.0001), 7);
        assert_eq!(encode_e2m1(1e30), 7);
        assert_eq!(encode_e2m1(-6.5), 15);
        assert_eq!(encode_e2m1(f32::INFINITY), 7);
        assert_eq!(encode_e2m1(f32::NAN), 7);
    }

    #[test]
    fn pack_nibble_order() {
        assert_eq!(pack_codes(&[0x1, 0xf, 0x7, 0x8]), vec![0xf1, 0x87]);
        assert_eq!(unpack_codes(&[0xf1, 0x87]), vec![0x1, 0xf, 0x7, 0x8]);
        assert_eq!(pack_codes(&[0x3]), vec![0x03]);
        let codes: Vec<u8> = (0..64).map(|i| (i * 7 % 16) as u8).collect();
        assert_eq!(unpack_codes(&pack_codes(&codes)), codes);
    }

    #[test]
    fn decode_block_multiplies_scales_first() {
        // Pick scales where (e * s) * t != e * (s * t) in f32 so the order is observable.
        let t = 0.1f32;
        let s = 0x3bu8; // 1.375
        let sf = e4m3_to_f32(s);
        let d = sf * t;
        let packed = pack_codes(&(0u8..16).collect::<Vec<_>>());
        let mut out = [0f32; 16];
        decode_block(&packed, s, t, &mut out);
        let mut differs = false;
        for code in 0..16 {
            assert_eq!(out[code].to_bits(), (E2M1_VALUES[code] * d).to_bits());
            differs |= (E2M1_VALUES[code] * sf * t).to_bits() != out[code].to_bits();
        }
        assert_eq!(out[8].to_bits(), 0);
        assert!(
            differs,
            "test scales do not distinguish the multiplication order"
        );
    }

    #[test]
    fn shape_errors_name_the_numbers() {
        let e = quantize(&[0.0; 24], 2, 12).unwrap_err().to_string();
        assert!(e.contains("16") && e.contains("2x12"), "{e}");
        let e = quantize(&[0.0; 30], 2, 16).unwrap_err().to_string();
        assert!(e.contains("30") && e.contains("2x16"), "{e}");
        let e = quantize(&[f32::NAN; 16], 1, 16).unwrap_err().to_string();
        assert!(e.contains("element 0"), "{e}");
        assert!(quantize_with_tensor_scale(&[1.0; 16], 1, 16, -1.0).is_err());
        assert!(quantize_with_tensor_scale(&[1.0; 16], 1, 16, 0.0).is_err());
        assert!(dequantize_parts(&[0; 8], &[0x38; 2], 1.0, 1, 16).is_err());
        assert!(dequantize_parts(&[0; 7], &[0x38], 1.0, 1, 16).is_err());
        assert!(dequantize_parts(&[0; 8], &[0x38], 1.0, 1, 15).is_err());
    }

    #[test]
    fn all_zero_tensor_has_no_nan() {
        let mut x = vec![0.0f32; 64];
        x[3] = -0.0;
        let q = quantize(&x, 2, 32).unwrap();
        assert_eq!(q.tensor_scale, 0.0);
        assert!(q.packed.iter().all(|&b| b == 0));
        assert!(q.block_scales.iter().all(|&s| s == E4M3_ONE));
        assert!(dequantize(&q).iter().all(|v| v.to_bits() == 0));
        let q2 = quantize_with_tensor_scale(&x, 2, 32, 0.0).unwrap();
        assert_eq!(q, q2);
    }

    #[test]
    fn explicit_small_tensor_scale_saturates() {
        let x: Vec<f32> = (0..16).map(|i| i as f32 - 8.0).collect();
        // amax 8 would need ts = 8/2688; a 100x smaller one pushes the block scale past 448
        let q = quantize_with_tensor_scale(&x, 1, 16, 8.0 / 2688.0 / 100.0).unwrap();
        assert_eq!(q.block_scales, vec![0x7e]);
        let codes = unpack_codes(&q.packed);
        assert_eq!(codes[0], 15);
        assert_eq!(codes[15], 7);
    }

    #[test]
    fn quantize_dequantize_is_close() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let q = quantize(&x, 4, 64).unwrap();
        let y = dequantize(&q);
        for (blk_x, blk_y) in x.chunks(16).zip(y.chunks(16)) {
            let amax = blk_x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in blk_x.iter().zip(blk_y) {
                // half an E2M1 step at the top of the range, plus E4M3 scale rounding
                assert!((a - b).abs() <= amax / 6.0 * 1.0625 + 1e-6, "{a} vs {b}");
            }
        }
    }
}
