//! `top_candidates`: the k largest logits of the last row, and when asked the row's softmax
//! mass, computed on the device (`shaders/top_candidates.wgsl`) so that seeded top-k / top-p /
//! min-p sampling reads back 2·k + 1 words instead of the vocabulary.

use crate::backend::wgpu::ops::elementwise::{f32_buf, index_u32};
use crate::backend::wgpu::{Shader, WgpuBackend, groups_2d};
use crate::backend::{Candidates, Tensor};
use crate::error::Result;
use crate::sampling::{MAX_CANDIDATES, softmax_mass, top_by_logit};

pub(crate) const SHADER: Shader = Shader {
    name: "top_candidates",
    source: include_str!("../../../../shaders/top_candidates.wgsl"),
};

/// Logits per workgroup of the first pass (`SLICE` in the shader).
const SLICE: usize = 2048;

pub(crate) fn top_candidates(
    be: &WgpuBackend,
    logits: &Tensor,
    k: usize,
    inv_t: Option<f32>,
) -> Result<Candidates> {
    let (rows, vocab) = (logits.rows(), logits.cols());
    let xb = f32_buf(be, logits, "top_candidates")?;
    let k = k.min(vocab);
    if rows == 0 || k == 0 {
        return Ok(Candidates::default());
    }
    if k > MAX_CANDIDATES {
        // Sampling never asks for this many; select on the host rather than run k rounds.
        let all = crate::backend::Backend::download(be, logits)?;
        let row = &all[(rows - 1) * vocab..];
        return Ok(Candidates {
            top: top_by_logit(row, k),
            mass: inv_t.map(|t| softmax_mass(row, t)),
        });
    }
    index_u32(be, rows * vocab, "top_candidates")?;
    let slices = vocab.div_ceil(SLICE);
    let picks = slices * k;
    let cand_key = be.gpu.alloc(picks as u64 * 4, "top_candidates keys")?;
    let cand_id = be.gpu.alloc(picks as u64 * 4, "top_candidates ids")?;
    let words = 2 * k + 1;
    let out = be.gpu.alloc(words as u64 * 4, "top_candidates output")?;
    let params = [
        vocab as u32,
        k as u32,
        ((rows - 1) * vocab) as u32,
        picks as u32,
        inv_t.unwrap_or(1.0).to_bits(),
        0,
        0,
        0,
    ];
    let bufs = [
        (xb, false),
        (&cand_key, true),
        (&cand_id, true),
        (&out, true),
    ];
    be.gpu
        .dispatch(&SHADER, "slices", &[], &params, &bufs, groups_2d(slices, 1))?;
    be.gpu
        .dispatch(&SHADER, "merge", &[], &params, &bufs, [1, 1, 1])?;
    if inv_t.is_some() {
        be.gpu
            .dispatch(&SHADER, "mass", &[], &params, &bufs, [1, 1, 1])?;
    }
    let bytes = be.gpu.read(&out, words as u64 * 4)?;
    let w: &[u32] = bytemuck::cast_slice(&bytes);
    Ok(Candidates {
        top: (0..k).map(|r| (w[r], f32::from_bits(w[k + r]))).collect(),
        mass: inv_t.map(|_| f32::from_bits(w[2 * k]) as f64),
    })
}
