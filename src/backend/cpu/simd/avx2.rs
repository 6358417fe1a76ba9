//! Every function needs AVX2, FMA and F16C; callers check with [`super::level`].

use std::arch::x86_64::*;

use super::{BF16_STEP, E2M1_VALUES, E4M3_TO_F32, FP8_STEP, FP8_SUM_SCALE, NV_STEP, TWO_POW_120};
use crate::codec::{bf16_to_f32, f16_to_f32};

/// Byte `b` (0 = low) of the BF16 pattern (upper half of the f32) of every E2M1 code.
/// All sixteen values are exact in BF16, and code 8 is +0.0 as in `E2M1_VALUES`.
const fn e2m1_bf16_byte(b: u32) -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bits = E2M1_VALUES[i].to_bits();
        assert!(bits & 0xffff == 0, "E2M1 values must be exact in BF16");
        t[i] = (bits >> (16 + 8 * b)) as u8;
        i += 1;
    }
    t
}
static E2M1_LO: [u8; 16] = e2m1_bf16_byte(0);
static E2M1_HI: [u8; 16] = e2m1_bf16_byte(1);

/// How far ahead (in bytes of weights) the dots prefetch. The hardware prefetcher alone
/// leaves the loads waiting on DRAM (NVFP4 streamed at ~55% of its in-cache speed without
/// this, ~95% with it on the EPYC this was tuned on; 1.5-6 KiB all work). Prefetches past
/// the end of a row never fault and usually help: the next row follows.
const PF_NV: usize = 4096;
const PF_DENSE: usize = 4096;

/// Horizontal sum in a fixed order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Eight E4M3 bytes (the low 8 of `b`) to f32, bit-identical to `E4M3_TO_F32` (NaNs
/// included): `(b & 0x7f) << 20` is the value times 2^-120 as an f32 bit pattern, exact
/// for normals and subnormals alike, and the multiply by 2^120 is exact.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn e4m3x8(b: __m128i) -> __m256 {
    let b = _mm256_cvtepu8_epi32(b);
    let mag = _mm256_and_si256(b, _mm256_set1_epi32(0x7f));
    let sign = _mm256_slli_epi32::<24>(_mm256_and_si256(b, _mm256_set1_epi32(0x80)));
    let bits = _mm256_or_si256(_mm256_slli_epi32::<20>(mag), sign);
    let v = _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(TWO_POW_120));
    let nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7f));
    let qnan = _mm256_or_si256(sign, _mm256_set1_epi32(0x7fc0_0000));
    _mm256_blendv_ps(v, _mm256_castsi256_ps(qnan), _mm256_castsi256_ps(nan))
}

/// Eight non-NaN E4M3 bytes times `2^-120`, as f32 (exact; NaN codes give ±480·2^-120).
/// The sign-extended byte shifted left by 20 has its magnitude bits at 20-26 and copies of
/// the sign at 27-31; the mask keeps the sign at bit 31 only.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn e4m3x8_scaled(b: __m128i) -> __m256 {
    let w = _mm256_slli_epi32::<20>(_mm256_cvtepi8_epi32(b));
    _mm256_castsi256_ps(_mm256_and_si256(
        w,
        _mm256_set1_epi32(0x87f0_0000u32 as i32),
    ))
}

/// Whether any of `scales` is an E4M3 NaN (magnitude bits all set): doubling a byte drops
/// its sign, and only the NaNs double to 0xfe. The NVFP4 dots call it after streaming a
/// row's scales, so it reads them from L1; testing each step inside the loop cost more.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn any_nan_e4m3(scales: &[u8]) -> bool {
    let chunks = scales.chunks_exact(32);
    let tail = chunks.remainder();
    let mut hits = _mm256_setzero_si256();
    for c in chunks {
        // SAFETY: `c` holds 32 bytes.
        let v = unsafe { _mm256_loadu_si256(c.as_ptr().cast()) };
        let doubled = _mm256_add_epi8(v, v);
        hits = _mm256_or_si256(hits, _mm256_cmpeq_epi8(doubled, _mm256_set1_epi8(-2)));
    }
    _mm256_movemask_epi8(hits) != 0 || tail.iter().any(|&b| b & 0x7f == 0x7f)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn even_words(w: __m256i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn odd_words(w: __m256i) -> __m256 {
    _mm256_castsi256_ps(_mm256_and_si256(
        w,
        _mm256_set1_epi32(0xffff_0000u32 as i32),
    ))
}

/// E2M1 tables broadcast to both lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn e2m1_tables() -> (__m256i, __m256i) {
    // SAFETY: both tables are 16 bytes.
    unsafe {
        (
            _mm256_broadcastsi128_si256(_mm_loadu_si128(E2M1_LO.as_ptr().cast())),
            _mm256_broadcastsi128_si256(_mm_loadu_si128(E2M1_HI.as_ptr().cast())),
        )
    }
}

/// The weights of half a step of the NVFP4 dot: 32 packed bytes `v` (two blocks per 128-bit
/// lane) decoded to f32 code values, in the order [`nv_half_dot`] takes them.
///
/// Low nibbles give the even columns, high nibbles the odd ones; both go through the two
/// BF16 byte tables, are interleaved into words and widened to f32 by a shift (even words)
/// or a mask (odd words). Vector k of the eight holds, in lane i, column
/// 4·(i%4) + [0, 2, 16, 18, 1, 3, 17, 19][k] of the 32 columns that lane i's 128-bit half
/// of `v` encodes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nv_half_weights(v: __m256i, tl: __m256i, th: __m256i) -> [__m256; 8] {
    let m0f = _mm256_set1_epi8(0x0f);
    let lo = _mm256_and_si256(v, m0f);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f);
    let (llo, hlo) = (_mm256_shuffle_epi8(tl, lo), _mm256_shuffle_epi8(th, lo));
    let (lhi, hhi) = (_mm256_shuffle_epi8(tl, hi), _mm256_shuffle_epi8(th, hi));
    let w0 = _mm256_unpacklo_epi8(llo, hlo);
    let w1 = _mm256_unpackhi_epi8(llo, hlo);
    let w2 = _mm256_unpacklo_epi8(lhi, hhi);
    let w3 = _mm256_unpackhi_epi8(lhi, hhi);
    [
        even_words(w0),
        odd_words(w0),
        even_words(w2),
        odd_words(w2),
        even_words(w1),
        odd_words(w1),
        even_words(w3),
        odd_words(w3),
    ]
}

/// Half a step of the NVFP4 dot against 64 prepared inputs at `x`, the weights from
/// [`nv_half_weights`]. Returns the per-lane sums of the first block of each lane and of the
/// second. One token's sums are this exact sequence of operations whether the weights were
/// decoded for it alone or for several tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nv_half_dot(w: &[__m256; 8], x: *const f32) -> (__m256, __m256) {
    // SAFETY: the caller guarantees 64 floats at `x`.
    unsafe {
        let xv = |k: usize| _mm256_loadu_ps(x.add(8 * k));
        let mut first = _mm256_mul_ps(w[0], xv(0));
        first = _mm256_fmadd_ps(w[1], xv(1), first);
        first = _mm256_fmadd_ps(w[2], xv(4), first);
        first = _mm256_fmadd_ps(w[3], xv(5), first);
        let mut second = _mm256_mul_ps(w[4], xv(2));
        second = _mm256_fmadd_ps(w[5], xv(3), second);
        second = _mm256_fmadd_ps(w[6], xv(6), second);
        second = _mm256_fmadd_ps(w[7], xv(7), second);
        (first, second)
    }
}

/// One step of the NVFP4 dot: 64 packed bytes (blocks 0-7) and their 8 scales at `p`/`s`,
/// 128 prepared inputs at `x`. The two halves pair the lanes as blocks (0,1 | 4,5) and
/// (2,3 | 6,7), so each block-multiplier vector is one in-lane broadcast.
///
/// The multipliers are `(e4m3·2^-120) · (ts·2^120)`: both factors exact, so the product is
/// `e4m3·ts` rounded once, as the reference decode has it. When `ts·2^120` would overflow
/// (`SPLIT`), the first factor of `ts` is `2^120` and the second the tensor scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nv_step<const SPLIT: bool>(
    p: *const u8,
    s: *const u8,
    x: *const f32,
    ts: (__m256, __m256),
    tabs: (__m256i, __m256i),
    acc: &mut [__m256; 4],
) {
    // SAFETY: the caller's guarantees, for one token. The one-token dot is the many-token
    // one's code, so the two agree bit for bit by construction.
    unsafe { nv_step_tokens::<SPLIT, 1>(p, s, [x], ts, tabs, std::array::from_mut(acc)) }
}

/// See [`super::dot_nvfp4`]; lengths are checked there.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_nvfp4(packed: &[u8], scales: &[u8], ts: f32, xp: &[f32]) -> f32 {
    let ts120 = ts * TWO_POW_120;
    // SAFETY: the caller's guarantees, passed on.
    unsafe {
        if ts120.is_finite() {
            let t = (_mm256_set1_ps(ts120), _mm256_setzero_ps());
            nv_dot::<false>(packed, scales, t, xp)
        } else {
            let t = (_mm256_set1_ps(TWO_POW_120), _mm256_set1_ps(ts));
            nv_dot::<true>(packed, scales, t, xp)
        }
    }
}

/// Eight rows at a time where the rows are whole steps: each row's lanes are summed by a transposing tree that adds them in exactly [`hsum`]'s order,
/// so every result is what [`dot_nvfp4`] gives for its row. Other rows go one by one.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_nvfp4_rows(
    packed: &[u8],
    scales: &[u8],
    ts: f32,
    cols: usize,
    xp: &[f32],
    out: &mut [f32],
) {
    let (rows, pb, sb) = (out.len(), cols / 2, cols / 16);
    let row = |r: usize| (&packed[r * pb..(r + 1) * pb], &scales[r * sb..(r + 1) * sb]);
    let whole = if cols.is_multiple_of(NV_STEP) {
        rows / 8 * 8
    } else {
        0
    };
    let ts120 = ts * TWO_POW_120;
    let done = if whole > 0 {
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for r0 in (0..whole).step_by(8) {
            let mut v = [_mm256_setzero_ps(); 8];
            for (i, l) in v.iter_mut().enumerate() {
                let (p, s) = row(r0 + i);
                // SAFETY: the caller's guarantees, for each row.
                *l = unsafe {
                    if ts120.is_finite() {
                        let t = (_mm256_set1_ps(ts120), _mm256_setzero_ps());
                        nv_lanes::<false>(p, s, t, xp)
                    } else {
                        let t = (_mm256_set1_ps(TWO_POW_120), _mm256_set1_ps(ts));
                        nv_lanes::<true>(p, s, t, xp)
                    }
                };
            }
            let nan_rows = eight_rows_nan(scales, r0, sb);
            // hsum adds lane i to lane i + 4, then lanes 0 + 2 and 1 + 3, then those two.
            let halves = |a: __m256, b: __m256| {
                _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(a, b),
                    _mm256_permute2f128_ps::<0x31>(a, b),
                )
            };
            let (s01, s23) = (halves(v[0], v[1]), halves(v[2], v[3]));
            let (s45, s67) = (halves(v[4], v[5]), halves(v[6], v[7]));
            let pairs = |a: __m256, b: __m256| {
                _mm256_add_ps(
                    _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
                    _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
                )
            };
            let (c0, c1) = (pairs(s01, s23), pairs(s45, s67));
            // Lanes: rows 0, 2, 4, 6 | 1, 3, 5, 7.
            let sums = _mm256_permutevar8x32_ps(_mm256_hadd_ps(c0, c1), order);
            // SAFETY: rows r0 .. r0 + 8 are inside `out`.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(r0), sums) };
            mark_nan_rows(&mut out[r0..r0 + 8], nan_rows);
        }
        whole
    } else {
        0
    };
    for (r, o) in out.iter_mut().enumerate().skip(done) {
        let (p, s) = row(r);
        // SAFETY: the caller's guarantees, for each row.
        *o = unsafe { dot_nvfp4(p, s, ts, xp) };
    }
}

/// Bit `i` set where row `r0 + i` of eight (`per_row` scales each) has a NaN block scale: one
/// pass over the eight rows' scales (contiguous, and in L1 after their dots), and row by row
/// only when one is NaN. For [`mark_nan_rows`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn eight_rows_nan(scales: &[u8], r0: usize, per_row: usize) -> u32 {
    let rows = &scales[r0 * per_row..(r0 + 8) * per_row];
    if !any_nan_e4m3(rows) {
        return 0;
    }
    (0..8).fold(0, |m, i| {
        m | u32::from(any_nan_e4m3(&rows[i * per_row..(i + 1) * per_row])) << i
    })
}

/// Sets `rows[i]` to NaN for every bit `i` of `nan_rows`: rows with a NaN block scale,
/// which the eight-row kernels do not decode, so their sums are meaningless.
pub(crate) fn mark_nan_rows(rows: &mut [f32], nan_rows: u32) {
    for (i, r) in rows.iter_mut().enumerate() {
        if nan_rows & (1 << i) != 0 {
            *r = f32::NAN;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nv_dot<const SPLIT: bool>(
    packed: &[u8],
    scales: &[u8],
    ts: (__m256, __m256),
    xp: &[f32],
) -> f32 {
    // SAFETY: the caller's guarantees.
    let lanes = unsafe { nv_lanes::<SPLIT>(packed, scales, ts, xp) };
    // NaN scales are not decoded by the loop (see `e4m3x8_scaled`); a NaN multiplier
    // would make the sum NaN, as decoding would.
    if any_nan_e4m3(scales) {
        f32::NAN
    } else {
        hsum(lanes)
    }
}

/// [`nv_dot`] before its horizontal sum. NaN block scales are not decoded (the lanes are
/// then meaningless): callers check with [`any_nan_e4m3`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nv_lanes<const SPLIT: bool>(
    packed: &[u8],
    scales: &[u8],
    ts: (__m256, __m256),
    xp: &[f32],
) -> __m256 {
    let cols = scales.len() * 16;
    let steps = cols / NV_STEP;
    let tabs = e2m1_tables();
    let mut acc = [_mm256_setzero_ps(); 4];
    // SAFETY: step i reads packed[64i..64i+64], scales[8i..8i+8], xp[128i..128i+128],
    // all inside the slices for i < steps; the tail reads local buffers and the padded
    // end of xp (x_len rounds up to whole steps).
    unsafe {
        for i in 0..steps {
            nv_step::<SPLIT>(
                packed.as_ptr().add(64 * i),
                scales.as_ptr().add(8 * i),
                xp.as_ptr().add(NV_STEP * i),
                ts,
                tabs,
                &mut acc,
            );
        }
        if !cols.is_multiple_of(NV_STEP) {
            // Zero codes, zero scales and zero (padded) inputs add exact zeros.
            let (p, s) = super::nv_tail(packed, scales, steps);
            let x = xp[NV_STEP * steps..NV_STEP * (steps + 1)].as_ptr();
            nv_step::<SPLIT>(p.as_ptr(), s.as_ptr(), x, ts, tabs, &mut acc);
        }
    }
    _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))
}

/// [`nv_step`] for `T` tokens (`x[t]`: token t's 128 prepared inputs, `acc[t]` its
/// accumulators): the weights and block multipliers are decoded once, then every token runs
/// exactly [`nv_step`]'s arithmetic on them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nv_step_tokens<const SPLIT: bool, const T: usize>(
    p: *const u8,
    s: *const u8,
    x: [*const f32; T],
    (ts, ts2): (__m256, __m256),
    (tl, th): (__m256i, __m256i),
    acc: &mut [[__m256; 4]; T],
) {
    // SAFETY: the caller guarantees 64 bytes at `p`, 8 at `s` and 128 floats at each `x[t]`;
    // prefetches never fault.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF_NV).cast());
        _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(PF_NV / 8).cast());
        let sb = _mm_loadl_epi64(s.cast());
        let mut d = _mm256_mul_ps(e4m3x8_scaled(sb), ts);
        if SPLIT {
            d = _mm256_mul_ps(d, ts2);
        }
        let (d0, d1) = (_mm256_permute_ps::<0x00>(d), _mm256_permute_ps::<0x55>(d));
        let (d2, d3) = (_mm256_permute_ps::<0xaa>(d), _mm256_permute_ps::<0xff>(d));
        let v0 = _mm256_loadu2_m128i(p.add(32).cast(), p.cast());
        let w = nv_half_weights(v0, tl, th);
        for t in 0..T {
            let (b04, b15) = nv_half_dot(&w, x[t]);
            acc[t][0] = _mm256_fmadd_ps(b04, d0, acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(b15, d1, acc[t][1]);
        }
        let v1 = _mm256_loadu2_m128i(p.add(48).cast(), p.add(16).cast());
        let w = nv_half_weights(v1, tl, th);
        for t in 0..T {
            let (b26, b37) = nv_half_dot(&w, x[t].add(64));
            acc[t][2] = _mm256_fmadd_ps(b26, d2, acc[t][2]);
            acc[t][3] = _mm256_fmadd_ps(b37, d3, acc[t][3]);
        }
    }
}

/// One NVFP4 row dotted with `T` tokens' prepared inputs: `out[t]` is bit for bit what
/// [`dot_nvfp4`] gives for token t, the row's codes decoded once for all of them.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_nvfp4_tokens<const T: usize>(
    packed: &[u8],
    scales: &[u8],
    ts: f32,
    xp: [&[f32]; T],
    out: &mut [f32],
) {
    let ts120 = ts * TWO_POW_120;
    let t = if ts120.is_finite() {
        (_mm256_set1_ps(ts120), _mm256_setzero_ps())
    } else {
        (_mm256_set1_ps(TWO_POW_120), _mm256_set1_ps(ts))
    };
    // SAFETY: the caller's guarantees, passed on.
    let lanes = unsafe {
        if ts120.is_finite() {
            nv_lanes_tokens::<false, T>(packed, scales, t, xp)
        } else {
            nv_lanes_tokens::<true, T>(packed, scales, t, xp)
        }
    };
    let nan = any_nan_e4m3(scales);
    for (o, l) in out.iter_mut().zip(lanes) {
        *o = if nan { f32::NAN } else { hsum(l) };
    }
}

/// [`nv_lanes`] for `T` tokens, through [`nv_step_tokens`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nv_lanes_tokens<const SPLIT: bool, const T: usize>(
    packed: &[u8],
    scales: &[u8],
    ts: (__m256, __m256),
    xp: [&[f32]; T],
) -> [__m256; T] {
    let cols = scales.len() * 16;
    let steps = cols / NV_STEP;
    let tabs = e2m1_tables();
    let mut acc = [[_mm256_setzero_ps(); 4]; T];
    // SAFETY: as in `nv_lanes`, for every token's inputs.
    unsafe {
        for i in 0..steps {
            let x = xp.map(|x| x.as_ptr().add(NV_STEP * i));
            nv_step_tokens::<SPLIT, T>(
                packed.as_ptr().add(64 * i),
                scales.as_ptr().add(8 * i),
                x,
                ts,
                tabs,
                &mut acc,
            );
        }
        if !cols.is_multiple_of(NV_STEP) {
            let (p, s) = super::nv_tail(packed, scales, steps);
            let x = xp.map(|x| x[NV_STEP * steps..NV_STEP * (steps + 1)].as_ptr());
            nv_step_tokens::<SPLIT, T>(p.as_ptr(), s.as_ptr(), x, ts, tabs, &mut acc);
        }
    }
    acc.map(|a| _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])))
}

/// Half a step of the FP8 dot: 32 bytes against 32 prepared inputs. Each byte `b` is put
/// in the high byte of a word, shifted right (arithmetic) by 4 and masked to
/// `sign | (b & 0x7f) << 4`: the BF16 pattern of `e4m3(b) · 2^-120`. Vector k holds, in
/// lane i, column 16·(i/4) + 2·(i%4) + [0, 1, 8, 9][k].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fp8_half(p: *const u8, x: *const f32, acc: &mut [__m256], nan: &mut [__m256i; 2]) {
    // SAFETY: the caller guarantees 32 bytes at `p` and 32 floats at `x`.
    unsafe {
        let v = _mm256_loadu_si256(p.cast());
        // NaN codes 0x7f / 0xff are the largest signed / unsigned bytes.
        nan[0] = _mm256_max_epi8(nan[0], v);
        nan[1] = _mm256_max_epu8(nan[1], v);
        let z = _mm256_setzero_si256();
        let m = _mm256_set1_epi16(0x87ff_u16 as i16);
        let g0 = _mm256_and_si256(_mm256_srai_epi16::<4>(_mm256_unpacklo_epi8(z, v)), m);
        let g1 = _mm256_and_si256(_mm256_srai_epi16::<4>(_mm256_unpackhi_epi8(z, v)), m);
        let xv = |k: usize| _mm256_loadu_ps(x.add(8 * k));
        acc[0] = _mm256_fmadd_ps(even_words(g0), xv(0), acc[0]);
        acc[1] = _mm256_fmadd_ps(odd_words(g0), xv(1), acc[1]);
        acc[2] = _mm256_fmadd_ps(even_words(g1), xv(2), acc[2]);
        acc[3] = _mm256_fmadd_ps(odd_words(g1), xv(3), acc[3]);
    }
}

/// See [`super::dot_fp8`]; lengths are checked there.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_fp8(row: &[u8], scale: f32, xp: &[f32]) -> f32 {
    let n = row.len();
    let steps = n / FP8_STEP;
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut nan = [_mm256_setzero_si256(); 2];
    // SAFETY: step i reads row[64i..64i+64] and xp[64i..64i+64], inside the slices for
    // i < steps; the tail reads a local buffer.
    unsafe {
        let step = |p: *const u8, x: *const f32, acc: &mut [__m256; 8], nan: &mut _| {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF_DENSE).cast());
            let (a, b) = acc.split_at_mut(4);
            fp8_half(p, x, a, nan);
            fp8_half(p.add(32), x.add(32), b, nan);
        };
        for i in 0..steps {
            step(
                row.as_ptr().add(FP8_STEP * i),
                xp.as_ptr().add(FP8_STEP * i),
                &mut acc,
                &mut nan,
            );
        }
        if !n.is_multiple_of(FP8_STEP) {
            let mut p = [0u8; FP8_STEP];
            p[..n - FP8_STEP * steps].copy_from_slice(&row[FP8_STEP * steps..]);
            let x = &xp[FP8_STEP * steps..FP8_STEP * (steps + 1)];
            step(p.as_ptr(), x.as_ptr(), &mut acc, &mut nan);
        }
    }
    let is_nan = _mm256_movemask_epi8(_mm256_or_si256(
        _mm256_cmpeq_epi8(nan[0], _mm256_set1_epi8(0x7f)),
        _mm256_cmpeq_epi8(nan[1], _mm256_set1_epi8(-1)),
    ));
    if is_nan != 0 {
        return f32::NAN;
    }
    let s = |a: usize| _mm256_add_ps(acc[a], acc[a + 4]);
    let sum = _mm256_add_ps(_mm256_add_ps(s(0), s(1)), _mm256_add_ps(s(2), s(3)));
    hsum(sum) * (scale * FP8_SUM_SCALE)
}

/// Shared shape of the dense dots: four accumulators over 32-column chunks, one over the
/// remaining chunks of 8, a serial tail.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dense_dot<T: Copy>(
    w: &[T],
    x: &[f32],
    load8: impl Fn(*const T) -> __m256,
    one: impl Fn(T) -> f32,
) -> f32 {
    let n = w.len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut c = 0;
    // SAFETY: every load covers [c, c+8) with c + 8 <= n = w.len() <= x.len().
    unsafe {
        while c + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = c + 8 * k;
                *a = _mm256_fmadd_ps(load8(wp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
            }
            c += 32;
        }
        while c + 8 <= n {
            acc[0] = _mm256_fmadd_ps(load8(wp.add(c)), _mm256_loadu_ps(xp.add(c)), acc[0]);
            c += 8;
        }
    }
    let mut tail = 0.0f32;
    for i in c..n {
        tail = one(w[i]).mul_add(x[i], tail);
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum(sum) + tail
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16(p: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable values.
    let w = unsafe { _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16(p: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable values.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}

/// One BF16 chunk: 16 values at `p` against 16 prepared inputs (even columns, then odd).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_chunk(p: *const u16, x: *const f32, acc: &mut [__m256]) {
    // SAFETY: the caller guarantees 16 values at `p` and 16 floats at `x`.
    unsafe {
        let v = _mm256_loadu_si256(p.cast());
        acc[0] = _mm256_fmadd_ps(even_words(v), _mm256_loadu_ps(x), acc[0]);
        acc[1] = _mm256_fmadd_ps(odd_words(v), _mm256_loadu_ps(x.add(8)), acc[1]);
    }
}

/// Two rows' [`bf16_chunk`]s against the same 16 inputs, loaded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_chunk_pair(
    pa: *const u16,
    pb: *const u16,
    x: *const f32,
    acc_a: &mut [__m256],
    acc_b: &mut [__m256],
) {
    // SAFETY: the caller guarantees 16 values at `pa` and `pb` and 16 floats at `x`.
    unsafe {
        let (x0, x1) = (_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)));
        let (va, vb) = (_mm256_loadu_si256(pa.cast()), _mm256_loadu_si256(pb.cast()));
        acc_a[0] = _mm256_fmadd_ps(even_words(va), x0, acc_a[0]);
        acc_a[1] = _mm256_fmadd_ps(odd_words(va), x1, acc_a[1]);
        acc_b[0] = _mm256_fmadd_ps(even_words(vb), x0, acc_b[0]);
        acc_b[1] = _mm256_fmadd_ps(odd_words(vb), x1, acc_b[1]);
    }
}

/// See [`super::dot_bf16_pair`]: [`dot_bf16`]'s loop for two rows at once, each with the
/// same accumulators in the same order, so each result equals `dot_bf16`'s bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16_pair(a: &[u16], b: &[u16], xp: &[f32]) -> (f32, f32) {
    let n = a.len();
    let mut acc_a = [_mm256_setzero_ps(); 4];
    let mut acc_b = [_mm256_setzero_ps(); 4];
    let (pa, pb, xq) = (a.as_ptr(), b.as_ptr(), xp.as_ptr());
    let mut c = 0;
    // SAFETY: as in `dot_bf16`, for each row.
    unsafe {
        while c + 2 * BF16_STEP <= n {
            // Past the end of the rows, fetch the next pair's (rows of one weight are
            // contiguous, pairs consecutive): plain `c + PF` past `a`'s end would land in
            // `b`, already on its way, and the next pair's second row would start cold.
            let ahead = c + PF_DENSE / 2;
            let ahead = if ahead >= n { ahead + n } else { ahead };
            _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(ahead).cast());
            _mm_prefetch::<_MM_HINT_T0>(pb.wrapping_add(ahead).cast());
            let (xa, xb) = (xq.add(c), xq.add(c + 16));
            bf16_chunk_pair(pa.add(c), pb.add(c), xa, &mut acc_a[..2], &mut acc_b[..2]);
            bf16_chunk_pair(
                pa.add(c + 16),
                pb.add(c + 16),
                xb,
                &mut acc_a[2..],
                &mut acc_b[2..],
            );
            c += 2 * BF16_STEP;
        }
        if c + BF16_STEP <= n {
            bf16_chunk_pair(
                pa.add(c),
                pb.add(c),
                xq.add(c),
                &mut acc_a[..2],
                &mut acc_b[..2],
            );
            c += BF16_STEP;
        }
        if c < n {
            let (mut ta, mut tb) = ([0u16; BF16_STEP], [0u16; BF16_STEP]);
            ta[..n - c].copy_from_slice(&a[c..]);
            tb[..n - c].copy_from_slice(&b[c..]);
            let x = xq.add(c);
            bf16_chunk_pair(
                ta.as_ptr(),
                tb.as_ptr(),
                x,
                &mut acc_a[2..],
                &mut acc_b[2..],
            );
        }
    }
    let sum = |acc: [__m256; 4]| {
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    };
    (sum(acc_a), sum(acc_b))
}

/// See [`super::dot_bf16`]: each dword of 16 loaded values holds an even column in its low
/// word (a shift makes it an f32) and an odd one in its high word (a mask does).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16(w: &[u16], xp: &[f32]) -> f32 {
    let n = w.len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wp, xq) = (w.as_ptr(), xp.as_ptr());
    let mut c = 0;
    // SAFETY: chunks read w[c..c+16] with c + 16 <= n and xp[c..c+16]; the tail reads a
    // local buffer and xp up to the padded length (checked by the caller).
    unsafe {
        while c + 2 * BF16_STEP <= n {
            _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(c + PF_DENSE / 2).cast());
            bf16_chunk(wp.add(c), xq.add(c), &mut acc[..2]);
            bf16_chunk(wp.add(c + 16), xq.add(c + 16), &mut acc[2..]);
            c += 2 * BF16_STEP;
        }
        if c + BF16_STEP <= n {
            bf16_chunk(wp.add(c), xq.add(c), &mut acc[..2]);
            c += BF16_STEP;
        }
        if c < n {
            let mut t = [0u16; BF16_STEP];
            t[..n - c].copy_from_slice(&w[c..]);
            bf16_chunk(t.as_ptr(), xq.add(c), &mut acc[2..]);
        }
    }
    hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f16(w: &[u16], x: &[f32]) -> f32 {
    // SAFETY: as for `dot_bf16`.
    unsafe { dense_dot(w, x, |p| load_f16(p), f16_to_f32) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    // SAFETY: as for `dot_bf16`.
    unsafe { dense_dot(w, x, |p| _mm256_loadu_ps(p), |v| v) }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_nvfp4(packed: &[u8], scales: &[u8], ts: f32, out: &mut [f32]) {
    let (tl, th) = e2m1_tables();
    let (tl, th) = (_mm256_castsi256_si128(tl), _mm256_castsi256_si128(th));
    let m0f = _mm_set1_epi8(0x0f);
    let pairs = scales.len() / 2;
    // SAFETY: pair i reads packed[16i..16i+16] and writes out[32i..32i+32], inside the
    // slices (out.len() == 32·pairs + 16·(scales.len() % 2)).
    unsafe {
        for i in 0..pairs {
            let v = _mm_loadu_si128(packed.as_ptr().add(16 * i).cast());
            let lo = _mm_and_si128(v, m0f);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m0f);
            // Codes in column order: block 2i, then block 2i+1.
            for (b, e) in [_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)]
                .into_iter()
                .enumerate()
            {
                let d = _mm256_set1_ps(E4M3_TO_F32[scales[2 * i + b] as usize] * ts);
                let (l, h) = (_mm_shuffle_epi8(tl, e), _mm_shuffle_epi8(th, e));
                let o = out.as_mut_ptr().add(32 * i + 16 * b);
                for (k, w) in [_mm_unpacklo_epi8(l, h), _mm_unpackhi_epi8(l, h)]
                    .into_iter()
                    .enumerate()
                {
                    let f = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(w));
                    _mm256_storeu_ps(o.add(8 * k), _mm256_mul_ps(_mm256_castsi256_ps(f), d));
                }
            }
        }
    }
    if scales.len() % 2 == 1 {
        let b = scales.len() - 1;
        super::scalar::decode_nvfp4(&packed[8 * b..], &scales[b..], ts, &mut out[16 * b..]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_fp8(row: &[u8], scale: f32, out: &mut [f32]) {
    let n = row.len();
    let s = _mm256_set1_ps(scale);
    let mut c = 0;
    // SAFETY: each iteration reads row[c..c+8] and writes out[c..c+8], c + 8 <= n.
    unsafe {
        while c + 8 <= n {
            let v = e4m3x8(_mm_loadl_epi64(row.as_ptr().add(c).cast()));
            _mm256_storeu_ps(out.as_mut_ptr().add(c), _mm256_mul_ps(v, s));
            c += 8;
        }
    }
    for i in c..n {
        out[i] = E4M3_TO_F32[row[i] as usize] * scale;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_bf16(row: &[u16], out: &mut [f32]) {
    let n = row.len();
    let mut c = 0;
    // SAFETY: each iteration reads row[c..c+8] and writes out[c..c+8], c + 8 <= n.
    unsafe {
        while c + 8 <= n {
            _mm256_storeu_ps(out.as_mut_ptr().add(c), load_bf16(row.as_ptr().add(c)));
            c += 8;
        }
    }
    for i in c..n {
        out[i] = bf16_to_f32(row[i]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_f16(row: &[u16], out: &mut [f32]) {
    let n = row.len();
    let mut c = 0;
    // SAFETY: each iteration reads row[c..c+8] and writes out[c..c+8], c + 8 <= n.
    unsafe {
        while c + 8 <= n {
            _mm256_storeu_ps(out.as_mut_ptr().add(c), load_f16(row.as_ptr().add(c)));
            c += 8;
        }
    }
    for i in c..n {
        out[i] = f16_to_f32(row[i]);
    }
}

/// Columns per pass over the panel: a block of decoded rows this wide (16 KiB per 16 rows)
/// stays in L1 or L2 while every token streams past it.
const KB: usize = 256;
/// Rows and tokens of the register tile (12 accumulators, three inputs and one weight row:
/// 16 registers).
const TR: usize = 4;
const TT: usize = 3;

/// See [`super::panel_product`]; sizes are checked there.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn panel_product(
    panel: &[f32],
    rows: usize,
    x: &[f32],
    cols: usize,
    tokens: usize,
    out: &mut [f32],
) {
    let stride = super::panel_stride(cols);
    // accs[(i·tokens + t)·8 ..][..8]: the lanes of row i, token t.
    let mut accs = vec![0.0f32; rows * tokens * 8];
    let mut k0 = 0;
    while k0 < cols {
        let k1 = (k0 + KB).min(cols);
        for t0 in (0..tokens).step_by(TT) {
            let nt = TT.min(tokens - t0);
            for i0 in (0..rows).step_by(TR) {
                let nr = TR.min(rows - i0);
                // SAFETY: rows i0..i0+nr of the panel, tokens t0..t0+nt of x and their
                // accumulators exist (checked by the caller); columns k0..k1 <= cols.
                unsafe {
                    let a = accs.as_mut_ptr().add((i0 * tokens + t0) * 8);
                    let w = panel.as_ptr().add(i0 * stride);
                    let xs = x.as_ptr().add(t0 * cols);
                    let (s, xl) = ((k0, k1), (cols, tokens * 8));
                    match (nr, nt) {
                        (4, 3) => tile::<4, 3>(w, stride, xs, xl, s, a),
                        (3, 3) => tile::<3, 3>(w, stride, xs, xl, s, a),
                        (2, 3) => tile::<2, 3>(w, stride, xs, xl, s, a),
                        (1, 3) => tile::<1, 3>(w, stride, xs, xl, s, a),
                        (4, 2) => tile::<4, 2>(w, stride, xs, xl, s, a),
                        (3, 2) => tile::<3, 2>(w, stride, xs, xl, s, a),
                        (2, 2) => tile::<2, 2>(w, stride, xs, xl, s, a),
                        (1, 2) => tile::<1, 2>(w, stride, xs, xl, s, a),
                        (4, _) => tile::<4, 1>(w, stride, xs, xl, s, a),
                        (3, _) => tile::<3, 1>(w, stride, xs, xl, s, a),
                        (2, _) => tile::<2, 1>(w, stride, xs, xl, s, a),
                        _ => tile::<1, 1>(w, stride, xs, xl, s, a),
                    }
                }
            }
        }
        k0 = k1;
    }
    for i in 0..rows {
        for t in 0..tokens {
            // SAFETY: accs holds rows·tokens·8 floats.
            let v = unsafe { _mm256_loadu_ps(accs.as_ptr().add((i * tokens + t) * 8)) };
            out[t * rows + i] = hsum(v);
        }
    }
}

/// Accumulates columns `k0..k1` of `R` panel rows (at `w`, row stride `stride`, zero past
/// `cols`) times `T` tokens (at `x`, row stride `x_stride`) into the lanes at `acc`
/// (`acc + (r·acc_stride + 8t)` for row r, token t; `acc_stride` = tokens·8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const T: usize>(
    w: *const f32,
    stride: usize,
    x: *const f32,
    (x_stride, acc_stride): (usize, usize),
    (k0, k1): (usize, usize),
    acc: *mut f32,
) {
    // SAFETY: the caller guarantees the rows, tokens and accumulators; loads of x past
    // `cols` are masked off, panel rows are padded to a multiple of 8.
    unsafe {
        let mut a = [[_mm256_setzero_ps(); T]; R];
        for (r, ar) in a.iter_mut().enumerate() {
            for (t, v) in ar.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(acc.add(r * acc_stride + 8 * t));
            }
        }
        let full = k0 + (k1 - k0) / 8 * 8;
        let mut c = k0;
        while c < full {
            let mut xv = [_mm256_setzero_ps(); T];
            for (t, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(x.add(t * x_stride + c));
            }
            for (r, ar) in a.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(w.add(r * stride + c));
                for (t, v) in ar.iter_mut().enumerate() {
                    *v = _mm256_fmadd_ps(wv, xv[t], *v);
                }
            }
            c += 8;
        }
        if full < k1 {
            // The last, partial chunk of a row: lanes past `cols` read as zero.
            let n = (k1 - full) as i32;
            let mask = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            let mut xv = [_mm256_setzero_ps(); T];
            for (t, v) in xv.iter_mut().enumerate() {
                *v = _mm256_maskload_ps(x.add(t * x_stride + full), mask);
            }
            for (r, ar) in a.iter_mut().enumerate() {
                let wv = _mm256_loadu_ps(w.add(r * stride + full));
                for (t, v) in ar.iter_mut().enumerate() {
                    *v = _mm256_fmadd_ps(wv, xv[t], *v);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            for (t, v) in ar.iter().enumerate() {
                _mm256_storeu_ps(acc.add(r * acc_stride + 8 * t), *v);
            }
        }
    }
}

/// Rows per group of the dense many-token kernels: the group's accumulators stay in L1
/// between column blocks.
const TOKEN_ROWS: usize = 8;
/// Bytes of the tokens' inputs a column block of the many-token kernels reads, so that they
/// stay in L1 while every row of the group passes over them.
const TOKEN_X_BYTES: usize = 16 * 1024;

/// Columns per block of the many-token kernels for `tokens` inputs, a multiple of `step`.
fn token_block(tokens: usize, step: usize) -> usize {
    (TOKEN_X_BYTES / 4 / tokens / step).max(1) * step
}

/// The loop of the dense many-token kernels, for `rows` rows and `tn` tokens, the rows' whole
/// steps (`step` columns each) end at `full`: rows go in groups of [`TOKEN_ROWS`],
/// columns in blocks of [`token_block`]; in a block, each row of the group runs the first
/// half of every step, then the second (`pass(row, half, span, t, acc)` for tokens `t ..
/// t + per_pass`, `acc` pointing at token t's accumulators of that half, `per_acc` per token
/// in all), then `finish(row, t, acc)` gets each (row, token)'s accumulators after the last
/// block. Each accumulator thus gets its columns in the one-token kernel's order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn token_loop(
    (rows, tn): (usize, usize),
    (step, full, per_acc, per_pass): (usize, usize, usize, usize),
    mut pass: impl FnMut(usize, usize, (usize, usize), usize, *mut __m256),
    mut finish: impl FnMut(usize, usize, &mut [__m256]),
) {
    let block = token_block(tn, step);
    TOKEN_ACC.with_borrow_mut(|acc| {
        // The first block's passes start their accumulators from zero (see `bf16_pass`), so
        // the buffer is only cleared where no column block runs at all.
        acc.resize(TOKEN_ROWS * tn * per_acc, _mm256_setzero_ps());
        for g0 in (0..rows).step_by(TOKEN_ROWS) {
            let g1 = (g0 + TOKEN_ROWS).min(rows);
            if full == 0 {
                acc.fill(_mm256_setzero_ps());
            }
            for c0 in (0..full).step_by(block) {
                let span = (c0, (c0 + block).min(full));
                for r in g0..g1 {
                    for half in [0, step / 2] {
                        for t in (0..tn).step_by(per_pass) {
                            let a = ((r - g0) * tn + t) * per_acc + half * 2 / step * per_acc / 2;
                            pass(r, half, span, t, acc[a..].as_mut_ptr());
                        }
                    }
                }
            }
            for r in g0..g1 {
                for t in 0..tn {
                    finish(r, t, &mut acc[((r - g0) * tn + t) * per_acc..][..per_acc]);
                }
            }
        }
    });
}

thread_local! {
    /// The many-token kernels' accumulators, kept per thread so a call allocates nothing.
    static TOKEN_ACC: std::cell::RefCell<Vec<__m256>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One half (`w`, `x` already offset by 0 or 16 columns) of [`dot_bf16`]'s 32-column steps
/// over columns `c0..c1` for `T` tokens: token t's two accumulators of that half are at
/// `acc + 4t` (read from there, or zero for the first block, `c0` = 0). The weights are
/// widened once for all tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_pass<const T: usize>(
    w: *const u16,
    (c0, c1): (usize, usize),
    x: [*const f32; T],
    acc: *mut __m256,
    ahead: *const u16,
) {
    // SAFETY: the caller guarantees the columns at `w` and every `x[t]`, and four
    // accumulators per token at `acc`.
    unsafe {
        let mut a = [[_mm256_setzero_ps(); 2]; T];
        if c0 > 0 {
            for (t, a) in a.iter_mut().enumerate() {
                *a = [*acc.add(4 * t), *acc.add(4 * t + 1)];
            }
        }
        let mut c = c0;
        while c < c1 {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(c).cast());
            let v = _mm256_loadu_si256(w.add(c).cast());
            let (e, o) = (even_words(v), odd_words(v));
            for (a, x) in a.iter_mut().zip(x) {
                a[0] = _mm256_fmadd_ps(e, _mm256_loadu_ps(x.add(c)), a[0]);
                a[1] = _mm256_fmadd_ps(o, _mm256_loadu_ps(x.add(c + 8)), a[1]);
            }
            c += 2 * BF16_STEP;
        }
        for (t, a) in a.iter().enumerate() {
            *acc.add(4 * t) = a[0];
            *acc.add(4 * t + 1) = a[1];
        }
    }
}

/// See [`super::dot_bf16_tokens`]: `out[r·T + t]` is [`dot_bf16`] of row r and token t, bit
/// for bit. Each (row, token) keeps `dot_bf16`'s four accumulators, each fed its columns in
/// the same order; only the loop around them changes. Columns go in blocks whose inputs stay
/// in L1 while a group of rows passes over them (the accumulators wait in memory between
/// blocks, which is exact), and the two halves of each 32-column step, which feed
/// accumulators 0-1 and 2-3, run as separate passes so that four tokens' accumulators fit
/// the registers.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16_tokens(w: &[u16], cols: usize, xp: &[&[f32]], out: &mut [f32]) {
    let tn = xp.len();
    let full = cols / (2 * BF16_STEP) * (2 * BF16_STEP);
    token_loop(
        (out.len() / tn, tn),
        (2 * BF16_STEP, full, 4, 4),
        |r, half, span, t, a| {
            let wr = w[r * cols..].as_ptr();
            // The next row (past a group, the next group's first), a line per step.
            let ahead = wr.wrapping_add(cols);
            let x = |i: usize| xp[t + i].as_ptr().wrapping_add(half);
            let w = wr.wrapping_add(half);
            // SAFETY: columns below `full` are inside every row and input; `a` holds the
            // accumulators of tokens t.. of row r.
            unsafe {
                match tn - t {
                    1 => bf16_pass::<1>(w, span, [x(0)], a, ahead),
                    2 => bf16_pass::<2>(w, span, [x(0), x(1)], a, ahead),
                    3 => bf16_pass::<3>(w, span, [x(0), x(1), x(2)], a, ahead),
                    _ => bf16_pass::<4>(w, span, [x(0), x(1), x(2), x(3)], a, ahead),
                }
            }
        },
        // What `dot_bf16` does past its whole 32-column steps, then its sum.
        |r, t, a| {
            let (wr, x) = (&w[r * cols..(r + 1) * cols], xp[t]);
            let mut c = full;
            // SAFETY: as in `dot_bf16`.
            unsafe {
                if c + BF16_STEP <= cols {
                    bf16_chunk(wr.as_ptr().add(c), x.as_ptr().add(c), &mut a[..2]);
                    c += BF16_STEP;
                }
                if c < cols {
                    let mut tail = [0u16; BF16_STEP];
                    tail[..cols - c].copy_from_slice(&wr[c..]);
                    bf16_chunk(tail.as_ptr(), x.as_ptr().add(c), &mut a[2..]);
                }
            }
            out[r * tn + t] = hsum(_mm256_add_ps(
                _mm256_add_ps(a[0], a[1]),
                _mm256_add_ps(a[2], a[3]),
            ));
        },
    );
}

/// One half (`p`, `x` already offset by 0 or 32 columns) of [`dot_fp8`]'s 64-column steps
/// over columns `c0..c1` for `T` tokens: token t's four accumulators of that half are at
/// `acc + 8t` (zero for the first block). The codes are widened once for all tokens, as
/// [`fp8_half`] widens them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fp8_pass<const T: usize>(
    p: *const u8,
    (c0, c1): (usize, usize),
    x: [*const f32; T],
    acc: *mut __m256,
    ahead: *const u8,
) {
    // SAFETY: the caller guarantees the columns at `p` and every `x[t]`, and eight
    // accumulators per token at `acc`.
    unsafe {
        let mut a = [[_mm256_setzero_ps(); 4]; T];
        if c0 > 0 {
            for (t, a) in a.iter_mut().enumerate() {
                for (k, v) in a.iter_mut().enumerate() {
                    *v = *acc.add(8 * t + k);
                }
            }
        }
        let z = _mm256_setzero_si256();
        let m = _mm256_set1_epi16(0x87ff_u16 as i16);
        let mut c = c0;
        while c < c1 {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(c).cast());
            let v = _mm256_loadu_si256(p.add(c).cast());
            let g0 = _mm256_and_si256(_mm256_srai_epi16::<4>(_mm256_unpacklo_epi8(z, v)), m);
            let g1 = _mm256_and_si256(_mm256_srai_epi16::<4>(_mm256_unpackhi_epi8(z, v)), m);
            let wv = [even_words(g0), odd_words(g0), even_words(g1), odd_words(g1)];
            for (a, x) in a.iter_mut().zip(x) {
                for (k, v) in a.iter_mut().enumerate() {
                    *v = _mm256_fmadd_ps(wv[k], _mm256_loadu_ps(x.add(c + 8 * k)), *v);
                }
            }
            c += FP8_STEP;
        }
        for (t, a) in a.iter().enumerate() {
            for (k, v) in a.iter().enumerate() {
                *acc.add(8 * t + k) = *v;
            }
        }
    }
}

/// See [`super::dot_fp8_tokens`]: `out[r·T + t]` is [`dot_fp8`] of row r and token t, bit for
/// bit, looped as [`dot_bf16_tokens`] is (the halves of each 64-column step feed
/// accumulators 0-3 and 4-7).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_fp8_tokens(
    w: &[u8],
    cols: usize,
    scale: f32,
    xp: &[&[f32]],
    out: &mut [f32],
) {
    let tn = xp.len();
    let full = cols / FP8_STEP * FP8_STEP;
    let mut row_nan = false;
    token_loop(
        (out.len() / tn, tn),
        (FP8_STEP, full, 8, 2),
        |r, half, span, t, a| {
            let wr = w[r * cols..].as_ptr();
            let ahead = wr.wrapping_add(cols);
            let x = |i: usize| xp[t + i].as_ptr().wrapping_add(half);
            let p = wr.wrapping_add(half);
            // SAFETY: as in `dot_bf16_tokens`.
            unsafe {
                match tn - t {
                    1 => fp8_pass::<1>(p, span, [x(0)], a, ahead),
                    _ => fp8_pass::<2>(p, span, [x(0), x(1)], a, ahead),
                }
            }
        },
        // What `dot_fp8` does past its whole steps, then its NaN check (once per row: the
        // tokens of a row come one after another) and sum.
        |r, t, a| {
            let wr = &w[r * cols..(r + 1) * cols];
            if t == 0 {
                row_nan = any_nan_e4m3(wr);
            }
            if full < cols {
                let mut p = [0u8; FP8_STEP];
                p[..cols - full].copy_from_slice(&wr[full..]);
                let mut ignored = [_mm256_setzero_si256(); 2];
                let (lo, hi) = a.split_at_mut(4);
                // SAFETY: as in `dot_fp8`: the input is padded to whole steps.
                unsafe {
                    let x = xp[t][full..full + FP8_STEP].as_ptr();
                    fp8_half(p.as_ptr(), x, lo, &mut ignored);
                    fp8_half(p.as_ptr().add(32), x.add(32), hi, &mut ignored);
                }
            }
            out[r * tn + t] = if row_nan {
                f32::NAN
            } else {
                let s = |k: usize| _mm256_add_ps(a[k], a[k + 4]);
                let sum = _mm256_add_ps(_mm256_add_ps(s(0), s(1)), _mm256_add_ps(s(2), s(3)));
                hsum(sum) * (scale * FP8_SUM_SCALE)
            };
        },
    );
}
