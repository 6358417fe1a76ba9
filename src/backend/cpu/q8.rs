//! The opt-in fast decode path for NVFP4 weights (`--cpu-activations q8`): the activation row is
//! quantized to int8 with one f32 scale per 16-element block (the NVFP4 block size), and each
//! block's dot product is an exact integer sum of `2·e2m1 · q` (E2M1 doubled is an integer in
//! [-12, 12]) scaled once by `block scale · activation scale`. Integer multiply-adds process 32
//! elements per instruction pair, where the exact path decodes every weight to f32 first, so
//! the kernel stays memory-bound. Not bit-faithful to the reference: the activation rounding
//! (relative error up to 1/254 per element) is the only difference, and its effect on tokens
//! and routes is measured in docs/benchmarks.md.

use crate::codec::fp8::e4m3_to_f32;

/// An activation row quantized per 16-element block.
#[derive(Default)]
pub(crate) struct Q8Row {
    pub q: Vec<i8>,
    /// `x ≈ q · scale[c / 16]`.
    pub scale: Vec<f32>,
}

impl Q8Row {
    /// Quantizes `x` (length a multiple of 16) into `self`, reusing its buffers.
    pub(crate) fn quantize(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(16));
        self.q.clear();
        self.scale.clear();
        for block in x.chunks_exact(16) {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 || !amax.is_finite() {
                // Zeros quantize to zeros; a non-finite input poisons the block's sum the way
                // the exact path would.
                self.scale
                    .push(if amax == 0.0 { 0.0 } else { amax * f32::NAN });
                self.q.extend(std::iter::repeat_n(0i8, 16));
                continue;
            }
            let inv = 127.0 / amax;
            self.scale.push(amax / 127.0);
            self.q.extend(
                block
                    .iter()
                    .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8),
            );
        }
    }
}

/// Twice the E2M1 value of each 4-bit code (code 8, "-0", is 0).
const E2M1_X2: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `Σ_c w[c]·x[c]` for one NVFP4 row against a quantized activation row.
pub(crate) fn dot_nvfp4(packed: &[u8], scales: &[u8], tensor_scale: f32, x: &Q8Row) -> f32 {
    let blocks = scales.len();
    assert!(
        packed.len() == blocks * 8 && x.q.len() >= blocks * 16 && x.scale.len() >= blocks,
        "NVFP4 q8 row: lengths disagree"
    );
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == super::simd::Level::Avx2 {
        // SAFETY: this level is only chosen when the CPU has AVX2, FMA and F16C; lengths are
        // checked above.
        return unsafe { avx2::dot_nvfp4(packed, scales, x) } * (0.5 * tensor_scale);
    }
    scalar_dot(packed, scales, &x.q, &x.scale) * (0.5 * tensor_scale)
}

/// The reference for the SIMD kernel: the same integer block sums, the same per-block scaling,
/// accumulated in order.
fn scalar_dot(packed: &[u8], scales: &[u8], q: &[i8], xs: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for (b, &s) in scales.iter().enumerate() {
        let mut isum = 0i32;
        for (j, &byte) in packed[b * 8..b * 8 + 8].iter().enumerate() {
            let lo = E2M1_X2[(byte & 0xf) as usize] as i32;
            let hi = E2M1_X2[(byte >> 4) as usize] as i32;
            isum += lo * q[b * 16 + 2 * j] as i32 + hi * q[b * 16 + 2 * j + 1] as i32;
        }
        acc += isum as f32 * (e4m3_to_f32(s) * xs[b]);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{E2M1_X2, Q8Row};

    use crate::codec::fp8::e4m3_to_f32;

    /// Integer sums of two 16-element blocks (16 packed bytes against 32 activations) as
    /// eight i32 lanes: lanes 0..4 the first block, 4..8 the second.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_sums(p: *const u8, q: *const i8, table: __m256i) -> __m256i {
        // SAFETY: the caller guarantees 16 bytes at `p` and 32 at `q`.
        unsafe {
            let bytes = _mm_loadu_si128(p.cast());
            let mask = _mm_set1_epi8(0x0f);
            let lo = _mm_and_si128(bytes, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), mask);
            // Byte j holds elements 2j (low nibble) and 2j + 1 (high nibble).
            let first = _mm_unpacklo_epi8(lo, hi);
            let second = _mm_unpackhi_epi8(lo, hi);
            let codes = _mm256_set_m128i(second, first);
            let w = _mm256_shuffle_epi8(table, codes);
            let xq = _mm256_loadu_si256(q.cast());
            // maddubs wants one unsigned operand: |w| against q carrying w's sign.
            let prod = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));
            _mm256_madd_epi16(prod, _mm256_set1_epi16(1))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_nvfp4(packed: &[u8], scales: &[u8], x: &Q8Row) -> f32 {
        let blocks = scales.len();
        // SAFETY: the table holds 16 bytes.
        let table =
            unsafe { _mm256_loadu2_m128i(E2M1_X2.as_ptr().cast(), E2M1_X2.as_ptr().cast()) };
        let mut acc = _mm256_setzero_ps();
        let pairs = blocks / 2;
        for i in 0..pairs {
            let b = 2 * i;
            let fa = e4m3_to_f32(scales[b]) * x.scale[b];
            let fb = e4m3_to_f32(scales[b + 1]) * x.scale[b + 1];
            // SAFETY: blocks b and b + 1 lie inside `packed` and `x.q` (checked by the caller).
            let sums =
                unsafe { pair_sums(packed.as_ptr().add(8 * b), x.q.as_ptr().add(16 * b), table) };
            let f = _mm256_set_m128(_mm_set1_ps(fb), _mm_set1_ps(fa));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), f, acc);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let mut sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
            + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        if blocks % 2 == 1 {
            let b = blocks - 1;
            sum += super::scalar_dot(
                &packed[8 * b..],
                &scales[b..],
                &x.q[16 * b..16 * blocks],
                &x.scale[b..blocks],
            );
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    /// The SIMD kernel equals the scalar one (same integer sums, same scaling; only the f32
    /// accumulation order differs), and both approximate the exact f32 dot within the
    /// activation rounding.
    #[test]
    fn q8_dot_matches_scalar_and_approximates_exact() {
        let mut seed = 7u64;
        for &cols in &[16usize, 32, 48, 1024, 2688] {
            let packed: Vec<u8> = (0..cols / 2).map(|_| lcg(&mut seed) as u8).collect();
            // Finite E4M3 scales (exponent field 4..=8).
            let scales: Vec<u8> = (0..cols / 16)
                .map(|_| ((4 + lcg(&mut seed) % 5) << 3) as u8 | (lcg(&mut seed) % 8) as u8)
                .collect();
            let x: Vec<f32> = (0..cols)
                .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut q = Q8Row::default();
            q.quantize(&x);
            let ts = 0.37;
            let fast = dot_nvfp4(&packed, &scales, ts, &q);
            let slow = scalar_dot(&packed, &scales, &q.q, &q.scale) * 0.5 * ts;
            assert!(
                (fast - slow).abs() <= 1e-5 * slow.abs().max(1.0),
                "{cols}: {fast} vs {slow}"
            );
            // The exact dot, and the bound on what quantizing x can change: Σ |w|·amax/254.
            let (mut exact, mut bound) = (0.0f64, 0.0f64);
            for c in 0..cols {
                let code = (packed[c / 2] >> (4 * (c % 2))) & 0xf;
                let w = E2M1_X2[code as usize] as f64
                    * 0.5
                    * e4m3_to_f32(scales[c / 16]) as f64
                    * ts as f64;
                exact += w * x[c] as f64;
                bound += w.abs() * q.scale[c / 16] as f64 * 0.5;
            }
            assert!(
                (fast as f64 - exact).abs() <= bound * 1.001 + 1e-4,
                "{cols}: {fast} vs exact {exact} (bound {bound})"
            );
        }
    }

    #[test]
    fn zero_and_non_finite_blocks() {
        let mut q = Q8Row::default();
        q.quantize(&[0.0; 32]);
        assert_eq!(q.scale, [0.0, 0.0]);
        assert!(q.q.iter().all(|&v| v == 0));
        let packed = [0x77u8; 16];
        let scales = [0x38u8; 2];
        assert_eq!(dot_nvfp4(&packed, &scales, 1.0, &q), 0.0);
        let mut x = [1.0f32; 32];
        x[20] = f32::INFINITY;
        q.quantize(&x);
        assert!(dot_nvfp4(&packed, &scales, 1.0, &q).is_nan());
    }
}
