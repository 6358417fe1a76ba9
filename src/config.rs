//! `config.json` / `generation_config.json` of a NemotronH (Nemotron-H, Nemotron 3 Nano/Super)
//! checkpoint.
//!
//! Field names and defaults follow transformers 5.23's `NemotronHConfig` (see
//! `shared/reference/ARCH_NOTES.md` §1): a field that is absent takes HF's default, because that is
//! what the reference implementation would run with. Two spellings exist on the hub and both are
//! accepted:
//! * the current one, written by `save_pretrained` (`layers_block_type`, `n_groups`, `conv_kernel`,
//!   `time_step_*`, `use_conv_bias`, `chunk_size`, `n_routed_experts`);
//! * the legacy remote-code one (`hybrid_override_pattern`, `mamba_n_groups`, `mamba_d_conv`,
//!   `mamba_dt_*`, `mamba_conv_bias`, `mamba_chunk_size`, `mtp_hybrid_override_pattern`,
//!   `num_local_experts`, `attention_head_dim`).
//!
//! HF silently prefers one spelling when a file carries both; we refuse when they disagree, since
//! a silently wrong layer pattern or group count produces plausible-looking garbage.
//!
//! Every relation between dimensions that the forward pass relies on is checked once, here, so the
//! model code can index without re-checking. Fields of a mixer kind that does not occur in the
//! model are not checked: a config without MoE layers may carry junk MoE defaults.

mod sizes;

use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

pub use sizes::{Sizes, limits};

/// The mixer of one layer. Each NemotronH layer is exactly one of these behind a pre-RMSNorm and
/// a residual add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// Mamba-2 (`linear_attention` / legacy `mamba`, pattern code `M`).
    Mamba,
    /// Causal softmax attention without positional encoding (`full_attention` / `attention`, `*`).
    Attention,
    /// Latent mixture of experts with a shared expert (`moe`, `E`).
    Moe,
    /// Dense non-gated relu² MLP (`mlp`, `-`).
    Mlp,
}

impl LayerKind {
    pub const ALL: [LayerKind; 4] = [
        LayerKind::Mamba,
        LayerKind::Attention,
        LayerKind::Moe,
        LayerKind::Mlp,
    ];

    /// The character `hybrid_override_pattern` uses for this kind.
    pub fn code(&self) -> char {
        match self {
            LayerKind::Mamba => 'M',
            LayerKind::Attention => '*',
            LayerKind::Moe => 'E',
            LayerKind::Mlp => '-',
        }
    }

    pub fn from_code(code: char) -> Option<LayerKind> {
        LayerKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Accepts both the current (`linear_attention`, `full_attention`) and the legacy (`mamba`,
    /// `attention`) names, as HF's `remap_legacy_layer_types` does.
    pub fn from_name(name: &str) -> Option<LayerKind> {
        match name {
            "mamba" | "linear_attention" => Some(LayerKind::Mamba),
            "attention" | "full_attention" => Some(LayerKind::Attention),
            "moe" => Some(LayerKind::Moe),
            "mlp" => Some(LayerKind::Mlp),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Mamba => "mamba",
            LayerKind::Attention => "attention",
            LayerKind::Moe => "moe",
            LayerKind::Mlp => "mlp",
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const ALLOWED_LAYER_NAMES: &str =
    "\"mamba\"/\"linear_attention\", \"attention\"/\"full_attention\", \"moe\", \"mlp\"";
const ALLOWED_LAYER_CODES: &str = "'M' (mamba), '*' (attention), 'E' (moe), '-' (mlp)";

/// The model hyper-parameters the runtime uses. Fields that HF itself ignores (`expand`,
/// `time_step_limit`, `attention_bias`, `n_shared_experts`, ...) are read for type checking only.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layers: Vec<LayerKind>,

    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,

    /// Width of the dense `mlp` layers.
    pub intermediate_size: usize,

    pub ssm_state_size: usize,
    pub mamba_num_heads: usize,
    pub mamba_head_dim: usize,
    pub n_groups: usize,
    pub conv_kernel: usize,
    pub use_conv_bias: bool,
    /// Bias of the Mamba `in_proj` / `out_proj` (HF ignores `mamba_proj_bias`).
    pub use_bias: bool,
    /// Bias of the dense MLP, the shared expert and the latent projections.
    pub mlp_bias: bool,
    /// HF clamps `dt >= time_step_min` in its chunked prefill only; vLLM never clamps.
    pub time_step_min: f32,
    pub chunk_size: usize,

    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
    pub moe_intermediate_size: usize,
    pub moe_shared_expert_intermediate_size: usize,
    /// `None`: the experts work on the full hidden size and there are no latent projections.
    pub moe_latent_size: Option<usize>,

    pub num_nextn_predict_layers: usize,
    /// Layer kinds of one multi-token-prediction step (HF default `*E`).
    pub mtp_layers: Vec<LayerKind>,

    pub layer_norm_epsilon: f32,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// Unused by the math (there is no positional encoding); informative only.
    pub max_position_embeddings: usize,
    /// Allowed: the weight loader then uses the embedding matrix as `lm_head`.
    pub tie_word_embeddings: bool,
    pub mamba_hidden_act: String,
    pub mlp_hidden_act: String,
    pub architectures: Vec<String>,
    pub model_type: String,

    /// Every size derived from the fields above, computed in checked arithmetic by
    /// [`ModelConfig::validate`]. Code that needs a product of fields reads it here.
    pub sizes: Sizes,
}

impl ModelConfig {
    /// Reads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        if dir.is_file() {
            return Err(Error::config(
                dir,
                "is a file; expected the checkpoint's folder (config.json, *.safetensors, \
                 tokenizer.json)",
            ));
        }
        let path = dir.join("config.json");
        let text = read_text(&path, "the model's config.json")?;
        ModelConfig::from_json_str(&text, &path)
    }

    /// Parses and validates the text of a `config.json`; `file` is only used in error messages.
    pub fn from_json_str(text: &str, file: &Path) -> Result<ModelConfig> {
        let value = parse_json(text, file)?;
        ModelConfig::from_json_value(&value, file)
    }

    /// Like [`ModelConfig::from_json_str`], for a document that is already parsed (the caller
    /// usually needs the raw value too, for `quantization_config`).
    pub fn from_json_value(value: &Value, file: &Path) -> Result<ModelConfig> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config(file, "must contain a JSON object"))?;
        // Another architecture's config would fail on some field it lacks; say what it is.
        if let Some(Value::String(t)) = obj.get("model_type")
            && !t.starts_with("nemotron")
        {
            return Err(Error::config(
                file,
                format!(
                    "model_type is \"{t}\": this runtime runs Nemotron-H models \
                     (model_type \"nemotron_h\")"
                ),
            ));
        }
        let r = Reader { obj, file };
        let mut cfg = r.model_config()?;
        cfg.sizes = cfg.validate(file)?;
        Ok(cfg)
    }

    /// Checks every relation between fields the runtime relies on and every bound on a field or
    /// a product of fields, reports the first one violated by field names and values, and
    /// returns the derived sizes.
    pub fn validate(&self, file: &Path) -> Result<Sizes> {
        macro_rules! ensure {
            ($cond:expr, $($msg:tt)+) => {
                if !$cond {
                    return Err(Error::config(file, format!($($msg)+)));
                }
            };
        }
        macro_rules! positive {
            ($($field:ident),+) => {
                $(ensure!(self.$field > 0, "{} ({}) must be > 0", stringify!($field), self.$field);)+
            };
        }

        ensure!(
            !self.layers.is_empty(),
            "layers_block_type / hybrid_override_pattern is empty: the model needs at least one layer"
        );
        // Bounds first: a corrupt value is then reported as out of bounds, not as whichever
        // relation it happens to break.
        let sizes = Sizes::derive(self, file)?;
        positive!(vocab_size, hidden_size);
        ensure!(
            self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0,
            "layer_norm_epsilon ({}) must be a finite number > 0",
            self.layer_norm_epsilon
        );
        let ids = self.bos_token_id.iter().map(|&id| ("bos_token_id", id));
        let ids = ids.chain(self.eos_token_ids.iter().map(|&id| ("eos_token_id", id)));
        let ids = ids.chain(self.pad_token_id.iter().map(|&id| ("pad_token_id", id)));
        for (field, id) in ids {
            ensure!(
                (id as usize) < self.vocab_size,
                "{field} ({id}) must be < vocab_size ({})",
                self.vocab_size
            );
        }
        ensure!(
            self.num_nextn_predict_layers == 0 || !self.mtp_layers.is_empty(),
            "num_nextn_predict_layers ({}) > 0 needs a non-empty mtp_layers_block_type",
            self.num_nextn_predict_layers
        );

        let has = |kind: LayerKind| self.uses(kind);

        if has(LayerKind::Attention) {
            positive!(num_attention_heads, num_key_value_heads, head_dim);
            ensure!(
                self.num_attention_heads
                    .is_multiple_of(self.num_key_value_heads),
                "num_attention_heads ({}) must be divisible by num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }

        if has(LayerKind::Mamba) {
            positive!(
                mamba_num_heads,
                mamba_head_dim,
                ssm_state_size,
                n_groups,
                chunk_size
            );
            ensure!(
                self.conv_kernel >= 1,
                "conv_kernel ({}) must be >= 1",
                self.conv_kernel
            );
            // B and C are shared by the mamba_num_heads / n_groups heads of a group.
            ensure!(
                self.mamba_num_heads.is_multiple_of(self.n_groups),
                "mamba_num_heads ({}) must be divisible by n_groups ({})",
                self.mamba_num_heads,
                self.n_groups
            );
            ensure!(
                self.mamba_hidden_act == "silu",
                "mamba_hidden_act is {:?}; only \"silu\" is implemented",
                self.mamba_hidden_act
            );
            ensure!(
                self.time_step_min.is_finite() && self.time_step_min >= 0.0,
                "time_step_min ({}) must be a finite number >= 0",
                self.time_step_min
            );
        }

        // relu2 is the activation of the dense MLP, the shared expert and the routed experts.
        if has(LayerKind::Mlp) || has(LayerKind::Moe) {
            ensure!(
                self.mlp_hidden_act == "relu2",
                "mlp_hidden_act is {:?}; only \"relu2\" is implemented",
                self.mlp_hidden_act
            );
        }
        if has(LayerKind::Mlp) {
            positive!(intermediate_size);
        }

        if has(LayerKind::Moe) {
            positive!(
                n_routed_experts,
                moe_intermediate_size,
                moe_shared_expert_intermediate_size
            );
            ensure!(
                self.num_experts_per_tok >= 1,
                "num_experts_per_tok ({}) must be >= 1",
                self.num_experts_per_tok
            );
            if let Some(latent) = self.moe_latent_size {
                ensure!(latent > 0, "moe_latent_size ({latent}) must be > 0 or null");
            }
            ensure!(self.n_group >= 1, "n_group ({}) must be >= 1", self.n_group);
            ensure!(
                self.n_routed_experts.is_multiple_of(self.n_group),
                "n_routed_experts ({}) must be divisible by n_group ({})",
                self.n_routed_experts,
                self.n_group
            );
            ensure!(
                self.topk_group >= 1,
                "topk_group ({}) must be >= 1",
                self.topk_group
            );
            ensure!(
                self.topk_group <= self.n_group,
                "topk_group ({}) must be <= n_group ({})",
                self.topk_group,
                self.n_group
            );
            let per_group = self.n_routed_experts / self.n_group;
            // A group's score is the sum of its two best experts. HF computes it with
            // `torch.topk(2)` over each group (even when n_group == 1), which raises
            // "selected index k out of range" on 1-expert groups, so such a config has no
            // reference behaviour. With n_group == 1 the group step cannot change the choice and
            // the router skips it, so a single-expert model is still well defined.
            ensure!(
                self.n_group == 1 || per_group >= 2,
                "n_routed_experts / n_group ({} / {} = {per_group}) must be >= 2: group routing \
                 scores each group by the sum of its top-2 experts",
                self.n_routed_experts,
                self.n_group
            );
            ensure!(
                self.num_experts_per_tok <= self.topk_group * per_group,
                "num_experts_per_tok ({}) must be <= topk_group * (n_routed_experts / n_group) \
                 ({} * {per_group} = {}), the number of experts in the groups a token may use",
                self.num_experts_per_tok,
                self.topk_group,
                self.topk_group * per_group
            );
            ensure!(
                self.routed_scaling_factor.is_finite(),
                "routed_scaling_factor ({}) must be finite",
                self.routed_scaling_factor
            );
        }

        if has(LayerKind::Mamba) {
            // The gated RMSNorm normalises groups of I / n_groups channels. Implied by
            // mamba_num_heads % n_groups == 0, but it is the relation the norm indexes by, so it
            // is stated on its own.
            ensure!(
                sizes.mamba_inner.is_multiple_of(self.n_groups),
                "mamba_num_heads * mamba_head_dim ({}) must be divisible by n_groups ({})",
                sizes.mamba_inner,
                self.n_groups
            );
        }
        Ok(sizes)
    }

    /// `I = H * P`, the width of the Mamba inner stream (`expand` is not used by HF).
    pub fn mamba_inner(&self) -> usize {
        self.sizes.mamba_inner
    }

    /// Channels of the Mamba depthwise conv: `x`, `B` and `C`, i.e. `I + 2GN`.
    pub fn conv_dim(&self) -> usize {
        self.sizes.conv_dim
    }

    /// Rows of the Mamba `in_proj`: `z`, `xBC` and `dt`, i.e. `2I + 2GN + H`.
    pub fn in_proj_dim(&self) -> usize {
        self.sizes.in_proj_dim
    }

    /// The width the routed experts work in: `moe_latent_size`, or the hidden size when null.
    pub fn latent_dim(&self) -> usize {
        self.sizes.latent_dim
    }

    /// The layer kinds as a `hybrid_override_pattern` string, e.g. `MEM*EM-E`.
    pub fn layer_pattern(&self) -> String {
        self.layers.iter().map(LayerKind::code).collect()
    }

    /// The MTP step's layer kinds as a pattern string, e.g. `*E`.
    pub fn mtp_pattern(&self) -> String {
        self.mtp_layers.iter().map(LayerKind::code).collect()
    }

    /// Whether a layer of `kind` is built: in the main stack, or in the MTP step when there is
    /// one (MTP blocks are ordinary NemotronH blocks built from the same fields).
    pub fn uses(&self, kind: LayerKind) -> bool {
        self.layers.contains(&kind)
            || (self.num_nextn_predict_layers > 0 && self.mtp_layers.contains(&kind))
    }

    /// Number of main-stack layers of `kind`.
    pub fn count(&self, kind: LayerKind) -> usize {
        self.layers.iter().filter(|&&k| k == kind).count()
    }
}

/// Token ids that steer generation, from `generation_config.json` where present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// The sampling the file recommends (`do_sample` true), in words, e.g. "temperature 0.6,
    /// top_p 0.95". Not applied: sampling is what the caller asks for, greedy by default.
    pub sampling_hint: Option<String>,
}

/// Reads `dir/generation_config.json`. The file is optional; it and each of its fields fall back
/// to the model config's ids, as HF's `GenerationConfig.from_model_config` does.
pub fn load_generation_config(dir: &Path, model: &ModelConfig) -> Result<GenerationConfig> {
    let path = dir.join("generation_config.json");
    let fallback = GenerationConfig {
        eos_token_ids: model.eos_token_ids.clone(),
        bos_token_id: model.bos_token_id,
        pad_token_id: model.pad_token_id,
        sampling_hint: None,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fallback),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let value = parse_json(&text, &path)?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::config(&path, "must contain a JSON object"))?;
    let r = Reader { obj, file: &path };
    let generation = GenerationConfig {
        eos_token_ids: match r.get("eos_token_id") {
            Some(v) => r.token_ids("eos_token_id", v)?,
            None => fallback.eos_token_ids,
        },
        bos_token_id: match r.get("bos_token_id") {
            Some(v) => r.opt_token_id("bos_token_id", v)?,
            None => fallback.bos_token_id,
        },
        pad_token_id: match r.get("pad_token_id") {
            Some(v) => r.opt_token_id("pad_token_id", v)?,
            None => fallback.pad_token_id,
        },
        sampling_hint: (r.get("do_sample") == Some(&Value::Bool(true))).then(|| {
            let set: Vec<String> = ["temperature", "top_p", "top_k", "min_p"]
                .iter()
                .filter_map(|&k| {
                    r.get(k)
                        .filter(|v| v.is_number())
                        .map(|v| format!("{k} {v}"))
                })
                .collect();
            if set.is_empty() {
                "do_sample".to_string()
            } else {
                set.join(", ")
            }
        }),
    };
    let ids = generation
        .bos_token_id
        .iter()
        .map(|&id| ("bos_token_id", id));
    let ids = ids.chain(
        generation
            .eos_token_ids
            .iter()
            .map(|&id| ("eos_token_id", id)),
    );
    let ids = ids.chain(
        generation
            .pad_token_id
            .iter()
            .map(|&id| ("pad_token_id", id)),
    );
    for (field, id) in ids {
        if id as usize >= model.vocab_size {
            return Err(Error::config(
                &path,
                format!(
                    "{field} ({id}) must be < the model's vocab_size ({})",
                    model.vocab_size
                ),
            ));
        }
    }
    Ok(generation)
}

/// Reads a JSON file written by Python (see [`parse_json`]).
pub fn read_json(path: &Path) -> Result<Value> {
    let text = read_text(path, "a JSON file")?;
    parse_json(&text, path)
}

/// Parses JSON as Python's `json` module writes it: besides standard JSON, the bare tokens
/// `Infinity`, `-Infinity` and `NaN` that `json.dumps` emits for non-finite floats (older hub
/// configs carry `"time_step_limit": [0.0, Infinity]`). They become HF's tagged form
/// `{"__float__": "Infinity"}`, which the float readers accept.
pub fn parse_json(text: &str, file: &Path) -> Result<Value> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(first) => {
            if let Some(fixed) = tag_bare_non_finite(text)
                && let Ok(v) = serde_json::from_str(&fixed)
            {
                return Ok(v);
            }
            Err(Error::config(file, format!("invalid JSON: {first}")))
        }
    }
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::config(path, format!("not found (expected {what} here)"))
        } else {
            Error::io(path, e)
        }
    })
}

/// Rewrites bare `Infinity` / `-Infinity` / `NaN` outside strings; `None` if there are none.
fn tag_bare_non_finite(text: &str) -> Option<String> {
    const TOKENS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 64);
    let (mut copied, mut i) = (0, 0);
    let (mut in_string, mut escaped) = (false, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        // Outside strings the only other words in JSON are true/false/null, so a match is
        // never part of something longer.
        if let Some(tok) = TOKENS.iter().find(|t| bytes[i..].starts_with(t.as_bytes())) {
            out.push_str(&text[copied..i]);
            out.push_str(&format!("{{\"__float__\": \"{tok}\"}}"));
            i += tok.len();
            copied = i;
            continue;
        }
        i += 1;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// Typed access to the fields of one JSON object, with errors that name the field and file.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    file: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::config(self.file, msg)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key)
    }

    fn type_err(&self, key: &str, expected: &str, got: &Value) -> Error {
        self.err(format!("{key} must be {expected}, got {got}"))
    }

    fn usize_val(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.type_err(key, "a non-negative integer", v))
    }

    /// A float as HF writes it: a JSON number (integers included) or `{"__float__": "Infinity"}`
    /// (also `-Infinity`, `NaN`).
    fn f32_val(&self, key: &str, v: &Value) -> Result<f32> {
        if let Some(x) = v.as_f64() {
            return Ok(x as f32);
        }
        if let Some(obj) = v.as_object()
            && obj.len() == 1
            && let Some(Value::String(s)) = obj.get("__float__")
        {
            match s.as_str() {
                "Infinity" | "inf" => return Ok(f32::INFINITY),
                "-Infinity" | "-inf" => return Ok(f32::NEG_INFINITY),
                "NaN" | "nan" => return Ok(f32::NAN),
                _ => {}
            }
        }
        Err(self.type_err(
            key,
            "a number (or {\"__float__\": \"Infinity\" | \"-Infinity\" | \"NaN\"})",
            v,
        ))
    }

    fn bool_val(&self, key: &str, v: &Value) -> Result<bool> {
        v.as_bool()
            .ok_or_else(|| self.type_err(key, "true or false", v))
    }

    fn string_val(&self, key: &str, v: &Value) -> Result<String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.type_err(key, "a string", v))
    }

    fn f32_pair(&self, key: &str, v: &Value) -> Result<Vec<f32>> {
        match v.as_array() {
            Some(items) if items.len() == 2 => items.iter().map(|x| self.f32_val(key, x)).collect(),
            _ => Err(self.type_err(key, "a list of two numbers", v)),
        }
    }

    fn token_id(&self, key: &str, v: &Value) -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.type_err(key, "a token id (a non-negative integer)", v))
    }

    fn opt_token_id(&self, key: &str, v: &Value) -> Result<Option<u32>> {
        if v.is_null() {
            Ok(None)
        } else {
            self.token_id(key, v).map(Some)
        }
    }

    /// `eos_token_id` may be one id, a list of ids, or null.
    fn token_ids(&self, key: &str, v: &Value) -> Result<Vec<u32>> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items.iter().map(|x| self.token_id(key, x)).collect(),
            _ => Ok(vec![self.token_id(key, v)?]),
        }
    }

    fn or<T>(
        &self,
        key: &str,
        default: T,
        parse: impl Fn(&Self, &str, &Value) -> Result<T>,
    ) -> Result<T> {
        match self.get(key) {
            Some(v) => parse(self, key, v),
            None => Ok(default),
        }
    }

    /// A field with a current and a legacy name: either may be present; both must then agree.
    fn aliased<T: fmt::Debug>(
        &self,
        name: &str,
        legacy: &str,
        default: T,
        parse: impl Fn(&Self, &str, &Value) -> Result<T>,
    ) -> Result<T> {
        let current = self.get(name).map(|v| parse(self, name, v)).transpose()?;
        let old = self
            .get(legacy)
            .map(|v| parse(self, legacy, v))
            .transpose()?;
        match (current, old) {
            // Debug text, unlike PartialEq, treats NaN as equal to itself.
            (Some(a), Some(b)) if format!("{a:?}") != format!("{b:?}") => Err(self.err(format!(
                "{name} ({a:?}) and its legacy spelling {legacy} ({b:?}) disagree; remove one"
            ))),
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => Ok(default),
        }
    }

    fn layer_list(&self, key: &str) -> Result<Option<Vec<LayerKind>>> {
        let Some(v) = self.get(key).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.type_err(key, "a list of layer type names", v))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let name = item
                    .as_str()
                    .ok_or_else(|| self.err(format!("{key}[{i}] must be a string, got {item}")))?;
                LayerKind::from_name(name).ok_or_else(|| {
                    self.err(format!(
                        "{key}[{i}] is the unknown layer type {name:?}; allowed: \
                         {ALLOWED_LAYER_NAMES}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn layer_pattern(&self, key: &str) -> Result<Option<Vec<LayerKind>>> {
        let Some(v) = self.get(key).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let pattern = v
            .as_str()
            .ok_or_else(|| self.type_err(key, "a string of layer codes", v))?;
        pattern
            .chars()
            .enumerate()
            .map(|(i, c)| {
                LayerKind::from_code(c).ok_or_else(|| {
                    self.err(format!(
                        "{key} has the unknown layer code {c:?} at position {i}; allowed: \
                         {ALLOWED_LAYER_CODES}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The first of `spellings` present is used; all present ones must agree.
    fn layers(&self, spellings: &[(&str, bool)], default: &[LayerKind]) -> Result<Vec<LayerKind>> {
        let mut found: Option<(&str, Vec<LayerKind>)> = None;
        for &(key, is_pattern) in spellings {
            let layers = if is_pattern {
                self.layer_pattern(key)?
            } else {
                self.layer_list(key)?
            };
            let Some(layers) = layers else { continue };
            match &found {
                Some((first, seen)) if *seen != layers => {
                    let code = |l: &[LayerKind]| l.iter().map(LayerKind::code).collect::<String>();
                    return Err(self.err(format!(
                        "{first} ({}) and {key} ({}) disagree; remove one",
                        code(seen),
                        code(&layers)
                    )));
                }
                Some(_) => {}
                None => found = Some((key, layers)),
            }
        }
        Ok(found.map_or_else(|| default.to_vec(), |(_, layers)| layers))
    }

    fn model_config(&self) -> Result<ModelConfig> {
        use LayerKind::*;
        let usize_val = Self::usize_val;
        let f32_val = Self::f32_val;
        let bool_val = Self::bool_val;
        let string_val = Self::string_val;

        // C:177: the HF default when no pattern is given at all.
        let layers = self.layers(
            &[
                ("layers_block_type", false),
                ("layer_types", false),
                ("hybrid_override_pattern", true),
            ],
            &[Mamba, Moe, Attention, Mlp],
        )?;
        // Deprecated in HF (it warns and uses the pattern length); a mismatch means the file was
        // edited inconsistently, so we do not guess which one is right.
        if let Some(v) = self.get("num_hidden_layers").filter(|v| !v.is_null()) {
            let n = usize_val(self, "num_hidden_layers", v)?;
            if n != layers.len() {
                return Err(self.err(format!(
                    "num_hidden_layers ({n}) must equal the number of layers in the layer \
                     pattern ({}: {})",
                    layers.len(),
                    layers.iter().map(LayerKind::code).collect::<String>()
                )));
            }
        }
        let mtp_layers = self.layers(
            &[
                ("mtp_layers_block_type", false),
                ("mtp_hybrid_override_pattern", true),
            ],
            &[Attention, Moe],
        )?;

        let num_attention_heads = self.or("num_attention_heads", 32, usize_val)?;
        // Backward compatibility in HF: a null num_key_value_heads means plain multi-head.
        let num_key_value_heads = match self.get("num_key_value_heads") {
            None => 8,
            Some(Value::Null) => num_attention_heads,
            Some(v) => usize_val(self, "num_key_value_heads", v)?,
        };

        // Read for their types and legacy-spelling agreement only; HF's math ignores them.
        self.aliased("expand", "mamba_expand", 2, usize_val)?;
        self.aliased("time_step_max", "mamba_dt_max", 0.1, f32_val)?;
        self.aliased("time_step_floor", "mamba_dt_init_floor", 1e-4, f32_val)?;
        self.aliased(
            "time_step_limit",
            "mamba_dt_limit",
            vec![0.0, f32::INFINITY],
            Self::f32_pair,
        )?;

        Ok(ModelConfig {
            vocab_size: self.or("vocab_size", 131072, usize_val)?,
            hidden_size: self.or("hidden_size", 4096, usize_val)?,
            layers,
            num_attention_heads,
            num_key_value_heads,
            // `attention_head_dim` is what the pre-5.x remote-code config called it.
            head_dim: self.aliased("head_dim", "attention_head_dim", 128, usize_val)?,
            intermediate_size: self.or("intermediate_size", 21504, usize_val)?,
            ssm_state_size: self.or("ssm_state_size", 128, usize_val)?,
            mamba_num_heads: self.or("mamba_num_heads", 128, usize_val)?,
            mamba_head_dim: self.or("mamba_head_dim", 64, usize_val)?,
            n_groups: self.aliased("n_groups", "mamba_n_groups", 8, usize_val)?,
            conv_kernel: self.aliased("conv_kernel", "mamba_d_conv", 4, usize_val)?,
            use_conv_bias: self.aliased("use_conv_bias", "mamba_conv_bias", true, bool_val)?,
            use_bias: self.or("use_bias", false, bool_val)?,
            mlp_bias: self.or("mlp_bias", false, bool_val)?,
            time_step_min: self.aliased("time_step_min", "mamba_dt_min", 0.001, f32_val)?,
            chunk_size: self.aliased("chunk_size", "mamba_chunk_size", 128, usize_val)?,
            n_routed_experts: self.aliased(
                "n_routed_experts",
                "num_local_experts",
                8,
                usize_val,
            )?,
            num_experts_per_tok: self.or("num_experts_per_tok", 2, usize_val)?,
            n_group: self.or("n_group", 1, usize_val)?,
            topk_group: self.or("topk_group", 1, usize_val)?,
            norm_topk_prob: self.or("norm_topk_prob", true, bool_val)?,
            routed_scaling_factor: self.or("routed_scaling_factor", 1.0, f32_val)?,
            moe_intermediate_size: self.or("moe_intermediate_size", 7688, usize_val)?,
            moe_shared_expert_intermediate_size: self.or(
                "moe_shared_expert_intermediate_size",
                7688,
                usize_val,
            )?,
            moe_latent_size: match self.get("moe_latent_size") {
                None | Some(Value::Null) => None,
                Some(v) => Some(usize_val(self, "moe_latent_size", v)?),
            },
            num_nextn_predict_layers: self.or("num_nextn_predict_layers", 0, usize_val)?,
            mtp_layers,
            layer_norm_epsilon: self.or("layer_norm_epsilon", 1e-5, f32_val)?,
            bos_token_id: self.or("bos_token_id", Some(1), Self::opt_token_id)?,
            eos_token_ids: self.or("eos_token_id", vec![2], Self::token_ids)?,
            pad_token_id: self.or("pad_token_id", Some(0), Self::opt_token_id)?,
            max_position_embeddings: self.or("max_position_embeddings", 4096, usize_val)?,
            tie_word_embeddings: self.or("tie_word_embeddings", false, bool_val)?,
            mamba_hidden_act: self.or("mamba_hidden_act", "silu".into(), string_val)?,
            mlp_hidden_act: self.or("mlp_hidden_act", "relu2".into(), string_val)?,
            architectures: self.or("architectures", Vec::new(), |r, key, v| {
                let items = v
                    .as_array()
                    .ok_or_else(|| r.type_err(key, "a list of strings", v))?;
                items.iter().map(|x| r.string_val(key, x)).collect()
            })?,
            model_type: self.or("model_type", "nemotron_h".into(), string_val)?,
            sizes: Sizes::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/configs")
            .join(format!("{name}.json"))
    }

    fn grouped_value() -> Value {
        read_json(&fixture("nemotronh_tiny_grouped")).unwrap()
    }

    fn parse(v: &Value) -> Result<ModelConfig> {
        ModelConfig::from_json_value(v, Path::new("test/config.json"))
    }

    /// The grouped fixture with the fields of `patch` replaced (nulls included).
    fn patched(patch: Value) -> Result<ModelConfig> {
        let mut v = grouped_value();
        let obj = v.as_object_mut().unwrap();
        for (k, x) in patch.as_object().unwrap() {
            obj.insert(k.clone(), x.clone());
        }
        parse(&v)
    }

    fn err_of(patch: Value) -> String {
        match patched(patch.clone()) {
            Ok(_) => panic!("{patch} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[track_caller]
    fn assert_err(patch: Value, needles: &[&str]) {
        let msg = err_of(patch);
        for n in needles {
            assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
        }
        assert!(msg.starts_with("test/config.json: "), "{msg}");
    }

    #[test]
    fn grouped_fixture() {
        let c = parse(&grouped_value()).unwrap();
        assert_eq!(c.layer_pattern(), "MEM*EM-E");
        assert_eq!(c.count(LayerKind::Moe), 3);
        assert_eq!(c.count(LayerKind::Mamba), 3);
        assert_eq!(c.mamba_inner(), 128);
        assert_eq!(c.conv_dim(), 128 + 2 * 2 * 16);
        assert_eq!(c.in_proj_dim(), 2 * 128 + 2 * 2 * 16 + 8);
        assert_eq!(c.latent_dim(), 32);
        assert_eq!((c.n_group, c.topk_group, c.num_experts_per_tok), (4, 2, 4));
        assert_eq!(c.routed_scaling_factor, 2.5);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.mtp_pattern(), "*E");
    }

    #[test]
    fn layer_kind_codes_and_names() {
        for k in LayerKind::ALL {
            assert_eq!(LayerKind::from_code(k.code()), Some(k));
            assert_eq!(LayerKind::from_name(&k.to_string()), Some(k));
        }
        assert_eq!(
            LayerKind::from_name("linear_attention"),
            Some(LayerKind::Mamba)
        );
        assert_eq!(
            LayerKind::from_name("full_attention"),
            Some(LayerKind::Attention)
        );
        assert_eq!(LayerKind::Attention.to_string(), "attention");
    }

    #[test]
    fn bare_infinity_is_accepted() {
        let text = r#"{"a": [0.0, Infinity, -Infinity, NaN], "s": "Infinity \" NaN"}"#;
        let v = parse_json(text, Path::new("x.json")).unwrap();
        assert_eq!(v["s"], "Infinity \" NaN");
        assert_eq!(v["a"][1], json!({"__float__": "Infinity"}));
        assert_eq!(v["a"][2], json!({"__float__": "-Infinity"}));
        assert_eq!(v["a"][3], json!({"__float__": "NaN"}));
        let bad = parse_json("{\"a\": Infinityy}", Path::new("x.json")).unwrap_err();
        assert!(bad.to_string().contains("invalid JSON"), "{bad}");
    }

    #[test]
    fn tagged_floats_anywhere_a_float_is_expected() {
        let c = patched(json!({"routed_scaling_factor": 3, "time_step_min": 0})).unwrap();
        assert_eq!(c.routed_scaling_factor, 3.0);
        assert_eq!(c.time_step_min, 0.0);
        assert_err(
            json!({"routed_scaling_factor": {"__float__": "Infinity"}}),
            &["routed_scaling_factor (inf) must be finite"],
        );
        assert_err(
            json!({"layer_norm_epsilon": {"__float__": "NaN"}}),
            &["layer_norm_epsilon (NaN)"],
        );
        assert_err(
            json!({"time_step_min": {"__float__": "-Infinity"}}),
            &["time_step_min (-inf)"],
        );
        assert_err(
            json!({"time_step_min": {"__float__": "big"}}),
            &["time_step_min must be a number"],
        );
        // time_step_limit is unused, but still type checked.
        assert_err(
            json!({"time_step_limit": [0.0]}),
            &["time_step_limit must be a list of two"],
        );
    }

    #[test]
    fn defaults_apply_to_absent_fields() {
        let c = parse(&json!({"layers_block_type": ["mamba"]})).unwrap();
        assert_eq!(c.vocab_size, 131072);
        assert_eq!(
            (c.mamba_num_heads, c.mamba_head_dim, c.n_groups),
            (128, 64, 8)
        );
        assert_eq!(
            (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (32, 8, 128)
        );
        assert_eq!(c.time_step_min, 0.001);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!((c.bos_token_id, c.pad_token_id), (Some(1), Some(0)));
        assert_eq!(c.moe_latent_size, None);
        assert_eq!(c.mtp_layers, vec![LayerKind::Attention, LayerKind::Moe]);
        let c = parse(&json!({})).unwrap();
        assert_eq!(c.layer_pattern(), "ME*-");
    }

    #[test]
    fn token_id_forms() {
        let c = patched(json!({"eos_token_id": [2, 11], "bos_token_id": null})).unwrap();
        assert_eq!(c.eos_token_ids, vec![2, 11]);
        assert_eq!(c.bos_token_id, None);
        let c = patched(json!({"eos_token_id": null, "pad_token_id": null})).unwrap();
        assert_eq!((c.eos_token_ids.len(), c.pad_token_id), (0, None));
    }

    #[test]
    fn null_kv_heads_means_multi_head() {
        let c = patched(json!({"num_key_value_heads": null})).unwrap();
        assert_eq!(c.num_key_value_heads, c.num_attention_heads);
    }

    #[test]
    fn pattern_spellings_must_agree() {
        assert!(patched(json!({"hybrid_override_pattern": "MEM*EM-E"})).is_ok());
        assert_err(
            json!({"hybrid_override_pattern": "MEM*EM-M"}),
            &[
                "layers_block_type (MEM*EM-E)",
                "hybrid_override_pattern (MEM*EM-M)",
                "disagree",
            ],
        );
        assert_err(
            json!({"mtp_hybrid_override_pattern": "E"}),
            &[
                "mtp_layers_block_type (*E)",
                "mtp_hybrid_override_pattern (E)",
            ],
        );
        assert_err(
            json!({"mamba_n_groups": 4}),
            &["n_groups (2)", "mamba_n_groups (4)", "disagree"],
        );
        assert_err(
            json!({"num_local_experts": 8}),
            &["n_routed_experts (16)", "num_local_experts (8)"],
        );
    }

    #[test]
    fn unknown_layer_types_are_named() {
        assert_err(
            json!({"layers_block_type": ["mamba", "ssm"]}),
            &[
                "layers_block_type[1]",
                "\"ssm\"",
                "\"linear_attention\"",
                "\"mlp\"",
            ],
        );
        assert_err(
            json!({"layers_block_type": null, "hybrid_override_pattern": "M*X"}),
            &[
                "hybrid_override_pattern",
                "'X'",
                "position 2",
                "'M' (mamba)",
            ],
        );
    }

    #[test]
    fn num_hidden_layers_must_match() {
        assert!(patched(json!({"num_hidden_layers": 8})).is_ok());
        assert_err(
            json!({"num_hidden_layers": 9}),
            &["num_hidden_layers (9)", "(8: MEM*EM-E)"],
        );
    }

    #[test]
    fn type_errors_name_the_field() {
        assert_err(
            json!({"hidden_size": 64.5}),
            &["hidden_size must be a non-negative integer, got 64.5"],
        );
        assert_err(
            json!({"hidden_size": -1}),
            &["hidden_size must be a non-negative integer"],
        );
        assert_err(
            json!({"norm_topk_prob": "yes"}),
            &["norm_topk_prob must be true or false"],
        );
        assert_err(
            json!({"eos_token_id": [2, -1]}),
            &["eos_token_id must be a token id"],
        );
        assert_err(
            json!({"moe_latent_size": "big"}),
            &["moe_latent_size must be"],
        );
    }

    #[test]
    fn each_validation_rule() {
        let cases: &[(Value, &[&str])] = &[
            (
                json!({"layers_block_type": []}),
                &["layers_block_type / hybrid_override_pattern is empty"],
            ),
            (json!({"vocab_size": 0}), &["vocab_size (0) must be > 0"]),
            (json!({"hidden_size": 0}), &["hidden_size (0) must be > 0"]),
            (
                json!({"layer_norm_epsilon": 0}),
                &["layer_norm_epsilon (0) must be a finite number > 0"],
            ),
            (
                json!({"eos_token_id": [2, 512]}),
                &["eos_token_id (512) must be < vocab_size (512)"],
            ),
            (
                json!({"bos_token_id": 600}),
                &["bos_token_id (600) must be < vocab_size (512)"],
            ),
            (
                json!({"pad_token_id": 512}),
                &["pad_token_id (512) must be < vocab_size (512)"],
            ),
            (
                json!({"num_nextn_predict_layers": 1, "mtp_layers_block_type": []}),
                &["num_nextn_predict_layers (1)", "mtp_layers_block_type"],
            ),
            (
                json!({"num_attention_heads": 0}),
                &["num_attention_heads (0) must be > 0"],
            ),
            (
                json!({"num_key_value_heads": 0}),
                &["num_key_value_heads (0) must be > 0"],
            ),
            (json!({"head_dim": 0}), &["head_dim (0) must be > 0"]),
            (
                json!({"num_key_value_heads": 3}),
                &["num_attention_heads (8) must be divisible by num_key_value_heads (3)"],
            ),
            (
                json!({"mamba_num_heads": 0}),
                &["mamba_num_heads (0) must be > 0"],
            ),
            (
                json!({"mamba_head_dim": 0}),
                &["mamba_head_dim (0) must be > 0"],
            ),
            (
                json!({"ssm_state_size": 0}),
                &["ssm_state_size (0) must be > 0"],
            ),
            (json!({"n_groups": 0}), &["n_groups (0) must be > 0"]),
            (json!({"chunk_size": 0}), &["chunk_size (0) must be > 0"]),
            (json!({"conv_kernel": 0}), &["conv_kernel (0) must be >= 1"]),
            (
                json!({"mamba_num_heads": 12, "n_groups": 5}),
                &["mamba_num_heads (12) must be divisible by n_groups (5)"],
            ),
            (
                json!({"mamba_hidden_act": "gelu"}),
                &["mamba_hidden_act is \"gelu\"", "\"silu\""],
            ),
            (
                json!({"time_step_min": -0.5}),
                &["time_step_min (-0.5) must be a finite number >= 0"],
            ),
            (
                json!({"mlp_hidden_act": "silu"}),
                &["mlp_hidden_act is \"silu\"", "\"relu2\""],
            ),
            (
                json!({"intermediate_size": 0}),
                &["intermediate_size (0) must be > 0"],
            ),
            (
                json!({"n_routed_experts": 0}),
                &["n_routed_experts (0) must be > 0"],
            ),
            (
                json!({"moe_intermediate_size": 0}),
                &["moe_intermediate_size (0) must be > 0"],
            ),
            (
                json!({"moe_shared_expert_intermediate_size": 0}),
                &["moe_shared_expert_intermediate_size (0) must be > 0"],
            ),
            (
                json!({"num_experts_per_tok": 0}),
                &["num_experts_per_tok (0) must be >= 1"],
            ),
            (
                json!({"moe_latent_size": 0}),
                &["moe_latent_size (0) must be > 0 or null"],
            ),
            (json!({"n_group": 0}), &["n_group (0) must be >= 1"]),
            (
                json!({"n_group": 3}),
                &["n_routed_experts (16) must be divisible by n_group (3)"],
            ),
            (json!({"topk_group": 0}), &["topk_group (0) must be >= 1"]),
            (
                json!({"topk_group": 5}),
                &["topk_group (5) must be <= n_group (4)"],
            ),
            (
                json!({"n_group": 16, "topk_group": 4}),
                &[
                    "n_routed_experts / n_group (16 / 16 = 1) must be >= 2",
                    "top-2",
                ],
            ),
            (
                json!({"num_experts_per_tok": 9}),
                &[
                    "num_experts_per_tok (9) must be <= topk_group * (n_routed_experts / n_group) (2 * 4 = 8)",
                ],
            ),
            (
                json!({"routed_scaling_factor": {"__float__": "NaN"}}),
                &["routed_scaling_factor (NaN) must be finite"],
            ),
        ];
        for (patch, needles) in cases {
            assert_err(patch.clone(), needles);
        }
    }

    #[test]
    fn absent_kinds_are_not_checked() {
        // No MoE and no attention: junk routing and head counts are irrelevant.
        let c = patched(json!({
            "layers_block_type": ["mamba", "mlp"],
            "n_group": 3, "topk_group": 7, "num_experts_per_tok": 0,
            "num_key_value_heads": 3, "mlp_hidden_act": "relu2",
        }))
        .unwrap();
        assert_eq!(c.layer_pattern(), "M-");
        // ... unless an MTP step uses them.
        assert_err(
            json!({
                "layers_block_type": ["mamba", "mlp"], "num_key_value_heads": 3,
                "num_nextn_predict_layers": 1,
            }),
            &["num_attention_heads (8) must be divisible by num_key_value_heads (3)"],
        );
        // Without Mamba layers the Mamba activation does not matter.
        assert!(patched(json!({"layers_block_type": ["moe"], "mamba_hidden_act": "gelu"})).is_ok());
        // A single expert without groups is well defined (the group step is skipped).
        let c = patched(
            json!({"n_routed_experts": 1, "n_group": 1, "topk_group": 1, "num_experts_per_tok": 1}),
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn tied_embeddings_are_allowed() {
        assert!(
            patched(json!({"tie_word_embeddings": true}))
                .unwrap()
                .tie_word_embeddings
        );
    }

    #[test]
    fn missing_config_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = ModelConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&dir.path().join("config.json").display().to_string()),
            "{e}"
        );
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn generation_config_fallback_and_override() {
        let cfg = parse(&grouped_value()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let g = load_generation_config(dir.path(), &cfg).unwrap();
        assert_eq!(g.eos_token_ids, vec![2]);
        assert_eq!((g.bos_token_id, g.pad_token_id), (Some(1), Some(0)));
        let path = dir.path().join("generation_config.json");
        std::fs::write(&path, r#"{"eos_token_id": [2, 7], "pad_token_id": null}"#).unwrap();
        let g = load_generation_config(dir.path(), &cfg).unwrap();
        assert_eq!(g.eos_token_ids, vec![2, 7]);
        assert_eq!((g.bos_token_id, g.pad_token_id), (Some(1), None));
        std::fs::write(&path, r#"{"eos_token_id": 3}"#).unwrap();
        assert_eq!(
            load_generation_config(dir.path(), &cfg)
                .unwrap()
                .eos_token_ids,
            vec![3]
        );
        std::fs::write(&path, r#"{"eos_token_id": 9999}"#).unwrap();
        let e = load_generation_config(dir.path(), &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("generation_config.json") && e.contains("eos_token_id (9999)"),
            "{e}"
        );
    }
}
