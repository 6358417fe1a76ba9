//! The CPU backend: the reference every other backend is tested against. Executes each op at
//! once on a private rayon pool; weights stay memory-mapped in their stored format.

mod attention;
mod linear;
mod mamba;
mod moe;
mod par;
mod profile;
mod q8;
mod simd;

use self::attention::KvCache;
use self::linear::CpuLinear;
use self::moe::CpuExperts;
use crate::backend::{
    AttnDims, Backend, BackendInfo, ElemType, ExpertWeights, RouterParams, Routing, Rows, SsmDims,
    Tensor, Weight, tensor_bytes,
};
use crate::error::{Error, Result};
use crate::weights::StoredLinear;

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    /// NVFP4 decode GEMVs against int8-quantized activations (opt-in, not bit-faithful).
    q8_activations: bool,
    profile: Option<profile::Profile>,
    /// Bytes of weights still to be mapped at load ([`CpuLinear::populate`]): what the system
    /// had available when the backend started, less a quarter. A checkpoint larger than that
    /// is mapped only as decode touches it, so loading it does not push its own pages out.
    populate_budget: std::sync::atomic::AtomicU64,
}

/// `MemAvailable` of Linux's `/proc/meminfo`, in bytes.
enum CpuWeight {
    Linear(CpuLinear),
    Vector(Vec<f32>),
}

/// Conv state: the last `kernel - 1` inputs `[kernel-1, channels]`.
struct ConvState {
    data: Vec<f32>,
    channels: usize,
    kernel: usize,
}

struct SsmState {
    data: Vec<f32>,
    dims: SsmDims,
}

/// Worker threads allowed per core (see [`CpuBackend::new`]).
const MAX_THREADS_PER_CORE: usize = 16;

impl CpuBackend {
    pub fn new(threads: usize) -> Result<CpuBackend> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if threads == 0 { cores } else { threads };
        // Far more threads than cores only slows every op down (each one wakes them all), and
        // tens of thousands take minutes to start: refuse rather than appear to hang.
        let most = MAX_THREADS_PER_CORE * cores;
        if threads > most {
            return Err(err(format!(
                "{threads} worker threads asked for (--threads), but this machine has {cores} \
                 cores: use at most {most} ({MAX_THREADS_PER_CORE} per core), or 0 for one per core"
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("nemotron-cpu-{i}"))
            .build()
            .map_err(|e| err(format!("cannot start {threads} worker threads: {e}")))?;
        Ok(CpuBackend {
            pool,
            threads,
            q8_activations: false,
            profile: profile::Profile::from_env(),
            populate_budget: std::sync::atomic::AtomicU64::new(
                crate::memory::available_memory().map_or(u64::MAX, |b| b / 4 * 3),
            ),
        })
    }

    /// Like [`new`](Self::new), with NVFP4 decode GEMVs run against int8-quantized
    /// activations when `q8_activations` (faster, not bit-faithful to the reference).
    /// The row kernels this process uses: `scalar`, `AVX2` or `AVX-512` (chosen once, see
    /// `NEMOTRON_CPU_SIMD` in docs/ARCHITECTURE.md).
    pub fn simd_level() -> &'static str {
        simd::level().name()
    }

    pub fn with_q8_activations(threads: usize, q8_activations: bool) -> Result<CpuBackend> {
        let mut be = Self::new(threads)?;
        be.q8_activations = q8_activations;
        Ok(be)
    }

    /// A loaded weight, its pages mapped now while the budget lasts.
    fn loaded(&self, w: &StoredLinear) -> Result<CpuLinear> {
        use std::sync::atomic::Ordering;
        let l = CpuLinear::new(w)?.with_q8_activations(self.q8_activations);
        let bytes = l.stored_bytes() as u64;
        let fits = self
            .populate_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .is_ok();
        if fits {
            l.populate();
        }
        Ok(l)
    }

    /// Runs `f(parallel)`: on the pool when `work` is worth splitting, else right here.
    fn run<T: Send>(&self, op: &str, work: usize, f: impl FnOnce(bool) -> T + Send) -> T {
        self.run_reading(op, 0, work, f)
    }

    /// [`Self::run`] for an op that reads `bytes` of stored weights (for the profile).
    fn run_reading<T: Send>(
        &self,
        op: &str,
        bytes: u64,
        work: usize,
        f: impl FnOnce(bool) -> T + Send,
    ) -> T {
        let start = self.profile.as_ref().map(|_| std::time::Instant::now());
        let out = if self.threads > 1 && work >= par::PAR_MIN_WORK {
            self.pool.install(|| f(true))
        } else {
            f(false)
        };
        if let (Some(p), Some(t)) = (&self.profile, start) {
            p.record(op, t.elapsed(), bytes);
        }
        out
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            eprint!("{}", p.report());
        }
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cpu".into(),
        msg: msg.into(),
    }
}

fn f32s(t: &Tensor) -> Result<&Vec<f32>> {
    t.inner::<Vec<f32>>()
        .ok_or_else(|| err("expected an f32 tensor made by the CPU backend"))
}

fn f32s_mut(t: &mut Tensor) -> Result<&mut Vec<f32>> {
    t.inner_mut::<Vec<f32>>()
        .ok_or_else(|| err("expected an f32 tensor made by the CPU backend"))
}

fn tensor(data: Vec<f32>, shape: Vec<usize>) -> Tensor {
    Tensor::new(shape, ElemType::F32, Box::new(data))
}

fn matrix(data: Vec<f32>, rows: usize, cols: usize) -> Tensor {
    tensor(data, vec![rows, cols])
}

fn linear_of(w: &Weight) -> Result<&CpuLinear> {
    match w.inner::<CpuWeight>() {
        Some(CpuWeight::Linear(l)) => Ok(l),
        _ => Err(err(format!("`{}` is not a CPU matrix weight", w.name))),
    }
}

fn vector_of(w: &Weight) -> Result<&[f32]> {
    match w.inner::<CpuWeight>() {
        Some(CpuWeight::Vector(v)) => Ok(v),
        _ => Err(err(format!("`{}` is not a CPU vector weight", w.name))),
    }
}

impl Backend for CpuBackend {
    fn enter(&self, f: &mut (dyn FnMut() + Send)) {
        if self.threads > 1 {
            // Inside the pool, `run`'s `install` is a plain call, and the other workers stay
            // awake between ops.
            self.pool.install(|| par::keep_awake(f))
        } else {
            f()
        }
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "cpu".into(),
            device: format!("{} ({} threads)", std::env::consts::ARCH, self.threads),
            threads: self.threads,
        }
    }

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(err(format!(
                "upload: {} values for shape {shape:?}",
                data.len()
            )));
        }
        Ok(tensor(data.to_vec(), shape.to_vec()))
    }

    fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        // Per-sequence states read back whole (tests compare them after a rollback).
        if let Some(c) = t.inner::<ConvState>() {
            return Ok(c.data.clone());
        }
        if let Some(s) = t.inner::<SsmState>() {
            return Ok(s.data.clone());
        }
        Ok(f32s(t)?.clone())
    }

    fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        t.inner::<Vec<u32>>()
            .cloned()
            .ok_or_else(|| err("expected a u32 tensor made by the CPU backend"))
    }

    fn copy(&self, t: &Tensor) -> Result<Tensor> {
        let shape = t.shape().to_vec();
        if let Some(v) = t.inner::<Vec<f32>>() {
            return Ok(tensor(v.clone(), shape));
        }
        if let Some(v) = t.inner::<Vec<u32>>() {
            return Ok(Tensor::new(shape, ElemType::U32, Box::new(v.clone())));
        }
        if let Some(c) = t.inner::<KvCache>() {
            return Ok(Tensor::new(shape, ElemType::F32, Box::new(c.clone())));
        }
        if let Some(c) = t.inner::<ConvState>() {
            let c = ConvState {
                data: c.data.clone(),
                channels: c.channels,
                kernel: c.kernel,
            };
            return Ok(Tensor::new(shape, ElemType::F32, Box::new(c)));
        }
        if let Some(s) = t.inner::<SsmState>() {
            let s = SsmState {
                data: s.data.clone(),
                dims: s.dims,
            };
            return Ok(Tensor::new(shape, ElemType::F32, Box::new(s)));
        }
        Err(err("copy: not a CPU tensor"))
    }

    fn load_linear(&self, w: &StoredLinear) -> Result<Weight> {
        let l = self.loaded(w)?;
        Ok(Weight::new(
            &w.name,
            w.rows,
            w.cols,
            w.format_name(),
            Box::new(CpuWeight::Linear(l)),
        ))
    }

    fn load_vector(&self, name: &str, v: &[f32]) -> Result<Weight> {
        Ok(Weight::new(
            name,
            1,
            v.len(),
            "F32",
            Box::new(CpuWeight::Vector(v.to_vec())),
        ))
    }

    fn load_experts(
        &self,
        name: &str,
        up: &[StoredLinear],
        down: &[StoredLinear],
    ) -> Result<ExpertWeights> {
        let (hidden, latent) = super::expert_shapes(name, up, down).map_err(err)?;
        let ex = CpuExperts {
            up: up.iter().map(|w| self.loaded(w)).collect::<Result<_>>()?,
            down: down.iter().map(|w| self.loaded(w)).collect::<Result<_>>()?,
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
        crate::memory::ensure_fits(bytes as u64, "a conv state")?;
        let s = ConvState {
            data: vec![0.0; hist * channels],
            channels,
            kernel,
        };
        Ok(Tensor::new(
            vec![hist, channels],
            ElemType::F32,
            Box::new(s),
        ))
    }

    fn new_ssm_state(&self, dims: SsmDims) -> Result<Tensor> {
        let n = dims.state_elems()?;
        let bytes = tensor_bytes(&[n], 4, "ssm state")?;
        crate::memory::ensure_fits(bytes as u64, &format!("an SSM state {dims:?}"))?;
        let s = SsmState {
            data: vec![0.0; n],
            dims,
        };
        Ok(Tensor::new(
            vec![dims.heads, dims.head_dim, dims.state],
            ElemType::F32,
            Box::new(s),
        ))
    }

    fn new_kv_cache(&self, dims: AttnDims) -> Result<Tensor> {
        let cache = KvCache::new(dims)?;
        Ok(Tensor::new(
            vec![0, cache.width],
            ElemType::F32,
            Box::new(cache),
        ))
    }

    fn kv_len(&self, cache: &Tensor) -> Result<usize> {
        cache
            .inner::<KvCache>()
            .map(|c| c.len)
            .ok_or_else(|| err("not a CPU KV cache"))
    }

    fn kv_truncate(&self, cache: &mut Tensor, len: usize) -> Result<()> {
        let c = cache
            .inner_mut::<KvCache>()
            .ok_or_else(|| err("not a CPU KV cache"))?;
        c.truncate(len);
        let width = c.width;
        let len = c.len;
        cache.set_shape(vec![len, width]);
        Ok(())
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        let t = linear_of(table)?;
        let d = t.cols;
        let mut out = vec![0.0f32; ids.len() * d];
        for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
            if id as usize >= t.rows {
                return Err(err(format!(
                    "token id {id} is outside the vocabulary of `{}` ({} rows)",
                    table.name, t.rows
                )));
            }
            t.decode_row(id as usize, row);
        }
        Ok(matrix(out, ids.len(), d))
    }

    fn rms_norm(&self, x: &Tensor, w: &Weight, eps: f32) -> Result<Tensor> {
        let w = vector_of(w)?;
        let xs = f32s(x)?;
        let mut out = vec![0.0f32; xs.len()];
        for (o, r) in out.chunks_exact_mut(w.len()).zip(xs.chunks_exact(w.len())) {
            rms_norm_row(r, w, eps, o);
        }
        Ok(matrix(out, x.rows(), w.len()))
    }

    fn add_rms_norm(
        &self,
        residual: &mut Tensor,
        delta: &Tensor,
        w: &Weight,
        eps: f32,
    ) -> Result<Tensor> {
        self.add(residual, delta)?;
        self.rms_norm(residual, w, eps)
    }

    fn linear_rows(&self, x: &Tensor, w: &Weight, kinds: Rows) -> Result<Tensor> {
        let l = linear_of(w)?;
        let xs = f32s(x)?;
        let work = x.rows() * l.rows * l.cols;
        let role = match self.profile {
            Some(_) => format!("linear {}", profile::role(&w.name)),
            None => String::new(),
        };
        let y = self.run_reading(&role, l.stored_bytes() as u64, work, |par| {
            l.forward(xs, x.rows(), kinds.decode, par)
        });
        Ok(matrix(y, x.rows(), l.rows))
    }

    fn relu2(&self, x: &Tensor) -> Result<Tensor> {
        let y: Vec<f32> = f32s(x)?
            .iter()
            .map(|&v| {
                let r = v.max(0.0);
                r * r
            })
            .collect();
        Ok(tensor(y, x.shape().to_vec()))
    }

    fn add(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        let bs = f32s(b)?;
        for (x, y) in f32s_mut(a)?.iter_mut().zip(bs) {
            *x += y;
        }
        Ok(())
    }

    fn split_columns(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
        let total: usize = widths.iter().sum();
        let xs = f32s(x)?;
        let rows = x.rows();
        let mut offset = 0;
        let mut out = Vec::with_capacity(widths.len());
        for &w in widths {
            let mut part = Vec::with_capacity(rows * w);
            for r in 0..rows {
                part.extend_from_slice(&xs[r * total + offset..r * total + offset + w]);
            }
            out.push(matrix(part, rows, w));
            offset += w;
        }
        Ok(out)
    }

    fn gather_rows(&self, parts: &[(&Tensor, std::ops::Range<usize>)]) -> Result<Tensor> {
        let (rows, cols) = crate::backend::gather_shape(parts)?;
        let mut out = Vec::with_capacity(rows * cols);
        for (t, r) in parts {
            out.extend_from_slice(&f32s(t)?[r.start * cols..r.end * cols]);
        }
        Ok(matrix(out, rows, cols))
    }

    fn last_row(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, cols) = (x.rows(), x.cols());
        let xs = f32s(x)?;
        Ok(matrix(xs[(rows - 1) * cols..].to_vec(), 1, cols))
    }

    fn conv1d_silu(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
    ) -> Result<Tensor> {
        let wl = linear_of(w)?;
        let mut wv = vec![0.0f32; wl.rows * wl.cols];
        for (r, row) in wv.chunks_exact_mut(wl.cols).enumerate() {
            wl.decode_row(r, row);
        }
        let bias = b.map(vector_of).transpose()?;
        let s = state
            .inner_mut::<ConvState>()
            .ok_or_else(|| err("conv1d_silu: not a CPU conv state"))?;
        if wl.rows != s.channels || wl.cols != s.kernel {
            return Err(err(format!(
                "conv1d_silu: weight `{}` is [{}, {}], state expects [{}, {}]",
                w.name, wl.rows, wl.cols, s.channels, s.kernel
            )));
        }
        let xs = f32s(x)?;
        let (channels, kernel) = (s.channels, s.kernel);
        let y = self.run("conv1d_silu", x.rows() * channels * kernel, |par| {
            mamba::conv1d_silu(xs, x.rows(), channels, kernel, &wv, bias, &mut s.data, par)
        });
        Ok(matrix(y, x.rows(), channels))
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
        let s = state
            .inner_mut::<SsmState>()
            .ok_or_else(|| err("ssm_scan: not a CPU SSM state"))?;
        let inner = dims.inner()?;
        let (a, dv, db) = (vector_of(a_log)?, vector_of(d)?, vector_of(dt_bias)?);
        let xs = f32s(xbc)?;
        let dts = f32s(dt)?;
        let tokens = xbc.rows();
        let work = tokens * inner * dims.state * 4;
        let y = self.run("ssm_scan", work, |par| {
            mamba::ssm_scan(xs, dts, tokens, a, dv, db, &mut s.data, dims, dt_min, par)
        });
        Ok(matrix(y, tokens, inner))
    }

    fn gated_group_rms_norm(
        &self,
        y: &Tensor,
        z: &Tensor,
        w: &Weight,
        groups: usize,
        eps: f32,
    ) -> Result<Tensor> {
        let wv = vector_of(w)?;
        let (ys, zs) = (f32s(y)?, f32s(z)?);
        let out = self.run("gated_group_rms_norm", y.rows() * wv.len() * 8, |par| {
            mamba::gated_group_rms_norm(ys, zs, wv, y.rows(), wv.len(), groups, eps, par)
        });
        Ok(matrix(out, y.rows(), wv.len()))
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Tensor,
        dims: AttnDims,
    ) -> Result<Tensor> {
        let q_width = dims.q_width()?;
        let (qs, ks, vs) = (f32s(q)?, f32s(k)?, f32s(v)?);
        let tokens = q.rows();
        let c = cache
            .inner_mut::<KvCache>()
            .ok_or_else(|| err("attention: not a CPU KV cache"))?;
        // Only a hint for splitting the work; saturating keeps a huge context from overflowing.
        let work = tokens
            .saturating_mul(c.len + tokens)
            .saturating_mul(q_width * 2);
        let out = self.run("attention", work, |par| {
            attention::attention(qs, ks, vs, tokens, c, dims, par)
        });
        let (len, width) = (c.len, c.width);
        cache.set_shape(vec![len, width]);
        Ok(matrix(out, tokens, q_width))
    }

    fn router(&self, logits: &Tensor, bias: &Weight, p: &RouterParams) -> Result<Routing> {
        let b = vector_of(bias)?;
        let experts = b.len();
        if p.top_k == 0 || p.top_k > experts {
            return Err(err(format!(
                "router: top_k {} is outside 1..={experts}",
                p.top_k
            )));
        }
        let ls = f32s(logits)?;
        let tokens = logits.rows();
        let work = tokens * experts * 16;
        let (ids, ws) = self.run("router", work, |par| {
            moe::route(ls, tokens, experts, b, p, par)
        });
        Ok(Routing {
            ids: Tensor::new(vec![tokens, p.top_k], ElemType::U32, Box::new(ids)),
            weights: matrix(ws, tokens, p.top_k),
        })
    }

    fn moe_experts_rows(
        &self,
        x: &Tensor,
        experts: &ExpertWeights,
        routing: &Routing,
        kinds: Rows,
    ) -> Result<Tensor> {
        let ex = experts
            .inner::<CpuExperts>()
            .ok_or_else(|| err(format!("`{}` is not a CPU expert set", experts.name)))?;
        let ids = routing
            .ids
            .inner::<Vec<u32>>()
            .ok_or_else(|| err("moe_experts: routing ids are not a CPU u32 tensor"))?;
        let ws = f32s(&routing.weights)?;
        let k = routing.ids.cols();
        if let Some(&bad) = ids.iter().find(|&&e| e as usize >= experts.experts) {
            return Err(err(format!(
                "moe_experts: expert id {bad} but `{}` has {} experts",
                experts.name, experts.experts
            )));
        }
        let xs = f32s(x)?;
        let tokens = x.rows();
        let work = tokens * k * experts.hidden * experts.latent * 2;
        // Each chosen expert's weights are read once per call (prefill groups tokens by expert).
        let bytes = match self.profile {
            Some(_) => {
                let mut chosen = ids.clone();
                chosen.sort_unstable();
                chosen.dedup();
                chosen
                    .iter()
                    .map(|&e| ex.up[e as usize].stored_bytes() + ex.down[e as usize].stored_bytes())
                    .sum::<usize>() as u64
            }
            None => 0,
        };
        let y = self.run_reading("moe_experts", bytes, work, |par| {
            moe::experts(xs, tokens, kinds.decode, ex, ids, ws, k, par)
        });
        Ok(matrix(y, tokens, experts.latent))
    }

    fn argmax(&self, logits: &Tensor) -> Result<Vec<u32>> {
        let cols = logits.cols();
        Ok(f32s(logits)?
            .chunks(cols)
            .map(crate::sampling::argmax)
            .collect())
    }
}

fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = wi * (xi * r);
    }
}
