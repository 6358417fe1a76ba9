use crate::backend::wgpu::WgpuBackend;
use crate::backend::{SsmDims, Tensor, Weight};
use crate::error::Result;

pub(crate) fn conv1d_silu(
    be: &WgpuBackend,
    _x: &Tensor,
    _w: &Weight,
    _b: Option<&Weight>,
    _state: &mut Tensor,
) -> Result<Tensor> {
    Err(be.gpu.err("conv1d_silu is not implemented yet"))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn ssm_scan(
    be: &WgpuBackend,
    _xbc: &Tensor,
    _dt: &Tensor,
    _a_log: &Weight,
    _d: &Weight,
    _dt_bias: &Weight,
    _state: &mut Tensor,
    _dims: SsmDims,
    _dt_min: Option<f32>,
) -> Result<Tensor> {
    Err(be.gpu.err("ssm_scan is not implemented yet"))
}

pub(crate) fn gated_group_rms_norm(
    be: &WgpuBackend,
    _y: &Tensor,
    _z: &Tensor,
    _w: &Weight,
    _groups: usize,
    _eps: f32,
) -> Result<Tensor> {
    Err(be.gpu.err("gated_group_rms_norm is not implemented yet"))
}
