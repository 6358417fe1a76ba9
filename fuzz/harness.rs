//! What each fuzz target does with one input. Shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, built with libFuzzer and AddressSanitizer) and by
//! `tests/fuzz_replay.rs`, which runs every committed corpus and past finding through the same
//! functions on stable Rust in CI.
//!
//! Every target accepts any input: an error is a fine outcome, a panic, abort, hang or a
//! result that breaks one of the invariants asserted here is a finding.

#![allow(
    dead_code,
    reason = "each fuzz target binary uses one of these functions"
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use nemotron_rt::backend::{self, Backend, BackendKind};
use nemotron_rt::checkpoint::{Checkpoint, DType};
use nemotron_rt::config::{self, LayerKind, ModelConfig, limits};
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};
use nemotron_rt::quant_config::QuantConfig;
use nemotron_rt::tokenizer::Tokenizer;
use serde_json::{Map, Value};

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target by name, as its corpus folder is named.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors_file", safetensors_file),
    ("config_json", config_json),
    ("quant_config", quant_config),
    ("sharded_index", sharded_index),
    ("generation_config", generation_config),
    ("tokenizer_json", tokenizer_json),
    ("model_load", model_load),
];

/// The fixture models the structured targets build on.
const FIXTURES: [&str; 4] = [
    "nemotronh_tiny_grouped_nvfp4_super",
    "nemotronh_tiny_grouped",
    "nemotronh_tiny_grouped_nvfp4",
    "nemotronh_tiny_flat",
];

/// `tests/fixtures/models/<name>/hf`, from the fuzz crate (`fuzz/`) or the main crate.
fn fixture(name: &str) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if here.join("tests/fixtures").is_dir() {
        here.to_path_buf()
    } else {
        here.join("..")
    };
    root.join("tests/fixtures/models").join(name).join("hf")
}

/// A scratch folder of this process for `what`, in memory where Linux offers it.
fn scratch(what: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("nemotron-fuzz-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// Removes this process's scratch folders (the replay test calls it when done; a fuzzing
/// process keeps them until it exits).
pub fn remove_scratch() {
    let prefix = format!("nemotron-fuzz-{}-", std::process::id());
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Reads every tensor of `ck` the ways the loader does.
fn read_all(ck: &Checkpoint) {
    for t in ck.tensors() {
        let _ = t.expect(&[t.dtype], &t.shape);
        match t.dtype {
            DType::F32 | DType::BF16 | DType::F16 => {
                let _ = t.ensure_finite();
                if let Ok(v) = t.to_f32_vec() {
                    assert_eq!(v.len(), t.numel(), "to_f32_vec of `{}`", t.name);
                }
                let _ = t.scalar_f32();
            }
            DType::I32 | DType::I64 | DType::U8 | DType::I8 => {
                let _ = t.to_i64_vec();
            }
            _ => {}
        }
        assert_eq!(
            t.bytes().len() as u128,
            t.shape.iter().map(|&d| d as u128).product::<u128>() * t.dtype.size() as u128,
            "`{}`: its bytes and its shape disagree",
            t.name
        );
    }
}

/// A safetensors file: header length prefix, JSON header, tensor data.
pub fn safetensors_file(data: &[u8]) {
    if let Ok(ck) = Checkpoint::from_bytes(data.to_vec(), "fuzz.safetensors") {
        read_all(&ck);
    }
}

/// `config.json`. A config that validates must have every derived size equal to the exact
/// product of its fields (computed here in u128, which cannot wrap) and within the limits.
pub fn config_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("config.json");
    if let Ok(c) = ModelConfig::from_json_str(text, file) {
        check_sizes(&c);
    }
    if let Ok(v) = config::parse_json(text, file)
        && let Some(q) = v.get("quantization_config")
        && let Ok(q) = QuantConfig::from_quantization_config(q, file)
    {
        query(&q);
    }
}

fn check_sizes(c: &ModelConfig) {
    let s = c.sizes;
    let p = |xs: &[usize]| xs.iter().map(|&x| x as u128).product::<u128>();
    let has =
        |k| c.layers.contains(&k) || (c.num_nextn_predict_layers > 0 && c.mtp_layers.contains(&k));
    let width = |w: usize| assert!(w as u64 <= limits::MAX_DIM, "a width of {w} passed");
    assert_eq!(s.embedding_elems as u128, p(&[c.vocab_size, c.hidden_size]));
    assert!(s.embedding_elems as u64 <= limits::MAX_ELEMENTS);
    if has(LayerKind::Attention) {
        assert_eq!(
            s.attn_q_width as u128,
            p(&[c.num_attention_heads, c.head_dim])
        );
        assert_eq!(
            s.attn_kv_width as u128,
            p(&[c.num_key_value_heads, c.head_dim])
        );
        width(s.attn_q_width);
        width(s.attn_kv_width);
        let layers = c.count(LayerKind::Attention);
        assert_eq!(
            s.kv_bytes_per_token as u128,
            p(&[layers, 2, s.attn_kv_width, 4])
        );
    }
    if has(LayerKind::Mamba) {
        let (h, pd, g, n) = (
            c.mamba_num_heads,
            c.mamba_head_dim,
            c.n_groups,
            c.ssm_state_size,
        );
        assert_eq!(s.mamba_inner as u128, p(&[h, pd]));
        assert_eq!(s.mamba_group_state as u128, p(&[g, n]));
        assert_eq!(s.conv_dim as u128, p(&[h, pd]) + 2 * p(&[g, n]));
        assert_eq!(
            s.in_proj_dim as u128,
            2 * p(&[h, pd]) + 2 * p(&[g, n]) + h as u128
        );
        assert_eq!(s.ssm_state_elems as u128, p(&[h, pd, n]));
        let history = c.conv_kernel.saturating_sub(1);
        assert_eq!(s.conv_state_elems as u128, p(&[s.conv_dim, history]));
        assert!(s.ssm_state_elems as u64 <= limits::MAX_ELEMENTS);
        for w in [s.mamba_inner, s.conv_dim, s.in_proj_dim] {
            width(w);
        }
    }
    if has(LayerKind::Moe) {
        let l = c.moe_latent_size.unwrap_or(c.hidden_size);
        assert_eq!(s.latent_dim, l);
        assert_eq!(
            s.expert_stack_elems as u128,
            p(&[c.n_routed_experts, c.moe_intermediate_size, l])
        );
    }
}

fn query(q: &QuantConfig) {
    for module in [
        "backbone.layers.0.mixer.in_proj",
        "backbone.layers.1.mixer.experts.3.up_proj",
        "backbone.layers.1.mixer.shared_experts.down_proj",
        "lm_head",
    ] {
        let _ = q.format_of(module);
    }
}

/// `hf_quant_config.json`, and the same JSON as `config.json`'s `quantization_config`.
pub fn quant_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("hf_quant_config.json");
    let Ok(v) = config::parse_json(text, file) else {
        return;
    };
    if let Ok(q) = QuantConfig::from_hf_quant_config(&v, file) {
        query(&q);
    }
    if let Ok(q) = QuantConfig::from_quantization_config(&v, file) {
        query(&q);
    }
}

/// Two small shards, written once, that the fuzzed index refers to (or fails to).
fn shard_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("sharded");
        for (i, names) in [["a.weight", "b.weight"], ["c.weight", "d.bias"]]
            .iter()
            .enumerate()
        {
            let mut header = Map::new();
            for (j, n) in names.iter().enumerate() {
                header.insert(
                    (*n).into(),
                    serde_json::json!({"dtype": "F32", "shape": [2], "data_offsets": [8 * j, 8 * j + 8]}),
                );
            }
            let h = serde_json::to_vec(&header).expect("JSON");
            let mut file = (h.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(&h);
            file.extend_from_slice(&[0u8; 16]);
            let name = format!("model-0000{}-of-00002.safetensors", i + 1);
            std::fs::write(dir.join(name), file).expect("a shard");
        }
        dir
    })
}

/// `model.safetensors.index.json` over [`shard_dir`]'s shards.
pub fn sharded_index(data: &[u8]) {
    let dir = shard_dir();
    std::fs::write(dir.join("model.safetensors.index.json"), data).expect("the index");
    if let Ok(ck) = Checkpoint::open(dir) {
        read_all(&ck);
    }
}

fn fixture_config() -> &'static ModelConfig {
    static C: OnceLock<ModelConfig> = OnceLock::new();
    C.get_or_init(|| ModelConfig::load(&fixture(FIXTURES[0])).expect("the fixture's config"))
}

/// `generation_config.json`, against a fixture's model config.
pub fn generation_config(data: &[u8]) {
    let dir = scratch("generation");
    std::fs::write(dir.join("generation_config.json"), data).expect("the file");
    if let Ok(g) = config::load_generation_config(&dir, fixture_config()) {
        let v = fixture_config().vocab_size;
        let ids = g
            .eos_token_ids
            .iter()
            .chain(g.bos_token_id.iter())
            .chain(g.pad_token_id.iter());
        for &id in ids {
            assert!((id as usize) < v, "token id {id} passed validation");
        }
    }
}

/// `tokenizer.json`: parsing, then a round trip of a short text through it.
pub fn tokenizer_json(data: &[u8]) {
    if let Ok(t) = Tokenizer::from_bytes(data, Path::new("tokenizer.json"))
        && let Ok(ids) = t.encode("def main():\n    print('héllo')", true)
    {
        let ids: Vec<u32> = ids.into_iter().take(64).collect();
        let _ = t.decode(&ids, false);
        for &id in ids.iter().take(8) {
            let _ = t.id_to_token(id);
        }
    }
}

/// A number as a corrupt config might carry it; powers of two with small offsets are the values
/// whose products wrap back to small widths.
// The committed model_load inputs are decoded through `Num`, `Edit`, `FIELDS` and `DTYPES` by
// position: append new variants and names at the end, never reorder or remove, or every
// committed input silently means something else.
#[derive(Arbitrary, Debug)]
enum Num {
    Small(u8),
    Pow2 { k: u8, offset: i16 },
    Any(u64),
    Negative(i32),
    Float(f64),
    Null,
    Text,
}

impl Num {
    fn json(&self) -> Value {
        match *self {
            Num::Small(x) => x.into(),
            Num::Pow2 { k, offset } => (1u64 << (k % 64)).wrapping_add(offset as i64 as u64).into(),
            Num::Any(x) => x.into(),
            Num::Negative(x) => (-(x.unsigned_abs() as i64) - 1).into(),
            Num::Float(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
            Num::Null => Value::Null,
            Num::Text => "128".into(),
        }
    }
}

/// The `config.json` fields the structured target edits.
const FIELDS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "ssm_state_size",
    "mamba_num_heads",
    "mamba_head_dim",
    "n_groups",
    "conv_kernel",
    "chunk_size",
    "n_routed_experts",
    "num_experts_per_tok",
    "n_group",
    "topk_group",
    "moe_intermediate_size",
    "moe_shared_expert_intermediate_size",
    "moe_latent_size",
    "num_nextn_predict_layers",
    "max_position_embeddings",
    "layer_norm_epsilon",
    "routed_scaling_factor",
    "time_step_min",
    "eos_token_id",
    "bos_token_id",
    "num_hidden_layers",
];

const DTYPES: &[&str] = &[
    "F32", "BF16", "F16", "F8_E4M3", "U8", "I8", "F64", "BOOL", "I64",
];

#[derive(Arbitrary, Debug)]
enum Edit {
    /// Sets a config field.
    Field { field: u8, value: Num },
    /// Replaces the layer pattern with these kinds (`M`, `E`, `*`, `-` by value mod 4).
    Pattern(Vec<u8>),
    /// Changes one dimension of one stored tensor's shape.
    Shape { tensor: u16, dim: u8, value: Num },
    /// Changes one stored tensor's dtype.
    Dtype { tensor: u16, dtype: u8 },
    /// Removes a tensor from the header.
    Drop { tensor: u16 },
    /// Removes `hf_quant_config.json`.
    NoQuantFile,
}

#[derive(Arbitrary, Debug)]
struct ModelInput {
    fixture: u8,
    edits: Vec<Edit>,
    ids: Vec<u16>,
    ids_in_vocab: bool,
}

/// A fixture's files, read once per process.
struct FixtureFiles {
    config: Value,
    header: Map<String, Value>,
    names: Vec<String>,
    /// The data section, after the header.
    data: Vec<u8>,
    weights: PathBuf,
    quant: Option<Vec<u8>>,
}

impl FixtureFiles {
    fn get(i: usize) -> &'static FixtureFiles {
        static ALL: OnceLock<Vec<FixtureFiles>> = OnceLock::new();
        &ALL.get_or_init(|| {
            FIXTURES
                .iter()
                .map(|f| FixtureFiles::read(&fixture(f)))
                .collect()
        })[i]
    }

    fn read(src: &Path) -> FixtureFiles {
        let read = |f: &str| std::fs::read(src.join(f)).expect("a fixture file");
        let weights = read("model.safetensors");
        let n = u64::from_le_bytes(weights[..8].try_into().expect("8 bytes")) as usize;
        let header: Map<String, Value> =
            serde_json::from_slice(&weights[8..8 + n]).expect("the fixture's header");
        FixtureFiles {
            config: serde_json::from_slice(&read("config.json")).expect("JSON"),
            names: header
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect(),
            header,
            data: weights[8 + n..].to_vec(),
            weights: src.join("model.safetensors"),
            quant: std::fs::read(src.join("hf_quant_config.json")).ok(),
        }
    }
}

fn cpu() -> Arc<dyn Backend> {
    static BE: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    BE.get_or_init(|| backend::create(BackendKind::Cpu, 1).expect("the CPU backend"))
        .clone()
}

/// A fixture checkpoint whose `config.json` fields, layer pattern and stored header were edited
/// as `data` says (structured, so that extreme values like 2^k ± c reach [`Model::load`]
/// together), loaded on the CPU and run forward over a few tokens.
pub fn model_load(data: &[u8]) {
    let Ok(input) = ModelInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let src = FixtureFiles::get(input.fixture as usize % FIXTURES.len());
    let dir = scratch("model");
    let mut config = src.config.clone();
    let mut header = src.header.clone();
    let names = &src.names;
    let mut quant_file = src.quant.is_some();
    let mut header_edited = false;

    let obj = config.as_object_mut().expect("an object");
    for edit in input.edits.iter().take(6) {
        match edit {
            Edit::Field { field, value } => {
                obj.insert(FIELDS[*field as usize % FIELDS.len()].into(), value.json());
            }
            Edit::Pattern(kinds) => {
                let names = ["linear_attention", "moe", "full_attention", "mlp"];
                let list: Vec<Value> = kinds
                    .iter()
                    .take(12)
                    .map(|k| names[*k as usize % 4].into())
                    .collect();
                obj.insert("layers_block_type".into(), list.into());
            }
            Edit::Shape { tensor, dim, value } => {
                header_edited = true;
                let name = &names[*tensor as usize % names.len()];
                // A tensor an earlier edit dropped is not there to change.
                if let Some(shape) = header
                    .get_mut(name)
                    .and_then(|e| e.get_mut("shape"))
                    .and_then(Value::as_array_mut)
                {
                    if shape.is_empty() {
                        shape.push(value.json());
                    } else {
                        let i = *dim as usize % shape.len();
                        shape[i] = value.json();
                    }
                }
            }
            Edit::Dtype { tensor, dtype } => {
                header_edited = true;
                let name = &names[*tensor as usize % names.len()];
                if let Some(entry) = header.get_mut(name).and_then(Value::as_object_mut) {
                    entry.insert(
                        "dtype".into(),
                        DTYPES[*dtype as usize % DTYPES.len()].into(),
                    );
                }
            }
            Edit::Drop { tensor } => {
                header_edited = true;
                header.remove(&names[*tensor as usize % names.len()]);
            }
            Edit::NoQuantFile => quant_file = false,
        }
    }

    let weights = dir.join("model.safetensors");
    let _ = std::fs::remove_file(&weights);
    if header_edited {
        let h = serde_json::to_vec(&header).expect("JSON");
        let mut file = (h.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&h);
        file.extend_from_slice(&src.data);
        std::fs::write(&weights, file).expect("weights");
    } else {
        // Loading maps the file; a link saves writing megabytes per input.
        std::os::unix::fs::symlink(&src.weights, &weights).expect("a link to the weights");
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&config).expect("JSON"),
    )
    .expect("config");
    let quant = dir.join("hf_quant_config.json");
    match (&src.quant, quant_file) {
        (Some(q), true) => std::fs::write(&quant, q).expect("quant config"),
        _ => {
            let _ = std::fs::remove_file(&quant);
        }
    }

    let Ok(model) = Model::load(&dir, cpu(), LoadOptions::default()) else {
        return;
    };
    check_sizes(&model.config);
    // Bounded work: a config may ask for a state far larger than its weights (the SSM state is
    // a product of widths that are each stored linearly), which is legitimate but not this
    // target's business.
    if model.config.sizes.state_bytes_per_sequence > 64 << 20 {
        return;
    }
    let v = model.config.vocab_size as u32;
    let ids: Vec<u32> = input
        .ids
        .iter()
        .take(3)
        .map(|&i| {
            if input.ids_in_vocab {
                i as u32 % v
            } else {
                i as u32
            }
        })
        .collect();
    let Ok(mut seq) = model.new_sequence() else {
        return;
    };
    if let Ok(out) = model.forward(&mut seq, &ids, ForwardOptions::default()) {
        assert_eq!(out.logits.shape(), [1, model.config.vocab_size]);
    }
}
