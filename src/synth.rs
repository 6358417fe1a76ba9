//! Random-weight checkpoints with the on-disk layout and layer shapes of the real Nemotron 3 Super
//! release, for benchmarking bytes of weights per token without the 120B download.
//!
//! What is written mirrors what transformers 5.23 + ModelOpt 0.47 export (the fixtures under
//! `tests/fixtures/models/*/hf/`, ARCH_NOTES §1, §7, §8):
//! * `config.json` (HF field set, sorted keys, `quantization_config` when quantized),
//!   `generation_config.json`, `hf_quant_config.json` (quantized recipes), a byte-level BPE
//!   `tokenizer.json` with exactly `vocab` ids and `tokenizer_config.json`;
//! * safetensors exactly as the `safetensors` library lays them out: `{"__metadata__":{"format":
//!   "pt"}, ...}` header padded with spaces to 8 bytes, tensors ordered by dtype (F32, BF16,
//!   F8_E4M3, U8) then name; sharded like `huggingface_hub` does (tensors in module order, a new
//!   shard when the next tensor would pass `max_shard_bytes`, an oversized tensor alone), as
//!   `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`; a checkpoint that fits
//!   in one shard is a single `model.safetensors` without index, as `save_pretrained` writes it.
//!
//! Recipes ([`Recipe`]): `bf16` (everything BF16, `e_score_correction_bias` F32); `nvfp4` (NVFP4
//! routed and shared experts, the rest BF16, `quant_algo: NVFP4` with `exclude_modules`); `mixed`
//! (the real release: NVFP4 routed experts, FP8 per-tensor shared experts and Mamba in/out
//! projections, FP8 KV cache, `quant_algo: MIXED_PRECISION`). Quantization uses the crate's own
//! codecs ([`nvfp4::quantize_with_tensor_scale`], [`fp8::f32_to_e4m3`]), so the bytes are what
//! ModelOpt would write for the same BF16-free f32 weights.
//!
//! Values are scaled like a trained model's so a forward pass stays finite and routing spreads
//! over many experts: Linear weights ~ N(0, 1/sqrt(in)) (Irwin-Hall(4), i.e. bounded at 3.46 σ,
//! from a SplitMix64 stream), embeddings ~ N(0, 1), norms 1 ± 0.05, `A_log = ln U(1, 16)`,
//! `D` ~ 1 ± 0.1, `dt_bias = ln(expm1(dt))` with `dt` log-uniform in [0.001, 0.1], conv1d
//! ~ N(0, 1/sqrt(K)), small conv bias and `e_score_correction_bias` (±0.01). Every row of every
//! tensor has its own stream seeded by `(seed, tensor name, row)`, so files are bit-identical for
//! the same options whatever the thread count, and a `bf16` and an `nvfp4` checkpoint of the same
//! seed hold the same underlying weights.
//!
//! Writing is streamed: the whole layout (every shard's header and every tensor's offset) is
//! planned from the shapes first, headers are written, then tensors are generated one module at
//! a time (large dense tensors block of rows by block of rows) and written at their offsets by a
//! writer thread. Memory stays O(largest quantized module) (for Super: the FP8 Mamba `in_proj`,
//! 76M f32), never the model.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::{Value, json};

use crate::codec::{fp8, nvfp4};
use crate::config::{LayerKind, ModelConfig};
use crate::quant_config::{QuantConfig, QuantFormat};
use crate::{Error, Result};

/// Shard size limit `save_pretrained`-style sharding uses unless told otherwise.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 2_000_000_000;

/// Smallest vocabulary the tokenizer can have: `<unk>`, `<s>`, `</s>` and the 256 byte tokens.
pub const MIN_VOCAB: usize = 3 + 256;

const TRANSFORMERS_VERSION: &str = "5.23.0";
const MODELOPT_VERSION: &str = "0.47.0";

/// Layer dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Shape {
    /// Nemotron 3 Super (120B-A12B) dimensions.
    Super,
    /// Small dimensions of the same structure, for tests.
    Tiny,
}

/// Which weights are quantized, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Recipe {
    /// NVFP4 routed + shared experts, everything else BF16 (`quant_algo: NVFP4`).
    Nvfp4,
    /// The real release: NVFP4 routed experts; FP8 shared experts, Mamba in/out_proj and KV
    /// cache; BF16 elsewhere (`quant_algo: MIXED_PRECISION`).
    Mixed,
    /// Every weight BF16 (`e_score_correction_bias` F32), no quantization config.
    Bf16,
}

/// The dimensions of a [`Shape`], in `config.json` terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub hidden_size: usize,
    pub mamba_num_heads: usize,
    pub mamba_head_dim: usize,
    pub n_groups: usize,
    pub ssm_state_size: usize,
    pub conv_kernel: usize,
    pub chunk_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_latent_size: usize,
    pub moe_intermediate_size: usize,
    pub moe_shared_expert_intermediate_size: usize,
    /// Width of the dense `-` (MLP) layers.
    pub intermediate_size: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f32,
    pub max_position_embeddings: usize,
}

impl Shape {
    pub fn dims(self) -> Dims {
        match self {
            Shape::Super => Dims {
                hidden_size: 4096,
                mamba_num_heads: 128,
                mamba_head_dim: 64,
                n_groups: 8,
                ssm_state_size: 128,
                conv_kernel: 4,
                chunk_size: 128,
                num_attention_heads: 32,
                num_key_value_heads: 2,
                head_dim: 128,
                n_routed_experts: 512,
                num_experts_per_tok: 22,
                moe_latent_size: 1024,
                moe_intermediate_size: 2688,
                moe_shared_expert_intermediate_size: 5376,
                intermediate_size: 21504,
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 5.0,
                max_position_embeddings: 262_144,
            },
            Shape::Tiny => Dims {
                hidden_size: 64,
                mamba_num_heads: 8,
                mamba_head_dim: 16,
                n_groups: 2,
                ssm_state_size: 16,
                conv_kernel: 4,
                chunk_size: 16,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 16,
                n_routed_experts: 16,
                num_experts_per_tok: 4,
                moe_latent_size: 32,
                moe_intermediate_size: 48,
                moe_shared_expert_intermediate_size: 96,
                intermediate_size: 96,
                n_group: 1,
                topk_group: 1,
                routed_scaling_factor: 5.0,
                max_position_embeddings: 4096,
            },
        }
    }
}

impl Dims {
    /// `I = H * P`.
    pub fn mamba_inner(&self) -> usize {
        self.mamba_num_heads * self.mamba_head_dim
    }

    /// `I + 2GN`, the conv1d channels.
    pub fn conv_dim(&self) -> usize {
        self.mamba_inner() + 2 * self.n_groups * self.ssm_state_size
    }

    /// `2I + 2GN + H`, the rows of `in_proj`.
    pub fn in_proj_dim(&self) -> usize {
        self.mamba_inner() + self.conv_dim() + self.mamba_num_heads
    }
}

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub shape: Shape,
    /// Layer pattern, one character per layer: `M` Mamba-2, `E` MoE, `*` attention, `-` MLP.
    pub pattern: String,
    pub vocab: usize,
    pub recipe: Recipe,
    pub seed: u64,
    /// Output directory: created if missing, must be empty if it exists.
    pub out: PathBuf,
    /// Shard size limit in bytes of tensor data ([`DEFAULT_MAX_SHARD_BYTES`]).
    pub max_shard_bytes: u64,
    /// Show a progress bar over the bytes written.
    pub progress: bool,
}

impl SynthOptions {
    /// Options with the default vocabulary (131072 for Super, 512 for Tiny), the `mixed` recipe
    /// (the real release), seed 0, [`DEFAULT_MAX_SHARD_BYTES`] and no progress bar.
    pub fn new(shape: Shape, pattern: impl Into<String>, out: impl Into<PathBuf>) -> SynthOptions {
        SynthOptions {
            shape,
            pattern: pattern.into(),
            vocab: match shape {
                Shape::Super => 131_072,
                Shape::Tiny => 512,
            },
            recipe: Recipe::Mixed,
            seed: 0,
            out: out.into(),
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            progress: false,
        }
    }
}

/// What [`synth`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSummary {
    /// Every file written, weights and JSON alike.
    pub files: Vec<PathBuf>,
    /// Safetensors files (1 means a single `model.safetensors` without index).
    pub shards: usize,
    /// Size of all files written.
    pub total_bytes: u64,
    /// Tensor data only (the index's `total_size`).
    pub tensor_bytes: u64,
    /// Tensors stored, scales included.
    pub tensors: usize,
    /// Parameters as the loader counts them: logical weight elements (an NVFP4 `[out, in]`
    /// weight counts `out * in`), scale tensors excluded.
    pub params: u64,
}

/// Writes a random-weight checkpoint described by `opts` into `opts.out`.
pub fn synth(opts: &SynthOptions) -> Result<SynthSummary> {
    run(opts, false)
}

/// Writes the same files, headers, configs and tokenizer as [`synth`] for the same options, but
/// leaves the bulk data (Linear weights and their block scales, the embedding table) as zero-filled
/// sparse holes; only vectors and scalar scales hold values. Takes seconds and almost no disk even
/// for the full Super layout: for layout, parameter and byte-count checks and load-time
/// measurements, not for running the model (its outputs would all be zero).
pub fn synth_skeleton(opts: &SynthOptions) -> Result<SynthSummary> {
    run(opts, true)
}

// ---------------------------------------------------------------------------------------------
// Planning

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dt {
    F32,
    Bf16,
    F8,
    U8,
}

impl Dt {
    fn name(self) -> &'static str {
        match self {
            Dt::F32 => "F32",
            Dt::Bf16 => "BF16",
            Dt::F8 => "F8_E4M3",
            Dt::U8 => "U8",
        }
    }

    fn size(self) -> u64 {
        match self {
            Dt::F32 => 4,
            Dt::Bf16 => 2,
            Dt::F8 | Dt::U8 => 1,
        }
    }

    /// Position in the `safetensors` library's data order (dtype descending).
    fn rank(self) -> u8 {
        match self {
            Dt::F32 => 0,
            Dt::Bf16 => 1,
            Dt::F8 => 2,
            Dt::U8 => 3,
        }
    }
}

/// How the values of a tensor are drawn.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// N(0, std²).
    Normal(f32),
    /// U(lo, hi).
    Uniform(f32, f32),
    /// `ln U(1, 16)` (Mamba `A_log`).
    ALog,
    /// `ln(expm1(dt))`, `dt` log-uniform in [0.001, 0.1] (Mamba `dt_bias`).
    DtBias,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fmt {
    Bf16,
    Nvfp4,
    Fp8,
}

#[derive(Clone, Debug)]
enum UnitKind {
    /// One dense tensor, generated as `rows` rows of `cols`; `bulk`: left as a hole by
    /// [`synth_skeleton`].
    Tensor {
        dtype: Dt,
        init: Init,
        rows: usize,
        cols: usize,
        bulk: bool,
    },
    /// A Linear module `[rows = out, cols = in]`; `act_amax` gives its `input_scale`.
    Linear {
        rows: usize,
        cols: usize,
        fmt: Fmt,
        act_amax: f32,
    },
    /// An F32 scalar (`k_scale`, `v_scale`).
    Scalar(f32),
}

/// One unit of generation: a tensor, or a Linear module with all its tensors.
#[derive(Clone, Debug)]
struct Unit {
    /// Tensor name, or module name for a Linear.
    name: String,
    kind: UnitKind,
    /// Its tensors start at `entries[first]`.
    first: usize,
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: Dt,
    shape: Vec<usize>,
    bytes: u64,
    shard: usize,
    /// Absolute file offset of the tensor's first byte.
    offset: u64,
}

struct ShardPlan {
    file_name: String,
    /// Length prefix + header JSON + padding.
    header: Vec<u8>,
    /// Data section size.
    data_bytes: u64,
}

/// A module quantized by the recipe, for the quantization configs.
struct QuantModule {
    name: String,
    layer: usize,
    format: QuantFormat,
}

struct Plan {
    layers: Vec<LayerKind>,
    units: Vec<Unit>,
    entries: Vec<Entry>,
    shards: Vec<ShardPlan>,
    params: u64,
    quantized: Vec<QuantModule>,
}

/// Representative activation amax behind each `input_scale` (normed inputs and gated-norm
/// outputs ~8, relu² outputs ~16), as calibration would have measured.
const ACT_AMAX_NORMED: f32 = 8.0;
const ACT_AMAX_RELU2: f32 = 16.0;
/// `amax(|K|)` / `amax(|V|)` behind the FP8 KV-cache scales.
const KV_AMAX: f32 = 6.0;

struct Planner {
    d: Dims,
    recipe: Recipe,
    seed: u64,
    units: Vec<Unit>,
    entries: Vec<Entry>,
    params: u64,
    quantized: Vec<QuantModule>,
    layer: usize,
}

impl Planner {
    fn entry(&mut self, name: String, dtype: Dt, shape: Vec<usize>) {
        let numel: u64 = shape.iter().map(|&d| d as u64).product();
        self.entries.push(Entry {
            name,
            dtype,
            shape,
            bytes: numel * dtype.size(),
            shard: 0,
            offset: 0,
        });
    }

    fn push_unit(&mut self, name: String, kind: UnitKind, first: usize) {
        self.units.push(Unit { name, kind, first });
    }

    fn tensor(&mut self, name: String, shape: &[usize], dtype: Dt, init: Init) {
        let numel: usize = shape.iter().product();
        let cols = if shape.len() > 1 {
            *shape.last().unwrap_or(&1)
        } else {
            numel
        };
        let rows = numel.checked_div(cols).unwrap_or(0);
        // Only 2-D tables of real size are worth leaving as holes.
        let bulk = shape.len() == 2 && numel >= 1 << 16;
        let first = self.entries.len();
        self.entry(name.clone(), dtype, shape.to_vec());
        self.params += numel as u64;
        let kind = UnitKind::Tensor {
            dtype,
            init,
            rows,
            cols,
            bulk,
        };
        self.push_unit(name, kind, first);
    }

    fn vector(&mut self, name: String, len: usize, init: Init) {
        self.tensor(name, &[len], Dt::Bf16, init);
    }

    fn linear(&mut self, module: String, rows: usize, cols: usize, fmt: Fmt, act_amax: f32) {
        let first = self.entries.len();
        match fmt {
            Fmt::Bf16 => self.entry(format!("{module}.weight"), Dt::Bf16, vec![rows, cols]),
            Fmt::Nvfp4 => {
                self.entry(format!("{module}.weight"), Dt::U8, vec![rows, cols / 2]);
                let blocks = cols / nvfp4::BLOCK_SIZE;
                self.entry(format!("{module}.weight_scale"), Dt::F8, vec![rows, blocks]);
                self.entry(format!("{module}.weight_scale_2"), Dt::F32, vec![]);
                self.entry(format!("{module}.input_scale"), Dt::F32, vec![]);
            }
            Fmt::Fp8 => {
                self.entry(format!("{module}.weight"), Dt::F8, vec![rows, cols]);
                self.entry(format!("{module}.weight_scale"), Dt::F32, vec![]);
                self.entry(format!("{module}.input_scale"), Dt::F32, vec![]);
            }
        }
        self.params += (rows * cols) as u64;
        let kind = UnitKind::Linear {
            rows,
            cols,
            fmt,
            act_amax,
        };
        self.push_unit(module, kind, first);
    }

    fn quantized(&mut self, name: String, format: QuantFormat) {
        let layer = self.layer;
        self.quantized.push(QuantModule {
            name,
            layer,
            format,
        });
    }

    fn scalar(&mut self, name: String, value: f32) {
        let first = self.entries.len();
        self.entry(name.clone(), Dt::F32, vec![]);
        self.push_unit(name, UnitKind::Scalar(value), first);
    }

    /// A per-layer jitter in [0.9, 1.1] for calibration-like scales.
    fn jitter(&self, name: &str) -> f32 {
        let mut r = Rng(name_seed(self.seed, name));
        0.9 + 0.2 * r.uniform() as f32
    }

    fn mamba(&mut self, p: &str) {
        let d = self.d;
        let (h, i, k) = (d.mamba_num_heads, d.mamba_inner(), d.conv_kernel);
        let fmt = if self.recipe == Recipe::Mixed {
            Fmt::Fp8
        } else {
            Fmt::Bf16
        };
        let conv_std = 1.0 / (k as f32).sqrt();
        self.tensor(
            format!("{p}.conv1d.weight"),
            &[d.conv_dim(), 1, k],
            Dt::Bf16,
            Init::Normal(conv_std),
        );
        self.vector(
            format!("{p}.conv1d.bias"),
            d.conv_dim(),
            Init::Uniform(-0.05, 0.05),
        );
        let amax = ACT_AMAX_NORMED * self.jitter(&format!("{p}.in_proj"));
        self.linear(
            format!("{p}.in_proj"),
            d.in_proj_dim(),
            d.hidden_size,
            fmt,
            amax,
        );
        self.vector(format!("{p}.dt_bias"), h, Init::DtBias);
        self.vector(format!("{p}.A_log"), h, Init::ALog);
        self.vector(format!("{p}.norm.weight"), i, Init::Uniform(0.95, 1.05));
        self.vector(format!("{p}.D"), h, Init::Uniform(0.9, 1.1));
        let amax = ACT_AMAX_NORMED * self.jitter(&format!("{p}.out_proj"));
        self.linear(format!("{p}.out_proj"), d.hidden_size, i, fmt, amax);
        if fmt == Fmt::Fp8 {
            self.quantized(format!("{p}.in_proj"), QuantFormat::Fp8);
            self.quantized(format!("{p}.out_proj"), QuantFormat::Fp8);
        }
    }

    fn attention(&mut self, p: &str) {
        let d = self.d;
        let (q, kv, hs) = (
            d.num_attention_heads * d.head_dim,
            d.num_key_value_heads * d.head_dim,
            d.hidden_size,
        );
        let fp8_kv = self.recipe == Recipe::Mixed;
        self.linear(format!("{p}.q_proj"), q, hs, Fmt::Bf16, 0.0);
        self.linear(format!("{p}.k_proj"), kv, hs, Fmt::Bf16, 0.0);
        if fp8_kv {
            let s = KV_AMAX * self.jitter(&format!("{p}.k_proj.k_scale")) / fp8::E4M3_MAX;
            self.scalar(format!("{p}.k_proj.k_scale"), s);
        }
        self.linear(format!("{p}.v_proj"), kv, hs, Fmt::Bf16, 0.0);
        if fp8_kv {
            let s = KV_AMAX * self.jitter(&format!("{p}.v_proj.v_scale")) / fp8::E4M3_MAX;
            self.scalar(format!("{p}.v_proj.v_scale"), s);
        }
        self.linear(format!("{p}.o_proj"), hs, q, Fmt::Bf16, 0.0);
    }

    fn moe(&mut self, p: &str) {
        let d = self.d;
        let (hs, e, l, f, fsh) = (
            d.hidden_size,
            d.n_routed_experts,
            d.moe_latent_size,
            d.moe_intermediate_size,
            d.moe_shared_expert_intermediate_size,
        );
        let (routed, shared) = match self.recipe {
            Recipe::Bf16 => (Fmt::Bf16, Fmt::Bf16),
            Recipe::Nvfp4 => (Fmt::Nvfp4, Fmt::Nvfp4),
            Recipe::Mixed => (Fmt::Nvfp4, Fmt::Fp8),
        };
        self.linear(format!("{p}.gate"), e, hs, Fmt::Bf16, 0.0);
        self.tensor(
            format!("{p}.gate.e_score_correction_bias"),
            &[e],
            Dt::F32,
            Init::Uniform(-0.01, 0.01),
        );
        // ModelOpt gives every expert of a layer the same input scale.
        let up_amax = ACT_AMAX_NORMED * self.jitter(&format!("{p}.experts.up_proj"));
        let down_amax = ACT_AMAX_RELU2 * self.jitter(&format!("{p}.experts.down_proj"));
        for j in 0..e {
            self.linear(format!("{p}.experts.{j}.up_proj"), f, l, routed, up_amax);
            self.linear(
                format!("{p}.experts.{j}.down_proj"),
                l,
                f,
                routed,
                down_amax,
            );
        }
        let amax = ACT_AMAX_NORMED * self.jitter(&format!("{p}.shared_experts.up_proj"));
        self.linear(format!("{p}.shared_experts.up_proj"), fsh, hs, shared, amax);
        let amax = ACT_AMAX_RELU2 * self.jitter(&format!("{p}.shared_experts.down_proj"));
        self.linear(
            format!("{p}.shared_experts.down_proj"),
            hs,
            fsh,
            shared,
            amax,
        );
        self.linear(format!("{p}.fc1_latent_proj"), l, hs, Fmt::Bf16, 0.0);
        self.linear(format!("{p}.fc2_latent_proj"), hs, l, Fmt::Bf16, 0.0);
        let nvfp4 = QuantFormat::Nvfp4 {
            group_size: nvfp4::BLOCK_SIZE,
        };
        if routed == Fmt::Nvfp4 {
            self.quantized(format!("{p}.experts"), nvfp4);
        }
        let shared_format = match shared {
            Fmt::Nvfp4 => Some(nvfp4),
            Fmt::Fp8 => Some(QuantFormat::Fp8),
            Fmt::Bf16 => None,
        };
        if let Some(format) = shared_format {
            self.quantized(format!("{p}.shared_experts.up_proj"), format);
            self.quantized(format!("{p}.shared_experts.down_proj"), format);
        }
    }

    fn mlp(&mut self, p: &str) {
        let (hs, w) = (self.d.hidden_size, self.d.intermediate_size);
        self.linear(format!("{p}.up_proj"), w, hs, Fmt::Bf16, 0.0);
        self.linear(format!("{p}.down_proj"), hs, w, Fmt::Bf16, 0.0);
    }
}

fn parse_pattern(pattern: &str) -> Result<Vec<LayerKind>> {
    if pattern.is_empty() {
        return Err(Error::Invalid(
            "synth: the layer pattern is empty; give one character per layer: 'M' (mamba), \
             'E' (moe), '*' (attention), '-' (mlp)"
                .into(),
        ));
    }
    pattern
        .chars()
        .enumerate()
        .map(|(i, c)| {
            LayerKind::from_code(c).ok_or_else(|| {
                Error::Invalid(format!(
                    "synth: layer pattern {pattern:?} has {c:?} at position {i}; allowed: 'M' \
                     (mamba), 'E' (moe), '*' (attention), '-' (mlp)"
                ))
            })
        })
        .collect()
}

fn plan(opts: &SynthOptions) -> Result<Plan> {
    let layers = parse_pattern(&opts.pattern)?;
    if opts.vocab < MIN_VOCAB {
        return Err(Error::Invalid(format!(
            "synth: vocab {} is too small; the tokenizer needs at least {MIN_VOCAB} ids (3 \
             special tokens and 256 byte tokens)",
            opts.vocab
        )));
    }
    // The loader would refuse a larger one (config::limits), so do not write it.
    if opts.vocab as u64 > crate::config::limits::MAX_DIM {
        return Err(Error::Invalid(format!(
            "synth: vocab {} is above the limit of {} that a config may give",
            opts.vocab,
            crate::config::limits::MAX_DIM
        )));
    }
    if layers.len() as u64 > crate::config::limits::MAX_LAYERS {
        return Err(Error::Invalid(format!(
            "synth: {} layers is above the limit of {} that a config may give",
            layers.len(),
            crate::config::limits::MAX_LAYERS
        )));
    }
    if opts.max_shard_bytes == 0 {
        return Err(Error::Invalid("synth: max_shard_bytes must be > 0".into()));
    }
    let d = opts.shape.dims();
    let mut p = Planner {
        d,
        recipe: opts.recipe,
        seed: opts.seed,
        units: Vec::new(),
        entries: Vec::new(),
        params: 0,
        quantized: Vec::new(),
        layer: 0,
    };
    let (v, hs) = (opts.vocab, d.hidden_size);
    p.tensor(
        "backbone.embeddings.weight".into(),
        &[v, hs],
        Dt::Bf16,
        Init::Normal(1.0),
    );
    for (i, kind) in layers.iter().enumerate() {
        p.layer = i;
        p.vector(
            format!("backbone.layers.{i}.norm.weight"),
            hs,
            Init::Uniform(0.95, 1.05),
        );
        let prefix = format!("backbone.layers.{i}.mixer");
        match kind {
            LayerKind::Mamba => p.mamba(&prefix),
            LayerKind::Attention => p.attention(&prefix),
            LayerKind::Moe => p.moe(&prefix),
            LayerKind::Mlp => p.mlp(&prefix),
        }
    }
    p.vector(
        "backbone.norm_f.weight".into(),
        hs,
        Init::Uniform(0.95, 1.05),
    );
    p.linear("lm_head".into(), v, hs, Fmt::Bf16, 0.0);

    let Planner {
        units,
        mut entries,
        params,
        quantized,
        ..
    } = p;
    let shards = assign_shards(&mut entries, opts.max_shard_bytes)?;
    Ok(Plan {
        layers,
        units,
        entries,
        shards,
        params,
        quantized,
    })
}

/// `huggingface_hub.split_torch_state_dict_into_shards`: tensors in module order; a tensor larger
/// than the limit gets a shard of its own, otherwise a new shard starts when the next tensor would
/// pass the limit. Within a shard, data and header follow the `safetensors` library's order
/// (dtype descending, then name), with the header padded by spaces to a multiple of 8.
fn assign_shards(entries: &mut [Entry], max: u64) -> Result<Vec<ShardPlan>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut size = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if e.bytes > max {
            groups.push(vec![i]);
            continue;
        }
        if !current.is_empty() && size + e.bytes > max {
            groups.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += e.bytes;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    let n = groups.len();
    let mut shards = Vec::with_capacity(n);
    for (s, mut group) in groups.into_iter().enumerate() {
        group.sort_by(|&a, &b| {
            let (a, b) = (&entries[a], &entries[b]);
            a.dtype
                .rank()
                .cmp(&b.dtype.rank())
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut json = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
        let mut offset = 0u64;
        for &i in &group {
            let e = &entries[i];
            let name = serde_json::to_string(&e.name)
                .map_err(|err| Error::Invalid(format!("synth: tensor name {:?}: {err}", e.name)))?;
            let shape: Vec<String> = e.shape.iter().map(ToString::to_string).collect();
            json.push_str(&format!(
                ",{name}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
                e.dtype.name(),
                shape.join(","),
                offset + e.bytes
            ));
            offset += e.bytes;
        }
        json.push('}');
        while !json.len().is_multiple_of(8) {
            json.push(' ');
        }
        let mut header = Vec::with_capacity(8 + json.len());
        header.extend_from_slice(&(json.len() as u64).to_le_bytes());
        header.extend_from_slice(json.as_bytes());
        let start = header.len() as u64;
        let mut offset = 0u64;
        for &i in &group {
            let e = &mut entries[i];
            e.shard = s;
            e.offset = start + offset;
            offset += e.bytes;
        }
        let file_name = if n == 1 {
            crate::checkpoint::SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", s + 1)
        };
        shards.push(ShardPlan {
            file_name,
            header,
            data_bytes: offset,
        });
    }
    Ok(shards)
}

// ---------------------------------------------------------------------------------------------
// Random numbers

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, then mixed with the user seed.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    mix(mix(seed ^ GOLDEN) ^ h)
}

/// SplitMix64.
struct Rng(u64);

/// `sqrt(12 / 4) / 65536`: the sum of four 16-bit uniforms has standard deviation 65536/sqrt(3).
const IRWIN_HALL_SCALE: f32 = 1.732_050_8 / 65536.0;

impl Rng {
    fn for_row(tensor_seed: u64, row: usize) -> Rng {
        Rng(mix(tensor_seed ^ mix((row as u64).wrapping_add(GOLDEN))))
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Approximately N(0, 1): Irwin-Hall of four 16-bit uniforms, bounded at ±2·sqrt(3).
    #[inline]
    fn normal(&mut self) -> f32 {
        let r = self.next();
        let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
        (s as f32 - 131_070.0) * IRWIN_HALL_SCALE
    }

    /// U[0, 1).
    #[inline]
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn fill_row(init: Init, tensor_seed: u64, row: usize, out: &mut [f32]) {
    let mut r = Rng::for_row(tensor_seed, row);
    match init {
        Init::Normal(std) => out.iter_mut().for_each(|v| *v = r.normal() * std),
        Init::Uniform(lo, hi) => out
            .iter_mut()
            .for_each(|v| *v = lo + (hi - lo) * r.uniform() as f32),
        Init::ALog => out
            .iter_mut()
            .for_each(|v| *v = (1.0 + 15.0 * r.uniform()).ln() as f32),
        Init::DtBias => out.iter_mut().for_each(|v| {
            let (lo, hi) = (0.001f64.ln(), 0.1f64.ln());
            let dt = (lo + (hi - lo) * r.uniform()).exp();
            // Inverse softplus: softplus(ln(expm1(dt))) = dt.
            *v = dt.exp_m1().ln() as f32;
        }),
    }
}

/// A whole `[rows, cols]` matrix in f32, rows generated in parallel.
fn matrix(init: Init, tensor_seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = vec![0f32; rows * cols];
    if cols > 0 {
        w.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, row)| fill_row(init, tensor_seed, r, row));
    }
    w
}

fn encode_into(dtype: Dt, src: &[f32], out: &mut [u8]) {
    match dtype {
        Dt::Bf16 => {
            for (v, o) in src.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        Dt::F32 => {
            for (v, o) in src.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        // Dense tensors are only ever BF16 or F32.
        Dt::F8 | Dt::U8 => unreachable!("dense tensors are BF16 or F32"),
    }
}

// ---------------------------------------------------------------------------------------------
// Producing tensor bytes

/// Bytes of one dense block handed to the writer.
const BLOCK_BYTES: usize = 8 << 20;

/// Destination of produced bytes: `(entry index, byte offset within the tensor, bytes)`.
type Emit<'a> = dyn FnMut(usize, u64, Vec<u8>) -> Result<()> + 'a;

fn produce(unit: &Unit, seed: u64, skeleton: bool, emit: &mut Emit) -> Result<()> {
    let e = unit.first;
    match unit.kind {
        UnitKind::Scalar(v) => emit(e, 0, v.to_le_bytes().to_vec()),
        UnitKind::Tensor {
            dtype,
            init,
            rows,
            cols,
            bulk,
        } => {
            if skeleton && bulk {
                return Ok(());
            }
            dense(
                dtype,
                init,
                name_seed(seed, &unit.name),
                rows,
                cols,
                e,
                emit,
            )
        }
        UnitKind::Linear {
            rows,
            cols,
            fmt,
            act_amax,
        } => {
            let std = 1.0 / (cols as f32).sqrt();
            let tensor_seed = name_seed(seed, &format!("{}.weight", unit.name));
            if skeleton {
                // Scalars only, as if the weights filled their Irwin-Hall range.
                let amax = 2.0 * 3f32.sqrt() * std;
                return match fmt {
                    Fmt::Bf16 => Ok(()),
                    Fmt::Nvfp4 => {
                        let six_448 = nvfp4::E2M1_MAX * fp8::E4M3_MAX;
                        emit(e + 2, 0, (amax / six_448).to_le_bytes().to_vec())?;
                        emit(e + 3, 0, (act_amax / six_448).to_le_bytes().to_vec())
                    }
                    Fmt::Fp8 => {
                        emit(e + 1, 0, (amax / fp8::E4M3_MAX).to_le_bytes().to_vec())?;
                        emit(e + 2, 0, (act_amax / fp8::E4M3_MAX).to_le_bytes().to_vec())
                    }
                };
            }
            let init = Init::Normal(std);
            match fmt {
                Fmt::Bf16 => dense(Dt::Bf16, init, tensor_seed, rows, cols, e, emit),
                Fmt::Nvfp4 => {
                    let w = matrix(init, tensor_seed, rows, cols);
                    // amax/2688 is monotonic in amax, so the largest per-chunk scale is
                    // exactly `tensor_scale_for(w)`.
                    let ts = w
                        .par_chunks(1 << 16)
                        .map(nvfp4::tensor_scale_for)
                        .reduce(|| 0.0, f32::max);
                    // Blocks only depend on the tensor scale: quantizing row chunks with
                    // `quantize_with_tensor_scale` gives exactly `nvfp4::quantize(w)`.
                    let chunk_rows = rows.div_ceil(4 * rayon::current_num_threads()).max(1);
                    let parts = w
                        .par_chunks(chunk_rows * cols)
                        .map(|c| nvfp4::quantize_with_tensor_scale(c, c.len() / cols, cols, ts))
                        .collect::<Result<Vec<_>>>()?;
                    drop(w);
                    let mut packed = Vec::with_capacity(rows * cols / 2);
                    let mut scales = Vec::with_capacity(rows * cols / nvfp4::BLOCK_SIZE);
                    for part in parts {
                        packed.extend_from_slice(&part.packed);
                        scales.extend_from_slice(&part.block_scales);
                    }
                    emit(e, 0, packed)?;
                    emit(e + 1, 0, scales)?;
                    emit(e + 2, 0, ts.to_le_bytes().to_vec())?;
                    let input_scale = act_amax / (nvfp4::E2M1_MAX * fp8::E4M3_MAX);
                    emit(e + 3, 0, input_scale.to_le_bytes().to_vec())
                }
                Fmt::Fp8 => {
                    let w = matrix(init, tensor_seed, rows, cols);
                    let amax = w.par_iter().map(|v| v.abs()).reduce(|| 0.0, f32::max);
                    // ModelOpt: scale = amax / 448, stored = (w / scale) cast to E4M3.
                    let scale = amax / fp8::E4M3_MAX;
                    let bytes: Vec<u8> =
                        w.par_iter().map(|&v| fp8::f32_to_e4m3(v / scale)).collect();
                    drop(w);
                    emit(e, 0, bytes)?;
                    emit(e + 1, 0, scale.to_le_bytes().to_vec())?;
                    let input_scale = act_amax / fp8::E4M3_MAX;
                    emit(e + 2, 0, input_scale.to_le_bytes().to_vec())
                }
            }
        }
    }
}

/// A dense tensor, streamed block of rows by block of rows.
fn dense(
    dtype: Dt,
    init: Init,
    tensor_seed: u64,
    rows: usize,
    cols: usize,
    entry: usize,
    emit: &mut Emit,
) -> Result<()> {
    let row_bytes = cols * dtype.size() as usize;
    if row_bytes == 0 {
        return Ok(());
    }
    let block_rows = (BLOCK_BYTES / row_bytes).max(1);
    let mut r0 = 0;
    while r0 < rows {
        let n = block_rows.min(rows - r0);
        let mut buf = vec![0u8; n * row_bytes];
        buf.par_chunks_mut(row_bytes).enumerate().for_each_init(
            || vec![0f32; cols],
            |tmp, (j, out)| {
                fill_row(init, tensor_seed, r0 + j, tmp);
                encode_into(dtype, tmp, out);
            },
        );
        emit(entry, (r0 * row_bytes) as u64, buf)?;
        r0 += n;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Driver

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn prepare_out_dir(out: &Path) -> Result<()> {
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => {
            let mut it = std::fs::read_dir(out).map_err(io_err(out))?;
            if it.next().is_some() {
                return Err(Error::Invalid(format!(
                    "synth: output directory {} exists and is not empty; give a new or empty \
                     directory",
                    out.display()
                )));
            }
            Ok(())
        }
        Ok(_) => Err(Error::Invalid(format!(
            "synth: output path {} exists and is not a directory",
            out.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| {
                Error::Invalid(format!(
                    "synth: cannot create the output directory {}: {e}",
                    out.display()
                ))
            })
        }
        Err(e) => Err(Error::io(out, e)),
    }
}

fn run(opts: &SynthOptions, skeleton: bool) -> Result<SynthSummary> {
    let plan = plan(opts)?;
    let config = config_json(opts, &plan);
    // The crate's own parser is the judge of the config we write.
    ModelConfig::from_json_value(&config, &opts.out.join("config.json"))?;
    prepare_out_dir(&opts.out)?;

    let mut files = Vec::new();
    let mut write = |name: &str, text: &str| -> Result<()> {
        let path = opts.out.join(name);
        std::fs::write(&path, text).map_err(io_err(&path))?;
        files.push(path);
        Ok(())
    };
    write("config.json", &pretty(&config, b"  ")?)?;
    write(
        "generation_config.json",
        &format!("{}\n", pretty(&generation_config_json(), b"  ")?),
    )?;
    if let Some(hf) = hf_quant_config(opts.recipe, &plan)? {
        write("hf_quant_config.json", &hf)?;
    }
    write(
        "tokenizer_config.json",
        &pretty(&TokenizerConfig::new(opts.shape.dims()), b"  ")?,
    )?;
    write("tokenizer.json", &tokenizer_json(opts.vocab)?)?;
    check_quant_config(opts, &plan, &config)?;
    let tok = crate::tokenizer::Tokenizer::from_dir(&opts.out)?;
    if tok.vocab_size() != opts.vocab {
        return Err(Error::Invalid(format!(
            "synth: internal error: the tokenizer written has {} ids, not {}",
            tok.vocab_size(),
            opts.vocab
        )));
    }

    write_shards(opts, &plan, skeleton)?;
    for s in &plan.shards {
        files.push(opts.out.join(&s.file_name));
    }
    let tensor_bytes: u64 = plan.entries.iter().map(|e| e.bytes).sum();
    if plan.shards.len() > 1 {
        let weight_map: serde_json::Map<String, Value> = plan
            .entries
            .iter()
            .map(|e| {
                let file = plan.shards[e.shard].file_name.clone();
                (e.name.clone(), Value::String(file))
            })
            .collect();
        let index = json!({"metadata": {"total_size": tensor_bytes}, "weight_map": weight_map});
        let path = opts.out.join(crate::checkpoint::INDEX_FILE);
        std::fs::write(&path, format!("{}\n", pretty(&index, b"  ")?)).map_err(io_err(&path))?;
        files.push(path);
    }
    let mut total_bytes = 0;
    for f in &files {
        total_bytes += std::fs::metadata(f).map_err(io_err(f))?.len();
    }
    Ok(SynthSummary {
        files,
        shards: plan.shards.len(),
        total_bytes,
        tensor_bytes,
        tensors: plan.entries.len(),
        params: plan.params,
    })
}

/// A message to the writer thread: `(shard, absolute offset, bytes)`.
type Chunk = (usize, u64, Vec<u8>);

fn write_shards(opts: &SynthOptions, plan: &Plan, skeleton: bool) -> Result<()> {
    let mut shard_files = Vec::with_capacity(plan.shards.len());
    for s in &plan.shards {
        let path = opts.out.join(&s.file_name);
        let mut f = File::create(&path).map_err(io_err(&path))?;
        f.write_all(&s.header).map_err(io_err(&path))?;
        // Full size up front: what is never written (skeleton bulk) reads as zeros.
        f.set_len(s.header.len() as u64 + s.data_bytes)
            .map_err(io_err(&path))?;
        shard_files.push((path, f));
    }
    let total: u64 = plan.shards.iter().map(|s| s.data_bytes).sum();
    let progress = if opts.progress {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "synth {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ({eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };

    let mut emitted = vec![0u64; plan.entries.len()];
    let (tx, rx) = mpsc::sync_channel::<Chunk>(4);
    let pb = progress.clone();
    let (produced, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<()> {
            for (shard, offset, bytes) in rx {
                let (path, f) = &mut shard_files[shard];
                f.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
                f.write_all(&bytes).map_err(io_err(path))?;
                pb.inc(bytes.len() as u64);
            }
            Ok(())
        });
        let mut emit = |entry: usize, within: u64, bytes: Vec<u8>| -> Result<()> {
            let e = &plan.entries[entry];
            let len = bytes.len() as u64;
            if within + len > e.bytes {
                return Err(Error::Invalid(format!(
                    "synth: internal error: {} bytes at {within} overflow tensor `{}` ({} bytes)",
                    len, e.name, e.bytes
                )));
            }
            emitted[entry] += len;
            tx.send((e.shard, e.offset + within, bytes)).map_err(|_| {
                Error::Invalid("synth: the writer thread stopped (see the I/O error)".into())
            })
        };
        let produced = plan
            .units
            .iter()
            .try_for_each(|u| produce(u, opts.seed, skeleton, &mut emit));
        // Closing the channel ends the writer's loop.
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("synth: the writer thread panicked".into())));
        (produced, written)
    });
    progress.finish_and_clear();
    // An I/O error is the cause of a failed send, so it is the one to report.
    written?;
    produced?;
    if !skeleton
        && let Some((i, _)) = emitted
            .iter()
            .enumerate()
            .find(|&(i, &n)| n != plan.entries[i].bytes)
    {
        let e = &plan.entries[i];
        return Err(Error::Invalid(format!(
            "synth: internal error: tensor `{}` got {} of its {} bytes",
            e.name, emitted[i], e.bytes
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JSON files

fn pretty<T: Serialize>(value: &T, indent: &[u8]) -> Result<String> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    value
        .serialize(&mut ser)
        .map_err(|e| Error::Invalid(format!("synth: JSON serialization failed: {e}")))?;
    String::from_utf8(buf).map_err(|e| Error::Invalid(format!("synth: JSON is not UTF-8: {e}")))
}

fn layer_type_name(kind: LayerKind) -> &'static str {
    match kind {
        LayerKind::Mamba => "linear_attention",
        LayerKind::Attention => "full_attention",
        LayerKind::Moe => "moe",
        LayerKind::Mlp => "mlp",
    }
}

fn producer() -> Value {
    json!({"name": "modelopt", "version": MODELOPT_VERSION})
}

/// `config.json` as transformers 5.23 `save_pretrained` writes it (keys sorted).
fn config_json(opts: &SynthOptions, plan: &Plan) -> Value {
    let d = opts.shape.dims();
    // Two halves: one `json!` of ~60 keys passes the macro recursion limit.
    let mut c = json!({
        "architectures": ["NemotronHForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "chunk_size": d.chunk_size,
        "conv_kernel": d.conv_kernel,
        "dtype": "bfloat16",
        "eos_token_id": 2,
        "expand": 2,
        "head_dim": d.head_dim,
        "hidden_dropout": 0.0,
        "hidden_size": d.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": d.intermediate_size,
        "layer_norm_epsilon": 1e-5,
        "layers_block_type": plan.layers.iter().map(|&k| layer_type_name(k)).collect::<Vec<_>>(),
        "mamba_head_dim": d.mamba_head_dim,
        "mamba_hidden_act": "silu",
        "mamba_num_heads": d.mamba_num_heads,
        "mamba_proj_bias": false,
        "mamba_ssm_cache_dtype": "float32",
        "max_position_embeddings": d.max_position_embeddings,
        "mlp_bias": false,
        "mlp_hidden_act": "relu2",
        "model_type": "nemotron_h",
        "moe_intermediate_size": d.moe_intermediate_size,
        "moe_latent_size": d.moe_latent_size,
        "moe_shared_expert_intermediate_size": d.moe_shared_expert_intermediate_size,
        "moe_shared_expert_overlap": true,
    });
    let rest = json!({
        "mtp_layers_block_type": ["full_attention", "moe"],
        "n_group": d.n_group,
        "n_groups": d.n_groups,
        "n_routed_experts": d.n_routed_experts,
        "n_shared_experts": 1,
        "norm_topk_prob": true,
        "num_attention_heads": d.num_attention_heads,
        "num_experts_per_tok": d.num_experts_per_tok,
        "num_key_value_heads": d.num_key_value_heads,
        "num_logits_to_keep": 1,
        "num_nextn_predict_layers": 0,
        "output_router_logits": false,
        "pad_token_id": 0,
        "rescale_prenorm_residual": true,
        "residual_in_fp32": false,
        "routed_scaling_factor": d.routed_scaling_factor,
        "sliding_window": null,
        "ssm_state_size": d.ssm_state_size,
        "tie_word_embeddings": false,
        "time_step_floor": 0.0001,
        "time_step_limit": [0.0, {"__float__": "Infinity"}],
        "time_step_max": 0.1,
        "time_step_min": 0.001,
        "topk_group": d.topk_group,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_bias": false,
        "use_cache": true,
        "use_conv_bias": true,
        "use_mamba_kernels": true,
        "vocab_size": opts.vocab,
    });
    if let (Some(obj), Value::Object(rest)) = (c.as_object_mut(), rest) {
        obj.extend(rest);
    }
    if let Some(q) = quantization_config(opts.recipe, plan)
        && let Some(obj) = c.as_object_mut()
    {
        obj.insert("quantization_config".into(), q);
    }
    c
}

fn generation_config_json() -> Value {
    json!({
        "_from_model_config": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "output_attentions": false,
        "output_hidden_states": false,
        "pad_token_id": 0,
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": true,
    })
}

/// `exclude_modules` of the `nvfp4` recipe, as ModelOpt writes it: `lm_head`, the embeddings,
/// `backbone.layers.{i}*` for a layer without quantized modules (`backbone.layers.{i}.*` when the
/// shorter glob would also catch a quantized layer, e.g. layer 1 vs 12), and the unquantized
/// Linear modules of layers that have quantized ones.
fn exclude_modules(plan: &Plan) -> Vec<String> {
    let quantized_layers: Vec<usize> = {
        let mut v: Vec<usize> = plan.quantized.iter().map(|q| q.layer).collect();
        v.dedup();
        v
    };
    let mut out = vec!["lm_head".to_string(), "backbone.embeddings".to_string()];
    for (i, kind) in plan.layers.iter().enumerate() {
        if quantized_layers.contains(&i) {
            if *kind == LayerKind::Moe {
                for m in ["fc1_latent_proj", "fc2_latent_proj", "gate"] {
                    out.push(format!("backbone.layers.{i}.mixer.{m}"));
                }
            }
            continue;
        }
        let digits = i.to_string();
        let clash = quantized_layers
            .iter()
            .any(|&j| j != i && j.to_string().starts_with(&digits));
        out.push(if clash {
            format!("backbone.layers.{i}.*")
        } else {
            format!("backbone.layers.{i}*")
        });
    }
    out
}

fn algo_name(f: QuantFormat) -> &'static str {
    match f {
        QuantFormat::Nvfp4 { .. } => "NVFP4",
        QuantFormat::Fp8 => "FP8",
    }
}

/// A weight / activation scheme of `config_groups`.
fn scheme(f: QuantFormat) -> Value {
    match f {
        QuantFormat::Nvfp4 { group_size } => {
            json!({"dynamic": false, "group_size": group_size, "num_bits": 4, "type": "float"})
        }
        QuantFormat::Fp8 => json!({"dynamic": false, "num_bits": 8, "type": "float"}),
    }
}

fn config_group(f: QuantFormat, targets: Vec<String>) -> Value {
    json!({"input_activations": scheme(f), "targets": targets, "weights": scheme(f)})
}

/// `config.json["quantization_config"]`, as the fixtures carry it.
fn quantization_config(recipe: Recipe, plan: &Plan) -> Option<Value> {
    let nvfp4 = QuantFormat::Nvfp4 {
        group_size: nvfp4::BLOCK_SIZE,
    };
    match recipe {
        Recipe::Bf16 => None,
        Recipe::Nvfp4 => Some(json!({
            "config_groups": {"group_0": config_group(nvfp4, vec!["Linear".into()])},
            "ignore": exclude_modules(plan),
            "producer": producer(),
            "quant_algo": "NVFP4",
            "quant_method": "modelopt",
        })),
        Recipe::Mixed => {
            // One group per format, numbered by first appearance in module order.
            let mut formats: Vec<QuantFormat> = Vec::new();
            for q in &plan.quantized {
                if !formats.contains(&q.format) {
                    formats.push(q.format);
                }
            }
            let mut groups = serde_json::Map::new();
            for (g, &f) in formats.iter().enumerate() {
                let mut targets: Vec<String> = plan
                    .quantized
                    .iter()
                    .filter(|q| q.format == f)
                    .map(|q| q.name.clone())
                    .collect();
                targets.sort();
                groups.insert(format!("group_{g}"), config_group(f, targets));
            }
            let layers: serde_json::Map<String, Value> = plan
                .quantized
                .iter()
                .map(|q| (q.name.clone(), layer_algo(q.format)))
                .collect();
            Some(json!({
                "config_groups": groups,
                "ignore": [],
                "kv_cache_scheme": {"dynamic": false, "num_bits": 8, "type": "float"},
                "producer": producer(),
                "quant_algo": "MIXED_PRECISION",
                "quant_method": "modelopt",
                "quantized_layers": layers,
            }))
        }
    }
}

fn layer_algo(f: QuantFormat) -> Value {
    match f {
        QuantFormat::Nvfp4 { group_size } => {
            json!({"group_size": group_size, "quant_algo": algo_name(f)})
        }
        QuantFormat::Fp8 => json!({"quant_algo": algo_name(f)}),
    }
}

#[derive(Serialize)]
struct HfQuantConfig {
    producer: Producer,
    quantization: HfQuantization,
}

#[derive(Serialize)]
struct Producer {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct HfQuantization {
    quant_algo: &'static str,
    kv_cache_quant_algo: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exclude_modules: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantized_layers: Option<OrderedLayers>,
}

/// `quantized_layers` in module order, as ModelOpt writes `hf_quant_config.json`.
struct OrderedLayers(Vec<(String, QuantFormat)>);

#[derive(Serialize)]
struct LayerAlgo {
    quant_algo: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_size: Option<usize>,
}

impl Serialize for OrderedLayers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, f) in &self.0 {
            let algo = LayerAlgo {
                quant_algo: algo_name(*f),
                group_size: match f {
                    QuantFormat::Nvfp4 { group_size } => Some(*group_size),
                    QuantFormat::Fp8 => None,
                },
            };
            map.serialize_entry(name, &algo)?;
        }
        map.end()
    }
}

/// `hf_quant_config.json` (4-space indent, ModelOpt's key order); `None` for `bf16`.
fn hf_quant_config(recipe: Recipe, plan: &Plan) -> Result<Option<String>> {
    let quantization = match recipe {
        Recipe::Bf16 => return Ok(None),
        Recipe::Nvfp4 => HfQuantization {
            quant_algo: "NVFP4",
            kv_cache_quant_algo: None,
            group_size: Some(nvfp4::BLOCK_SIZE),
            exclude_modules: Some(exclude_modules(plan)),
            quantized_layers: None,
        },
        Recipe::Mixed => HfQuantization {
            quant_algo: "MIXED_PRECISION",
            kv_cache_quant_algo: Some("FP8"),
            group_size: None,
            exclude_modules: None,
            quantized_layers: Some(OrderedLayers(
                plan.quantized
                    .iter()
                    .map(|q| (q.name.clone(), q.format))
                    .collect(),
            )),
        },
    };
    let doc = HfQuantConfig {
        producer: Producer {
            name: "modelopt",
            version: MODELOPT_VERSION,
        },
        quantization,
    };
    pretty(&doc, b"    ").map(Some)
}

/// Reads the quantization description back with [`QuantConfig::load`] (which also checks that
/// `hf_quant_config.json` and `quantization_config` agree) and checks that it promises exactly
/// the formats the recipe stores (for routed experts, expert 0 of each layer stands for all).
fn check_quant_config(opts: &SynthOptions, plan: &Plan, config: &Value) -> Result<()> {
    let quant = QuantConfig::load(&opts.out, config)?;
    if opts.recipe == Recipe::Mixed && quant.as_ref().and_then(|q| q.kv_cache).is_none() {
        return Err(Error::Invalid(
            "synth: internal error: the mixed recipe's config has no FP8 KV cache".into(),
        ));
    }
    for u in &plan.units {
        let UnitKind::Linear { fmt, .. } = u.kind else {
            continue;
        };
        if u.name.contains(".experts.") && !u.name.contains(".experts.0.") {
            continue;
        }
        let promised = quant.as_ref().and_then(|q| q.format_of(&u.name));
        let ok = matches!(
            (fmt, promised),
            (Fmt::Bf16, None)
                | (Fmt::Nvfp4, Some(QuantFormat::Nvfp4 { .. }))
                | (Fmt::Fp8, Some(QuantFormat::Fp8))
        );
        if !ok {
            return Err(Error::Invalid(format!(
                "synth: internal error: `{}` is stored as {fmt:?} but the quantization config \
                 promises {promised:?}",
                u.name
            )));
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct TokenizerConfig {
    tokenizer_class: &'static str,
    bos_token: &'static str,
    eos_token: &'static str,
    unk_token: &'static str,
    pad_token: &'static str,
    add_bos_token: bool,
    add_eos_token: bool,
    clean_up_tokenization_spaces: bool,
    model_max_length: usize,
}

impl TokenizerConfig {
    fn new(d: Dims) -> TokenizerConfig {
        TokenizerConfig {
            tokenizer_class: "PreTrainedTokenizerFast",
            bos_token: "<s>",
            eos_token: "</s>",
            unk_token: "<unk>",
            pad_token: "<unk>",
            add_bos_token: false,
            add_eos_token: false,
            clean_up_tokenization_spaces: false,
            model_max_length: d.max_position_embeddings,
        }
    }
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the others are shifted to
/// U+0100 and up.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).unwrap_or('?')
            }
        })
        .collect()
}

/// A byte-level BPE `tokenizer.json` with exactly `vocab` ids: `<unk>`, `<s>`, `</s>` (0, 1, 2),
/// the 256 byte tokens, then merged tokens `[Ġ]?[a-z]+` built breadth-first (`"Ġ" + "t"`,
/// ..., `"Ġt" + "h"`, ...), each with its merge, so that text encodes to multi-byte tokens
/// roughly as a trained vocabulary would.
fn tokenizer_json(vocab: usize) -> Result<String> {
    use tokenizers::models::bpe::{BPE, Vocab};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, Tokenizer};

    let specials = ["<unk>", "<s>", "</s>"];
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let mut chars = byte_chars();
    chars.sort_unstable();
    tokens.extend(chars.iter().map(char::to_string));
    let letters: Vec<String> = ('a'..='z').map(|c| c.to_string()).collect();
    let mut merges: Vec<(String, String)> = Vec::new();
    // Breadth-first over prefixes: "Ġ" and the letters, then every token made so far.
    let mut frontier: Vec<String> = std::iter::once("Ġ".to_string())
        .chain(letters.iter().cloned())
        .collect();
    'grow: while tokens.len() < vocab {
        let mut next = Vec::new();
        for prefix in &frontier {
            for letter in &letters {
                if tokens.len() >= vocab {
                    break 'grow;
                }
                let t = format!("{prefix}{letter}");
                merges.push((prefix.clone(), letter.clone()));
                tokens.push(t.clone());
                next.push(t);
            }
        }
        frontier = next;
    }
    let map: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bad = |e: tokenizers::Error| Error::Invalid(format!("synth: building the tokenizer: {e}"));
    let bpe = BPE::builder()
        .vocab_and_merges(map, merges)
        .build()
        .map_err(bad)?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.add_special_tokens(specials.iter().map(|s| AddedToken::from(*s, true)))
        .map_err(bad)?;
    tok.to_string(true).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(unit: &Unit, n_entries: usize) -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new(); n_entries];
        let mut emit = |e: usize, within: u64, bytes: Vec<u8>| -> Result<()> {
            let v = &mut out[e - unit.first];
            assert_eq!(v.len() as u64, within);
            v.extend_from_slice(&bytes);
            Ok(())
        };
        produce(unit, 42, false, &mut emit).unwrap();
        out
    }

    fn linear(fmt: Fmt, rows: usize, cols: usize) -> Unit {
        Unit {
            name: "m".into(),
            kind: UnitKind::Linear {
                rows,
                cols,
                fmt,
                act_amax: 8.0,
            },
            first: 0,
        }
    }

    #[test]
    fn chunked_nvfp4_equals_whole_tensor_quantize() {
        let (rows, cols) = (300, 64);
        let got = collect(&linear(Fmt::Nvfp4, rows, cols), 4);
        let std = 1.0 / (cols as f32).sqrt();
        let w = matrix(Init::Normal(std), name_seed(42, "m.weight"), rows, cols);
        let q = nvfp4::quantize(&w, rows, cols).unwrap();
        assert_eq!(got[0], q.packed);
        assert_eq!(got[1], q.block_scales);
        assert_eq!(got[2], q.tensor_scale.to_le_bytes());
        assert_eq!(got[3], (8.0f32 / 2688.0).to_le_bytes());
    }

    #[test]
    fn fp8_is_per_tensor_amax_over_448() {
        let (rows, cols) = (40, 32);
        let got = collect(&linear(Fmt::Fp8, rows, cols), 3);
        let std = 1.0 / (cols as f32).sqrt();
        let w = matrix(Init::Normal(std), name_seed(42, "m.weight"), rows, cols);
        let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 448.0;
        let want: Vec<u8> = w.iter().map(|&v| fp8::f32_to_e4m3(v / scale)).collect();
        assert_eq!(got[0], want);
        assert_eq!(got[1], scale.to_le_bytes());
        // The largest weight maps to the largest E4M3 value.
        assert!(got[0].iter().any(|&b| b & 0x7f == 0x7e));
    }

    #[test]
    fn dense_rows_do_not_depend_on_blocking() {
        // A row's values come from its own stream, so any block split gives the same bytes.
        let seed = name_seed(1, "t");
        let whole = matrix(Init::Normal(1.0), seed, 10, 8);
        let mut row = vec![0f32; 8];
        fill_row(Init::Normal(1.0), seed, 7, &mut row);
        assert_eq!(&whole[56..64], &row[..]);
    }

    #[test]
    fn value_distributions() {
        let n = 200_000;
        let mut v = vec![0f32; n];
        fill_row(Init::Normal(1.0), 5, 0, &mut v);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
        assert!(v.iter().all(|x| x.abs() <= 2.0 * 3f32.sqrt()));

        let mut dt = vec![0f32; 1000];
        fill_row(Init::DtBias, 5, 0, &mut dt);
        for b in dt {
            let softplus = (b as f64).exp().ln_1p();
            assert!((0.00099..=0.10001).contains(&softplus), "{b} -> {softplus}");
        }
        let mut a = vec![0f32; 1000];
        fill_row(Init::ALog, 5, 0, &mut a);
        assert!(a.iter().all(|&x| (0.0..=16f32.ln()).contains(&x)));
    }

    #[test]
    fn super_dims_are_the_release_dims() {
        let d = Shape::Super.dims();
        assert_eq!(d.in_proj_dim(), 2 * 8192 + 2 * 8 * 128 + 128);
        assert_eq!(d.conv_dim(), 8192 + 2 * 8 * 128);
        assert_eq!(d.num_key_value_heads * d.head_dim, 256);
    }
}
