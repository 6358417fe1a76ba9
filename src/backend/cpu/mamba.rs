//! Mamba-2 on the CPU: causal depthwise conv with carried state, the selective scan, and the
//! gated grouped RMSNorm (ARCH_NOTES §3). The scan is the plain recurrence, parallel over heads;
//! it is the same math as the reference's chunked SSD prefill and its decode step.

use super::par;
use crate::backend::SsmDims;

/// `x`: `[T, C]` pre-conv inputs; `w`: `[C, K]`; `state`: `[K-1, C]` previous inputs (oldest
/// first). Returns `silu(conv)` `[T, C]` and leaves the last `K-1` inputs in `state`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv1d_silu(
    x: &[f32],
    tokens: usize,
    channels: usize,
    kernel: usize,
    w: &[f32],
    b: Option<&[f32]>,
    state: &mut [f32],
    par: bool,
) -> Vec<f32> {
    let hist = kernel - 1;
    // The timeline is the carried history followed by the new inputs; it is indexed in place
    // rather than assembled, so a decode step allocates nothing but its output.
    let at = |i: usize, c: usize| {
        if i < hist {
            state[i * channels + c]
        } else {
            x[(i - hist) * channels + c]
        }
    };
    let mut out = vec![0.0f32; tokens * channels];
    par::chunks_mut(&mut out, channels, par, |t, row| {
        for (c, o) in row.iter_mut().enumerate() {
            let mut acc = b.map_or(0.0, |b| b[c]);
            for j in 0..kernel {
                acc += w[c * kernel + j] * at(t + j, c);
            }
            *o = silu(acc);
        }
    });
    // The new history is the timeline's last `hist` rows: rows still in `state` move forward
    // (reading ahead of writing), the rest come from `x`.
    for i in 0..hist {
        let src = tokens + i;
        if src < hist {
            state.copy_within(src * channels..(src + 1) * channels, i * channels);
        } else {
            let xr = src - hist;
            state[i * channels..(i + 1) * channels]
                .copy_from_slice(&x[xr * channels..(xr + 1) * channels]);
        }
    }
    out
}

#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[inline]
fn softplus(x: f32) -> f32 {
    // torch.nn.functional.softplus with its default threshold of 20.
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// One state row's step: `s = s·decay + dx·b`, returning `Σ s·c` summed in eight lanes (a
/// fixed association that vectorizes; a serial sum would wait on every add).
#[inline]
fn update_and_read(s: &mut [f32], decay: f32, dx: f32, b: &[f32], c: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::level().has_avx2() {
        // SAFETY: this level is only chosen when the CPU has AVX2.
        return unsafe { update_and_read_avx2(s, decay, dx, b, c) };
    }
    update_and_read_lanes(s, decay, dx, b, c)
}

/// How far ahead (in f32s: four state rows of Super's 128) the decode step prefetches the
/// state. It is read and written back once per token and, at H·P·N floats per layer, does
/// not stay cached between tokens; the hardware prefetcher alone left the scan waiting on
/// DRAM (about 300 against 250 us per step of Super's shape on 2 threads).
#[cfg(target_arch = "x86_64")]
const STATE_PREFETCH: usize = 512;

/// [`update_and_read_lanes`] with its eight lanes in one register: the same operations
/// (separate multiplies and adds, no FMA) in the same order, so the same bits. The compiler
/// leaves the portable loop mostly scalar.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn update_and_read_avx2(s: &mut [f32], decay: f32, dx: f32, b: &[f32], c: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = s.len();
    let whole = n / 8 * 8;
    assert!(b.len() >= n && c.len() >= n);
    let (vd, vx) = (_mm256_set1_ps(decay), _mm256_set1_ps(dx));
    let mut acc = _mm256_setzero_ps();
    for j in (0..whole).step_by(8) {
        // SAFETY: j + 8 <= whole <= n, the length of `s`, `b` and `c`; prefetches never fault.
        unsafe {
            let sp = s.as_mut_ptr().add(j);
            _mm_prefetch::<_MM_HINT_T0>(sp.wrapping_add(STATE_PREFETCH).cast());
            let sv = _mm256_add_ps(
                _mm256_mul_ps(_mm256_loadu_ps(sp), vd),
                _mm256_mul_ps(vx, _mm256_loadu_ps(b.as_ptr().add(j))),
            );
            _mm256_storeu_ps(sp, sv);
            acc = _mm256_add_ps(acc, _mm256_mul_ps(sv, _mm256_loadu_ps(c.as_ptr().add(j))));
        }
    }
    let mut a = [0.0f32; 8];
    // SAFETY: `a` holds eight floats.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), acc) };
    let mut rest = 0.0f32;
    for j in whole..n {
        s[j] = s[j] * decay + dx * b[j];
        rest += s[j] * c[j];
    }
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])) + rest
}

#[inline]
fn update_and_read_lanes(s: &mut [f32], decay: f32, dx: f32, b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let whole = s.len() / 8 * 8;
    let (head, tail) = s.split_at_mut(whole);
    for ((sc, bc), cc) in head
        .chunks_exact_mut(8)
        .zip(b.chunks_exact(8))
        .zip(c.chunks_exact(8))
    {
        for l in 0..8 {
            sc[l] = sc[l] * decay + dx * bc[l];
            acc[l] += sc[l] * cc[l];
        }
    }
    let mut rest = 0.0f32;
    for (j, v) in tail.iter_mut().enumerate() {
        *v = *v * decay + dx * b[whole + j];
        rest += *v * c[whole + j];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + rest
}

/// Selective scan. `xbc`: `[T, I + 2GN]` (x, B, C); `dt`: `[T, H]` raw; `state`: `[H, P, N]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ssm_scan(
    xbc: &[f32],
    dt: &[f32],
    tokens: usize,
    a_log: &[f32],
    d: &[f32],
    dt_bias: &[f32],
    state: &mut [f32],
    dims: SsmDims,
    dt_min: Option<f32>,
    par: bool,
) -> Vec<f32> {
    let SsmDims {
        heads,
        head_dim: p,
        groups,
        state: n,
    } = dims;
    let inner = heads * p;
    let width = inner + 2 * groups * n;
    let heads_per_group = heads / groups;
    let mut y = vec![0.0f32; tokens * inner];
    // One head's recurrence over the tokens; `put(t, i, v)` stores y[t, h·P + i].
    let scan_head = |h: usize, s: &mut [f32], put: &mut dyn FnMut(usize, usize, f32)| {
        let g = h / heads_per_group;
        let a = -a_log[h].exp();
        for t in 0..tokens {
            let row = &xbc[t * width..(t + 1) * width];
            let x = &row[h * p..(h + 1) * p];
            let bv = &row[inner + g * n..inner + (g + 1) * n];
            let cv = &row[inner + groups * n + g * n..inner + groups * n + (g + 1) * n];
            let mut step = softplus(dt[t * heads + h] + dt_bias[h]);
            if let Some(m) = dt_min {
                step = step.max(m);
            }
            let decay = (step * a).exp();
            for (i, (si, &xi)) in s.chunks_exact_mut(n).zip(x).enumerate() {
                let acc = update_and_read(si, decay, step * xi, bv, cv);
                put(t, i, acc + d[h] * xi);
            }
        }
    };
    if tokens == 1 {
        // Decode: head h's outputs are the contiguous y[h·P ..][..P], so each head writes its
        // own slice and nothing is allocated.
        par::zip_chunks_mut(state, p * n, &mut y, p, par, |h, s, yh| {
            scan_head(h, s, &mut |_, i, v| yh[i] = v);
        });
        return y;
    }
    // Prefill: a head's outputs are strided over the rows; each head fills its own buffer.
    let mut per_head: Vec<Vec<f32>> = vec![vec![0.0f32; tokens * p]; heads];
    par::zip_chunks_mut(state, p * n, &mut per_head, 1, par, |h, s, yh| {
        let yh = &mut yh[0];
        scan_head(h, s, &mut |t, i, v| yh[t * p + i] = v);
    });
    for (h, yh) in per_head.iter().enumerate() {
        for t in 0..tokens {
            y[t * inner + h * p..t * inner + (h + 1) * p].copy_from_slice(&yh[t * p..(t + 1) * p]);
        }
    }
    y
}

/// `w * rmsnorm_per_group(y * silu(z))` (gate before norm, `norm_before_gate=False`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_group_rms_norm(
    y: &[f32],
    z: &[f32],
    w: &[f32],
    tokens: usize,
    width: usize,
    groups: usize,
    eps: f32,
    par: bool,
) -> Vec<f32> {
    let gw = width / groups;
    let mut out = vec![0.0f32; tokens * width];
    par::chunks_mut(&mut out, width, par, |t, o| {
        let yr = &y[t * width..(t + 1) * width];
        let zr = &z[t * width..(t + 1) * width];
        for (i, v) in o.iter_mut().enumerate() {
            *v = yr[i] * silu(zr[i]);
        }
        for g in 0..groups {
            let seg = &mut o[g * gw..(g + 1) * gw];
            let ms = seg.iter().map(|v| v * v).sum::<f32>() / gw as f32;
            let r = 1.0 / (ms + eps).sqrt();
            for (i, v) in seg.iter_mut().enumerate() {
                *v = w[g * gw + i] * (*v * r);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 state step returns the portable one's bits: state and sum, for state sizes
    /// with and without a tail.
    #[test]
    fn state_step_is_the_same_at_every_level() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for n in [128usize, 13, 8, 3] {
            let s0: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let c: Vec<f32> = (0..n).map(|_| next()).collect();
            let (decay, dx) = (0.93f32, next());
            let (mut s1, mut s2) = (s0.clone(), s0.clone());
            let portable = update_and_read_lanes(&mut s1, decay, dx, &b, &c);
            let chosen = update_and_read(&mut s2, decay, dx, &b, &c);
            assert_eq!(portable.to_bits(), chosen.to_bits(), "n = {n}");
            assert!(
                s1.iter().zip(&s2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "n = {n}"
            );
            assert_ne!(s1, s0, "the state moved");
        }
    }
}
