use crate::backend::wgpu::WgpuBackend;
use crate::backend::{Tensor, Weight};
use crate::error::Result;

pub(crate) fn rms_norm(be: &WgpuBackend, _x: &Tensor, _w: &Weight, _eps: f32) -> Result<Tensor> {
    Err(be.gpu.err("rms_norm is not implemented yet"))
}

pub(crate) fn add_rms_norm(
    be: &WgpuBackend,
    _residual: &mut Tensor,
    _delta: &Tensor,
    _w: &Weight,
    _eps: f32,
) -> Result<Tensor> {
    Err(be.gpu.err("add_rms_norm is not implemented yet"))
}
