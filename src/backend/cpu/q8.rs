//! The opt-in fast decode path for NVFP4 weights (`--cpu-activations q8`): the activation row is
//! quantized to int8 with one f32 scale per 16-element block (the NVFP4 block size), and each
//! block's dot product is an exact integer sum of `2·e2m1 · q` (E2M1 doubled is an integer in
//! [-12, 12]) scaled once by `block scale · activation scale`. Integer multiply-adds process 32
//! elements per instruction pair, where the exact path decodes every weight to f32 first, so
//! the kernel stays memory-bound. Not bit-faithful to the reference: the activation rounding
//! (relative error up to 1/254 per element) is the only difference, and its effect on tokens
//! and routes is measured in docs/benchmarks.md.

use crate::codec::fp8::e4m3_to_f32;

/// An activation row quantized per 16-element block, laid out the way the packed weights'
/// nibbles unpack: within each pair of blocks (A, B), `q` holds A's even elements, B's even
/// elements, A's odd elements, B's odd elements (8 each); a trailing unpaired block keeps its
/// natural order. [`Q8Row::at`] maps an element to its place.
#[derive(Default)]
pub(crate) struct Q8Row {
    pub q: Vec<i8>,
    /// `x ≈ q · scale[c / 16]`.
    pub scale: Vec<f32>,
    /// `12 · Σ q` per block: the SIMD kernel multiplies `2·e2m1 + 12` (unsigned) and takes
    /// this back out.
    pub offset: Vec<f32>,
}

impl Q8Row {
    /// Quantizes `x` (length a multiple of 16) into `self`, reusing its buffers.
    pub(crate) fn quantize(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(16));
        let blocks = x.len() / 16;
        self.q.clear();
        self.q.resize(x.len(), 0);
        self.scale.clear();
        self.offset.clear();
        for (b, block) in x.chunks_exact(16).enumerate() {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 || !amax.is_finite() {
                // Zeros quantize to zeros; a non-finite input poisons the block's sum the way
                // the exact path would.
                self.scale
                    .push(if amax == 0.0 { 0.0 } else { amax * f32::NAN });
                self.offset.push(0.0);
                continue;
            }
            let inv = 127.0 / amax;
            self.scale.push(amax / 127.0);
            let mut sum = 0i32;
            for (e, v) in block.iter().enumerate() {
                let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                sum += q as i32;
                self.q[Self::at(b, e, blocks)] = q;
            }
            self.offset.push(12.0 * sum as f32);
        }
    }

    /// Where element `e` of block `b` (of `blocks`) lives in `q`.
    #[inline]
    pub(crate) fn at(b: usize, e: usize, blocks: usize) -> usize {
        let pair = 32 * (b / 2);
        if b + 1 == blocks && blocks % 2 == 1 {
            return pair + e;
        }
        pair + 16 * (e % 2) + 8 * (b % 2) + e / 2
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
    scalar_dot(packed, scales, x, 0, blocks) * (0.5 * tensor_scale)
}

/// The reference for the SIMD kernel: the same integer block sums, the same per-block scaling,
/// accumulated in order, over blocks `b0..` of a row of `blocks`.
fn scalar_dot(packed: &[u8], scales: &[u8], x: &Q8Row, b0: usize, blocks: usize) -> f32 {
    let mut acc = 0.0f32;
    for b in b0..blocks {
        let mut isum = 0i32;
        for (j, &byte) in packed[b * 8..b * 8 + 8].iter().enumerate() {
            let lo = E2M1_X2[(byte & 0xf) as usize] as i32;
            let hi = E2M1_X2[(byte >> 4) as usize] as i32;
            isum += lo * x.q[Q8Row::at(b, 2 * j, blocks)] as i32
                + hi * x.q[Q8Row::at(b, 2 * j + 1, blocks)] as i32;
        }
        acc += isum as f32 * (e4m3_to_f32(scales[b]) * x.scale[b]);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Q8Row;
    use crate::backend::cpu::simd::avx2::e4m3x8;

    /// `2·e2m1 + 12` per code: unsigned, as `maddubs` wants its first operand.
    const E2M1_X2_PLUS_12: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];

    /// `Σ (2·e2m1 + 12)·q` over two blocks (16 packed bytes against their 32 activations, in
    /// [`Q8Row`]'s layout) as eight i32 lanes: lanes 0, 1, 4, 5 the first block, 2, 3, 6, 7
    /// the second.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_sums(p: *const u8, q: *const i8, table: __m256i) -> __m256i {
        // SAFETY: the caller guarantees 16 bytes at `p` and 32 at `q`.
        unsafe {
            let bytes = _mm_loadu_si128(p.cast());
            let mask = _mm_set1_epi8(0x0f);
            let lo = _mm_and_si128(bytes, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), mask);
            let w = _mm256_shuffle_epi8(table, _mm256_set_m128i(hi, lo));
            let prod = _mm256_maddubs_epi16(w, _mm256_loadu_si256(q.cast()));
            _mm256_madd_epi16(prod, _mm256_set1_epi16(1))
        }
    }

    /// Lane pattern selecting pair j's two block factors for [`pair_sums`]' lanes.
    const PAIR_LANES: [[i32; 8]; 4] = [
        [0, 0, 1, 1, 0, 0, 1, 1],
        [2, 2, 3, 3, 2, 2, 3, 3],
        [4, 4, 5, 5, 4, 4, 5, 5],
        [6, 6, 7, 7, 6, 6, 7, 7],
    ];

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_nvfp4(packed: &[u8], scales: &[u8], x: &Q8Row) -> f32 {
        let blocks = scales.len();
        // SAFETY: the table holds 16 bytes.
        let table = unsafe {
            _mm256_loadu2_m128i(
                E2M1_X2_PLUS_12.as_ptr().cast(),
                E2M1_X2_PLUS_12.as_ptr().cast(),
            )
        };
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offset = _mm256_setzero_ps();
        // Eight blocks (128 elements) per step: their eight factors (block scale x activation
        // scale) in one vector, then four pairs of integer block sums; the +12 of the weights
        // comes back out as factor x 12·Σq per block.
        let steps = blocks / 8;
        for i in 0..steps {
            let b0 = 8 * i;
            // SAFETY: blocks b0 .. b0 + 8 lie inside `scales`, `x.scale`, `x.offset`, `packed`
            // (8 bytes per block) and `x.q` (16 per block), checked by the caller.
            unsafe {
                let ws = e4m3x8(_mm_loadl_epi64(scales.as_ptr().add(b0).cast()));
                let f = _mm256_mul_ps(ws, _mm256_loadu_ps(x.scale.as_ptr().add(b0)));
                offset = _mm256_fmadd_ps(f, _mm256_loadu_ps(x.offset.as_ptr().add(b0)), offset);
                for (j, lanes) in PAIR_LANES.iter().enumerate() {
                    let b = b0 + 2 * j;
                    let sums =
                        pair_sums(packed.as_ptr().add(8 * b), x.q.as_ptr().add(16 * b), table);
                    let fj = _mm256_permutevar8x32_ps(f, _mm256_loadu_si256(lanes.as_ptr().cast()));
                    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), fj, acc[j]);
                }
            }
        }
        let total = _mm256_sub_ps(
            _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])),
            offset,
        );
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
        let sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
            + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        sum + super::scalar_dot(packed, scales, x, 8 * steps, blocks)
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
        for &cols in &[16usize, 32, 48, 160, 176, 1024, 2688] {
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
            let slow = scalar_dot(&packed, &scales, &q, 0, cols / 16) * 0.5 * ts;
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
