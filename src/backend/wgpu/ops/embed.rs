use crate::backend::wgpu::WgpuBackend;
use crate::backend::{Tensor, Weight};
use crate::error::Result;

pub(crate) fn embed(be: &WgpuBackend, _table: &Weight, _ids: &[u32]) -> Result<Tensor> {
    Err(be.gpu.err("embed is not implemented yet"))
}
