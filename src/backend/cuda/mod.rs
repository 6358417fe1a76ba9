//! The CUDA backend: every op a kernel in `cuda/<op>.cu`, compiled at run time with NVRTC (once
//! per device) and launched through cudarc on one stream. Weights stay on the device as stored
//! (NVFP4, FP8, BF16, F16, F32) and are decoded in registers; activations, accumulation, the SSM
//! state and the KV cache are f32, so the exact path computes what the CPU reference computes.
//! On Blackwell, NVFP4 linears and routed experts can instead take the W4A4 FP4 tensor-core path
//! (`mma.sync` on sm_120: `cuda/*_nvfp4_mma.cu`; `tcgen05` on sm_100: `cuda/*_nvfp4_tcgen05.cu`),
//! which is not bit-faithful and off when asked for exactness.
//!
//! CUDA is loaded at run time (cudarc's `dynamic-loading`): without libcuda the backend reports
//! "no driver found" as an ordinary error, and nothing here panics.

mod device;
mod graph;
pub mod kernels;
mod ops;
mod weights;

use std::sync::Arc;

use self::device::{Buf, Device};
pub use self::device::{DeviceSummary, devices, driver_present, fp4_path_for};
pub use self::graph::GraphStats;
use self::kernels::Family;
use self::weights::{CudaExperts, CudaLinear, ExpertStack};
use crate::backend::{
    AttnDims, Backend, BackendInfo, ElemType, ExpertWeights, RouterParams, Routing, Rows, SsmDims,
    Tensor, Weight, tensor_bytes,
};
use crate::error::Result;
use crate::weights::StoredLinear;

/// An activation or state buffer (f32, or u32 routing ids); element count from the shape.
pub(crate) struct CudaTensor {
    pub buf: Buf,
}

/// A growable KV cache: `[cap, width]` buffers of which `len` rows are filled; f32, or E4M3
/// bytes with per-tensor `(k_scale, v_scale)` when `fp8` is set.
pub(crate) struct CudaKv {
    pub k: Buf,
    pub v: Buf,
    pub len: usize,
    pub cap: usize,
    pub width: usize,
    pub fp8: Option<(f32, f32)>,
}

impl CudaKv {
    pub(crate) fn elem_bytes(&self) -> usize {
        if self.fp8.is_some() { 1 } else { 4 }
    }
}

pub(crate) enum CudaWeight {
    Linear(CudaLinear),
    Vector { buf: Buf, len: usize },
}

/// How to open the CUDA backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct CudaOptions {
    /// Device ordinal, as `nemotron-rt devices` lists them.
    pub device: usize,
    /// The W4A4 FP4 tensor-core path for NVFP4 linears: `None` = where the device has it
    /// (Blackwell: sm_100 and sm_120 class), `Some(false)` = never (exact everywhere),
    /// `Some(true)` = required (an error on devices without it).
    pub fp4_mma: Option<bool>,
    /// Keep the KV cache in FP8 where the checkpoint asks for it (its `k_scale`/`v_scale`).
    /// Off by default: the reference keeps the cache in f32, so this changes results.
    pub fp8_kv_cache: bool,
    /// Launch every kernel of a decode step directly instead of replaying the step as a CUDA
    /// graph (to compare the two, or to rule graphs out).
    pub no_graphs: bool,
    /// How prefill GEMMs (more than 8 tokens) multiply.
    pub prefill: PrefillMath,
}

/// How the prefill GEMMs (linears and routed experts over more than 8 tokens) multiply.
/// Decode always runs the f32 GEMV kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefillMath {
    /// `Bf16x3` where the GPU has bf16 tensor cores (sm_80 and newer), `F32` elsewhere.
    #[default]
    Auto,
    /// f32 on the CUDA cores.
    F32,
    /// bf16 tensor cores with the activations split into three bf16 terms: 24 significant
    /// bits, the precision of f32 (weights decode exactly into bf16). F16 and F32 weights keep
    /// the f32 kernels.
    Bf16x3,
    /// bf16 tensor cores with bf16 activations (8 significant bits): the fastest, and lossy.
    Bf16,
}

impl PrefillMath {
    /// Activation terms of the tensor-core tiles (0 = the f32 kernels) on a device of compute
    /// capability `cc`; an error where tensor cores are asked for and absent.
    fn terms(self, cc: (i32, i32)) -> std::result::Result<u32, String> {
        let has = cc.0 >= 8;
        match self {
            PrefillMath::Auto => Ok(if has { 3 } else { 0 }),
            PrefillMath::F32 => Ok(0),
            PrefillMath::Bf16x3 | PrefillMath::Bf16 if !has => Err(format!(
                "bf16 tensor-core prefill needs sm_80 or newer; this GPU is sm_{}{}",
                cc.0, cc.1
            )),
            PrefillMath::Bf16x3 => Ok(3),
            PrefillMath::Bf16 => Ok(1),
        }
    }
}

pub struct CudaBackend {
    pub(crate) dev: Device,
    pub(crate) fp4_mma: bool,
    pub(crate) fp8_kv_cache: bool,
    /// bf16 activation terms of the tensor-core prefill tiles; 0 = f32 tiles.
    pub(crate) prefill_terms: u32,
    graphs: bool,
}

/// An op over some rows of a batch: (those rows, their range in the batch, decode rows?).
type RowsOp<'a> = dyn Fn(&Tensor, std::ops::Range<usize>, bool) -> Result<Tensor> + 'a;

impl CudaBackend {
    pub fn new(opts: CudaOptions) -> Result<CudaBackend> {
        let dev = Device::open(opts.device)?;
        let has = Family::Sm100.has(dev.cc.0) || Family::Sm120.has(dev.cc.0);
        let fp4_mma = match opts.fp4_mma {
            None => has,
            Some(false) => false,
            Some(true) if has => true,
            Some(true) => {
                return Err(dev.err(format!(
                    "the FP4 tensor-core path needs a Blackwell GPU (sm_100 or sm_120 class); \
                     this one is sm_{}{}",
                    dev.cc.0, dev.cc.1
                )));
            }
        };
        let prefill_terms = opts.prefill.terms(dev.cc).map_err(|e| dev.err(e))?;
        Ok(CudaBackend {
            dev,
            fp4_mma,
            fp8_kv_cache: opts.fp8_kv_cache,
            prefill_terms,
            graphs: !opts.no_graphs,
        })
    }

    /// The exact path on any device: what the conformance and golden tests compare.
    pub fn exact(device: usize) -> Result<CudaBackend> {
        Self::new(CudaOptions {
            device,
            fp4_mma: Some(false),
            ..Default::default()
        })
    }

    /// `(major, minor)` of the device.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.dev.cc
    }

    /// Whether NVFP4 linears take the W4A4 FP4 tensor-core path.
    pub fn uses_fp4_mma(&self) -> bool {
        self.fp4_mma
    }

    /// How prefill GEMMs multiply, in words.
    pub fn prefill_math(&self) -> &'static str {
        match self.prefill_terms {
            0 => "f32 CUDA cores",
            1 => "bf16 tensor cores (bf16 activations)",
            2 => "bf16 tensor cores (activations in 2 bf16 terms)",
            _ => "bf16 tensor cores (activations in 3 bf16 terms)",
        }
    }

    /// Whether decode steps replay as CUDA graphs.
    pub fn uses_graphs(&self) -> bool {
        self.graphs
    }

    /// How decode steps have run so far on this backend.
    pub fn graph_stats(&self) -> GraphStats {
        self.dev.graph_stats()
    }

    pub(crate) fn buf<'a>(&self, t: &'a Tensor) -> Result<&'a Buf> {
        let b = t
            .inner::<CudaTensor>()
            .map(|g| &g.buf)
            .ok_or_else(|| self.dev.err("expected a tensor made by the CUDA backend"))?;
        if b.epoch != 0 && b.epoch != self.dev.epoch() {
            return Err(self.dev.err(
                "a tensor made inside a decode step was used after the next step began (the \
                 step arena reuses its memory)",
            ));
        }
        Ok(b)
    }

    pub(crate) fn linear_of<'a>(&self, w: &'a Weight) -> Result<&'a CudaLinear> {
        match w.inner::<CudaWeight>() {
            Some(CudaWeight::Linear(l)) => Ok(l),
            _ => Err(self
                .dev
                .err(format!("`{}` is not a CUDA matrix weight", w.name))),
        }
    }

    pub(crate) fn vector_of<'a>(&self, w: &'a Weight) -> Result<(&'a Buf, usize)> {
        match w.inner::<CudaWeight>() {
            Some(CudaWeight::Vector { buf, len }) => Ok((buf, *len)),
            _ => Err(self
                .dev
                .err(format!("`{}` is not a CUDA vector weight", w.name))),
        }
    }

    /// A new f32 tensor of `shape`, contents unspecified (every op overwrites its output).
    pub(crate) fn output(&self, shape: Vec<usize>, what: &str) -> Result<Tensor> {
        self.new_tensor(shape, ElemType::F32, false, what)
    }

    /// A new f32 tensor of `shape`, all zeros.
    pub(crate) fn zero_output(&self, shape: Vec<usize>, what: &str) -> Result<Tensor> {
        self.new_tensor(shape, ElemType::F32, true, what)
    }

    pub(crate) fn output_u32(&self, shape: Vec<usize>, what: &str) -> Result<Tensor> {
        self.new_tensor(shape, ElemType::U32, false, what)
    }

    /// A device tensor of 4-byte elements, cleared to zeros when `zeroed`.
    fn new_tensor(
        &self,
        shape: Vec<usize>,
        elem: ElemType,
        zeroed: bool,
        what: &str,
    ) -> Result<Tensor> {
        let bytes = tensor_bytes(&shape, 4, what)?;
        let buf = if zeroed {
            self.dev.scratch_zeros(bytes, what)?
        } else {
            self.dev.scratch(bytes, what)?
        };
        Ok(Tensor::new(shape, elem, Box::new(CudaTensor { buf })))
    }

    /// Rows of 4-byte elements (`elem`) copied into a new tensor, part after part; the parts
    /// are checked by the caller.
    fn copy_rows(
        &self,
        parts: &[(&Tensor, std::ops::Range<usize>)],
        (rows, cols): (usize, usize),
        elem: ElemType,
    ) -> Result<Tensor> {
        let mut out = self.new_tensor(vec![rows, cols], elem, false, "gather_rows output")?;
        let dst = out
            .inner_mut::<CudaTensor>()
            .map(|g| &mut g.buf)
            .expect("made above as a CUDA tensor");
        let mut at = 0;
        for (t, r) in parts {
            let bytes = r.len() * cols * 4;
            self.dev
                .copy(self.buf(t)?, r.start * cols * 4, dst, at, bytes)?;
            at += bytes;
        }
        Ok(out)
    }

    /// Runs `op` over the decode rows and over the prefill rows of `x` separately (each with
    /// its kernels) and stacks the results, or once where all rows are of one kind.
    fn by_kind(&self, x: &Tensor, kinds: Rows, op: &RowsOp) -> Result<Tensor> {
        let t = x.rows();
        match kinds.decode {
            0 => op(x, 0..t, false),
            d if d == t => op(x, 0..t, true),
            d => {
                let cols = x.cols();
                let head = self.copy_rows(&[(x, 0..d)], (d, cols), ElemType::F32)?;
                let tail = self.copy_rows(&[(x, d..t)], (t - d, cols), ElemType::F32)?;
                let (a, b) = (op(&head, 0..d, true)?, op(&tail, d..t, false)?);
                let out_cols = a.cols();
                self.copy_rows(&[(&a, 0..d), (&b, 0..t - d)], (t, out_cols), ElemType::F32)
            }
        }
    }

    fn kv_cache(&self, dims: AttnDims, fp8: Option<(f32, f32)>) -> Result<Tensor> {
        let width = dims.kv_width()?;
        let c = CudaKv {
            k: self.dev.alloc(4, "kv cache")?,
            v: self.dev.alloc(4, "kv cache")?,
            len: 0,
            cap: 0,
            width,
            fp8,
        };
        Ok(Tensor::new(vec![0, width], ElemType::F32, Box::new(c)))
    }

    /// Inputs that pair up token by token must have as many rows as `x`; the kernels index
    /// them by token and would read past a shorter one.
    pub(crate) fn check_rows(&self, x: &Tensor, others: &[&Tensor], what: &str) -> Result<()> {
        if let Some(o) = others.iter().find(|o| o.rows() != x.rows()) {
            return Err(self.dev.err(format!(
                "{what}: inputs have {} and {} tokens",
                x.rows(),
                o.rows()
            )));
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    /// The device's free memory as the driver reports it.
    fn memory_headroom(&self) -> Option<u64> {
        self.dev
            .ctx
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64)
    }

    fn info(&self) -> BackendInfo {
        let (ma, mi) = self.dev.cc;
        BackendInfo {
            name: "cuda".into(),
            device: format!(
                "{} (device {}, sm_{ma}{mi}, {}, prefill {})",
                self.dev.name,
                self.dev.ordinal,
                if !self.fp4_mma {
                    "exact weight-only 4-bit"
                } else if Family::Sm100.has(ma) {
                    "W4A4 on FP4 tensor cores (tcgen05)"
                } else {
                    "W4A4 on FP4 tensor cores (mma.sync)"
                },
                match self.prefill_terms {
                    0 => "f32",
                    1 => "bf16",
                    2 => "bf16x2",
                    _ => "bf16x3",
                }
            ),
            threads: 0,
        }
    }

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(self
                .dev
                .err(format!("upload: {} values for shape {shape:?}", data.len())));
        }
        let buf = self.dev.upload_f32(data, "activation")?;
        Ok(Tensor::new(
            shape.to_vec(),
            ElemType::F32,
            Box::new(CudaTensor { buf }),
        ))
    }

    fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.elem() != ElemType::F32 {
            return Err(self.dev.err("download: not an f32 tensor"));
        }
        let bytes = self.dev.read(self.buf(t)?, t.numel() * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        if t.elem() != ElemType::U32 {
            return Err(self.dev.err("download_u32: not a u32 tensor"));
        }
        let bytes = self.dev.read(self.buf(t)?, t.numel() * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn copy(&self, t: &Tensor) -> Result<Tensor> {
        if let Some(kv) = t.inner::<CudaKv>() {
            let bytes = kv.cap * kv.width * kv.elem_bytes();
            let mut k = self.dev.alloc(bytes, "kv cache")?;
            let mut v = self.dev.alloc(bytes, "kv cache")?;
            let used = kv.len * kv.width * kv.elem_bytes();
            self.dev.copy(&kv.k, 0, &mut k, 0, used)?;
            self.dev.copy(&kv.v, 0, &mut v, 0, used)?;
            let c = CudaKv {
                k,
                v,
                len: kv.len,
                cap: kv.cap,
                width: kv.width,
                fp8: kv.fp8,
            };
            return Ok(Tensor::new(t.shape().to_vec(), t.elem(), Box::new(c)));
        }
        let src = self.buf(t)?;
        let mut buf = self.dev.alloc(src.bytes, "copy")?;
        self.dev.copy(src, 0, &mut buf, 0, src.bytes)?;
        Ok(Tensor::new(
            t.shape().to_vec(),
            t.elem(),
            Box::new(CudaTensor { buf }),
        ))
    }

    fn load_linear(&self, w: &StoredLinear) -> Result<Weight> {
        let l = CudaLinear::upload(&self.dev, w)?;
        Ok(Weight::new(
            &w.name,
            w.rows,
            w.cols,
            w.format_name(),
            Box::new(CudaWeight::Linear(l)),
        ))
    }

    fn load_vector(&self, name: &str, v: &[f32]) -> Result<Weight> {
        let buf = self.dev.upload_f32(v, name)?;
        Ok(Weight::new(
            name,
            1,
            v.len(),
            "F32",
            Box::new(CudaWeight::Vector { buf, len: v.len() }),
        ))
    }

    fn load_experts(
        &self,
        name: &str,
        up: &[StoredLinear],
        down: &[StoredLinear],
    ) -> Result<ExpertWeights> {
        let (hidden, latent) = super::expert_shapes(name, up, down).map_err(|m| self.dev.err(m))?;
        let ex = CudaExperts {
            up: ExpertStack::upload(&self.dev, &format!("{name}.up_proj"), up)?,
            down: ExpertStack::upload(&self.dev, &format!("{name}.down_proj"), down)?,
        };
        Ok(ExpertWeights::new(
            name,
            up.len(),
            hidden,
            latent,
            Box::new(ex),
        ))
    }

    fn new_conv_state(&self, channels: usize, kernel: usize) -> Result<Tensor> {
        let hist = kernel.saturating_sub(1);
        let bytes = tensor_bytes(&[hist, channels], 4, "conv state")?;
        let buf = self.dev.zeros(bytes, "conv state")?;
        Ok(Tensor::new(
            vec![hist, channels],
            ElemType::F32,
            Box::new(CudaTensor { buf }),
        ))
    }

    fn new_ssm_state(&self, dims: SsmDims) -> Result<Tensor> {
        let bytes = tensor_bytes(&[dims.state_elems()?], 4, "ssm state")?;
        let buf = self.dev.zeros(bytes, "ssm state")?;
        Ok(Tensor::new(
            vec![dims.heads, dims.head_dim, dims.state],
            ElemType::F32,
            Box::new(CudaTensor { buf }),
        ))
    }

    fn new_kv_cache(&self, dims: AttnDims) -> Result<Tensor> {
        self.kv_cache(dims, None)
    }

    fn new_kv_cache_fp8(&self, dims: AttnDims, k_scale: f32, v_scale: f32) -> Result<Tensor> {
        let usable = k_scale.is_finite() && k_scale > 0.0 && v_scale.is_finite() && v_scale > 0.0;
        if !self.fp8_kv_cache || !usable {
            return self.kv_cache(dims, None);
        }
        self.kv_cache(dims, Some((k_scale, v_scale)))
    }

    fn kv_len(&self, cache: &Tensor) -> Result<usize> {
        cache
            .inner::<CudaKv>()
            .map(|c| c.len)
            .ok_or_else(|| self.dev.err("not a CUDA KV cache"))
    }

    fn kv_truncate(&self, cache: &mut Tensor, len: usize) -> Result<()> {
        let c = cache
            .inner_mut::<CudaKv>()
            .ok_or_else(|| self.dev.err("not a CUDA KV cache"))?;
        c.len = c.len.min(len);
        let (len, width) = (c.len, c.width);
        cache.set_shape(vec![len, width]);
        Ok(())
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        self.op_embed(table, ids)
    }

    fn rms_norm(&self, x: &Tensor, w: &Weight, eps: f32) -> Result<Tensor> {
        self.op_rms_norm(x, w, eps)
    }

    fn add_rms_norm(
        &self,
        residual: &mut Tensor,
        delta: &Tensor,
        w: &Weight,
        eps: f32,
    ) -> Result<Tensor> {
        self.op_add_rms_norm(residual, delta, w, eps)
    }

    fn linear_rows(&self, x: &Tensor, w: &Weight, kinds: Rows) -> Result<Tensor> {
        self.by_kind(x, kinds, &|x, _, decode| self.op_linear(x, w, decode))
    }

    fn gather_rows(&self, parts: &[(&Tensor, std::ops::Range<usize>)]) -> Result<Tensor> {
        let shape = crate::backend::gather_shape(parts)?;
        self.copy_rows(parts, shape, ElemType::F32)
    }

    fn relu2(&self, x: &Tensor) -> Result<Tensor> {
        self.op_relu2(x)
    }

    fn add(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        self.op_add(a, b)
    }

    fn split_columns(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
        self.op_split_columns(x, widths)
    }

    fn last_row(&self, x: &Tensor) -> Result<Tensor> {
        self.op_last_row(x)
    }

    fn conv1d_silu(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
    ) -> Result<Tensor> {
        self.op_conv1d_silu(x, w, b, state)
    }

    fn ssm_scan(
        &self,
        xbc: &Tensor,
        dt: &Tensor,
        a_log: &Weight,
        d: &Weight,
        dt_bias: &Weight,
        state: &mut Tensor,
        dims: SsmDims,
        dt_min: Option<f32>,
    ) -> Result<Tensor> {
        self.op_ssm_scan(xbc, dt, a_log, d, dt_bias, state, dims, dt_min)
    }

    fn gated_group_rms_norm(
        &self,
        y: &Tensor,
        z: &Tensor,
        w: &Weight,
        groups: usize,
        eps: f32,
    ) -> Result<Tensor> {
        self.op_gated_group_rms_norm(y, z, w, groups, eps)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Tensor,
        dims: AttnDims,
    ) -> Result<Tensor> {
        self.op_attention(q, k, v, cache, dims)
    }

    fn router(&self, logits: &Tensor, bias: &Weight, p: &RouterParams) -> Result<Routing> {
        self.op_router(logits, bias, p)
    }

    fn moe_experts_rows(
        &self,
        x: &Tensor,
        experts: &ExpertWeights,
        routing: &Routing,
        kinds: Rows,
    ) -> Result<Tensor> {
        if kinds.decode == 0 || kinds.decode == x.rows() {
            return self.op_moe_experts(x, experts, routing, kinds.decode > 0);
        }
        let k = routing.ids.cols();
        self.by_kind(x, kinds, &|x, r, decode| {
            let part = Routing {
                ids: self.copy_rows(&[(&routing.ids, r.clone())], (r.len(), k), ElemType::U32)?,
                weights: self.copy_rows(
                    &[(&routing.weights, r.clone())],
                    (r.len(), k),
                    ElemType::F32,
                )?,
            };
            self.op_moe_experts(x, experts, &part, decode)
        })
    }

    fn argmax(&self, logits: &Tensor) -> Result<Vec<u32>> {
        self.op_argmax(logits)
    }

    fn decode_step(&self, key: u64, step: &mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor> {
        if !self.graphs {
            return step();
        }
        let exclusive = self.dev.begin_step(key)?;
        let out = step();
        let ended = self.dev.end_step(out.is_ok());
        let out = out?;
        ended?;
        // The arena is reused by the next step; what the caller keeps gets memory of its own.
        let b = self.buf(&out)?;
        let out = if b.is_arena_view() {
            let mut own = self.dev.alloc(b.bytes, "decode step output")?;
            self.dev.copy(b, 0, &mut own, 0, b.bytes)?;
            Tensor::new(
                out.shape().to_vec(),
                out.elem(),
                Box::new(CudaTensor { buf: own }),
            )
        } else {
            out
        };
        drop(exclusive);
        Ok(out)
    }

    fn decode_step_summary(&self) -> Option<String> {
        if !self.graphs {
            return Some("kernels launched one by one (--cuda-no-graphs)".into());
        }
        let s = self.graph_stats();
        let replays = s.replayed.max(1);
        Some(format!(
            "CUDA graphs: {} steps replayed, {} built, {} ran directly; {} kernels per step, \
             {:.1} node rewrites per replay",
            s.replayed,
            s.built,
            s.direct,
            s.last_nodes,
            s.nodes_updated as f64 / replays as f64
        ))
    }
}

/// Device-memory read bandwidth of CUDA device `device` in GB/s (best of five passes over 1 GiB,
/// 16-byte loads as the decode kernels issue them): the bench's roofline.
pub fn measure_bandwidth(device: usize) -> Result<f64> {
    use cudarc::driver::sys::CUevent_flags;
    let dev = Device::open(device)?;
    let bytes = 1usize << 30;
    let data = dev.zeros(bytes, "bandwidth probe")?;
    let sink = dev.zeros(4, "bandwidth probe")?;
    let sms = dev
        .ctx
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_err(|e| dev.driver("reading the SM count", e))?;
    let event = || {
        dev.ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| dev.driver("creating an event", e))
    };
    let (start, end) = (event()?, event()?);
    let mut best = 0.0f64;
    for pass in 0..6 {
        start
            .record(&dev.stream)
            .map_err(|e| dev.driver("recording an event", e))?;
        dev.launch(
            &kernels::BANDWIDTH,
            "read_bandwidth",
            (sms.max(1) as u32 * 8, 1, 1),
            256,
            0,
            &[
                (&data).into(),
                device::Arg::U64((bytes / 16) as u64),
                (&sink).into(),
            ],
        )?;
        end.record(&dev.stream)
            .map_err(|e| dev.driver("recording an event", e))?;
        end.synchronize()
            .map_err(|e| dev.driver("waiting for the probe", e))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| dev.driver("timing the probe", e))? as f64;
        // The first pass also compiles and loads the kernel's module.
        if pass > 0 && ms > 0.0 {
            best = best.max(bytes as f64 / (ms * 1e-3) / 1e9);
        }
    }
    Ok(best)
}

/// Shared handle for tests and the CLI.
pub fn create(opts: CudaOptions) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(CudaBackend::new(opts)?))
}
