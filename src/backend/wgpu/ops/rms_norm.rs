//! `rms_norm` and the fused `add_rms_norm` (`shaders/rms_norm.wgsl`,
//! `shaders/add_rms_norm.wgsl`): one workgroup per row with a shared-memory reduction.

use super::elementwise::{f32_buf, index_u32};
use crate::backend::wgpu::{Shader, WgpuBackend, groups_2d};
use crate::backend::{Tensor, Weight};
use crate::error::Result;

pub(crate) const RMS_NORM: Shader = Shader {
    name: "rms_norm",
    source: include_str!("../../../../shaders/rms_norm.wgsl"),
};

pub(crate) const ADD_RMS_NORM: Shader = Shader {
    name: "add_rms_norm",
    source: include_str!("../../../../shaders/add_rms_norm.wgsl"),
};

/// Checks `x` against the norm weight and returns (rows, cols).
fn dims(be: &WgpuBackend, x: &Tensor, len: usize, what: &str) -> Result<(usize, usize)> {
    if len == 0 {
        return Err(be.gpu.err(format!("{what}: rows have no columns")));
    }
    index_u32(be, x.rows() * len, what)?;
    Ok((x.rows(), len))
}

pub(crate) fn rms_norm(be: &WgpuBackend, x: &Tensor, w: &Weight, eps: f32) -> Result<Tensor> {
    let (wb, len) = be.vector_of(w)?;
    let (rows, cols) = dims(be, x, len, "rms_norm")?;
    let xb = f32_buf(be, x, "rms_norm")?;
    let y = be.output(vec![rows, cols], "rms_norm output")?;
    if rows == 0 {
        return Ok(y);
    }
    let params = [cols as u32, rows as u32, eps.to_bits(), 0];
    be.gpu.dispatch(
        &RMS_NORM,
        "main",
        &[],
        &params,
        &[(xb, false), (wb, false), (be.buf(&y)?, true)],
        groups_2d(rows, 1),
    )?;
    Ok(y)
}

pub(crate) fn add_rms_norm(
    be: &WgpuBackend,
    residual: &mut Tensor,
    delta: &Tensor,
    w: &Weight,
    eps: f32,
) -> Result<Tensor> {
    let (wb, len) = be.vector_of(w)?;
    let (rows, cols) = dims(be, residual, len, "add_rms_norm")?;
    let rb = f32_buf(be, residual, "add_rms_norm")?;
    let db = f32_buf(be, delta, "add_rms_norm")?;
    let y = be.output(vec![rows, cols], "add_rms_norm output")?;
    if rows == 0 {
        return Ok(y);
    }
    let params = [cols as u32, rows as u32, eps.to_bits(), 0];
    be.gpu.dispatch(
        &ADD_RMS_NORM,
        "main",
        &[],
        &params,
        &[(rb, true), (db, false), (wb, false), (be.buf(&y)?, true)],
        groups_2d(rows, 1),
    )?;
    Ok(y)
}
