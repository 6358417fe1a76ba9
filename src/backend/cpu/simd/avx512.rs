//! The AVX-512F NVFP4 dot: 512-bit `vpermps` looks a 4-bit code up in all sixteen E2M1 values
//! at once (it reads only the low four bits of each index), so a code becomes an f32 in one
//! instruction where AVX2 needs two byte tables, an interleave and a widening. Every other
//! kernel of this level is the AVX2 one.
//!
//! Selected only by `NEMOTRON_CPU_SIMD=avx512` until it has run on AVX-512 hardware; its tests
//! (the same as the AVX2 kernel's, against the fallback) run wherever the CPU has AVX-512F.

use std::arch::x86_64::*;

use super::NV_STEP;
use super::TWO_POW_120;
use super::avx2::e4m3x8_scaled;
use crate::codec::nvfp4::E2M1_VALUES;

/// Prefetch distance in bytes of codes, as the AVX2 kernel's.
const PF: usize = 4096;

/// Lane indices of the block-multiplier vector for the k-th 16 bytes of a step: blocks 2k
/// (lanes 0-7) and 2k + 1 (lanes 8-15).
static PAIRS: [[i32; 16]; 4] = {
    let mut t = [[0i32; 16]; 4];
    let mut k = 0;
    while k < 4 {
        let mut l = 0;
        while l < 16 {
            t[k][l] = (2 * k + l / 8) as i32;
            l += 1;
        }
        k += 1;
    }
    t
};

/// Where column `c` of each 32-column chunk goes in the prepared input: the chunk's 16 even
/// columns, then its 16 odd ones (low nibbles, then high nibbles, of 16 packed bytes).
pub(super) fn prepared_column(v: usize, i: usize) -> usize {
    let k = 8 * v + i;
    if k < 16 { 2 * k } else { 2 * (k - 16) + 1 }
}

/// Bit 7 of a byte of the result is set where that scale byte is an E4M3 NaN (`0x7f`/`0xff`):
/// `(b & 0x7f) + 1` reaches `0x80` only for those and never carries into the next byte.
fn nan_bytes(bytes: u64) -> u64 {
    ((bytes & 0x7f7f_7f7f_7f7f_7f7f) + 0x0101_0101_0101_0101) & 0x8080_8080_8080_8080
}

/// See [`super::dot_nvfp4`]; lengths are checked there. Numerics as the AVX2 kernel's: each
/// product `e2m1·x` is rounded once, each block's sum is scaled by `e4m3·tensor_scale` (itself
/// rounded once, as the reference decode has it), and the sums are added in a fixed order.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dot_nvfp4(packed: &[u8], scales: &[u8], ts: f32, xp: &[f32]) -> f32 {
    // `(e4m3·2^-120)·(ts·2^120)`, both factors exact; where `ts·2^120` overflows, `2^120` and
    // `ts` one after the other (the first product is exact, so still one rounding).
    let ts120 = ts * TWO_POW_120;
    let (m1, m2) = if ts120.is_finite() {
        (ts120, 1.0)
    } else {
        (TWO_POW_120, ts)
    };
    let mul = (_mm256_set1_ps(m1), _mm256_set1_ps(m2));
    let cols = scales.len() * 16;
    let steps = cols / NV_STEP;
    // SAFETY: the table holds 16 floats.
    let table = unsafe { _mm512_loadu_ps(E2M1_VALUES.as_ptr()) };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut nan = 0u64;
    // SAFETY: step i reads packed[64i..64i+64], scales[8i..8i+8], xp[128i..128i+128], all
    // inside the slices for i < steps; the tail reads local buffers and the padded end of xp
    // (x_len rounds up to whole steps).
    unsafe {
        for i in 0..steps {
            nan |= step(
                packed.as_ptr().add(64 * i),
                scales.as_ptr().add(8 * i),
                xp.as_ptr().add(NV_STEP * i),
                mul,
                table,
                &mut acc,
            );
        }
        if !cols.is_multiple_of(NV_STEP) {
            // Zero codes, zero scales and zero (padded) inputs add exact zeros.
            let (p, s) = super::nv_tail(packed, scales, steps);
            let x = xp[NV_STEP * steps..NV_STEP * (steps + 1)].as_ptr();
            nan |= step(p.as_ptr(), s.as_ptr(), x, mul, table, &mut acc);
        }
    }
    // NaN scales are not decoded (see `e4m3x8_scaled`); decoding would make the sum NaN.
    if nan != 0 {
        return f32::NAN;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ))
}

/// One step: 64 packed bytes (blocks 0-7) and their 8 scales at `p`/`s`, 128 prepared inputs
/// at `x`. Returns [`nan_bytes`] of the scales.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn step(
    p: *const u8,
    s: *const u8,
    x: *const f32,
    (m1, m2): (__m256, __m256),
    table: __m512,
    acc: &mut [__m512; 4],
) -> u64 {
    // SAFETY: the caller guarantees 64 bytes at `p`, 8 at `s` and 128 floats at `x`;
    // prefetches never fault; PAIRS rows hold 16 lanes.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF).cast());
        _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(PF / 8).cast());
        let bytes = s.cast::<u64>().read_unaligned();
        let d8 = _mm256_mul_ps(
            _mm256_mul_ps(e4m3x8_scaled(_mm_cvtsi64_si128(bytes as i64)), m1),
            m2,
        );
        let d = _mm512_castps256_ps512(d8);
        for (k, a) in acc.iter_mut().enumerate() {
            let codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(16 * k).cast()));
            let even = _mm512_permutexvar_ps(codes, table);
            let odd = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(codes), table);
            let xk = x.add(32 * k);
            let sums = _mm512_fmadd_ps(
                odd,
                _mm512_loadu_ps(xk.add(16)),
                _mm512_mul_ps(even, _mm512_loadu_ps(xk)),
            );
            let pair = _mm512_loadu_si512(PAIRS[k].as_ptr().cast());
            *a = _mm512_fmadd_ps(sums, _mm512_permutexvar_ps(pair, d), *a);
        }
        nan_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    //! Runs without AVX-512: the kernel's lane layout (`prepared_column` for the inputs,
    //! `PAIRS` for the block scales, even and odd lanes from the low and high nibbles of 16
    //! bytes) replayed lane by lane in plain Rust must compute the row's dot product. A wrong
    //! table or a swapped nibble half fails it; what it cannot check is the intrinsics
    //! themselves, which the tests of `simd.rs` run wherever the CPU has AVX-512F.
    use super::*;
    use crate::backend::cpu::simd::{Kind, Level, dot_nvfp4, prepare_x, x_len};
    use crate::codec::fp8::E4M3_TO_F32;

    fn lane_model(packed: &[u8], scales: &[u8], ts: f32, xp: &[f32]) -> f32 {
        let steps = (scales.len() * 16).div_ceil(NV_STEP);
        let (mut p, mut s) = (packed.to_vec(), scales.to_vec());
        p.resize(64 * steps, 0);
        s.resize(8 * steps, 0);
        let mut acc = [[0.0f32; 16]; 4];
        for i in 0..steps {
            let d: Vec<f32> = (0..8)
                .map(|b| E4M3_TO_F32[s[8 * i + b] as usize] * ts)
                .collect();
            for (k, lanes) in acc.iter_mut().enumerate() {
                let x = &xp[NV_STEP * i + 32 * k..];
                for (j, a) in lanes.iter_mut().enumerate() {
                    let code = p[64 * i + 16 * k + j];
                    let even = E2M1_VALUES[usize::from(code & 0x0f)];
                    let odd = E2M1_VALUES[usize::from(code >> 4)];
                    let sum = odd.mul_add(x[16 + j], even * x[j]);
                    *a = sum.mul_add(d[PAIRS[k][j] as usize], *a);
                }
            }
        }
        acc.iter().flatten().sum()
    }

    #[test]
    fn the_lane_layout_computes_the_dot() {
        let mut seed = 0x0a5c_512f_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for cols in [16usize, 48, 128, 144, 400, 1024, 2688] {
            let packed: Vec<u8> = (0..cols / 2).map(|_| next() as u8).collect();
            // Finite E4M3 scales only: exponent field below 15.
            let scales: Vec<u8> = (0..cols / 16).map(|_| next() as u8 & 0xf7).collect();
            let x: Vec<f32> = (0..cols)
                .map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                .collect();
            let ts = 0.0037;
            let mut xp = vec![0.0; x_len(Level::Avx512, Kind::Nvfp4, cols)];
            prepare_x(Level::Avx512, Kind::Nvfp4, &x, &mut xp);
            let got = lane_model(&packed, &scales, ts, &xp);
            let want = dot_nvfp4(Level::Scalar, &packed, &scales, ts, &x);
            let abs: f32 = (0..cols)
                .map(|c| {
                    let code = (packed[c / 2] >> (4 * (c % 2))) & 0x0f;
                    (E2M1_VALUES[usize::from(code)]
                        * E4M3_TO_F32[scales[c / 16] as usize]
                        * ts
                        * x[c])
                        .abs()
                })
                .sum();
            let tol = (cols as f32 / 8.0 + 24.0) * f32::EPSILON * abs;
            assert!(
                (got - want).abs() <= tol,
                "{cols} columns: lane model {got:e} vs fallback {want:e} (tolerance {tol:e})"
            );
        }
    }
}
