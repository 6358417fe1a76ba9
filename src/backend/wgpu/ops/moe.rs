use crate::backend::wgpu::WgpuBackend;
use crate::backend::{ExpertWeights, RouterParams, Routing, Tensor, Weight};
use crate::error::Result;

pub(crate) fn router(
    be: &WgpuBackend,
    _logits: &Tensor,
    _bias: &Weight,
    _p: &RouterParams,
) -> Result<Routing> {
    Err(be.gpu.err("router is not implemented yet"))
}

pub(crate) fn moe_experts(
    be: &WgpuBackend,
    _x: &Tensor,
    _experts: &ExpertWeights,
    _routing: &Routing,
) -> Result<Tensor> {
    Err(be.gpu.err("moe_experts is not implemented yet"))
}
