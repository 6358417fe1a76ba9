//! The wgpu backend: every op a WGSL compute shader (`shaders/<op>.wgsl`), run through Vulkan,
//! Metal, DX12 or GL. Ops are recorded into one command encoder; `download*` submits and is the
//! only synchronisation point.

mod gpu;
mod ops;
mod weights;

use std::sync::Arc;

use crate::backend::{
    AttnDims, Backend, BackendInfo, Candidates, ElemType, ExpertWeights, RouterParams, Routing,
    Rows, SsmDims, Tensor, Weight, tensor_bytes,
};
use crate::error::{Error, Result};
use crate::weights::StoredLinear;

pub(crate) use self::gpu::{Gpu, Shader, groups_2d};
pub(crate) use self::weights::{GpuExperts, GpuLinear};

/// An activation or state buffer. Element count comes from the `Tensor`'s shape.
pub(crate) struct GpuTensor {
    pub buf: wgpu::Buffer,
}

/// A growable KV cache: `[cap, width]` buffers of which `len` rows are filled.
pub(crate) struct GpuKv {
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    pub len: usize,
    pub cap: usize,
    pub width: usize,
}

pub(crate) enum GpuWeight {
    Linear(GpuLinear),
    Vector { buf: wgpu::Buffer, len: usize },
}

/// One adapter as `nemotron-rt devices` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub max_buffer_size: u64,
    pub max_storage_binding: u64,
    pub shader_f16: bool,
    pub subgroups: bool,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn summary(a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let limits = a.limits();
    let f = a.features();
    AdapterSummary {
        name: info.name,
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        max_buffer_size: limits.max_buffer_size,
        max_storage_binding: limits.max_storage_buffer_binding_size,
        shader_f16: f.contains(wgpu::Features::SHADER_F16),
        subgroups: f.contains(wgpu::Features::SUBGROUP),
    }
}

/// Every adapter wgpu can see (respecting `WGPU_BACKEND`).
pub fn adapters() -> Vec<AdapterSummary> {
    let inst = instance();
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .map(summary)
        .collect()
}

pub struct WgpuBackend {
    pub(crate) gpu: Gpu,
}

/// How to open a wgpu device.
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    /// The first adapter whose name contains this (case-insensitive); `None` = the default
    /// adapter, discrete GPUs first.
    pub adapter: Option<String>,
    /// Split weights into chunks of at most this many bytes (when smaller than the adapter's
    /// binding limit): how tests exercise the chunked paths that only real checkpoints reach.
    pub weight_chunk_cap: Option<u64>,
    /// Use the shared-memory kernels even where the adapter has subgroups (tests run both).
    pub no_subgroups: bool,
}

fn werr(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "wgpu".into(),
        msg: msg.into(),
    }
}

impl WgpuBackend {
    /// Opens the first adapter whose name contains `adapter` (case-insensitive), or the
    /// default adapter (preferring discrete GPUs) when `adapter` is `None`.
    pub fn new(adapter: Option<&str>) -> Result<WgpuBackend> {
        Self::with_options(&WgpuOptions {
            adapter: adapter.map(str::to_string),
            ..WgpuOptions::default()
        })
    }

    /// Like [`new`](Self::new), splitting weights into chunks of at most `cap` bytes.
    pub fn with_weight_chunk_cap(adapter: Option<&str>, cap: Option<u64>) -> Result<WgpuBackend> {
        Self::with_options(&WgpuOptions {
            adapter: adapter.map(str::to_string),
            weight_chunk_cap: cap,
            ..WgpuOptions::default()
        })
    }

    pub fn with_options(opts: &WgpuOptions) -> Result<WgpuBackend> {
        let adapter = opts.adapter.as_deref();
        let inst = instance();
        let all = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
        if all.is_empty() {
            return Err(werr(
                "no adapter found (no Vulkan/Metal/DX12/GL driver; on Linux install Mesa's mesa-vulkan-drivers for a CPU fallback)",
            ));
        }
        let chosen = match adapter {
            Some(want) => {
                let w = want.to_lowercase();
                all.into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&w))
                    .ok_or_else(|| {
                        let names: Vec<String> =
                            pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
                                .iter()
                                .map(|a| a.get_info().name)
                                .collect();
                        werr(format!(
                            "no adapter named like \"{want}\"; available: {}",
                            names.join(", ")
                        ))
                    })?
            }
            None => {
                let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
                    wgpu::DeviceType::DiscreteGpu => 0,
                    wgpu::DeviceType::IntegratedGpu => 1,
                    wgpu::DeviceType::VirtualGpu => 2,
                    wgpu::DeviceType::Cpu => 3,
                    wgpu::DeviceType::Other => 4,
                };
                let mut all = all;
                all.sort_by_key(|a| rank(a));
                all.into_iter().next().expect("non-empty")
            }
        };
        let info = chosen.get_info();
        let limits = chosen.limits();
        // Subgroups speed up reductions; kernels fall back to shared memory without them.
        let features = if opts.no_subgroups {
            wgpu::Features::empty()
        } else {
            chosen.features() & wgpu::Features::SUBGROUP
        };
        // Take every limit the adapter offers: the binding size decides how tensors are split.
        let (device, queue) = pollster::block_on(chosen.request_device(&wgpu::DeviceDescriptor {
            label: Some("nemotron-rt"),
            required_features: features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| werr(format!("cannot open adapter {}: {e}", info.name)))?;
        let mut gpu = Gpu::new(device, queue, info);
        gpu.weight_cap = opts.weight_chunk_cap;
        Ok(WgpuBackend { gpu })
    }

    /// Threads per row for a kernel that reduces a row's `want` lanes by subgroup shuffles:
    /// `want`, or fewer so that a row's lanes fit in the adapter's smallest subgroup. `None`
    /// where the device has no subgroups (use the shared-memory kernel).
    pub(crate) fn subgroup_lanes(&self, want: u32) -> Option<u32> {
        if !self.gpu.features.contains(wgpu::Features::SUBGROUP) {
            return None;
        }
        let min = self.gpu.info.subgroup_min_size;
        if min < 2 {
            return None;
        }
        // The largest power of two not above the smallest subgroup.
        let fit = 1u32 << (31 - min.leading_zeros());
        Some(want.min(fit))
    }

    pub(crate) fn buf<'a>(&self, t: &'a Tensor) -> Result<&'a wgpu::Buffer> {
        t.inner::<GpuTensor>()
            .map(|g| &g.buf)
            .ok_or_else(|| self.gpu.err("expected a tensor made by the wgpu backend"))
    }

    pub(crate) fn linear_of<'a>(&self, w: &'a Weight) -> Result<&'a GpuLinear> {
        match w.inner::<GpuWeight>() {
            Some(GpuWeight::Linear(l)) => Ok(l),
            _ => Err(self
                .gpu
                .err(format!("`{}` is not a wgpu matrix weight", w.name))),
        }
    }

    pub(crate) fn vector_of<'a>(&self, w: &'a Weight) -> Result<(&'a wgpu::Buffer, usize)> {
        match w.inner::<GpuWeight>() {
            Some(GpuWeight::Vector { buf, len }) => Ok((buf, *len)),
            _ => Err(self
                .gpu
                .err(format!("`{}` is not a wgpu vector weight", w.name))),
        }
    }

    /// A new f32 tensor of `shape`, contents unspecified (every op overwrites its output).
    pub(crate) fn output(&self, shape: Vec<usize>, what: &str) -> Result<Tensor> {
        let buf = self
            .gpu
            .alloc(tensor_bytes(&shape, 4, what)? as u64, what)?;
        Ok(Tensor::new(
            shape,
            ElemType::F32,
            Box::new(GpuTensor { buf }),
        ))
    }

    pub(crate) fn output_u32(&self, shape: Vec<usize>, what: &str) -> Result<Tensor> {
        let buf = self
            .gpu
            .alloc(tensor_bytes(&shape, 4, what)? as u64, what)?;
        Ok(Tensor::new(
            shape,
            ElemType::U32,
            Box::new(GpuTensor { buf }),
        ))
    }
}

impl Backend for WgpuBackend {
    fn info(&self) -> BackendInfo {
        let i = &self.gpu.info;
        let subgroups = if self.gpu.features.contains(wgpu::Features::SUBGROUP) {
            ""
        } else {
            ", no subgroups"
        };
        BackendInfo {
            name: "wgpu".into(),
            device: format!(
                "{} ({:?}, {:?}{subgroups})",
                i.name, i.backend, i.device_type
            ),
            threads: 0,
        }
    }

    /// Adapters that share the host's memory (a CPU driver such as lavapipe, an integrated
    /// GPU) have what the host has; wgpu has no way to ask a discrete GPU how much of its
    /// memory is free, so there the allocations report running out themselves.
    fn memory_headroom(&self) -> Option<u64> {
        match self.gpu.info.device_type {
            wgpu::DeviceType::Cpu | wgpu::DeviceType::IntegratedGpu => crate::memory::headroom(),
            _ => None,
        }
    }

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(self
                .gpu
                .err(format!("upload: {} values for shape {shape:?}", data.len())));
        }
        let buf = self.gpu.upload_f32(data, "activation")?;
        Ok(Tensor::new(
            shape.to_vec(),
            ElemType::F32,
            Box::new(GpuTensor { buf }),
        ))
    }

    fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.elem() != ElemType::F32 {
            return Err(self.gpu.err("download: not an f32 tensor"));
        }
        let bytes = self.gpu.read(self.buf(t)?, t.numel() as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        if t.elem() != ElemType::U32 {
            return Err(self.gpu.err("download_u32: not a u32 tensor"));
        }
        let bytes = self.gpu.read(self.buf(t)?, t.numel() as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn copy(&self, t: &Tensor) -> Result<Tensor> {
        if let Some(kv) = t.inner::<GpuKv>() {
            let bytes = (kv.cap * kv.width * 4) as u64;
            let k = self.gpu.alloc(bytes, "kv cache")?;
            let v = self.gpu.alloc(bytes, "kv cache")?;
            self.gpu.copy(&kv.k, 0, &k, 0, bytes.max(4));
            self.gpu.copy(&kv.v, 0, &v, 0, bytes.max(4));
            let c = GpuKv {
                k,
                v,
                len: kv.len,
                cap: kv.cap,
                width: kv.width,
            };
            return Ok(Tensor::new(t.shape().to_vec(), t.elem(), Box::new(c)));
        }
        let src = self.buf(t)?;
        let buf = self.gpu.alloc(src.size(), "copy")?;
        self.gpu.copy(src, 0, &buf, 0, src.size());
        Ok(Tensor::new(
            t.shape().to_vec(),
            t.elem(),
            Box::new(GpuTensor { buf }),
        ))
    }

    fn load_linear(&self, w: &StoredLinear) -> Result<Weight> {
        let l = GpuLinear::upload(&self.gpu, w)?;
        Ok(Weight::new(
            &w.name,
            w.rows,
            w.cols,
            w.format_name(),
            Box::new(GpuWeight::Linear(l)),
        ))
    }

    fn load_vector(&self, name: &str, v: &[f32]) -> Result<Weight> {
        let buf = self.gpu.upload_f32(v, name)?;
        Ok(Weight::new(
            name,
            1,
            v.len(),
            "F32",
            Box::new(GpuWeight::Vector { buf, len: v.len() }),
        ))
    }

    fn load_experts(
        &self,
        name: &str,
        up: &[StoredLinear],
        down: &[StoredLinear],
    ) -> Result<ExpertWeights> {
        let (hidden, latent) = super::expert_shapes(name, up, down).map_err(|m| self.gpu.err(m))?;
        let ex = GpuExperts {
            up: weights::ExpertStack::upload(&self.gpu, &format!("{name}.up_proj"), up)?,
            down: weights::ExpertStack::upload(&self.gpu, &format!("{name}.down_proj"), down)?,
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
        self.output(vec![hist, channels], "conv state")
    }

    fn new_ssm_state(&self, dims: SsmDims) -> Result<Tensor> {
        self.output(vec![dims.heads, dims.head_dim, dims.state], "ssm state")
    }

    fn new_kv_cache(&self, dims: AttnDims) -> Result<Tensor> {
        let width = dims.kv_width()?;
        let c = GpuKv {
            k: self.gpu.alloc(4, "kv cache")?,
            v: self.gpu.alloc(4, "kv cache")?,
            len: 0,
            cap: 0,
            width,
        };
        Ok(Tensor::new(vec![0, width], ElemType::F32, Box::new(c)))
    }

    fn kv_len(&self, cache: &Tensor) -> Result<usize> {
        cache
            .inner::<GpuKv>()
            .map(|c| c.len)
            .ok_or_else(|| self.gpu.err("not a wgpu KV cache"))
    }

    fn kv_truncate(&self, cache: &mut Tensor, len: usize) -> Result<()> {
        let c = cache
            .inner_mut::<GpuKv>()
            .ok_or_else(|| self.gpu.err("not a wgpu KV cache"))?;
        c.len = c.len.min(len);
        let (len, width) = (c.len, c.width);
        cache.set_shape(vec![len, width]);
        Ok(())
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        ops::embed::embed(self, table, ids)
    }

    fn rms_norm(&self, x: &Tensor, w: &Weight, eps: f32) -> Result<Tensor> {
        ops::rms_norm::rms_norm(self, x, w, eps)
    }

    fn add_rms_norm(
        &self,
        residual: &mut Tensor,
        delta: &Tensor,
        w: &Weight,
        eps: f32,
    ) -> Result<Tensor> {
        ops::rms_norm::add_rms_norm(self, residual, delta, w, eps)
    }

    // Each token's sums are formed the same way whatever the tile it shares with other tokens
    // (shaders/linear.wgsl, moe_experts.wgsl), so decode and prefill rows need no separate
    // kernels here: every row is computed independently of the others either way.
    fn linear_rows(&self, x: &Tensor, w: &Weight, _rows: Rows) -> Result<Tensor> {
        ops::linear::linear(self, x, w)
    }

    fn relu2(&self, x: &Tensor) -> Result<Tensor> {
        ops::elementwise::relu2(self, x)
    }

    fn add(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        ops::elementwise::add(self, a, b)
    }

    fn split_columns(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
        ops::elementwise::split_columns(self, x, widths)
    }

    fn last_row(&self, x: &Tensor) -> Result<Tensor> {
        ops::elementwise::last_row(self, x)
    }

    fn conv1d_silu(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
    ) -> Result<Tensor> {
        ops::mamba::conv1d_silu(self, x, w, b, state)
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
        ops::mamba::ssm_scan(self, xbc, dt, a_log, d, dt_bias, state, dims, dt_min)
    }

    fn gated_group_rms_norm(
        &self,
        y: &Tensor,
        z: &Tensor,
        w: &Weight,
        groups: usize,
        eps: f32,
    ) -> Result<Tensor> {
        ops::mamba::gated_group_rms_norm(self, y, z, w, groups, eps)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Tensor,
        dims: AttnDims,
    ) -> Result<Tensor> {
        ops::attention::attention(self, q, k, v, cache, dims)
    }

    fn router(&self, logits: &Tensor, bias: &Weight, p: &RouterParams) -> Result<Routing> {
        ops::moe::router(self, logits, bias, p)
    }

    fn moe_experts_rows(
        &self,
        x: &Tensor,
        experts: &ExpertWeights,
        routing: &Routing,
        _rows: Rows,
    ) -> Result<Tensor> {
        ops::moe::moe_experts(self, x, experts, routing)
    }

    fn gather_rows(&self, parts: &[(&Tensor, std::ops::Range<usize>)]) -> Result<Tensor> {
        let (rows, cols) = crate::backend::gather_shape(parts)?;
        let out = self.output(vec![rows, cols], "gather_rows output")?;
        let dst = self.buf(&out)?;
        let mut at = 0u64;
        for (t, r) in parts {
            let bytes = (r.len() * cols * 4) as u64;
            self.gpu
                .copy(self.buf(t)?, (r.start * cols * 4) as u64, dst, at, bytes);
            at += bytes;
        }
        Ok(out)
    }

    fn argmax(&self, logits: &Tensor) -> Result<Vec<u32>> {
        ops::elementwise::argmax(self, logits)
    }

    fn top_candidates(&self, logits: &Tensor, k: usize, inv_t: Option<f32>) -> Result<Candidates> {
        ops::top_candidates::top_candidates(self, logits, k, inv_t)
    }
}

/// Shared handle for tests and the CLI.
pub fn create(adapter: Option<&str>) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(WgpuBackend::new(adapter)?))
}
