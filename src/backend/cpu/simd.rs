//! Row kernels of the CPU linear layers, over weights in their stored formats:
//! * `dot_*`: one stored row · one f32 vector (decode: a batch of one to four tokens reads every
//!   weight byte straight from the map, with no f32 copy of the row);
//! * `decode_*`: one stored row to f32, bit-exact with the reference decode;
//! * [`panel_product`]: decoded rows × many tokens (prefill), blocked so that the rows stay in
//!   L1 while every token passes over them.
//!
//! Every kernel has an AVX2+FMA(+F16C) implementation (`simd/avx2.rs`) and a portable scalar
//! fallback that is the reference math (`simd/scalar.rs`: decode each weight exactly, then the
//! eight-lane f32 dot of [`super::linear::dot`]); this file dispatches between them. The
//! implementation is chosen once per process ([`level`]) from the CPU's features;
//! `NEMOTRON_CPU_SIMD=off` forces the fallback, for comparison. The AVX-512 level (the AVX2
//! kernels plus the AVX-512F NVFP4 dot of `simd/avx512.rs`) is chosen only with
//! `NEMOTRON_CPU_SIMD=avx512` until it has run on AVX-512 hardware.
//!
//! Numerics of the SIMD dots: NVFP4 and FP8 take the scales out of the sums
//! (`Σ_blocks d_b · Σ_i e2m1_i·x_i`, `scale · Σ_i e4m3_i·x_i`) and every kernel uses FMA and
//! its own (fixed) summation order, so results differ from the fallback by rounding only
//! (bounded in the tests), never by thread count or by a token's position in a batch. Each
//! decoded weight is exact and each product `e2m1·x` is a single rounding, so a one-hot input
//! still returns the exactly decoded weight. Decoding is bit-exact at every level.

use std::sync::OnceLock;

use crate::codec::fp8::E4M3_TO_F32;
use crate::codec::nvfp4::E2M1_VALUES;
use crate::codec::{bf16_to_f32, f16_to_f32};

/// Which implementation the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    /// Portable scalar code: the reference math.
    Scalar,
    /// 256-bit AVX2 with FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// [`Level::Avx2`] with the NVFP4 dot in AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Level {
    /// Whether the AVX2 kernels (here and in the other CPU modules) may run.
    pub(crate) fn has_avx2(self) -> bool {
        match self {
            Level::Scalar => false,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 => true,
        }
    }

    /// For the device line of `bench` and `devices`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => "AVX2",
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => "AVX-512",
        }
    }
}

/// The implementation for this process: detected on first use, then fixed.
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let setting = std::env::var("NEMOTRON_CPU_SIMD").ok();
        let level = detect(setting.as_deref());
        if setting.is_some_and(|s| s.trim().eq_ignore_ascii_case("avx512")) {
            #[cfg(target_arch = "x86_64")]
            let chosen = level == Level::Avx512;
            #[cfg(not(target_arch = "x86_64"))]
            let chosen = false;
            if !chosen {
                eprintln!(
                    "warning: NEMOTRON_CPU_SIMD=avx512, but this CPU has no AVX-512F (with AVX2, \
                     FMA and F16C); using {}",
                    level.name()
                );
            }
        }
        level
    })
}

/// The best level this CPU supports short of AVX-512, unless `setting` (`NEMOTRON_CPU_SIMD`)
/// turns SIMD off or asks for AVX-512.
fn detect(setting: Option<&str>) -> Level {
    let setting = setting.map(|s| s.trim().to_ascii_lowercase());
    if matches!(
        setting.as_deref(),
        Some("off" | "0" | "false" | "no" | "scalar")
    ) {
        return Level::Scalar;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        if setting.as_deref() == Some("avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        return Level::Avx2;
    }
    Level::Scalar
}

/// The stored format of a weight row, for [`x_len`] and [`prepare_x`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    F32,
    Bf16,
    F16,
    Fp8,
    Nvfp4,
}

/// Columns per step of the AVX2 NVFP4 dot (64 packed bytes, eight block scales).
const NV_STEP: usize = 128;
/// Columns per step of the AVX2 FP8 dot.
const FP8_STEP: usize = 64;
/// Columns per step of the AVX2 BF16 dot.
const BF16_STEP: usize = 16;
/// `2^120`: E4M3 bytes shifted into f32 bits are `e4m3 · 2^-120`, which this undoes exactly.
pub(crate) const TWO_POW_120: f32 = f32::from_bits((127 + 120) << 23);
/// The AVX2 FP8 dot decodes `e4m3 · 2^-120` (see `avx2::fp8_half`); the input is scaled by
/// `2^64` and the sum by `scale · 2^56`, both exact, to keep the products normal.
const FP8_X_SCALE: f32 = f32::from_bits((127 + 64) << 23);
const FP8_SUM_SCALE: f32 = f32::from_bits((127 + 56) << 23);

/// The codes and block scales of an NVFP4 row past its last whole step of the SIMD dots,
/// zero-padded to one whole step: zero codes under zero scales add exact zeros.
#[cfg(target_arch = "x86_64")]
fn nv_tail(packed: &[u8], scales: &[u8], steps: usize) -> ([u8; 64], [u8; 8]) {
    let (mut p, mut s) = ([0u8; 64], [0u8; 8]);
    p[..packed.len() - 64 * steps].copy_from_slice(&packed[64 * steps..]);
    s[..scales.len() - 8 * steps].copy_from_slice(&scales[8 * steps..]);
    (p, s)
}

/// Length of the input of a `cols`-wide row once laid out by [`prepare_x`].
pub(crate) fn x_len(level: Level, kind: Kind, cols: usize) -> usize {
    let unit = match (level, kind) {
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2 | Level::Avx512, Kind::Nvfp4) => NV_STEP,
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2 | Level::Avx512, Kind::Fp8) => FP8_STEP,
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2 | Level::Avx512, Kind::Bf16) => BF16_STEP,
        _ => 1,
    };
    cols.next_multiple_of(unit)
}

/// Writes `x` laid out for the `dot_*` kernel of `kind` into `out[..x_len(level, kind,
/// x.len())]`: once per token, so the kernels need no shuffles to line inputs up with weights.
///
/// The AVX2 kernels widen packed weights in an interleaved order (see `avx2::nv_half`,
/// `avx2::fp8_half`, `avx2::dot_bf16`); `x` is permuted to match, zero-padded to whole steps
/// (and, for FP8, scaled by 2^64). Other kernels read `x` as it is.
pub(crate) fn prepare_x(level: Level, kind: Kind, x: &[f32], out: &mut [f32]) {
    let out = &mut out[..x_len(level, kind, x.len())];
    match (level, kind) {
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2, Kind::Nvfp4) => {
            // Vector v (0..16) of a step, lane i: column
            // 32·(v/8) + 64·(i/4) + 4·(i%4) + OFF[v%8].
            const OFF: [usize; 8] = [0, 2, 16, 18, 1, 3, 17, 19];
            permute(x, out, NV_STEP, 1.0, |v, i| {
                32 * (v / 8) + 64 * (i / 4) + 4 * (i % 4) + OFF[v % 8]
            });
        }
        #[cfg(target_arch = "x86_64")]
        (Level::Avx512, Kind::Nvfp4) => permute(x, out, 32, 1.0, avx512::prepared_column),
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2 | Level::Avx512, Kind::Fp8) => {
            // Vector v (0..4) of each 32 columns, lane i: column 16·(i/4) + 2·(i%4) + OFF[v].
            const OFF: [usize; 4] = [0, 1, 8, 9];
            permute(x, out, 32, FP8_X_SCALE, |v, i| {
                16 * (i / 4) + 2 * (i % 4) + OFF[v]
            });
        }
        #[cfg(target_arch = "x86_64")]
        (Level::Avx2 | Level::Avx512, Kind::Bf16) => {
            // Even columns of each 16, then odd ones.
            permute(x, out, BF16_STEP, 1.0, |v, i| 2 * i + v);
        }
        _ => {
            out[..x.len()].copy_from_slice(x);
            out[x.len()..].fill(0.0);
        }
    }
}

/// `out[g·group + 8v + i] = x[g·group + src(v, i)] · scale`, zero past the end of `x`.
#[cfg(target_arch = "x86_64")]
fn permute(
    x: &[f32],
    out: &mut [f32],
    group: usize,
    scale: f32,
    src: impl Fn(usize, usize) -> usize,
) {
    let map: Vec<usize> = (0..group).map(|j| src(j / 8, j % 8)).collect();
    for (g, o) in out.chunks_exact_mut(group).enumerate() {
        let base = g * group;
        for (v, &s) in o.iter_mut().zip(&map) {
            *v = x.get(base + s).map_or(0.0, |&xv| xv * scale);
        }
    }
}

/// `Σ_c w[c]·x[c]` for one NVFP4 row: `packed` (`cols/2` bytes, low nibble = even column),
/// `scales` (`cols/16` E4M3 block scales), `tensor_scale`; `xp` from [`prepare_x`].
pub(crate) fn dot_nvfp4(
    level: Level,
    packed: &[u8],
    scales: &[u8],
    tensor_scale: f32,
    xp: &[f32],
) -> f32 {
    let cols = scales.len() * 16;
    assert_eq!(
        packed.len() * 2,
        cols,
        "NVFP4 row: packed and scales disagree"
    );
    assert!(
        xp.len() >= x_len(level, Kind::Nvfp4, cols),
        "NVFP4 row: x too short"
    );
    match level {
        Level::Scalar => scalar::dot_nvfp4(packed, scales, tensor_scale, xp),
        // SAFETY: this level is only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { avx2::dot_nvfp4(packed, scales, tensor_scale, xp) },
        // SAFETY: this level is only chosen when the CPU also has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { avx512::dot_nvfp4(packed, scales, tensor_scale, xp) },
    }
}

/// [`dot_nvfp4`] for `out.len()` consecutive rows of `cols` columns starting at `packed` /
/// `scales`: each result bit-identical to `dot_nvfp4`'s for that row. `false`, with nothing
/// written, where this level has no many-row kernel.
pub(crate) fn dot_nvfp4_rows(
    level: Level,
    (packed, scales): (&[u8], &[u8]),
    tensor_scale: f32,
    cols: usize,
    xp: &[f32],
    out: &mut [f32],
) -> bool {
    let rows = out.len();
    assert!(
        cols.is_multiple_of(16)
            && packed.len() >= rows * cols / 2
            && scales.len() >= rows * cols / 16
            && xp.len() >= x_len(level, Kind::Nvfp4, cols),
        "NVFP4 rows: lengths disagree"
    );
    match level {
        Level::Scalar => false,
        // SAFETY: this level is only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            unsafe { avx2::dot_nvfp4_rows(packed, scales, tensor_scale, cols, xp, out) };
            true
        }
        // One row at a time: each result is then `dot_nvfp4`'s by construction.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            let (pb, sb) = (cols / 2, cols / 16);
            for (r, o) in out.iter_mut().enumerate() {
                let (p, s) = (&packed[r * pb..(r + 1) * pb], &scales[r * sb..(r + 1) * sb]);
                // SAFETY: this level is only chosen when the CPU has AVX-512F, AVX2, FMA and
                // F16C; the lengths are checked above.
                *o = unsafe { avx512::dot_nvfp4(p, s, tensor_scale, xp) };
            }
            true
        }
    }
}

/// One NVFP4 row dotted with several tokens' prepared inputs (`xp[t]` from [`prepare_x`]):
/// `out[t]` is bit for bit [`dot_nvfp4`]'s for token t, the row's codes decoded once per group
/// of up to four tokens where the level has such a kernel.
pub(crate) fn dot_nvfp4_tokens(
    level: Level,
    packed: &[u8],
    scales: &[u8],
    tensor_scale: f32,
    xp: &[&[f32]],
    out: &mut [f32],
) {
    let cols = scales.len() * 16;
    assert!(
        packed.len() * 2 == cols
            && out.len() == xp.len()
            && xp
                .iter()
                .all(|x| x.len() >= x_len(level, Kind::Nvfp4, cols)),
        "NVFP4 tokens: lengths disagree"
    );
    match level {
        // SAFETY: this level is only chosen when the CPU has AVX2, FMA and F16C; the lengths
        // are checked above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe {
            let (p, s, ts) = (packed, scales, tensor_scale);
            let mut t = 0;
            while t < xp.len() {
                let o = &mut out[t..];
                match xp.len() - t {
                    1 => avx2::dot_nvfp4_tokens::<1>(p, s, ts, [xp[t]], o),
                    2 => avx2::dot_nvfp4_tokens::<2>(p, s, ts, [xp[t], xp[t + 1]], o),
                    3 => avx2::dot_nvfp4_tokens::<3>(p, s, ts, [xp[t], xp[t + 1], xp[t + 2]], o),
                    _ => avx2::dot_nvfp4_tokens::<4>(
                        p,
                        s,
                        ts,
                        [xp[t], xp[t + 1], xp[t + 2], xp[t + 3]],
                        o,
                    ),
                }
                t += 4;
            }
        },
        _ => {
            for (o, x) in out.iter_mut().zip(xp) {
                *o = dot_nvfp4(level, packed, scales, tensor_scale, x);
            }
        }
    }
}

/// `Σ_c w[c]·x[c]` for one FP8 (E4M3, per-tensor `scale`) row; `xp` from [`prepare_x`].
pub(crate) fn dot_fp8(level: Level, row: &[u8], scale: f32, xp: &[f32]) -> f32 {
    assert!(
        xp.len() >= x_len(level, Kind::Fp8, row.len()),
        "FP8 row: x too short"
    );
    match level {
        Level::Scalar => scalar::dot_fp8(row, scale, xp),
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe { avx2::dot_fp8(row, scale, xp) },
    }
}

/// `Σ_c w[c]·x[c]` for one BF16 row; `xp` from [`prepare_x`].
pub(crate) fn dot_bf16(level: Level, row: &[u16], xp: &[f32]) -> f32 {
    assert!(
        xp.len() >= x_len(level, Kind::Bf16, row.len()),
        "BF16 row: x too short"
    );
    match level {
        Level::Scalar => scalar::dot_map(row, xp, bf16_to_f32),
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe { avx2::dot_bf16(row, xp) },
    }
}

/// [`dot_bf16`] of two rows against the same input, sharing its loads; each result is
/// bit-identical to [`dot_bf16`]'s. `None` where the level has no paired kernel.
pub(crate) fn dot_bf16_pair(level: Level, a: &[u16], b: &[u16], xp: &[f32]) -> Option<(f32, f32)> {
    assert!(
        a.len() == b.len() && xp.len() >= x_len(level, Kind::Bf16, a.len()),
        "BF16 row pair: lengths disagree"
    );
    match level {
        Level::Scalar => None,
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => Some(unsafe { avx2::dot_bf16_pair(a, b, xp) }),
    }
}

/// Rows of a BF16 weight (`cols` columns each, `out.len() / xp.len()` of them from the start
/// of `w`) dotted with several tokens' prepared inputs: `out[r·T + t]` is bit for bit
/// [`dot_bf16`]'s for row r and token t, each weight loaded once for all the tokens. `false`,
/// with nothing written, where the level has no such kernel.
pub(crate) fn dot_bf16_tokens(
    level: Level,
    w: &[u16],
    cols: usize,
    xp: &[&[f32]],
    out: &mut [f32],
) -> bool {
    check_tokens(
        "BF16",
        w.len(),
        cols,
        x_len(level, Kind::Bf16, cols),
        xp,
        out,
    );
    match level {
        Level::Scalar => false,
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C; the
        // lengths are checked above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => {
            unsafe { avx2::dot_bf16_tokens(w, cols, xp, out) };
            true
        }
    }
}

/// [`dot_bf16_tokens`] for an FP8 weight (per-tensor `scale`): each result bit for bit
/// [`dot_fp8`]'s.
pub(crate) fn dot_fp8_tokens(
    level: Level,
    w: &[u8],
    cols: usize,
    scale: f32,
    xp: &[&[f32]],
    out: &mut [f32],
) -> bool {
    check_tokens("FP8", w.len(), cols, x_len(level, Kind::Fp8, cols), xp, out);
    match level {
        Level::Scalar => false,
        // SAFETY: as for `dot_bf16_tokens`.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => {
            unsafe { avx2::dot_fp8_tokens(w, cols, scale, xp, out) };
            true
        }
    }
}

/// The many-token kernels' contract: whole rows for every output, every input long enough.
fn check_tokens(what: &str, w_len: usize, cols: usize, x_len: usize, xp: &[&[f32]], out: &[f32]) {
    let ok = !xp.is_empty()
        && cols > 0
        && out.len().is_multiple_of(xp.len())
        && w_len >= out.len() / xp.len() * cols
        && xp.iter().all(|x| x.len() >= x_len);
    assert!(ok, "{what} tokens: lengths disagree");
}

/// `Σ_c w[c]·x[c]` for one F16 row.
pub(crate) fn dot_f16(level: Level, row: &[u16], x: &[f32]) -> f32 {
    let x = &x[..row.len()];
    match level {
        Level::Scalar => scalar::dot_map(row, x, f16_to_f32),
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe { avx2::dot_f16(row, x) },
    }
}

/// `Σ_c w[c]·x[c]` for one F32 row.
pub(crate) fn dot_f32(level: Level, row: &[f32], x: &[f32]) -> f32 {
    let x = &x[..row.len()];
    match level {
        Level::Scalar => scalar::dot_map(row, x, |v| v),
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe { avx2::dot_f32(row, x) },
    }
}

/// NVFP4 row to f32: `out[c] = E2M1[code] · (e4m3(block) · tensor_scale)`, bit-exact.
pub(crate) fn decode_nvfp4(
    level: Level,
    packed: &[u8],
    scales: &[u8],
    tensor_scale: f32,
    out: &mut [f32],
) {
    let cols = scales.len() * 16;
    assert_eq!(
        packed.len() * 2,
        cols,
        "NVFP4 row: packed and scales disagree"
    );
    let out = &mut out[..cols];
    match level {
        Level::Scalar => scalar::decode_nvfp4(packed, scales, tensor_scale, out),
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe {
            avx2::decode_nvfp4(packed, scales, tensor_scale, out)
        },
    }
}

/// FP8 row to f32: `out[c] = e4m3(row[c]) · scale`, bit-exact.
pub(crate) fn decode_fp8(level: Level, row: &[u8], scale: f32, out: &mut [f32]) {
    let out = &mut out[..row.len()];
    match level {
        Level::Scalar => {
            for (o, &b) in out.iter_mut().zip(row) {
                *o = E4M3_TO_F32[b as usize] * scale;
            }
        }
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe { avx2::decode_fp8(row, scale, out) },
    }
}

/// BF16 row to f32 (exact).
pub(crate) fn decode_bf16(level: Level, row: &[u16], out: &mut [f32]) {
    let out = &mut out[..row.len()];
    match level {
        Level::Scalar => {
            for (o, &b) in out.iter_mut().zip(row) {
                *o = bf16_to_f32(b);
            }
        }
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe { avx2::decode_bf16(row, out) },
    }
}

/// F16 row to f32 (exact).
pub(crate) fn decode_f16(level: Level, row: &[u16], out: &mut [f32]) {
    let out = &mut out[..row.len()];
    match level {
        Level::Scalar => {
            for (o, &b) in out.iter_mut().zip(row) {
                *o = f16_to_f32(b);
            }
        }
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe { avx2::decode_f16(row, out) },
    }
}

/// Row stride of a decoded panel for [`panel_product`]: `cols` rounded up to 16, plus 16, the
/// tail zero. Rows a power of two apart (4096 floats is 16 KiB) would all fall in the same
/// few L1 sets, and the panel slice the tiles reuse would not stay in L1; one extra cache line
/// per row spreads them over every set.
pub(crate) fn panel_stride(cols: usize) -> usize {
    cols.next_multiple_of(16) + 16
}

/// `out[t·rows + i] = panel_i · x_t` for the `rows` rows of `panel` (stride
/// [`panel_stride`]`(cols)`, zeros past `cols`) and the tokens of `x` (`[tokens, cols]`);
/// `out` is `[tokens, rows]`.
///
/// Each result depends only on its own row and token (one FMA chain per lane, in column order,
/// then a fixed reduction), never on how many rows or tokens share the call.
pub(crate) fn panel_product(
    level: Level,
    panel: &[f32],
    rows: usize,
    x: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    let stride = panel_stride(cols);
    let tokens = x.len() / cols.max(1);
    assert!(panel.len() >= rows * stride && out.len() >= tokens * rows);
    match level {
        Level::Scalar => {
            for i in 0..rows {
                let w = &panel[i * stride..i * stride + cols];
                for t in 0..tokens {
                    out[t * rows + i] = scalar::dot_map(w, &x[t * cols..(t + 1) * cols], |v| v);
                }
            }
        }
        // SAFETY: these levels are only chosen when the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 => unsafe {
            avx2::panel_product(panel, rows, x, cols, tokens, out)
        },
    }
}

mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn byte(&mut self) -> u8 {
            (self.next() >> 56) as u8
        }
        /// Uniform in [-1, 1).
        fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        /// Any E4M3 byte but the two NaNs.
        fn e4m3(&mut self) -> u8 {
            loop {
                let b = self.byte();
                if b & 0x7f != 0x7f {
                    return b;
                }
            }
        }
    }

    /// The SIMD levels this CPU has, each compared with the fallback by the tests; AVX-512
    /// whether or not `NEMOTRON_CPU_SIMD` asks for it.
    fn simd_levels() -> Vec<Level> {
        let all = detect(None);
        if all == Level::Scalar {
            eprintln!("no SIMD level on this CPU: only the fallback is tested");
            return vec![];
        }
        let mut levels = vec![all];
        match detect(Some("avx512")) {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => levels.push(Level::Avx512),
            _ => eprintln!("skipped: this CPU has no AVX-512F, so its NVFP4 kernel is not tested"),
        }
        levels
    }

    fn prepared(level: Level, kind: Kind, x: &[f32]) -> Vec<f32> {
        let mut xp = vec![f32::NAN; x_len(level, kind, x.len()) + 3];
        prepare_x(level, kind, x, &mut xp);
        xp
    }

    /// The many-row NVFP4 kernel returns, for every row, exactly the one-row kernel's result:
    /// eight rows at a time and the rows left over, rows that are not whole steps, a NaN block
    /// scale, and a tensor scale large enough to take the split multiplier.
    #[test]
    fn nvfp4_rows_equal_single_rows() {
        let mut rng = Rng(0x5eed_1234);
        for level in simd_levels() {
            for &(rows, cols, ts, nan) in &[
                (8usize, 1024usize, 0.37f32, false),
                (19, 2688, 0.011, false),
                (17, 256, 1000.0, false),
                (9, 1024, 0.5, true),
                (11, 176, 0.25, false),
                (3, 128, 0.25, false),
            ] {
                let packed: Vec<u8> = (0..rows * cols / 2).map(|_| rng.byte()).collect();
                let mut scales: Vec<u8> = (0..rows * cols / 16).map(|_| rng.e4m3()).collect();
                if nan {
                    scales[5 * cols / 16 + 2] = 0x7f;
                }
                let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
                let xp = prepared(level, Kind::Nvfp4, &x);
                let mut out = vec![f32::NAN; rows];
                assert!(dot_nvfp4_rows(
                    level,
                    (&packed, &scales),
                    ts,
                    cols,
                    &xp,
                    &mut out
                ));
                for (r, &v) in out.iter().enumerate() {
                    let one = dot_nvfp4(
                        level,
                        &packed[r * cols / 2..(r + 1) * cols / 2],
                        &scales[r * cols / 16..(r + 1) * cols / 16],
                        ts,
                        &xp,
                    );
                    assert_eq!(
                        v.to_bits(),
                        one.to_bits(),
                        "{rows}x{cols} row {r}: {v} vs {one}"
                    );
                    assert_eq!(v.is_nan(), nan && r == 5, "{rows}x{cols} row {r}");
                }
            }
        }
    }

    /// Both results sum the same exactly-rounded products in different orders (the NVFP4 and
    /// FP8 kernels also round the block sums once more when scaling them): each is within
    /// (n/8 + 24)·2^-24·Σ|wᵢxᵢ| of the exact sum for chains of at most n/8 + 16 additions, so
    /// they differ by at most twice that.
    fn assert_close(what: &str, got: f32, want: f32, n: usize, abs_sum: f32) {
        let tol = 2.0 * (n as f32 / 8.0 + 24.0) * f32::EPSILON / 2.0 * abs_sum;
        assert!(
            (got - want).abs() <= tol,
            "{what}: SIMD {got:e} vs fallback {want:e} (|diff| {:e} > tolerance {tol:e})",
            (got - want).abs()
        );
    }

    fn bits_eq(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn env_var_forces_the_fallback() {
        for off in ["off", "OFF", " off ", "0", "false", "scalar"] {
            assert_eq!(detect(Some(off)), Level::Scalar, "{off:?}");
        }
        assert_eq!(detect(Some("on")), detect(None));
        assert_eq!(detect(Some("avx2")), detect(None));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // AVX-512 only when asked for, and only where the CPU has it.
            assert_eq!(detect(None), Level::Avx2);
            let want = if std::arch::is_x86_feature_detected!("avx512f") {
                Level::Avx512
            } else {
                Level::Avx2
            };
            assert_eq!(detect(Some(" AVX512 ")), want);
        }
    }

    /// The paired BF16 kernel gives each row exactly what the single-row kernel gives, for
    /// every length class (whole double steps, a single step, a padded tail).
    #[test]
    fn bf16_pair_equals_two_single_rows_bit_for_bit() {
        let mut rng = Rng(0x0000_bf16_0002);
        for level in simd_levels() {
            for n in [1usize, 15, 16, 17, 31, 32, 48, 100, 4096] {
                let row = |rng: &mut Rng| -> Vec<u16> {
                    (0..n)
                        .map(|_| half::bf16::from_f32(rng.f32()).to_bits())
                        .collect()
                };
                let (a, b) = (row(&mut rng), row(&mut rng));
                let x: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
                let xp = prepared(level, Kind::Bf16, &x);
                let (pa, pb) = dot_bf16_pair(level, &a, &b, &xp).expect("a paired kernel");
                let (sa, sb) = (dot_bf16(level, &a, &xp), dot_bf16(level, &b, &xp));
                assert!(
                    bits_eq(pa, sa) && bits_eq(pb, sb),
                    "n={n}: ({pa}, {pb}) vs ({sa}, {sb})"
                );
            }
        }
        assert_eq!(dot_bf16_pair(Level::Scalar, &[0], &[0], &[0.0; 8]), None);
    }

    /// A random NVFP4 row: codes, block scales (every non-NaN E4M3 byte, subnormals and zero
    /// included), tensor scale.
    fn nvfp4_row(rng: &mut Rng, cols: usize) -> (Vec<u8>, Vec<u8>, f32) {
        let packed = (0..cols / 2).map(|_| rng.byte()).collect();
        let scales = (0..cols / 16).map(|_| rng.e4m3()).collect();
        (packed, scales, 0.0037 * (1.0 + rng.f32().abs()))
    }

    #[test]
    fn nvfp4_dot_matches_fallback() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for level in simd_levels() {
            for cols in [16, 32, 48, 112, 128, 144, 256, 400, 1024, 2688] {
                for _ in 0..4 {
                    let (p, s, ts) = nvfp4_row(&mut rng, cols);
                    let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
                    let mut w = vec![0.0; cols];
                    decode_nvfp4(Level::Scalar, &p, &s, ts, &mut w);
                    let abs: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                    let want = dot_nvfp4(Level::Scalar, &p, &s, ts, &x);
                    let got = dot_nvfp4(level, &p, &s, ts, &prepared(level, Kind::Nvfp4, &x));
                    assert_close(&format!("NVFP4 {cols}"), got, want, cols, abs);
                }
            }
        }
    }

    /// The many-token NVFP4 kernel gives each token exactly the one-token kernel's bits: any
    /// token count, widths with and without a partial last step, a tensor scale that needs
    /// the split multiplier, and a NaN block scale.
    #[test]
    fn nvfp4_tokens_equal_one_token_dots_bit_for_bit() {
        let mut rng = Rng(23);
        for level in simd_levels() {
            for cols in [16, 48, 128, 272, 1024] {
                for tokens in 1..=9 {
                    let (packed, mut scales, mut ts) = nvfp4_row(&mut rng, cols);
                    if tokens == 5 {
                        ts = 3.0e38;
                    }
                    if tokens == 7 {
                        scales[cols / 16 - 1] = 0x7f;
                    }
                    let xs: Vec<Vec<f32>> = (0..tokens)
                        .map(|_| {
                            let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
                            prepared(level, Kind::Nvfp4, &x)
                        })
                        .collect();
                    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                    let mut out = vec![0.0; tokens];
                    dot_nvfp4_tokens(level, &packed, &scales, ts, &refs, &mut out);
                    for (t, x) in xs.iter().enumerate() {
                        let one = dot_nvfp4(level, &packed, &scales, ts, x);
                        assert!(
                            bits_eq(out[t], one),
                            "{level:?} cols {cols}, token {t} of {tokens}: {} vs {one}",
                            out[t]
                        );
                    }
                }
            }
        }
    }

    /// The dense many-token kernels give, for every row and token, exactly the one-token
    /// dot: widths with and without whole steps and tails, one to nine tokens (every pass
    /// width and several column blocks), row counts across the row groups, an FP8 NaN code.
    #[test]
    fn dense_tokens_equal_one_token_dots_bit_for_bit() {
        let mut rng = Rng(29);
        for level in simd_levels() {
            for (rows, cols) in [
                (1, 1),
                (3, 15),
                (9, 17),
                (2, 33),
                (17, 100),
                (5, 1030),
                (3, 4096),
            ] {
                for tokens in [1, 2, 3, 4, 5, 7, 9] {
                    let xs = |kind: Kind, rng: &mut Rng| -> Vec<Vec<f32>> {
                        (0..tokens)
                            .map(|_| {
                                let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
                                prepared(level, kind, &x)
                            })
                            .collect()
                    };
                    let what = format!("{level:?} {rows}x{cols}, {tokens} tokens");
                    let bf16: Vec<u16> = (0..rows * cols)
                        .map(|_| half::bf16::from_f32(rng.f32() * 3.0).to_bits())
                        .collect();
                    let x = xs(Kind::Bf16, &mut rng);
                    let refs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
                    let mut out = vec![f32::NAN; rows * tokens];
                    assert!(dot_bf16_tokens(level, &bf16, cols, &refs, &mut out));
                    for r in 0..rows {
                        for t in 0..tokens {
                            let one = dot_bf16(level, &bf16[r * cols..(r + 1) * cols], &x[t]);
                            let got = out[r * tokens + t];
                            assert!(
                                bits_eq(got, one),
                                "BF16 {what}: row {r} token {t}: {got} vs {one}"
                            );
                        }
                    }
                    let mut fp8: Vec<u8> = (0..rows * cols).map(|_| rng.e4m3()).collect();
                    if tokens == 3 {
                        fp8[(rows - 1) * cols] = 0xff;
                    }
                    let scale = 0.02 * (1.0 + rng.f32().abs());
                    let x = xs(Kind::Fp8, &mut rng);
                    let refs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
                    assert!(dot_fp8_tokens(level, &fp8, cols, scale, &refs, &mut out));
                    for r in 0..rows {
                        for t in 0..tokens {
                            let one = dot_fp8(level, &fp8[r * cols..(r + 1) * cols], scale, &x[t]);
                            let got = out[r * tokens + t];
                            assert!(
                                bits_eq(got, one),
                                "FP8 {what}: row {r} token {t}: {got} vs {one}"
                            );
                            assert_eq!(got.is_nan(), tokens == 3 && r == rows - 1, "FP8 {what}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fp8_dot_matches_fallback() {
        let mut rng = Rng(7);
        for level in simd_levels() {
            for n in [1, 7, 8, 31, 33, 63, 64, 65, 100, 300, 1030] {
                for _ in 0..4 {
                    let row: Vec<u8> = (0..n).map(|_| rng.e4m3()).collect();
                    let x: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
                    let scale = 0.02 * (1.0 + rng.f32().abs());
                    let mut w = vec![0.0; n];
                    decode_fp8(Level::Scalar, &row, scale, &mut w);
                    let abs: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                    let want = dot_fp8(Level::Scalar, &row, scale, &x);
                    let got = dot_fp8(level, &row, scale, &prepared(level, Kind::Fp8, &x));
                    assert_close(&format!("FP8 {n}"), got, want, n, abs);
                }
            }
        }
    }

    #[test]
    fn dense_dots_match_fallback() {
        let mut rng = Rng(11);
        for level in simd_levels() {
            for n in [1, 7, 8, 15, 16, 17, 31, 33, 100, 300, 1030] {
                let x: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
                let w: Vec<f32> = (0..n).map(|_| rng.f32() * 3.0).collect();
                let bf: Vec<u16> = w
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect();
                let hf: Vec<u16> = w
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect();
                let abs = |w: &[f32]| -> f32 { w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum() };
                let wb: Vec<f32> = bf.iter().map(|&b| bf16_to_f32(b)).collect();
                let wh: Vec<f32> = hf.iter().map(|&b| f16_to_f32(b)).collect();
                let xb = prepared(level, Kind::Bf16, &x);
                assert_close(
                    &format!("BF16 {n}"),
                    dot_bf16(level, &bf, &xb),
                    dot_bf16(Level::Scalar, &bf, &x),
                    n,
                    abs(&wb),
                );
                assert_close(
                    &format!("F16 {n}"),
                    dot_f16(level, &hf, &prepared(level, Kind::F16, &x)),
                    dot_f16(Level::Scalar, &hf, &x),
                    n,
                    abs(&wh),
                );
                assert_close(
                    &format!("F32 {n}"),
                    dot_f32(level, &w, &prepared(level, Kind::F32, &x)),
                    dot_f32(Level::Scalar, &w, &x),
                    n,
                    abs(&w),
                );
            }
        }
    }

    /// The fallback dots are the old decode-then-`dot` path, bit for bit.
    #[test]
    fn fallback_dots_equal_decode_then_dot() {
        let mut rng = Rng(5);
        for cols in [16, 48, 272] {
            let (p, s, ts) = nvfp4_row(&mut rng, cols);
            let x: Vec<f32> = (0..cols).map(|_| rng.f32()).collect();
            let mut w = vec![0.0; cols];
            decode_nvfp4(Level::Scalar, &p, &s, ts, &mut w);
            let want = super::super::linear::dot(&x, &w);
            assert!(bits_eq(dot_nvfp4(Level::Scalar, &p, &s, ts, &x), want));
            let row: Vec<u8> = (0..cols + 3).map(|_| rng.e4m3()).collect();
            let x: Vec<f32> = (0..cols + 3).map(|_| rng.f32()).collect();
            let mut w = vec![0.0; cols + 3];
            decode_fp8(Level::Scalar, &row, 0.3, &mut w);
            let want = super::super::linear::dot(&x, &w);
            assert!(bits_eq(dot_fp8(Level::Scalar, &row, 0.3, &x), want));
        }
    }

    /// With a one-hot input every kernel returns the decoded weight exactly (what
    /// tests/dequant.rs relies on), also through the scaled-out NVFP4 and FP8 sums.
    #[test]
    fn one_hot_inputs_read_weights_exactly() {
        let mut rng = Rng(3);
        let mut levels = simd_levels();
        levels.push(Level::Scalar);
        for level in levels {
            for cols in [16, 144] {
                let (p, s, ts) = nvfp4_row(&mut rng, cols);
                let row8: Vec<u8> = (0..cols).map(|_| rng.e4m3()).collect();
                let rowb: Vec<u16> = (0..cols).map(|_| rng.next() as u16 & 0x7f7f).collect();
                let (mut w4, mut w8, mut wb) = (vec![0.0; cols], vec![0.0; cols], vec![0.0; cols]);
                decode_nvfp4(Level::Scalar, &p, &s, ts, &mut w4);
                decode_fp8(Level::Scalar, &row8, 0.0123, &mut w8);
                decode_bf16(Level::Scalar, &rowb, &mut wb);
                for c in 0..cols {
                    let mut x = vec![0.0f32; cols];
                    x[c] = 1.0;
                    let same = |got: f32, want: f32| bits_eq(got, want) || got == want;
                    let got = dot_nvfp4(level, &p, &s, ts, &prepared(level, Kind::Nvfp4, &x));
                    assert!(
                        same(got, w4[c]),
                        "{level:?} NVFP4 col {c}: {got:e} vs {:e}",
                        w4[c]
                    );
                    let got = dot_fp8(level, &row8, 0.0123, &prepared(level, Kind::Fp8, &x));
                    assert!(
                        same(got, w8[c]),
                        "{level:?} FP8 col {c}: {got:e} vs {:e}",
                        w8[c]
                    );
                    let got = dot_bf16(level, &rowb, &prepared(level, Kind::Bf16, &x));
                    assert!(
                        same(got, wb[c]),
                        "{level:?} BF16 col {c}: {got:e} vs {:e}",
                        wb[c]
                    );
                }
            }
        }
    }

    #[test]
    fn nan_weights_give_nan() {
        let mut rng = Rng(13);
        let mut levels = simd_levels();
        levels.push(Level::Scalar);
        for level in levels {
            let (p, s, ts) = nvfp4_row(&mut rng, 272);
            let x: Vec<f32> = (0..272).map(|_| rng.f32()).collect();
            let xp = prepared(level, Kind::Nvfp4, &x);
            // In a whole step and in the last, partial one; either sign.
            for (at, nan) in [(9, 0xff), (16, 0x7f)] {
                let mut s = s.clone();
                s[at] = nan;
                assert!(
                    dot_nvfp4(level, &p, &s, ts, &xp).is_nan(),
                    "{level:?} NVFP4, scale {at}"
                );
            }
            let mut row: Vec<u8> = (0..100).map(|_| rng.e4m3()).collect();
            row[97] = 0x7f;
            let xp = prepared(level, Kind::Fp8, &x[..100]);
            assert!(dot_fp8(level, &row, 1.0, &xp).is_nan(), "{level:?} FP8");
        }
    }

    /// Every packed byte under every block scale (NaN and subnormal scales included).
    #[test]
    fn nvfp4_decode_is_bit_exact() {
        for level in simd_levels() {
            let packed: Vec<u8> = (0..=255u8).collect();
            for ts in [1.0f32, 0.00123, 3.7e-5] {
                for first in (0..256).step_by(32) {
                    // 32 blocks of 8 bytes, scales first..first+32, plus an odd block.
                    let scales: Vec<u8> = (first..first + 32).map(|b| b as u8).collect();
                    for nb in [32, 31, 1] {
                        let (p, s) = (&packed[..8 * nb], &scales[..nb]);
                        let mut want = vec![0.0; 16 * nb];
                        let mut got = vec![0.0; 16 * nb];
                        decode_nvfp4(Level::Scalar, p, s, ts, &mut want);
                        decode_nvfp4(level, p, s, ts, &mut got);
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(bits_eq(*g, *w), "NVFP4 element {i}: {g:e} vs {w:e}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dense_and_fp8_decode_are_bit_exact() {
        for level in simd_levels() {
            let bytes: Vec<u8> = (0..=255u8).chain(0..7).collect();
            for scale in [1.0f32, 0.37, 1e-3] {
                let (mut want, mut got) = (vec![0.0; bytes.len()], vec![0.0; bytes.len()]);
                decode_fp8(Level::Scalar, &bytes, scale, &mut want);
                decode_fp8(level, &bytes, scale, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(bits_eq(*g, *w), "FP8 byte {i:#x}: {g:e} vs {w:e}");
                }
            }
            let words: Vec<u16> = (0..=u16::MAX).chain(0..5).collect();
            let (mut want, mut got) = (vec![0.0; words.len()], vec![0.0; words.len()]);
            decode_bf16(Level::Scalar, &words, &mut want);
            decode_bf16(level, &words, &mut got);
            assert!(got.iter().zip(&want).all(|(g, w)| bits_eq(*g, *w)), "BF16");
            decode_f16(Level::Scalar, &words, &mut want);
            decode_f16(level, &words, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(bits_eq(*g, *w), "F16 {i:#x}: {g:e} vs {w:e}");
            }
        }
    }

    fn panel(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
        let stride = panel_stride(cols);
        let mut p = vec![0.0; rows * stride];
        for r in 0..rows {
            for c in 0..cols {
                p[r * stride + c] = rng.f32();
            }
        }
        p
    }

    #[test]
    fn panel_product_matches_fallback() {
        let mut rng = Rng(17);
        for level in simd_levels() {
            for (rows, cols, tokens) in
                [(1, 1, 1), (5, 7, 3), (16, 300, 7), (9, 513, 5), (3, 64, 2)]
            {
                let p = panel(&mut rng, rows, cols);
                let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32()).collect();
                let (mut want, mut got) = (vec![0.0; tokens * rows], vec![0.0; tokens * rows]);
                panel_product(Level::Scalar, &p, rows, &x, cols, &mut want);
                panel_product(level, &p, rows, &x, cols, &mut got);
                let stride = panel_stride(cols);
                for t in 0..tokens {
                    for r in 0..rows {
                        let abs: f32 = (0..cols)
                            .map(|c| (p[r * stride + c] * x[t * cols + c]).abs())
                            .sum();
                        let what = format!("panel [{rows}x{cols}] x{tokens} ({r}, {t})");
                        assert_close(&what, got[t * rows + r], want[t * rows + r], cols, abs);
                    }
                }
            }
        }
    }

    /// A product does not depend on which other rows and tokens share the call.
    #[test]
    fn panel_product_is_independent_of_batching() {
        let mut rng = Rng(19);
        for level in simd_levels() {
            let (rows, cols, tokens) = (11, 777, 9);
            let p = panel(&mut rng, rows, cols);
            let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32()).collect();
            let mut all = vec![0.0; tokens * rows];
            panel_product(level, &p, rows, &x, cols, &mut all);
            let stride = panel_stride(cols);
            for r in 0..rows {
                for t in 0..tokens {
                    let mut one = [0.0f32];
                    let (pr, xt) = (&p[r * stride..], &x[t * cols..(t + 1) * cols]);
                    panel_product(level, pr, 1, xt, cols, &mut one);
                    assert_eq!(one[0].to_bits(), all[t * rows + r].to_bits(), "({r}, {t})");
                }
            }
        }
    }
}
