//! Every backend present for the exactness tests: the CPU engine always; wgpu and CUDA where
//! they open (CUDA on its exact path, without the lossy FP4 tensor cores), an absent one
//! skipped with the reason printed.

use std::sync::Arc;

use nemotron_rt::backend::{self, Backend, BackendKind};

#[path = "cuda_emulator.rs"]
mod cuda_emulator;

pub fn all() -> Vec<(&'static str, Arc<dyn Backend>)> {
    let mut v: Vec<(&'static str, Arc<dyn Backend>)> =
        vec![("cpu", backend::create(BackendKind::Cpu, 2).unwrap())];
    match backend::create(BackendKind::Wgpu, 0) {
        Ok(b) => v.push(("wgpu", b)),
        Err(e) => eprintln!("wgpu skipped: {e}"),
    }
    match cuda_emulator::install()
        .and_then(|_| backend::cuda::CudaBackend::exact(0).map_err(|e| e.to_string()))
    {
        // Behind the operand checks `backend::create` puts in front of every backend.
        Ok(b) => v.push(("cuda", Arc::new(backend::checked::Checked(Arc::new(b))))),
        Err(e) => eprintln!("cuda skipped: {e}"),
    }
    v
}
