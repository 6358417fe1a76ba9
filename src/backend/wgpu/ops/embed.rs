//! `embed`: rows of an embedding table in any stored format (`shaders/embed.wgsl`). The ids
//! are on the host, so only the row chunks that hold a requested id get a dispatch.

use super::elementwise::index_u32;
use crate::backend::wgpu::{Shader, WgpuBackend, groups_2d};
use crate::backend::{Tensor, Weight};
use crate::error::Result;

pub(crate) const SHADER: Shader = Shader {
    name: "embed",
    source: concat!(
        include_str!("../../../../shaders/decode.wgsl"),
        include_str!("../../../../shaders/embed.wgsl")
    ),
};

pub(crate) fn embed(be: &WgpuBackend, table: &Weight, ids: &[u32]) -> Result<Tensor> {
    let t = be.linear_of(table)?;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= t.rows) {
        return Err(be.gpu.err(format!(
            "token id {id} is outside the vocabulary of `{}` ({} rows)",
            table.name, t.rows
        )));
    }
    let tokens = ids.len();
    index_u32(be, tokens * t.cols, "embed")?;
    let y = be.output(vec![tokens, t.cols], "embed output")?;
    if tokens == 0 || t.cols == 0 {
        return Ok(y);
    }
    let idb = be
        .gpu
        .upload_bytes(bytemuck::cast_slice(ids), "token ids")?;
    let yb = be.buf(&y)?;
    for c in &t.chunks {
        let holds = |&id: &u32| (c.row0..c.row0 + c.rows).contains(&(id as usize));
        if !ids.iter().any(holds) {
            continue;
        }
        // The shader indexes the chunk's elements with 32 bits.
        index_u32(be, c.rows * t.cols, "embed (table chunk)")?;
        let params = [
            t.cols as u32,
            tokens as u32,
            c.row0 as u32,
            c.rows as u32,
            t.tensor_scale.to_bits(),
            0,
            0,
            0,
        ];
        be.gpu.dispatch(
            &SHADER,
            "main",
            &[("FORMAT", t.format as f64)],
            &params,
            &[
                (&c.data, false),
                (&c.scales, false),
                (&idb, false),
                (yb, true),
            ],
            groups_2d(tokens, 1),
        )?;
    }
    Ok(y)
}
