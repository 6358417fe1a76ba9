//! The MoE router (sigmoid scores, correction bias for choosing only, grouped top-k) and the
//! routed experts, which read only the experts each token chose (ARCH_NOTES §6).

use super::linear::CpuLinear;
use super::par;
use crate::backend::RouterParams;

pub(crate) struct CpuExperts {
    pub up: Vec<CpuLinear>,
    pub down: Vec<CpuLinear>,
}

/// Chooses `top_k` experts per token; returns ids and weights `[T, k]`, ids ascending per row.
pub(crate) fn route(
    logits: &[f32],
    tokens: usize,
    experts: usize,
    bias: &[f32],
    p: &RouterParams,
    par: bool,
) -> (Vec<u32>, Vec<f32>) {
    let k = p.top_k;
    let rows: Vec<(Vec<u32>, Vec<f32>)> = par::map(tokens, par, |t| {
        let mut ids = vec![0u32; k];
        let mut ws = vec![0.0f32; k];
        let row = &logits[t * experts..(t + 1) * experts];
        let scores: Vec<f32> = row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
        let mut choice: Vec<f32> = scores.iter().zip(bias).map(|(s, b)| s + b).collect();
        if p.n_group > 1 {
            let per = experts / p.n_group;
            // A group's score is the sum of its two best biased scores.
            let group_scores: Vec<f32> = choice
                .chunks_exact(per)
                .map(|g| {
                    let top = top_indices(g, 2.min(per));
                    top.iter().map(|&i| g[i]).sum()
                })
                .collect();
            let keep = top_indices(&group_scores, p.topk_group);
            for (g, chunk) in choice.chunks_exact_mut(per).enumerate() {
                if !keep.contains(&g) {
                    chunk.fill(f32::NEG_INFINITY);
                }
            }
        }
        let mut chosen = top_indices(&choice, k);
        chosen.sort_unstable();
        let mut sum = 0.0f32;
        for (slot, &e) in chosen.iter().enumerate() {
            ids[slot] = e as u32;
            ws[slot] = scores[e];
            sum += scores[e];
        }
        for w in ws.iter_mut() {
            if p.norm_topk_prob {
                *w /= sum + 1e-20;
            }
            *w *= p.scaling;
        }
        (ids, ws)
    });
    let ids = rows.iter().flat_map(|r| r.0.iter().copied()).collect();
    let weights = rows.iter().flat_map(|r| r.1.iter().copied()).collect();
    (ids, weights)
}

/// Indices of the `k` largest values, larger first, ties to the lower index; NaN never wins.
fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let key = |i: usize| {
        if v[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            v[i]
        }
    };
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// `out[t] = Σ_j w[t,j] · down_{id[t,j]}(relu(up_{id[t,j]} x[t])²)`, summed in ascending
/// expert order (as the reference accumulates) so the result does not depend on threading.
/// The routed experts of `tokens` tokens, the first `decode` of them decode rows (one token at a
/// time through the row kernels, as a lone decode step computes it) and the rest prefill rows
/// (grouped by expert, through the prefill panels).
#[allow(clippy::too_many_arguments)]
pub(crate) fn experts(
    x: &[f32],
    tokens: usize,
    decode: usize,
    ex: &CpuExperts,
    ids: &[u32],
    weights: &[f32],
    k: usize,
    par: bool,
) -> Vec<f32> {
    let latent = ex.up[0].cols;
    let decode = decode.min(tokens);
    let mut out = Vec::with_capacity(tokens * latent);
    for t in 0..decode {
        let slots = t * k..(t + 1) * k;
        let xt = &x[t * latent..(t + 1) * latent];
        out.extend(one_token(xt, ex, &ids[slots.clone()], &weights[slots], par));
    }
    let prefill = tokens - decode;
    if prefill == 0 {
        return out;
    }
    let (x, ids, weights) = (
        &x[decode * latent..],
        &ids[decode * k..],
        &weights[decode * k..],
    );
    let contributions = by_expert(x, prefill, ex, ids, weights, k, par);
    let mut sums = vec![0.0f32; prefill * latent];
    for (slot, c) in contributions.iter().enumerate() {
        let t = slot / k;
        for (o, v) in sums[t * latent..(t + 1) * latent].iter_mut().zip(c) {
            *o += v;
        }
    }
    out.extend(sums);
    out
}

/// Output rows per decode task: small enough that both threads stay busy to the end of each
/// phase (22 experts do not split evenly), large enough that a task streams well.
const UP_TASK_ROWS: usize = 256;
const DOWN_TASK_ROWS: usize = 128;

/// Decode: the `k` chosen experts of one token in three phases (all up projections, then
/// relu², then all down projections), each split into blocks of rows over the threads rather
/// than one expert per task. The input is laid out once for every up projection. Every value
/// is computed by the same row kernels as in [`CpuLinear::forward`], so the result does not
/// depend on the split.
fn one_token(x: &[f32], ex: &CpuExperts, ids: &[u32], weights: &[f32], par: bool) -> Vec<f32> {
    let k = ids.len();
    let (latent, hidden) = (ex.up[0].cols, ex.up[0].rows);
    let first = ids.first().map_or(0, |&e| e as usize);
    let input = ex.up[first].prepare_input(&x[..latent]);
    let mut h = vec![0.0f32; k * hidden];
    par::row_blocks(&mut h, hidden, UP_TASK_ROWS, par, |slot, r0, out| {
        ex.up[ids[slot] as usize].rows_into(r0, &input, out);
    });
    let hidden_in: Vec<_> = par::map(k, par, |slot| {
        let mut hs = h[slot * hidden..(slot + 1) * hidden].to_vec();
        relu2(&mut hs);
        ex.down[ids[slot] as usize].prepare_input(&hs)
    });
    let mut o = vec![0.0f32; k * latent];
    par::row_blocks(&mut o, latent, DOWN_TASK_ROWS, par, |slot, r0, out| {
        ex.down[ids[slot] as usize].rows_into(r0, &hidden_in[slot], out);
        out.iter_mut().for_each(|v| *v *= weights[slot]);
    });
    let mut sum = vec![0.0f32; latent];
    for c in o.chunks_exact(latent) {
        for (s, v) in sum.iter_mut().zip(c) {
            *s += v;
        }
    }
    sum
}

/// Prefill: each chosen expert runs once over all the tokens routed to it, so its weights are
/// read once per call instead of once per token.
fn by_expert(
    x: &[f32],
    tokens: usize,
    ex: &CpuExperts,
    ids: &[u32],
    weights: &[f32],
    k: usize,
    par: bool,
) -> Vec<Vec<f32>> {
    let latent = ex.up[0].cols;
    let mut slots_of: Vec<Vec<usize>> = vec![Vec::new(); ex.up.len()];
    for (slot, &e) in ids[..tokens * k].iter().enumerate() {
        slots_of[e as usize].push(slot);
    }
    let active: Vec<usize> = (0..ex.up.len())
        .filter(|&e| !slots_of[e].is_empty())
        .collect();
    let per_expert: Vec<Vec<f32>> = par::map(active.len(), par, |i| {
        let e = active[i];
        let slots = &slots_of[e];
        let mut xs = Vec::with_capacity(slots.len() * latent);
        for &slot in slots {
            let t = slot / k;
            xs.extend_from_slice(&x[t * latent..(t + 1) * latent]);
        }
        let mut h = ex.up[e].forward(&xs, slots.len(), 0, false);
        relu2(&mut h);
        let mut o = ex.down[e].forward(&h, slots.len(), 0, false);
        for (row, &slot) in o.chunks_exact_mut(latent).zip(slots) {
            let w = weights[slot];
            row.iter_mut().for_each(|v| *v *= w);
        }
        o
    });
    let mut contributions = vec![Vec::new(); tokens * k];
    for (i, &e) in active.iter().enumerate() {
        for (row, &slot) in per_expert[i].chunks_exact(latent).zip(&slots_of[e]) {
            contributions[slot] = row.to_vec();
        }
    }
    contributions
}

fn relu2(h: &mut [f32]) {
    for v in h.iter_mut() {
        let r = v.max(0.0);
        *v = r * r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{ByteView, DType};
    use crate::codec::nvfp4;
    use crate::weights::{LinearData, StoredLinear};

    fn values(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    fn linear(rows: usize, cols: usize, (bf16, q8): (bool, bool), seed: &mut u64) -> CpuLinear {
        let v = values(rows * cols, seed);
        let data = if bf16 {
            let b = v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect();
            LinearData::Dense {
                dtype: DType::BF16,
                data: ByteView::owned(b, "w"),
            }
        } else {
            let q = nvfp4::quantize(&v, rows, cols).unwrap();
            LinearData::Nvfp4 {
                packed: ByteView::owned(q.packed, "w"),
                block_scales: ByteView::owned(q.block_scales, "w"),
                tensor_scale: q.tensor_scale,
            }
        };
        CpuLinear::new(&StoredLinear {
            name: "w".into(),
            rows,
            cols,
            data,
            input_scale: None,
            bias: None,
        })
        .unwrap()
        .with_q8_activations(q8)
    }

    /// The decode path (phases cut into row blocks, input prepared once) gives bit for bit
    /// what running each chosen expert on its own does, for k = 1, an odd k and k = all, on
    /// NVFP4 (exact and q8) and BF16 experts, serial and parallel, with widths that do not
    /// divide into whole blocks of rows.
    #[test]
    fn one_token_equals_each_expert_on_its_own() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut seed = 5u64;
        let cases = [
            ((false, false), 160, 592, 6),
            ((false, true), 160, 592, 6),
            ((true, false), 144, 300, 5),
        ];
        for &(format, latent, hidden, experts) in &cases {
            let ex = CpuExperts {
                up: (0..experts)
                    .map(|_| linear(hidden, latent, format, &mut seed))
                    .collect(),
                down: (0..experts)
                    .map(|_| linear(latent, hidden, format, &mut seed))
                    .collect(),
            };
            let x = values(latent, &mut seed);
            for ids in [vec![3u32], vec![0, 2, 4], (0..experts as u32).collect()] {
                let weights: Vec<f32> = (0..ids.len()).map(|i| 0.5 + i as f32 * 0.25).collect();
                let mut expected = vec![0.0f32; latent];
                for (slot, &e) in ids.iter().enumerate() {
                    let mut h = ex.up[e as usize].forward(&x, 1, 1, false);
                    relu2(&mut h);
                    let o = ex.down[e as usize].forward(&h, 1, 1, false);
                    for (s, v) in expected.iter_mut().zip(o) {
                        *s += v * weights[slot];
                    }
                }
                for par in [false, true] {
                    let got = pool.install(|| one_token(&x, &ex, &ids, &weights, par));
                    assert_eq!(got.len(), latent);
                    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "(bf16, q8) {format:?}, ids {ids:?}, par {par}, output {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
