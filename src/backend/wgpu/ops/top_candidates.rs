//! `top_candidates`: the k largest logits of the last row, selected on the device
//! (`shaders/top_candidates.wgsl`) so that seeded top-k / min-p sampling reads back 2·k words
//! instead of the vocabulary.

use crate::backend::Tensor;
use crate::backend::wgpu::ops::elementwise::{f32_buf, index_u32};
use crate::backend::wgpu::{Shader, WgpuBackend, groups_2d};
use crate::error::Result;
use crate::sampling::{MAX_CANDIDATES, top_by_logit};

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
) -> Result<Vec<(u32, f32)>> {
    let (rows, vocab) = (logits.rows(), logits.cols());
    let xb = f32_buf(be, logits, "top_candidates")?;
    let k = k.min(vocab);
    if rows == 0 || k == 0 {
        return Ok(Vec::new());
    }
    if k > MAX_CANDIDATES {
        // Sampling never asks for this many; select on the host rather than run k rounds.
        let all = crate::backend::Backend::download(be, logits)?;
        return Ok(top_by_logit(&all[(rows - 1) * vocab..], k));
    }
    index_u32(be, rows * vocab, "top_candidates")?;
    let slices = vocab.div_ceil(SLICE);
    let picks = slices * k;
    let cand_key = be.gpu.alloc(picks as u64 * 4, "top_candidates keys")?;
    let cand_id = be.gpu.alloc(picks as u64 * 4, "top_candidates ids")?;
    let out = be.gpu.alloc(2 * k as u64 * 4, "top_candidates output")?;
    let params = [
        vocab as u32,
        k as u32,
        ((rows - 1) * vocab) as u32,
        picks as u32,
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
    let bytes = be.gpu.read(&out, 2 * k as u64 * 4)?;
    let words: &[u32] = bytemuck::cast_slice(&bytes);
    Ok((0..k)
        .map(|r| (words[r], f32::from_bits(words[k + r])))
        .collect())
}
