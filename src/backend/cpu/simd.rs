//! Row kernels of the CPU linear layers, over weights in their stored formats:
//! * `dot_*`: one stored row · one f32 vector (decode: a batch of one to four tokens reads every
//!   weight byte straight from the map, with no f32 copy of the row);
//! * `decode_*`: one stored row to f32, bit-exact with the reference decode;
//! * [`panel_product`]: decoded rows × many tokens (prefill), blocked so that the rows stay in
//!   L1 while every token passes over them.
//!
//! Every kernel has an AVX2+FMA(+F16C) implementation and a portable scalar fallback that is the
//! reference math (decode each weight exactly, then the eight-lane f32 dot of
//! [`super::linear::dot`]). The implementation is chosen once per process ([`level`]) from the
//! CPU's features; `NEMOTRON_CPU_SIMD=off` forces the fallback, for comparison. The AVX-512 level
//! (`avx512`: the AVX2 kernels plus an AVX-512F NVFP4 dot) is chosen only with
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
/// The AVX2 FP8 dot decodes `e4m3 · 2^-120` (see `avx2::fp8_half`); the input is scaled by
/// `2^64` and the sum by `scale · 2^56`, both exact, to keep the products normal.
const FP8_X_SCALE: f32 = f32::from_bits((127 + 64) << 23);
const FP8_SUM_SCALE: f32 = f32::from_bits((127 + 56) << 23);

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

/// Row stride of a decoded panel for [`panel_product`]: `cols` rounded up to eight, the tail
/// zero.
pub(crate) fn panel_stride(cols: usize) -> usize {
    cols.next_multiple_of(8)
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

/// The reference math: every weight decoded exactly, then the eight-lane dot of
/// `linear::dot` (same products, same order, bit for bit).
mod scalar {
    use super::*;

    /// Eight lanes over whole chunks of eight, a serial tail, then the fixed reduction.
    #[inline]
    pub(super) fn dot_map<T: Copy>(w: &[T], x: &[f32], f: impl Fn(T) -> f32) -> f32 {
        let n = w.len().min(x.len());
        let mut acc = [0.0f32; 8];
        let chunks = n / 8;
        for c in 0..chunks {
            let (xs, ws) = (&x[c * 8..c * 8 + 8], &w[c * 8..c * 8 + 8]);
            for l in 0..8 {
                acc[l] += xs[l] * f(ws[l]);
            }
        }
        let mut tail = 0.0f32;
        for i in chunks * 8..n {
            tail += x[i] * f(w[i]);
        }
        reduce(&acc) + tail
    }

    #[inline]
    fn reduce(acc: &[f32; 8]) -> f32 {
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }

    pub(super) fn dot_nvfp4(packed: &[u8], scales: &[u8], ts: f32, x: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        for (blk, (&s, pk)) in scales.iter().zip(packed.chunks_exact(8)).enumerate() {
            let d = E4M3_TO_F32[s as usize] * ts;
            let xs = &x[blk * 16..blk * 16 + 16];
            for (j, &byte) in pk.iter().enumerate() {
                // Columns 2j and 2j+1 of the block fall in lanes (2j)%8 and (2j+1)%8.
                let l = (2 * j) % 8;
                acc[l] += xs[2 * j] * (E2M1_VALUES[(byte & 0x0f) as usize] * d);
                acc[l + 1] += xs[2 * j + 1] * (E2M1_VALUES[(byte >> 4) as usize] * d);
            }
        }
        reduce(&acc) + 0.0
    }

    pub(super) fn dot_fp8(row: &[u8], scale: f32, x: &[f32]) -> f32 {
        dot_map(row, x, |b| E4M3_TO_F32[b as usize] * scale)
    }

    pub(super) fn decode_nvfp4(packed: &[u8], scales: &[u8], ts: f32, out: &mut [f32]) {
        for (blk, (&s, pk)) in scales.iter().zip(packed.chunks_exact(8)).enumerate() {
            // Scales are multiplied together first, as ModelOpt's dequantize does, so the
            // decoded weight is bit-identical to the reference's.
            let d = E4M3_TO_F32[s as usize] * ts;
            let o = &mut out[blk * 16..blk * 16 + 16];
            for (j, &byte) in pk.iter().enumerate() {
                o[2 * j] = E2M1_VALUES[(byte & 0x0f) as usize] * d;
                o[2 * j + 1] = E2M1_VALUES[(byte >> 4) as usize] * d;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! Every function needs AVX2, FMA and F16C; callers check with [`super::level`].

    use std::arch::x86_64::*;

    use super::{BF16_STEP, E2M1_VALUES, E4M3_TO_F32, FP8_STEP, FP8_SUM_SCALE, NV_STEP};
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

    pub(crate) const TWO_POW_120: f32 = f32::from_bits((127 + 120) << 23);

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
    /// `(b << 24) >> 4` (arithmetic) puts the magnitude bits at 20-26 and copies of the sign
    /// at 27-31; the mask keeps the sign at bit 31 only.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn e4m3x8_scaled(b: __m128i) -> __m256 {
        let w = _mm256_srai_epi32::<4>(_mm256_slli_epi32::<24>(_mm256_cvtepu8_epi32(b)));
        _mm256_castsi256_ps(_mm256_and_si256(
            w,
            _mm256_set1_epi32(0x87f0_0000u32 as i32),
        ))
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

    /// Half a step of the NVFP4 dot: 32 packed bytes `v` (two blocks per 128-bit lane) against
    /// 64 prepared inputs. Returns the per-lane sums of the first block of each lane and of the
    /// second.
    ///
    /// Low nibbles give the even columns, high nibbles the odd ones; both go through the two
    /// BF16 byte tables, are interleaved into words and widened to f32 by a shift (even words)
    /// or a mask (odd words). Vector k of the eight holds, in lane i, column
    /// 4·(i%4) + [0, 2, 16, 18, 1, 3, 17, 19][k] of the 32 columns that lane i's 128-bit half
    /// of `v` encodes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nv_half(v: __m256i, x: *const f32, tl: __m256i, th: __m256i) -> (__m256, __m256) {
        // SAFETY: the caller guarantees 64 floats at `x`.
        unsafe {
            let m0f = _mm256_set1_epi8(0x0f);
            let lo = _mm256_and_si256(v, m0f);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m0f);
            let (llo, hlo) = (_mm256_shuffle_epi8(tl, lo), _mm256_shuffle_epi8(th, lo));
            let (lhi, hhi) = (_mm256_shuffle_epi8(tl, hi), _mm256_shuffle_epi8(th, hi));
            let w0 = _mm256_unpacklo_epi8(llo, hlo);
            let w1 = _mm256_unpackhi_epi8(llo, hlo);
            let w2 = _mm256_unpacklo_epi8(lhi, hhi);
            let w3 = _mm256_unpackhi_epi8(lhi, hhi);
            let xv = |k: usize| _mm256_loadu_ps(x.add(8 * k));
            let mut first = _mm256_mul_ps(even_words(w0), xv(0));
            first = _mm256_fmadd_ps(odd_words(w0), xv(1), first);
            first = _mm256_fmadd_ps(even_words(w2), xv(4), first);
            first = _mm256_fmadd_ps(odd_words(w2), xv(5), first);
            let mut second = _mm256_mul_ps(even_words(w1), xv(2));
            second = _mm256_fmadd_ps(odd_words(w1), xv(3), second);
            second = _mm256_fmadd_ps(even_words(w3), xv(6), second);
            second = _mm256_fmadd_ps(odd_words(w3), xv(7), second);
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
        (ts, ts2): (__m256, __m256),
        (tl, th): (__m256i, __m256i),
        acc: &mut [__m256; 4],
        nan: &mut __m128i,
    ) {
        // SAFETY: the caller guarantees 64 bytes at `p`, 8 at `s` and 128 floats at `x`;
        // prefetches never fault.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF_NV).cast());
            _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(PF_NV / 8).cast());
            let sb = _mm_loadl_epi64(s.cast());
            let magnitude = _mm_and_si128(sb, _mm_set1_epi8(0x7f));
            *nan = _mm_or_si128(*nan, _mm_cmpeq_epi8(magnitude, _mm_set1_epi8(0x7f)));
            let mut d = _mm256_mul_ps(e4m3x8_scaled(sb), ts);
            if SPLIT {
                d = _mm256_mul_ps(d, ts2);
            }
            let v0 = _mm256_loadu2_m128i(p.add(32).cast(), p.cast());
            let v1 = _mm256_loadu2_m128i(p.add(48).cast(), p.add(16).cast());
            let (b04, b15) = nv_half(v0, x, tl, th);
            acc[0] = _mm256_fmadd_ps(b04, _mm256_permute_ps::<0x00>(d), acc[0]);
            acc[1] = _mm256_fmadd_ps(b15, _mm256_permute_ps::<0x55>(d), acc[1]);
            let (b26, b37) = nv_half(v1, x.add(64), tl, th);
            acc[2] = _mm256_fmadd_ps(b26, _mm256_permute_ps::<0xaa>(d), acc[2]);
            acc[3] = _mm256_fmadd_ps(b37, _mm256_permute_ps::<0xff>(d), acc[3]);
        }
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
                let mut nan_rows = 0u32;
                for (i, l) in v.iter_mut().enumerate() {
                    let (p, s) = row(r0 + i);
                    // SAFETY: the caller's guarantees, for each row.
                    let (lanes, nan) = unsafe {
                        if ts120.is_finite() {
                            let t = (_mm256_set1_ps(ts120), _mm256_setzero_ps());
                            nv_lanes::<false>(p, s, t, xp)
                        } else {
                            let t = (_mm256_set1_ps(TWO_POW_120), _mm256_set1_ps(ts));
                            nv_lanes::<true>(p, s, t, xp)
                        }
                    };
                    *l = lanes;
                    nan_rows |= u32::from(nan) << i;
                }
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
        let (lanes, nan) = unsafe { nv_lanes::<SPLIT>(packed, scales, ts, xp) };
        // NaN scales are not decoded by the loop (see `e4m3x8_scaled`); a NaN multiplier
        // would make the sum NaN, as decoding would.
        if nan { f32::NAN } else { hsum(lanes) }
    }

    /// [`nv_dot`] before its horizontal sum, and whether a block scale is NaN (not decoded,
    /// so the lanes are then meaningless). Checking scales already loaded saves a separate
    /// pass over them, which would wait on DRAM for every row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nv_lanes<const SPLIT: bool>(
        packed: &[u8],
        scales: &[u8],
        ts: (__m256, __m256),
        xp: &[f32],
    ) -> (__m256, bool) {
        let cols = scales.len() * 16;
        let steps = cols / NV_STEP;
        let tabs = e2m1_tables();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut nan = _mm_setzero_si128();
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
                    &mut nan,
                );
            }
            if !cols.is_multiple_of(NV_STEP) {
                // Zero codes, zero scales and zero (padded) inputs add exact zeros.
                let (mut p, mut s) = ([0u8; 64], [0u8; 8]);
                p[..packed.len() - 64 * steps].copy_from_slice(&packed[64 * steps..]);
                s[..scales.len() - 8 * steps].copy_from_slice(&scales[8 * steps..]);
                let x = xp[NV_STEP * steps..NV_STEP * (steps + 1)].as_ptr();
                nv_step::<SPLIT>(p.as_ptr(), s.as_ptr(), x, ts, tabs, &mut acc, &mut nan);
            }
        }
        (
            _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])),
            _mm_movemask_epi8(nan) != 0,
        )
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

    /// Columns per pass over the panel: 16 decoded rows of this many floats (16 KiB) stay in
    /// L1 while every token streams past them.
    const KB: usize = 256;
    /// Rows and tokens of the register tile (8 accumulators).
    const TR: usize = 4;
    const TT: usize = 2;

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
    /// `cols`) times `T` tokens (at `x`, row stride `cols`) into the lanes at `acc`
    /// (`acc + (r·acc_stride + 8t)` for row r, token t; `acc_stride` = tokens·8).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const T: usize>(
        w: *const f32,
        stride: usize,
        x: *const f32,
        (cols, acc_stride): (usize, usize),
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
                    *v = _mm256_loadu_ps(x.add(t * cols + c));
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
                    *v = _mm256_maskload_ps(x.add(t * cols + full), mask);
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
}

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
            let (p, mut s, ts) = nvfp4_row(&mut rng, 272);
            s[9] = 0xff;
            let x: Vec<f32> = (0..272).map(|_| rng.f32()).collect();
            let xp = prepared(level, Kind::Nvfp4, &x);
            assert!(
                dot_nvfp4(level, &p, &s, ts, &xp).is_nan(),
                "{level:?} NVFP4"
            );
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
