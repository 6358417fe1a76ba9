//! Binds checkpoint tensors to backend weights, checking every shape against the config, and
//! keeps the books `inspect` and `bench` report: parameters and bytes per tensor group.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{Backend, Weight};
use crate::checkpoint::{Checkpoint, DType};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::quant_config::QuantConfig;
use crate::weights::{LinearData, StoredLinear};

/// How a tensor group is read when one token is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read whole for every token.
    Full,
    /// One row per token (embedding table).
    OneRow,
    /// Routed experts: only the `top_k` chosen of `experts` are read.
    Routed { top_k: usize, experts: usize },
}

#[derive(Clone, Debug)]
pub struct GroupStats {
    pub name: String,
    pub formats: Vec<String>,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
    pub access: Access,
    /// Bytes of one row, for `Access::OneRow`.
    pub row_bytes: u64,
    /// Reads a tensor stored under another group (a tied `lm_head`): counted in the bytes read
    /// per token, not in the parameters or bytes stored.
    pub tied: bool,
    /// Part of the multi-token-prediction step (`mtp.*`): read per drafted token, only when
    /// drafting, so not in a plain decode step's bytes or active parameters.
    pub draft: bool,
}

impl GroupStats {
    /// Expected bytes read from this group per decoded token.
    pub fn bytes_per_token(&self) -> f64 {
        match self.access {
            Access::Full => self.bytes as f64,
            Access::OneRow => self.row_bytes as f64,
            Access::Routed { top_k, experts } => self.bytes as f64 * top_k as f64 / experts as f64,
        }
    }

    pub fn active_params(&self) -> f64 {
        match self.access {
            Access::Full | Access::OneRow => self.params as f64,
            Access::Routed { top_k, experts } => self.params as f64 * top_k as f64 / experts as f64,
        }
    }
}

/// How far a load has come, in checkpoint bytes, readable from another thread (the app's
/// progress bar).
#[derive(Debug, Default)]
pub struct LoadProgress {
    done: AtomicU64,
    total: AtomicU64,
}

impl LoadProgress {
    pub fn new() -> LoadProgress {
        LoadProgress::default()
    }

    /// Bytes of tensors bound to the backend so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Bytes of all tensors in the checkpoint; 0 until the checkpoint is open.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// `done / total`, once the total is known.
    pub fn fraction(&self) -> Option<f32> {
        let total = self.total();
        (total > 0).then(|| (self.done() as f64 / total as f64).min(1.0) as f32)
    }
}

pub struct Loader<'a> {
    pub ck: &'a Checkpoint,
    pub quant: Option<&'a QuantConfig>,
    pub config: &'a ModelConfig,
    pub backend: &'a dyn Backend,
    pub groups: BTreeMap<String, GroupStats>,
    used: HashSet<String>,
    progress: ProgressBar,
    observer: Option<&'a LoadProgress>,
}

/// Checkpoints smaller than this load too fast for a progress bar to help.
const PROGRESS_MIN_BYTES: u64 = 256 << 20;

impl<'a> Loader<'a> {
    pub fn new(
        ck: &'a Checkpoint,
        quant: Option<&'a QuantConfig>,
        config: &'a ModelConfig,
        backend: &'a dyn Backend,
        show_progress: bool,
    ) -> Loader<'a> {
        let total = ck.total_bytes();
        let progress = if show_progress && total >= PROGRESS_MIN_BYTES {
            let pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template(
                    "loading {bar:40} {binary_bytes}/{binary_total_bytes} ({eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb
        } else {
            ProgressBar::hidden()
        };
        Loader {
            ck,
            quant,
            config,
            backend,
            groups: BTreeMap::new(),
            used: HashSet::new(),
            progress,
            observer: None,
        }
    }

    /// Reports progress through `p` as well.
    pub fn observe(&mut self, p: &'a LoadProgress) {
        p.total.store(self.ck.total_bytes(), Ordering::Relaxed);
        self.observer = Some(p);
    }

    pub fn finish(&self) {
        self.progress.finish_and_clear();
    }

    fn record(&mut self, tensor_name: &str, format: &str, params: u64, bytes: u64, access: Access) {
        self.progress.inc(bytes);
        if let Some(o) = self.observer {
            o.done.fetch_add(bytes, Ordering::Relaxed);
        }
        self.used.insert(tensor_name.to_string());
        let group = self.group_of(tensor_name);
        let row_bytes = if access == Access::OneRow {
            bytes / self.config.vocab_size.max(1) as u64
        } else {
            0
        };
        let g = self.groups.entry(group.clone()).or_insert(GroupStats {
            name: group,
            formats: Vec::new(),
            tensors: 0,
            params: 0,
            bytes: 0,
            access,
            row_bytes: 0,
            tied: false,
            draft: tensor_name.starts_with("mtp."),
        });
        if !g.formats.iter().any(|f| f == format) {
            g.formats.push(format.to_string());
        }
        g.tensors += 1;
        g.params += params;
        g.bytes += bytes;
        g.row_bytes += row_bytes;
    }

    /// `backbone.layers.7.mixer.experts.3.up_proj` -> `moe.experts.*.up_proj`;
    /// `mtp.layers.1.mixer.gate` -> `mtp.moe.gate` (layer kinds from the MTP pattern).
    fn group_of(&self, name: &str) -> String {
        if let Some(rest) = name.strip_prefix("mtp.layers.") {
            let (idx, rest) = rest.split_once('.').unwrap_or((rest, ""));
            let kind = idx
                .parse::<usize>()
                .ok()
                .and_then(|i| {
                    self.config
                        .mtp_layers
                        .get(i % self.config.mtp_layers.len().max(1))
                })
                .map_or("layer".to_string(), |k| k.to_string());
            return format!("mtp.{kind}.{}", Self::role(rest));
        }
        let Some(rest) = name.strip_prefix("backbone.layers.") else {
            return name
                .trim_start_matches("backbone.")
                .trim_end_matches(".weight")
                .to_string();
        };
        let (idx, rest) = rest.split_once('.').unwrap_or((rest, ""));
        let kind = idx
            .parse::<usize>()
            .ok()
            .and_then(|i| self.config.layers.get(i))
            .map_or("layer".to_string(), |k| k.to_string());
        format!("{kind}.{}", Self::role(rest))
    }

    /// `mixer.experts.3.up_proj.weight` -> `experts.*.up_proj`.
    fn role(rest: &str) -> String {
        let rest = rest.trim_start_matches("mixer.");
        let parts: Vec<&str> = rest
            .split('.')
            .map(|p| if p.parse::<usize>().is_ok() { "*" } else { p })
            .filter(|p| *p != "weight")
            .collect();
        parts.join(".")
    }

    fn record_linear(&mut self, w: &StoredLinear, access: Access) {
        for suffix in ["weight_scale", "weight_scale_2", "input_scale", "bias"] {
            let name = format!("{}.{suffix}", w.name);
            if self.ck.contains(&name) {
                self.used.insert(name);
            }
        }
        let (params, bytes) = (w.params(), w.stored_bytes());
        let format = w.format_name();
        self.record(
            &format!("{}.weight", w.name),
            &format,
            params,
            bytes,
            access,
        );
    }

    /// A Linear module as stored, checked against the config's `[rows, cols]`.
    pub fn stored_linear(
        &mut self,
        module: &str,
        rows: usize,
        cols: usize,
        with_bias: bool,
        access: Access,
    ) -> Result<StoredLinear> {
        let w = StoredLinear::load(self.ck, self.quant, module, rows, cols, with_bias)?;
        self.record_linear(&w, access);
        Ok(w)
    }

    pub fn linear(
        &mut self,
        module: &str,
        rows: usize,
        cols: usize,
        with_bias: bool,
    ) -> Result<Weight> {
        let w = self.stored_linear(module, rows, cols, with_bias, Access::Full)?;
        self.backend.load_linear(&w)
    }

    /// An embedding-like table `[rows, cols]` in a dense float format.
    pub fn table(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        access: Access,
    ) -> Result<Weight> {
        let t = self.ck.require(name, format!("a [{rows}, {cols}] table"))?;
        t.expect(&[DType::F32, DType::BF16, DType::F16], &[rows, cols])?;
        t.ensure_finite()?;
        let module = name.trim_end_matches(".weight").to_string();
        let w = StoredLinear {
            name: module,
            rows,
            cols,
            data: LinearData::Dense {
                dtype: t.dtype,
                data: t.data.clone(),
            },
            input_scale: None,
            bias: None,
        };
        self.record(name, t.dtype.name(), w.params(), w.stored_bytes(), access);
        self.backend.load_linear(&w)
    }

    /// Books a second, full read of an already loaded tensor per token (tied `lm_head`).
    pub fn record_tied(&mut self, group: &str, of: &str) {
        let Some(src) = self.groups.get(of).cloned() else {
            return;
        };
        self.groups.insert(
            group.to_string(),
            GroupStats {
                name: group.to_string(),
                formats: src.formats,
                tensors: 0,
                params: src.params,
                bytes: src.bytes,
                access: Access::Full,
                row_bytes: 0,
                tied: true,
                draft: false,
            },
        );
    }

    /// A 1-D float tensor of exactly `len` elements (norm weights, A_log, D, dt_bias, biases).
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Weight> {
        let v = self.vector_values(name, len)?;
        self.backend.load_vector(name, &v)
    }

    pub fn vector_values(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.ck.require(name, format!("a [{len}] vector"))?;
        t.expect(&[DType::F32, DType::BF16, DType::F16], &[len])?;
        let v = t.to_f32_vec()?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(t.error(format!("element {i} is {}, expected a finite value", v[i])));
        }
        self.record(
            name,
            t.dtype.name(),
            len as u64,
            t.data.len() as u64,
            Access::Full,
        );
        Ok(v)
    }

    /// The depthwise conv1d weight `[channels, 1, kernel]`, held as a `[channels, kernel]` matrix.
    pub fn conv_weight(&mut self, name: &str, channels: usize, kernel: usize) -> Result<Weight> {
        let t = self
            .ck
            .require(name, format!("a [{channels}, 1, {kernel}] conv1d weight"))?;
        t.expect(
            &[DType::F32, DType::BF16, DType::F16],
            &[channels, 1, kernel],
        )?;
        t.ensure_finite()?;
        let w = StoredLinear {
            name: name.trim_end_matches(".weight").to_string(),
            rows: channels,
            cols: kernel,
            data: LinearData::Dense {
                dtype: t.dtype,
                data: t.data.clone(),
            },
            input_scale: None,
            bias: None,
        };
        self.record(
            name,
            t.dtype.name(),
            w.params(),
            w.stored_bytes(),
            Access::Full,
        );
        self.backend.load_linear(&w)
    }

    /// An FP8 KV-cache scale (`k_scale` / `v_scale`): required when the quantization config
    /// declares an FP8 KV cache (a checkpoint that declares one without its scales is
    /// mislabelled), optional otherwise.
    pub fn kv_cache_scale(&mut self, name: &str) -> Result<Option<f32>> {
        // The MTP step is exported unquantized (BF16, as in the release), and its attention may
        // come without KV scales; the main layers' must be there.
        if let Some(q) = self.quant
            && q.kv_cache.is_some()
            && !name.starts_with("mtp.")
        {
            self.ck.require(
                name,
                format!(
                    "an F32 scalar: {} declares an FP8 KV cache (kv_cache_quant_algo)",
                    q.source.display()
                ),
            )?;
        }
        self.optional_scalar(name)
    }

    /// An optional F32 scalar (FP8 KV-cache `k_scale` / `v_scale`).
    pub fn optional_scalar(&mut self, name: &str) -> Result<Option<f32>> {
        match self.ck.get(name) {
            None => Ok(None),
            Some(t) => {
                self.used.insert(name.to_string());
                let v = t.scalar_f32()?;
                if !v.is_finite() || v <= 0.0 {
                    return Err(t.error(format!("scale is {v}, expected a finite value > 0")));
                }
                Ok(Some(v))
            }
        }
    }

    /// Fails on tensors the model did not consume: a checkpoint with extra layers or misspelt
    /// names is not the model config.json describes. `mtp.*` (multi-token prediction) tensors
    /// are kept for speculative decoding and are not an error.
    pub fn check_all_used(&self) -> Result<()> {
        for t in self.ck.tensors() {
            // Without an MTP step in the config, its tensors are left alone (as the
            // reference leaves them); with one, they must all be part of it.
            let spare_mtp = t.name.starts_with("mtp.") && self.config.num_nextn_predict_layers == 0;
            if !self.used.contains(&t.name) && !spare_mtp {
                return Err(Error::tensor(
                    &t.name,
                    t.file(),
                    format!(
                        "is not part of the model config.json describes (layer pattern {}); wrong config or an unknown tensor",
                        self.config.layer_pattern()
                    ),
                ));
            }
        }
        Ok(())
    }
}
