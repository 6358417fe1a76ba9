//! The opt-in fast decode path for NVFP4 weights (`--cpu-activations q8`): the activation row is
//! quantized to int8 with one f32 scale per 16-element block (the NVFP4 block size), and each
//! block's dot product is an exact integer sum of `2·e2m1 · q` (E2M1 doubled is an integer in
//! [-12, 12]) scaled once by `block scale · activation scale`. Integer multiply-adds process 32
//! elements per instruction pair, where the exact path decodes every weight to f32 first, so
//! the kernel stays memory-bound. Not bit-faithful to the reference: the activation rounding
//! (relative error up to 1/254 per element) is the only difference, and its effect on tokens
//! and routes is measured in docs/benchmarks.md.

use super::simd::TWO_POW_120;
use crate::codec::fp8::e4m3_to_f32;

/// An activation row quantized per 16-element block, laid out the way the packed weights'
/// nibbles unpack: each whole group of four blocks (64 elements, 32 packed bytes) holds its 32
/// even elements, then its 32 odd ones, so the low and high nibbles of one 32-byte load meet
/// their activations in two aligned loads; the blocks after the last whole group keep their
/// natural order. [`Q8Row::at`] maps an element to its place.
#[derive(Default)]
pub(crate) struct Q8Row {
    pub q: Vec<i8>,
    /// `x ≈ q · scale[c / 16]`.
    pub scale: Vec<f32>,
    /// Per whole step of eight blocks, in the SIMD kernel's lane order ([`STEP_LANES`]):
    /// `scale · 2^120`, which meets the block scales' `e4m3 · 2^-120` in one exact multiply;
    /// plain `scale` if that overflows anywhere (`split`).
    pub lane_scale: Vec<f32>,
    /// `12 · Σ q` per block, in the same order: the SIMD kernel multiplies `2·e2m1 + 12`
    /// (unsigned) and takes this back out.
    pub lane_offset: Vec<f32>,
    /// `lane_scale` is plain `scale` (some `scale · 2^120` is infinite).
    pub split: bool,
}

/// Where block `j` of a step of eight sits among the SIMD kernel's lanes: `hadd` of the two
/// groups' half-block sums leaves blocks 0, 1, 4, 5 in the low 128 bits and 2, 3, 6, 7 in the
/// high ones.
pub(crate) const STEP_LANES: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

impl Q8Row {
    /// Quantizes `x` (length a multiple of 16) into `self`, reusing its buffers.
    pub(crate) fn quantize(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(16));
        let blocks = x.len() / 16;
        self.q.clear();
        self.q.resize(x.len(), 0);
        self.scale.clear();
        let mut offset = Vec::with_capacity(blocks);
        for (b, block) in x.chunks_exact(16).enumerate() {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 || !amax.is_finite() {
                // Zeros quantize to zeros; a non-finite input poisons the block's sum the way
                // the exact path would.
                self.scale
                    .push(if amax == 0.0 { 0.0 } else { amax * f32::NAN });
                offset.push(0.0);
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
            offset.push(12.0 * sum as f32);
        }
        let whole = blocks / 8 * 8;
        self.split = self.scale[..whole]
            .iter()
            .any(|&s| s.is_finite() && !(s * TWO_POW_120).is_finite());
        let factor = if self.split { 1.0 } else { TWO_POW_120 };
        self.lane_scale.clear();
        self.lane_offset.clear();
        for b0 in (0..whole).step_by(8) {
            for &j in &STEP_LANES {
                self.lane_scale.push(self.scale[b0 + j] * factor);
                self.lane_offset.push(offset[b0 + j]);
            }
        }
    }

    /// Where element `e` of block `b` (of `blocks`) lives in `q`.
    #[inline]
    pub(crate) fn at(b: usize, e: usize, blocks: usize) -> usize {
        let group = b / GROUP_BLOCKS;
        if (group + 1) * GROUP_BLOCKS > blocks {
            return 16 * b + e;
        }
        let i = 16 * (b % GROUP_BLOCKS) + e;
        64 * group + 32 * (i % 2) + i / 2
    }
}

/// Blocks per 32-byte load of packed codes.
const GROUP_BLOCKS: usize = 4;

/// Twice the E2M1 value of each 4-bit code (code 8, "-0", is 0).
const E2M1_X2: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `Σ_c w[c]·x[c]` for one NVFP4 row against a quantized activation row.
pub(crate) fn dot_nvfp4(packed: &[u8], scales: &[u8], tensor_scale: f32, x: &Q8Row) -> f32 {
    let blocks = scales.len();
    assert!(
        packed.len() == blocks * 8
            && x.q.len() >= blocks * 16
            && x.scale.len() >= blocks
            && x.lane_scale.len() >= blocks / 8 * 8,
        "NVFP4 q8 row: lengths disagree"
    );
    #[cfg(target_arch = "x86_64")]
    if super::simd::level().has_avx2() {
        // SAFETY: this level is only chosen when the CPU has AVX2, FMA and F16C; lengths are
        // checked above.
        return unsafe { avx2::dot_nvfp4(packed, scales, x) } * (0.5 * tensor_scale);
    }
    scalar_dot(packed, scales, x, 0, blocks) * (0.5 * tensor_scale)
}

/// [`dot_nvfp4`] for `out.len()` consecutive rows of `cols` columns, whose codes and block
/// scales start at `packed` and `scales`: `out[i]` is row `i`'s dot with `x`.
pub(crate) fn dot_nvfp4_rows(
    packed: &[u8],
    scales: &[u8],
    tensor_scale: f32,
    cols: usize,
    x: &Q8Row,
    out: &mut [f32],
) {
    let (rows, blocks) = (out.len(), cols / 16);
    assert!(
        cols.is_multiple_of(16)
            && packed.len() >= rows * blocks * 8
            && scales.len() >= rows * blocks
            && x.q.len() >= cols
            && x.scale.len() >= blocks
            && x.lane_scale.len() >= blocks / 8 * 8,
        "NVFP4 q8 rows: lengths disagree"
    );
    #[cfg(target_arch = "x86_64")]
    if super::simd::level().has_avx2() {
        // SAFETY: this level is only chosen when the CPU has AVX2, FMA and F16C; lengths are
        // checked above.
        unsafe { avx2::dot_rows(packed, scales, blocks, x, 0.5 * tensor_scale, out) };
        return;
    }
    for (r, o) in out.iter_mut().enumerate() {
        let (p, s) = (
            &packed[r * blocks * 8..(r + 1) * blocks * 8],
            &scales[r * blocks..(r + 1) * blocks],
        );
        *o = scalar_dot(p, s, x, 0, blocks) * (0.5 * tensor_scale);
    }
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
    use crate::backend::cpu::simd::TWO_POW_120;
    use crate::backend::cpu::simd::avx2::{any_nan_e4m3, eight_rows_nan, mark_nan_rows};

    /// `2·e2m1 + 12` per code: unsigned, as `maddubs` wants its first operand.
    const E2M1_X2_PLUS_12: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];

    /// [`super::STEP_LANES`] as a byte shuffle of a step's eight block scales.
    static STEP_ORDER: [u8; 16] = {
        let mut o = [0x80u8; 16];
        let mut lane = 0;
        while lane < 8 {
            o[lane] = super::STEP_LANES[lane] as u8;
            lane += 1;
        }
        o
    };

    /// How far ahead (in bytes of packed codes) the kernel prefetches; as in the exact kernels,
    /// the hardware prefetcher alone leaves the loads waiting on DRAM.
    const PREFETCH: usize = 4096;

    /// `Σ (2·e2m1 + 12)·q` over four blocks: 32 packed bytes at `p` against their 64
    /// activations at `q` (even elements, then odd, as [`Q8Row`] lays them out). Lane `l` of
    /// the result sums elements `8l .. 8l + 8`: block `b` is lanes `2b` and `2b + 1`.
    ///
    /// Each `maddubs` pairs two products of one nibble half into an i16 (at most 2·24·127);
    /// adding the low- and high-nibble halves stays below 2^15, and `madd` widens to i32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group_sums(p: *const u8, q: *const i8, table: __m256i) -> __m256i {
        // SAFETY: the caller guarantees 32 bytes at `p` and 64 at `q`.
        unsafe {
            let bytes = _mm256_loadu_si256(p.cast());
            let mask = _mm256_set1_epi8(0x0f);
            let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, mask));
            let hi =
                _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), mask));
            let even = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(q.cast()));
            let odd = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(q.add(32).cast()));
            _mm256_madd_epi16(_mm256_add_epi16(even, odd), _mm256_set1_epi16(1))
        }
    }

    /// [`dot_nvfp4`] over consecutive rows: `out[i]` from the i-th `blocks`-block row of
    /// `packed` / `scales`, times `ts_half`. One call for many rows keeps the constants in
    /// registers and the prefetches running from one row into the next, which short rows
    /// (an expert's 1024 columns) otherwise pay for per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows(
        packed: &[u8],
        scales: &[u8],
        blocks: usize,
        x: &Q8Row,
        ts_half: f32,
        out: &mut [f32],
    ) {
        let row = |r: usize| {
            (
                &packed[r * blocks * 8..(r + 1) * blocks * 8],
                &scales[r * blocks..(r + 1) * blocks],
            )
        };
        let whole = out.len() / 8 * 8;
        let done = if blocks.is_multiple_of(8) {
            // Eight rows at a time: each row's eight lanes are summed together with the other
            // seven rows' by a transposing `hadd` tree, which adds lanes in exactly the order
            // `dot_nvfp4`'s scalar sum does, so every result is the same, bit for bit.
            let mut lanes = [_mm256_setzero_ps(); 8];
            for r0 in (0..whole).step_by(8) {
                for (i, l) in lanes.iter_mut().enumerate() {
                    let (p, s) = row(r0 + i);
                    // SAFETY: the caller's guarantees, for each row.
                    *l = unsafe { lane_sums(p, s, x) };
                }
                let nan_rows = eight_rows_nan(scales, r0, blocks);
                let h01 = _mm256_hadd_ps(lanes[0], lanes[1]);
                let h23 = _mm256_hadd_ps(lanes[2], lanes[3]);
                let h45 = _mm256_hadd_ps(lanes[4], lanes[5]);
                let h67 = _mm256_hadd_ps(lanes[6], lanes[7]);
                let (q0, q1) = (_mm256_hadd_ps(h01, h23), _mm256_hadd_ps(h45, h67));
                let sums = _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(q0, q1),
                    _mm256_permute2f128_ps::<0x31>(q0, q1),
                );
                let v = _mm256_mul_ps(sums, _mm256_set1_ps(ts_half));
                // SAFETY: rows r0 .. r0 + 8 are inside `out`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(r0), v) };
                mark_nan_rows(&mut out[r0..r0 + 8], nan_rows);
            }
            whole
        } else {
            0
        };
        for (r, o) in out.iter_mut().enumerate().skip(done) {
            let (p, s) = row(r);
            // SAFETY: the caller's guarantees, for each row.
            *o = unsafe { dot_nvfp4(p, s, x) } * ts_half;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_nvfp4(packed: &[u8], scales: &[u8], x: &Q8Row) -> f32 {
        // SAFETY: the caller's guarantees.
        let total = unsafe { lane_sums(packed, scales, x) };
        let (blocks, done) = (scales.len(), scales.len() / 8 * 8);
        // NaN block scales are not decoded by the loop (see `step_sums`); a NaN factor
        // would make the sum NaN, as the exact path's would.
        if any_nan_e4m3(scales) {
            return f32::NAN;
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
        let sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
            + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        if done == blocks {
            return sum;
        }
        sum + super::scalar_dot(packed, scales, x, done, blocks)
    }

    /// The whole steps (eight blocks each) of a row's dot as eight lane sums; the blocks past
    /// the last whole step are left out. NaN block scales are not decoded (the sums are then
    /// meaningless): callers check with [`any_nan_e4m3`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn lane_sums(packed: &[u8], scales: &[u8], x: &Q8Row) -> __m256 {
        let steps = scales.len() / 8;
        // SAFETY: the caller guarantees `x` was quantized from `scales.len() · 16` values, so
        // its lane vectors hold `steps` whole steps.
        unsafe {
            if x.split {
                step_sums::<true>(packed, scales, x, steps)
            } else {
                step_sums::<false>(packed, scales, x, steps)
            }
        }
    }

    /// Eight blocks (128 elements) per step: their eight factors (block scale x activation
    /// scale) in one vector, in the lane order [`super::STEP_LANES`] that one `hadd` of the
    /// two groups' half-block sums leaves; the +12 of the weights comes back out as
    /// factor x 12·Σq per block.
    ///
    /// The block scales become `e4m3 · 2^-120` by a shift: the sign-extended byte shifted
    /// left by 20 has its magnitude bits at 20-26 and the sign (copied) at 31, and the mask
    /// keeps those (NaN codes give a finite value: the caller checks for them).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step_sums<const SPLIT: bool>(
        packed: &[u8],
        scales: &[u8],
        x: &Q8Row,
        steps: usize,
    ) -> __m256 {
        // SAFETY: the table holds 16 bytes.
        let table = unsafe {
            _mm256_loadu2_m128i(
                E2M1_X2_PLUS_12.as_ptr().cast(),
                E2M1_X2_PLUS_12.as_ptr().cast(),
            )
        };
        // SAFETY: the table holds 16 bytes.
        let order = unsafe { _mm_loadu_si128(STEP_ORDER.as_ptr().cast()) };
        let mut acc = _mm256_setzero_ps();
        let mut offset = _mm256_setzero_ps();
        let (p, q, s) = (packed.as_ptr(), x.q.as_ptr(), scales.as_ptr());
        let (xs, xo) = (x.lane_scale.as_ptr(), x.lane_offset.as_ptr());
        for i in 0..steps {
            let b0 = 8 * i;
            // SAFETY: blocks b0 .. b0 + 8 lie inside `scales`, `packed` (8 bytes per block),
            // `x.q` (16 per block) and the lane vectors, checked by the callers; both groups
            // are whole, so `x.q` holds them in the grouped layout. Prefetches never fault.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(8 * b0 + PREFETCH).cast());
                _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(b0 + PREFETCH / 8).cast());
                let sb = _mm_shuffle_epi8(_mm_loadl_epi64(s.add(b0).cast()), order);
                let bits = _mm256_slli_epi32::<20>(_mm256_cvtepi8_epi32(sb));
                let mut ws = _mm256_castsi256_ps(_mm256_and_si256(
                    bits,
                    _mm256_set1_epi32(0x87f0_0000u32 as i32),
                ));
                if SPLIT {
                    ws = _mm256_mul_ps(ws, _mm256_set1_ps(TWO_POW_120));
                }
                let f = _mm256_mul_ps(ws, _mm256_loadu_ps(xs.add(b0)));
                offset = _mm256_fmadd_ps(f, _mm256_loadu_ps(xo.add(b0)), offset);
                let s0 = group_sums(p.add(8 * b0), q.add(16 * b0), table);
                let s1 = group_sums(p.add(8 * b0 + 32), q.add(16 * b0 + 64), table);
                let (f0, f1) = (_mm256_castsi256_ps(s0), _mm256_castsi256_ps(s1));
                let blocks = _mm256_add_epi32(
                    _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(f0, f1)),
                    _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(f0, f1)),
                );
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(blocks), f, acc);
            }
        }
        _mm256_sub_ps(acc, offset)
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

    /// The many-row entry point returns exactly what the one-row one does for every row, NaN
    /// block scales included.
    #[test]
    fn rows_equal_single_rows() {
        let mut seed = 11u64;
        let cases = [
            (1usize, 16usize, false),
            (2, 48, false),
            (5, 1024, true),
            (7, 176, false),
            (4, 2688, true),
            // Eight rows at a time, then a remainder; and with a NaN, one row at a time.
            (19, 1024, false),
            (8, 2688, false),
            (17, 128, true),
            (9, 176, false),
        ];
        for &(rows, cols, nan) in &cases {
            let packed: Vec<u8> = (0..rows * cols / 2).map(|_| lcg(&mut seed) as u8).collect();
            let mut scales: Vec<u8> = (0..rows * cols / 16)
                .map(|_| ((4 + lcg(&mut seed) % 5) << 3) as u8 | (lcg(&mut seed) % 8) as u8)
                .collect();
            if nan {
                // A NaN block scale in row 2; the others stay finite.
                scales[2 * cols / 16 + 1] = 0x7f;
            }
            let x: Vec<f32> = (0..cols)
                .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut q = Q8Row::default();
            q.quantize(&x);
            let mut out = vec![0.0f32; rows];
            dot_nvfp4_rows(&packed, &scales, 0.37, cols, &q, &mut out);
            for (r, &v) in out.iter().enumerate() {
                let one = dot_nvfp4(
                    &packed[r * cols / 2..(r + 1) * cols / 2],
                    &scales[r * cols / 16..(r + 1) * cols / 16],
                    0.37,
                    &q,
                );
                assert_eq!(
                    v.to_bits(),
                    one.to_bits(),
                    "{rows}x{cols} row {r}: {v} vs {one}"
                );
                assert_eq!(v.is_nan(), nan && r == 2, "{rows}x{cols} row {r}");
            }
        }
    }

    /// Negative block scales (the sign of the E4M3 byte) and activations large enough that
    /// `scale · 2^120` overflows (the kernel's split path) give what the scalar kernel gives,
    /// and NaN scales of either sign, in a whole step or the tail, make the row NaN.
    #[test]
    fn signed_scales_large_activations_and_nans() {
        let mut seed = 13u64;
        for &(cols, big) in &[(1024usize, false), (1024, true), (176, true), (2688, true)] {
            let packed: Vec<u8> = (0..cols / 2).map(|_| lcg(&mut seed) as u8).collect();
            let mut scales: Vec<u8> = (0..cols / 16)
                .map(|_| {
                    let sign = ((lcg(&mut seed) % 2) << 7) as u8;
                    sign | ((4 + lcg(&mut seed) % 5) << 3) as u8 | (lcg(&mut seed) % 8) as u8
                })
                .collect();
            let magnitude = if big { 1e6 } else { 1.0 };
            let x: Vec<f32> = (0..cols)
                .map(|_| ((lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0) * magnitude)
                .collect();
            let mut q = Q8Row::default();
            q.quantize(&x);
            assert_eq!(q.split, big, "{cols}");
            let fast = dot_nvfp4(&packed, &scales, 0.37, &q);
            let slow = scalar_dot(&packed, &scales, &q, 0, cols / 16) * 0.5 * 0.37;
            assert!(
                (fast - slow).abs() <= 1e-5 * slow.abs().max(magnitude),
                "{cols}: {fast} vs {slow}"
            );
            for at in [0, cols / 16 - 1] {
                for nan in [0x7fu8, 0xff] {
                    let keep = scales[at];
                    scales[at] = nan;
                    assert!(
                        dot_nvfp4(&packed, &scales, 0.37, &q).is_nan(),
                        "{cols} {at}"
                    );
                    let mut out = [0.0f32; 1];
                    dot_nvfp4_rows(&packed, &scales, 0.37, cols, &q, &mut out);
                    assert!(out[0].is_nan(), "{cols} {at} rows");
                    scales[at] = keep;
                }
            }
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
