//! Shared harness: the backends under test, random data, weights in every stored format, and
//! comparison with stated tolerances.

use std::sync::{Arc, OnceLock};

use nemotron_rt::backend::wgpu::{WgpuBackend, WgpuOptions};
use nemotron_rt::backend::{self, Backend, BackendKind, Tensor};
use nemotron_rt::checkpoint::{ByteView, DType};
use nemotron_rt::codec::{fp8, nvfp4};
use nemotron_rt::weights::{LinearData, StoredLinear};

#[path = "../support/cuda_emulator.rs"]
mod cuda_emulator;

/// The CPU reference.
pub fn cpu() -> Arc<dyn Backend> {
    static CPU: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    CPU.get_or_init(|| backend::create(BackendKind::Cpu, 2).unwrap())
        .clone()
}

/// A backend made directly, behind the operand checks `backend::create` puts in front of
/// every backend.
fn checked(b: impl Backend + 'static) -> Arc<dyn Backend> {
    Arc::new(backend::checked::Checked(Arc::new(b)))
}

/// Every non-reference backend present on this machine. Absent ones are reported once.
pub fn others() -> Vec<Arc<dyn Backend>> {
    static OTHERS: OnceLock<Vec<Arc<dyn Backend>>> = OnceLock::new();
    OTHERS
        .get_or_init(|| {
            let mut v = Vec::new();
            match backend::create(BackendKind::Wgpu, 0) {
                Ok(b) => v.push(b),
                Err(e) => eprintln!("conformance: wgpu skipped: {e}"),
            }
            // Where the adapter has subgroups, the shared-memory kernels that other adapters
            // use are tested too.
            let plain = WgpuOptions {
                no_subgroups: true,
                ..WgpuOptions::default()
            };
            let has_subgroups = v.iter().any(|b| !b.info().device.contains("no subgroups"));
            if has_subgroups && let Ok(b) = WgpuBackend::with_options(&plain) {
                v.push(checked(b));
            }
            // The exact path: the FP4 tensor-core one is W4A4 and compared separately.
            match cuda_emulator::install()
                .and_then(|_| backend::cuda::CudaBackend::exact(0).map_err(|e| e.to_string()))
            {
                Ok(b) => v.push(checked(b)),
                Err(e) => eprintln!("conformance: cuda skipped: {e}"),
            }
            v
        })
        .clone()
}

/// `others()`, plus CUDA with its prefill GEMMs on the f32 CUDA cores where CUDA is present:
/// the default multiplies them on the tensor cores (activations in three bf16 terms), so the
/// ops with a prefill GEMM (linear, MoE experts) test both kernels.
pub fn others_with_prefill_variants() -> Vec<Arc<dyn Backend>> {
    let mut v = others();
    if cuda_emulator::install().is_ok() {
        let f32_tiles = backend::cuda::CudaBackend::new(backend::cuda::CudaOptions {
            fp4_mma: Some(false),
            prefill: backend::cuda::PrefillMath::F32,
            ..Default::default()
        });
        match f32_tiles {
            Ok(b) => v.push(checked(b)),
            Err(e) => eprintln!("conformance: cuda with f32 prefill tiles skipped: {e}"),
        }
    }
    v
}

/// Deterministic xorshift generator; values roughly N(0, scale) via a sum of uniforms.
pub struct Rand(u64);

impl Rand {
    pub fn new(seed: u64) -> Rand {
        Rand(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn uniform(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn normal(&mut self, scale: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0;
        s * scale * 1.7
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(scale)).collect()
    }
}

/// The stored weight formats a Linear may have.
#[derive(Clone, Copy, Debug)]
pub enum Fmt {
    F32,
    Bf16,
    F16,
    Fp8,
    Nvfp4,
}

pub const ALL_FORMATS: [Fmt; 5] = [Fmt::F32, Fmt::Bf16, Fmt::F16, Fmt::Fp8, Fmt::Nvfp4];

/// A random `[rows, cols]` Linear stored in `fmt`.
pub fn linear(
    rng: &mut Rand,
    name: &str,
    rows: usize,
    cols: usize,
    fmt: Fmt,
    bias: bool,
) -> StoredLinear {
    let w = rng.vec(rows * cols, 0.5);
    let data = match fmt {
        Fmt::F32 => LinearData::Dense {
            dtype: DType::F32,
            data: ByteView::owned(bytemuck::cast_slice(&w).to_vec(), name),
        },
        Fmt::Bf16 => {
            let b: Vec<u16> = w
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect();
            LinearData::Dense {
                dtype: DType::BF16,
                data: ByteView::owned(bytemuck::cast_slice(&b).to_vec(), name),
            }
        }
        Fmt::F16 => {
            let b: Vec<u16> = w
                .iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect();
            LinearData::Dense {
                dtype: DType::F16,
                data: ByteView::owned(bytemuck::cast_slice(&b).to_vec(), name),
            }
        }
        Fmt::Fp8 => {
            let amax = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let scale = amax / 448.0;
            let b: Vec<u8> = w.iter().map(|&x| fp8::f32_to_e4m3(x / scale)).collect();
            LinearData::Fp8 {
                data: ByteView::owned(b, name),
                scale,
            }
        }
        Fmt::Nvfp4 => {
            let q = nvfp4::quantize(&w, rows, cols).unwrap();
            LinearData::Nvfp4 {
                packed: ByteView::owned(q.packed, name),
                block_scales: ByteView::owned(q.block_scales, name),
                tensor_scale: q.tensor_scale,
            }
        }
    };
    StoredLinear {
        name: name.to_string(),
        rows,
        cols,
        data,
        input_scale: None,
        bias: bias.then(|| rng.vec(rows, 0.1)),
    }
}

/// Uploads the same f32 data to a backend as an activation tensor.
pub fn tensor(be: &dyn Backend, data: &[f32], shape: &[usize]) -> Tensor {
    be.upload(data, shape).unwrap()
}

/// `|got - want| <= abs + rel * |want|` elementwise, with the worst offender in the message.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (abs + rel * w.abs());
        if excess > worst.1 || !g.is_finite() && w.is_finite() {
            worst = (i, excess.max(f32::MIN_POSITIVE));
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i} is {} but the CPU reference gives {} (tolerance {abs} + {rel}·|want|)",
            got[i], want[i]
        );
    }
}

/// Names a backend under test in failure messages (two wgpu variants may run).
pub fn label(be: &dyn Backend) -> String {
    let i = be.info();
    format!("{} on {}", i.name, i.device)
}
