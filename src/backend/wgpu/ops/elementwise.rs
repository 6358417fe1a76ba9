use crate::backend::Tensor;
use crate::backend::wgpu::WgpuBackend;
use crate::error::Result;

pub(crate) fn relu2(be: &WgpuBackend, _x: &Tensor) -> Result<Tensor> {
    Err(be.gpu.err("relu2 is not implemented yet"))
}

pub(crate) fn add(be: &WgpuBackend, _a: &mut Tensor, _b: &Tensor) -> Result<()> {
    Err(be.gpu.err("add is not implemented yet"))
}

pub(crate) fn split_columns(
    be: &WgpuBackend,
    _x: &Tensor,
    _widths: &[usize],
) -> Result<Vec<Tensor>> {
    Err(be.gpu.err("split_columns is not implemented yet"))
}

pub(crate) fn last_row(be: &WgpuBackend, _x: &Tensor) -> Result<Tensor> {
    Err(be.gpu.err("last_row is not implemented yet"))
}

pub(crate) fn argmax(be: &WgpuBackend, _logits: &Tensor) -> Result<Vec<u32>> {
    Err(be.gpu.err("argmax is not implemented yet"))
}
