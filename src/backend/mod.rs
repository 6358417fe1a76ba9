//! The one `Backend` trait. The model is written once against it; a backend knows tensors and
//! ops, never layers. Backends own their memory: the model holds opaque [`Tensor`], [`Weight`]
//! and [`ExpertWeights`] handles and only ever asks for data back through `download*`, which is
//! the single synchronisation point (a GPU backend queues everything else).
//!
//! Every op has the same name in `src/backend/cpu/`, `shaders/<op>.wgsl` and `cuda/<op>.cu`.
//!
//! Operands are checked against each other in one place, [`checked::Checked`], which
//! [`create_with`] puts in front of every backend: an implementation may take the shapes the
//! trait's docs state as given.

pub mod checked;
pub mod cpu;
pub mod cuda;
pub mod wgpu;

use std::any::Any;
use std::sync::Arc;

use crate::checkpoint::DType;
// What `top_candidates` reads back is the sampler's vocabulary; the dependency runs one way,
// backends to sampling.
use crate::error::{Error, Result};
pub use crate::sampling::{Candidates, MASS_REL_ERR};
use crate::weights::{LinearData, StoredLinear};

/// Element type of an activation tensor. Routing ids are the only integer activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    F32,
    U32,
}

/// An activation or state tensor living on some backend. Activations are row-major
/// `[rows, cols]` (rows = tokens); state tensors may use any shape their op defines.
pub struct Tensor {
    shape: Vec<usize>,
    elem: ElemType,
    inner: Box<dyn Any + Send + Sync>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, elem: ElemType, inner: Box<dyn Any + Send + Sync>) -> Tensor {
        Tensor { shape, elem, inner }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn elem(&self) -> ElemType {
        self.elem
    }

    /// Leading dimension (tokens for activations).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Product of the trailing dimensions.
    pub fn cols(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn set_shape(&mut self, shape: Vec<usize>) {
        self.shape = shape;
    }

    pub fn inner<T: 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }

    pub fn inner_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.inner.downcast_mut()
    }
}

/// A weight (matrix or vector) resident on a backend in its stored precision.
pub struct Weight {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub format: String,
    inner: Box<dyn Any + Send + Sync>,
}

impl Weight {
    pub fn new(
        name: impl Into<String>,
        rows: usize,
        cols: usize,
        format: impl Into<String>,
        inner: Box<dyn Any + Send + Sync>,
    ) -> Weight {
        Weight {
            name: name.into(),
            rows,
            cols,
            format: format.into(),
            inner,
        }
    }

    pub fn inner<T: 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }
}

/// All routed experts of one MoE layer, addressable by expert index.
pub struct ExpertWeights {
    pub name: String,
    pub experts: usize,
    /// Expert width `F` (rows of `up`).
    pub hidden: usize,
    /// Latent width `L` (cols of `up`, rows of `down`).
    pub latent: usize,
    inner: Box<dyn Any + Send + Sync>,
}

impl ExpertWeights {
    pub fn new(
        name: impl Into<String>,
        experts: usize,
        hidden: usize,
        latent: usize,
        inner: Box<dyn Any + Send + Sync>,
    ) -> ExpertWeights {
        ExpertWeights {
            name: name.into(),
            experts,
            hidden,
            latent,
            inner,
        }
    }

    pub fn inner<T: 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }
}

/// Mamba-2 SSM dimensions: `heads` of `head_dim` channels, `groups` of B/C, `state` = N.
#[derive(Clone, Copy, Debug)]
pub struct SsmDims {
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// `a * b * ...` of a dims struct's fields, or an error naming `what`. The model passes dims
/// from a validated config (whose products are bounded in `config::Sizes`), but the trait is
/// public: a caller's wrapped product must not become a wrong buffer size.
fn dims_product(what: &str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| Error::Invalid(format!("{what} ({factors:?}) overflows usize")))
}

/// Bytes of a tensor of `shape` with `elem_bytes`-byte elements, or an error naming `what` when
/// the product does not fit in `usize`.
pub(crate) fn tensor_bytes(shape: &[usize], elem_bytes: usize, what: &str) -> Result<usize> {
    shape
        .iter()
        .try_fold(elem_bytes, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{what}: a tensor of shape {shape:?} would need more bytes than this machine \
                 can address"
            ))
        })
}

impl SsmDims {
    /// `heads * head_dim`, the inner width `I`.
    pub fn inner(&self) -> Result<usize> {
        dims_product("ssm heads * head_dim", &[self.heads, self.head_dim])
    }

    /// `I + 2 * groups * state`: the columns of x, B and C.
    pub fn xbc_width(&self) -> Result<usize> {
        let gn = dims_product("ssm 2 * groups * state", &[2, self.groups, self.state])?;
        self.inner()?
            .checked_add(gn)
            .ok_or_else(|| Error::Invalid(format!("ssm xBC width of {self:?} overflows usize")))
    }

    /// `heads * head_dim * state`: elements of one SSM state.
    pub fn state_elems(&self) -> Result<usize> {
        dims_product(
            "ssm heads * head_dim * state",
            &[self.heads, self.head_dim, self.state],
        )
    }
}

impl AttnDims {
    /// `heads * head_dim`: the q (and output) width.
    pub fn q_width(&self) -> Result<usize> {
        dims_product("attention heads * head_dim", &[self.heads, self.head_dim])
    }

    /// `kv_heads * head_dim`: one token's K (or V) in the cache.
    pub fn kv_width(&self) -> Result<usize> {
        dims_product(
            "attention kv_heads * head_dim",
            &[self.kv_heads, self.head_dim],
        )
    }
}

/// Sigmoid router with DeepSeek-V3 style grouped top-k (ARCH_NOTES §6).
#[derive(Clone, Copy, Debug)]
pub struct RouterParams {
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub scaling: f32,
}

/// How the rows of a batch are computed: the first `decode` rows are decode rows, the rest
/// prefill rows. A decode row comes out bit for bit as a lone single-token step computes it,
/// whatever else shares the pass; a prefill row goes through the prefill (matrix-matrix)
/// kernels, and also depends only on itself. So no row's result depends on the batch, and a
/// multi-token verify step (all decode rows) computes what that many decode steps compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub decode: usize,
}

impl Rows {
    /// Every row a prefill row.
    pub const PREFILL: Rows = Rows { decode: 0 };

    /// The first `n` rows decode rows.
    pub fn decode(n: usize) -> Rows {
        Rows { decode: n }
    }

    /// What a single sequence's pass of `t` tokens is: a decode step when `t` is 1, a prefill
    /// otherwise (the convention before batches, kept for callers that pass one sequence).
    pub fn of_tokens(t: usize) -> Rows {
        Rows {
            decode: usize::from(t == 1),
        }
    }

    /// Checks the split against a tensor of `rows` rows.
    pub fn check(&self, rows: usize, op: &str) -> Result<()> {
        if self.decode > rows {
            return Err(Error::Invalid(format!(
                "{op}: {} decode rows in a tensor of {rows} rows",
                self.decode
            )));
        }
        Ok(())
    }
}

/// The experts chosen for each token: `ids` U32 `[T, k]` and final weights F32 `[T, k]`, in
/// ascending expert-id order within each row.
pub struct Routing {
    pub ids: Tensor,
    pub weights: Tensor,
}

/// What a backend can tell about itself for `devices` and the app.
#[derive(Clone, Debug)]
pub struct BackendInfo {
    pub name: String,
    pub device: String,
    pub threads: usize,
}

pub trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;

    /// Runs `f`, one whole forward pass, wherever this backend's ops are cheapest to call
    /// from. The CPU backend runs it on its own worker pool, so each parallel op inside starts
    /// on a thread that is already awake rather than being handed over (and back) from the
    /// caller's thread; the others just call it.
    fn enter(&self, f: &mut (dyn FnMut() + Send)) {
        f()
    }

    // ---- memory ----
    /// Bytes this backend can still allocate for new per-sequence state (KV caches, Mamba
    /// states), for the engine's admission check: host memory on the CPU, free device memory
    /// on a GPU. `None` where the backend cannot tell; its allocations then fail with their own
    /// out-of-memory error when it runs out.
    fn memory_headroom(&self) -> Option<u64> {
        crate::memory::headroom()
    }
    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor>;
    fn download(&self, t: &Tensor) -> Result<Vec<f32>>;
    fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>>;
    /// A deep copy, for snapshots of per-sequence state.
    fn copy(&self, t: &Tensor) -> Result<Tensor>;
    fn load_linear(&self, w: &StoredLinear) -> Result<Weight>;
    fn load_vector(&self, name: &str, v: &[f32]) -> Result<Weight>;
    /// `up[e]`: `[F, L]`, `down[e]`: `[L, F]`, one pair per expert.
    fn load_experts(
        &self,
        name: &str,
        up: &[StoredLinear],
        down: &[StoredLinear],
    ) -> Result<ExpertWeights>;

    // ---- per-sequence state ----
    /// The last `kernel - 1` pre-convolution inputs of `channels` channels, zeroed.
    fn new_conv_state(&self, channels: usize, kernel: usize) -> Result<Tensor>;
    /// SSM state `[heads, head_dim, state]`, zeroed, always f32.
    fn new_ssm_state(&self, dims: SsmDims) -> Result<Tensor>;
    fn new_kv_cache(&self, dims: AttnDims) -> Result<Tensor>;
    /// A KV cache the checkpoint asks to keep in FP8 with these per-tensor scales. A backend
    /// may honour it (CUDA does when told to) or keep the exact f32 cache, as the reference's
    /// fake quantization computes; that is the default.
    fn new_kv_cache_fp8(&self, dims: AttnDims, k_scale: f32, v_scale: f32) -> Result<Tensor> {
        let _ = (k_scale, v_scale);
        self.new_kv_cache(dims)
    }
    /// Number of positions held by a KV cache.
    fn kv_len(&self, cache: &Tensor) -> Result<usize>;
    /// Drops cached positions from `len` on (rejecting drafts, restoring snapshots).
    fn kv_truncate(&self, cache: &mut Tensor, len: usize) -> Result<()>;

    // ---- ops ----
    /// Rows of an embedding table (stored as a [`Weight`] in any dense format).
    fn embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor>;
    /// `w * x * rsqrt(mean(x²) + eps)` per row.
    fn rms_norm(&self, x: &Tensor, w: &Weight, eps: f32) -> Result<Tensor>;
    /// `residual += delta`, then returns `rms_norm(residual)`: the seam between two layers.
    fn add_rms_norm(
        &self,
        residual: &mut Tensor,
        delta: &Tensor,
        w: &Weight,
        eps: f32,
    ) -> Result<Tensor>;
    /// `x Wᵀ (+ b)` for a weight in any stored format, decoded inside the kernel; `rows` says
    /// which rows are decode rows (see [`Rows`]).
    fn linear_rows(&self, x: &Tensor, w: &Weight, rows: Rows) -> Result<Tensor>;
    /// [`Self::linear_rows`] for one sequence's pass: one row is a decode step, more a prefill.
    fn linear(&self, x: &Tensor, w: &Weight) -> Result<Tensor> {
        self.linear_rows(x, w, Rows::of_tokens(x.rows()))
    }
    /// `relu(x)²`.
    fn relu2(&self, x: &Tensor) -> Result<Tensor>;
    /// `a += b`.
    fn add(&self, a: &mut Tensor, b: &Tensor) -> Result<()>;
    /// Splits `[T, Σw]` into `[T, w_i]` column blocks.
    fn split_columns(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>>;
    /// The last row of `[T, C]` as `[1, C]`.
    fn last_row(&self, x: &Tensor) -> Result<Tensor>;
    /// Causal depthwise conv1d over time (weight `[C, K]`), continuing from `state`, then SiLU.
    fn conv1d_silu(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
    ) -> Result<Tensor>;
    /// The Mamba-2 selective scan over `T` tokens from `state` (a single decode step when T=1).
    /// `xbc` = post-conv `[T, I + 2GN]`, `dt` = raw `[T, H]`; returns `y` `[T, I]` including the
    /// `D` skip. `dt_min` clamps `softplus(dt + dt_bias)` from below when set.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<Tensor>;
    /// `w * groupnorm(y * silu(z))` with RMS over each of `groups` column groups.
    fn gated_group_rms_norm(
        &self,
        y: &Tensor,
        z: &Tensor,
        w: &Weight,
        groups: usize,
        eps: f32,
    ) -> Result<Tensor>;
    /// Appends `k`, `v` to `cache` and returns causal softmax attention of `q` over it (no RoPE).
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Tensor,
        dims: AttnDims,
    ) -> Result<Tensor>;
    /// Router logits `[T, E]` + correction bias -> chosen experts and their weights.
    fn router(&self, logits: &Tensor, bias: &Weight, p: &RouterParams) -> Result<Routing>;
    /// `Σ_j w_j · down_{id_j}(relu(up_{id_j} x)²)` per token, touching only chosen experts;
    /// `rows` says which rows are decode rows (see [`Rows`]).
    fn moe_experts_rows(
        &self,
        x: &Tensor,
        experts: &ExpertWeights,
        routing: &Routing,
        rows: Rows,
    ) -> Result<Tensor>;
    /// [`Self::moe_experts_rows`] for one sequence's pass: one row is a decode step, more a
    /// prefill.
    fn moe_experts(
        &self,
        x: &Tensor,
        experts: &ExpertWeights,
        routing: &Routing,
    ) -> Result<Tensor> {
        self.moe_experts_rows(x, experts, routing, Rows::of_tokens(x.rows()))
    }
    /// A new `[Σ n_i, C]` tensor of the rows `range_i` of each `x_i`, in order: one sequence's
    /// rows out of a batch, a batch stacked from its sequences' rows, or the rows whose logits
    /// are wanted. Every part must be F32 with the same columns.
    fn gather_rows(&self, parts: &[(&Tensor, std::ops::Range<usize>)]) -> Result<Tensor>;
    /// Index of the first maximum of each row.
    fn argmax(&self, logits: &Tensor) -> Result<Vec<u32>>;
    /// Runs `step`, one single-token forward pass of the sequence `key` that returns its
    /// logits. A backend may run the step's device work as a replay of the previous step of
    /// the same sequence (CUDA graphs) while `step` still runs for its host effects. Tensors
    /// made inside, other than the one returned, are valid only until the next step begins.
    fn decode_step(&self, key: u64, step: &mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor> {
        let _ = key;
        step()
    }
    /// How decode steps ran, in a line for the bench (`None` where there is nothing to say).
    fn decode_step_summary(&self) -> Option<String> {
        None
    }
    /// The `k` largest logits of the last row as (id, logit), as
    /// [`top_by_logit`](crate::sampling::top_by_logit) orders them, and, when `inv_t` is given,
    /// the row's softmax mass `Σ exp(l·inv_t − max)` within [`MASS_REL_ERR`]: what seeded
    /// sampling reads back instead of the whole row. By default the row is downloaded and
    /// both are computed on the host.
    fn top_candidates(&self, logits: &Tensor, k: usize, inv_t: Option<f32>) -> Result<Candidates> {
        let all = self.download(logits)?;
        let v = logits.cols();
        if v == 0 || all.len() < v {
            return Ok(Candidates::default());
        }
        let row = &all[all.len() - v..];
        let top = crate::sampling::top_by_logit(row, k);
        let mass = inv_t.map(|inv_t| crate::sampling::softmax_mass(row, inv_t));
        Ok(Candidates { top, mass })
    }
}

/// Checks [`Backend::gather_rows`]' parts: F32, one column count, ranges inside their
/// tensors. Returns the output's `(rows, cols)`.
pub(crate) fn gather_shape(parts: &[(&Tensor, std::ops::Range<usize>)]) -> Result<(usize, usize)> {
    let Some((first, _)) = parts.first() else {
        return Err(Error::Invalid("gather_rows: no parts".into()));
    };
    let cols = first.cols();
    let mut rows = 0usize;
    for (i, (t, r)) in parts.iter().enumerate() {
        if t.elem() != ElemType::F32 {
            return Err(Error::Invalid(format!("gather_rows: part {i} is not F32")));
        }
        if t.cols() != cols {
            return Err(Error::Invalid(format!(
                "gather_rows: part {i} has {} columns, part 0 {cols}",
                t.cols()
            )));
        }
        if r.start > r.end || r.end > t.rows() {
            return Err(Error::Invalid(format!(
                "gather_rows: rows {r:?} of part {i}, which has {} rows",
                t.rows()
            )));
        }
        rows += r.len();
    }
    Ok((rows, cols))
}

/// Stored-format codes as the GPU kernels number them (`FORMAT` in shaders/decode.wgsl,
/// `FMT_*` in cuda/common.cuh).
pub(crate) const FMT_F32: u32 = 0;
pub(crate) const FMT_BF16: u32 = 1;
pub(crate) const FMT_F16: u32 = 2;
pub(crate) const FMT_FP8: u32 = 3;
pub(crate) const FMT_NVFP4: u32 = 4;

/// A stored weight as GPU kernels read it: format code, tensor scale (FP8 / NVFP4; 1 for dense
/// formats), data bytes and NVFP4 block-scale bytes (empty for the other formats).
pub(crate) fn gpu_parts(w: &StoredLinear) -> (u32, f32, &[u8], &[u8]) {
    match &w.data {
        LinearData::Dense { dtype, data } => {
            let f = match dtype {
                DType::BF16 => FMT_BF16,
                DType::F16 => FMT_F16,
                _ => FMT_F32,
            };
            (f, 1.0, data.bytes(), &[])
        }
        LinearData::Fp8 { data, scale } => (FMT_FP8, *scale, data.bytes(), &[]),
        LinearData::Nvfp4 {
            packed,
            block_scales,
            tensor_scale,
        } => (
            FMT_NVFP4,
            *tensor_scale,
            packed.bytes(),
            block_scales.bytes(),
        ),
    }
}

/// `(F, L)` of a layer's experts, checking every `up` is `[F, L]` and every `down` `[L, F]`.
pub(crate) fn expert_shapes(
    name: &str,
    up: &[StoredLinear],
    down: &[StoredLinear],
) -> std::result::Result<(usize, usize), String> {
    if up.is_empty() || up.len() != down.len() {
        return Err(format!(
            "{name}: {} up and {} down projections",
            up.len(),
            down.len()
        ));
    }
    let (hidden, latent) = (up[0].rows, up[0].cols);
    for (u, d) in up.iter().zip(down) {
        if (u.rows, u.cols) != (hidden, latent) || (d.rows, d.cols) != (latent, hidden) {
            return Err(format!(
                "{name}: experts differ in shape ({} is [{}, {}], {} is [{}, {}])",
                u.name, u.rows, u.cols, d.name, d.rows, d.cols
            ));
        }
    }
    Ok((hidden, latent))
}

/// Which backend to run on, as the CLI and the app name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
}

/// How to build a backend.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// CPU worker threads; 0 = one per core.
    pub threads: usize,
    /// wgpu: the first adapter whose name contains this (case-insensitive).
    pub adapter: Option<String>,
    /// CPU: NVFP4 decode GEMVs against int8-quantized activations (opt-in; faster, not
    /// bit-faithful to the reference).
    pub cpu_q8_activations: bool,
    /// CUDA: the device ordinal.
    pub device: usize,
    /// CUDA: the W4A4 FP4 tensor-core path (`None` = where the GPU has it; see
    /// [`cuda::CudaOptions::fp4_mma`]).
    pub cuda_fp4: Option<bool>,
    /// CUDA: keep the KV cache in FP8 where the checkpoint asks for it.
    pub cuda_fp8_kv: bool,
    /// CUDA: launch decode steps kernel by kernel instead of as CUDA graphs.
    pub cuda_no_graphs: bool,
    /// CUDA: how prefill GEMMs multiply (tensor cores by default where the GPU has them).
    pub cuda_prefill: cuda::PrefillMath,
}

/// Builds a backend by kind; `threads = 0` means one per core.
pub fn create(kind: BackendKind, threads: usize) -> Result<Arc<dyn Backend>> {
    create_with(
        kind,
        &BackendOptions {
            threads,
            ..Default::default()
        },
    )
}

/// A backend of `kind`, behind [`checked::Checked`]: every op's operands are checked there.
pub fn create_with(kind: BackendKind, opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(checked::Checked(create_unchecked(kind, opts)?)))
}

fn create_unchecked(kind: BackendKind, opts: &BackendOptions) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Arc::new(cpu::CpuBackend::with_q8_activations(
            opts.threads,
            opts.cpu_q8_activations,
        )?)),
        BackendKind::Wgpu => Ok(Arc::new(wgpu::WgpuBackend::new(opts.adapter.as_deref())?)),
        BackendKind::Cuda => cuda::create(cuda::CudaOptions {
            device: opts.device,
            fp4_mma: opts.cuda_fp4,
            fp8_kv_cache: opts.cuda_fp8_kv,
            no_graphs: opts.cuda_no_graphs,
            prefill: opts.cuda_prefill,
        }),
    }
}
