//! `linear`: `x Wᵀ + b` over a weight in any stored format (`shaders/linear.wgsl`), one
//! dispatch per row chunk of the weight.

use crate::backend::wgpu::{Shader, WgpuBackend, groups_2d};
use crate::backend::{Tensor, Weight};
use crate::error::Result;

pub(crate) const SHADER: Shader = Shader {
    name: "linear",
    source: concat!(
        include_str!("../../../../shaders/decode.wgsl"),
        include_str!("../../../../shaders/linear.wgsl")
    ),
};

/// The same kernel reducing through subgroups; only built where the adapter has them.
pub(crate) const SHADER_SUBGROUP: Shader = Shader {
    name: "linear_subgroup",
    source: concat!(
        include_str!("../../../../shaders/decode.wgsl"),
        include_str!("../../../../shaders/linear.wgsl"),
        include_str!("../../../../shaders/linear_subgroup.wgsl")
    ),
};

/// Threads sharing one weight row (must divide the shaders' workgroup size, 64).
const LANES: u32 = 16;
/// Tokens per workgroup in a prefill: each decoded weight block is reused this often.
const TILE: usize = 4;

pub(crate) fn linear(be: &WgpuBackend, x: &Tensor, w: &Weight) -> Result<Tensor> {
    let l = be.linear_of(w)?;
    let tokens = x.rows();
    let y = be.output(vec![tokens, l.rows], "linear output")?;
    if tokens == 0 {
        return Ok(y);
    }
    let (xb, yb) = (be.buf(x)?, be.buf(&y)?);
    let tile = if tokens == 1 { 1 } else { TILE };
    let (shader, entry, lanes) = match be.subgroup_lanes(LANES) {
        Some(lanes) => (&SHADER_SUBGROUP, "main_subgroup", lanes),
        None => (&SHADER, "main", LANES),
    };
    let rows_per_group = 64 / lanes as usize;
    let constants = [
        ("FORMAT", l.format as f64),
        ("TILE", tile as f64),
        ("LANES", lanes as f64),
        ("BLOCKED", (l.cols % 16 == 0) as u8 as f64),
    ];
    for c in &l.chunks {
        let params = [
            l.cols as u32,
            tokens as u32,
            c.rows as u32,
            c.row0 as u32,
            l.rows as u32,
            l.has_bias as u32,
            l.tensor_scale.to_bits(),
            0,
        ];
        be.gpu.dispatch(
            shader,
            entry,
            &constants,
            &params,
            &[
                (&c.data, false),
                (&c.scales, false),
                (&l.bias, false),
                (xb, false),
                (yb, true),
            ],
            groups_2d(c.rows.div_ceil(rows_per_group), tokens.div_ceil(tile)),
        )?;
    }
    Ok(y)
}
