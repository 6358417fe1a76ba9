//! `config.json` / `hf_quant_config.json` parsing against the fixture checkpoints' files (copied
//! verbatim into `tests/fixtures/configs/`).

use std::path::{Path, PathBuf};

use nemotron_rt::config::{LayerKind, ModelConfig, load_generation_config, parse_json, read_json};
use nemotron_rt::quant_config::{KvCacheQuant, QuantConfig, QuantFormat};
use serde_json::{Value, json};

const GROUPED: &str = "nemotronh_tiny_grouped";
const FLAT: &str = "nemotronh_tiny_flat";
const NVFP4: &str = "nemotronh_tiny_grouped_nvfp4";
const NVFP4_SUPER: &str = "nemotronh_tiny_grouped_nvfp4_super";
const ALL: [&str; 4] = [GROUPED, FLAT, NVFP4, NVFP4_SUPER];

fn path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/configs")
        .join(file)
}

fn text(fixture: &str) -> String {
    std::fs::read_to_string(path(&format!("{fixture}.json"))).unwrap()
}

fn model(fixture: &str) -> ModelConfig {
    ModelConfig::from_json_str(&text(fixture), &path(&format!("{fixture}.json"))).unwrap()
}

/// A checkpoint directory with `config.json` and, optionally, `hf_quant_config.json`.
fn checkpoint_dir(config: &Value, hf_quant_config: Option<&Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    if let Some(q) = hf_quant_config {
        std::fs::write(dir.path().join("hf_quant_config.json"), q.to_string()).unwrap();
    }
    dir
}

#[test]
fn all_fixture_configs_parse() {
    for fixture in ALL {
        let c = model(fixture);
        assert_eq!(c.layers.len(), 8, "{fixture}");
        assert_eq!(c.model_type, "nemotron_h");
        assert_eq!(c.architectures, ["NemotronHForCausalLM"]);
        assert_eq!(c.eos_token_ids, [2]);
        assert_eq!((c.bos_token_id, c.pad_token_id), (Some(1), Some(0)));
        assert!(!c.tie_word_embeddings);
        // load() reads the same file from a directory.
        let dir = checkpoint_dir(&serde_json::from_str(&text(fixture)).unwrap(), None);
        assert_eq!(ModelConfig::load(dir.path()).unwrap(), c);
    }
}

#[test]
fn grouped_fixture() {
    let c = model(GROUPED);
    assert_eq!(c.layer_pattern(), "MEM*EM-E");
    assert_eq!(c.count(LayerKind::Mamba), 3);
    assert_eq!(c.count(LayerKind::Moe), 3);
    assert_eq!(c.count(LayerKind::Attention), 1);
    assert_eq!(c.count(LayerKind::Mlp), 1);
    assert_eq!((c.vocab_size, c.hidden_size), (512, 64));
    assert_eq!(
        (c.mamba_num_heads, c.mamba_head_dim, c.n_groups),
        (8, 16, 2)
    );
    assert_eq!((c.ssm_state_size, c.conv_kernel, c.chunk_size), (16, 4, 16));
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (8, 2, 16)
    );
    assert_eq!(c.intermediate_size, 160);
    assert_eq!((c.n_routed_experts, c.num_experts_per_tok), (16, 4));
    assert_eq!((c.n_group, c.topk_group), (4, 2));
    assert_eq!(c.moe_latent_size, Some(32));
    assert_eq!(
        (
            c.moe_intermediate_size,
            c.moe_shared_expert_intermediate_size
        ),
        (48, 96)
    );
    assert_eq!(c.routed_scaling_factor, 2.5);
    assert!(c.norm_topk_prob);
    assert_eq!(c.time_step_min, 0.001);
    assert_eq!(c.layer_norm_epsilon, 1e-5);
    assert_eq!(c.mamba_inner(), 128);
    assert_eq!(c.conv_dim(), 128 + 2 * 2 * 16);
    assert_eq!(c.in_proj_dim(), 2 * 128 + 2 * 2 * 16 + 8);
    assert_eq!(c.latent_dim(), 32);
    let s = c.sizes;
    assert_eq!((s.attn_q_width, s.attn_kv_width), (8 * 16, 2 * 16));
    assert_eq!((s.mamba_group_state, s.conv_state_elems), (2 * 16, 192 * 3));
    assert_eq!(s.ssm_state_elems, 8 * 16 * 16);
    assert_eq!(s.expert_stack_elems, 16 * 48 * 32);
    assert_eq!(s.embedding_elems, 512 * 64);
    // One attention layer: K and V of 2 heads x 16, in f32.
    assert_eq!(s.kv_bytes_per_token, 2 * 32 * 4);
    // Three Mamba layers: the conv history (3 x 192) and the SSM state (8 x 16 x 16), in f32.
    assert_eq!(s.state_bytes_per_sequence, 3 * (3 * 192 + 2048) * 4);
    // The quantized fixtures describe the same model.
    assert_eq!(model(NVFP4), c);
    assert_eq!(model(NVFP4_SUPER), c);
}

#[test]
fn flat_fixture() {
    let c = model(FLAT);
    assert_eq!(c.layer_pattern(), "ME*MEM*E");
    assert_eq!((c.vocab_size, c.hidden_size), (1024, 96));
    assert_eq!(
        (
            c.mamba_num_heads,
            c.mamba_head_dim,
            c.n_groups,
            c.ssm_state_size
        ),
        (12, 8, 4, 32)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (6, 2, 32)
    );
    assert_eq!(
        (
            c.n_routed_experts,
            c.num_experts_per_tok,
            c.n_group,
            c.topk_group
        ),
        (8, 2, 1, 1)
    );
    assert!(!c.norm_topk_prob);
    assert_eq!(c.latent_dim(), 48);
}

/// The grouped fixture as a pre-5.x hub `config.json` would spell it: `hybrid_override_pattern`,
/// `mamba_*` names, `num_local_experts`, `attention_head_dim`, a bare `Infinity`.
const LEGACY_GROUPED: &str = r#"{
  "architectures": ["NemotronHForCausalLM"],
  "model_type": "nemotron_h",
  "vocab_size": 512,
  "hidden_size": 64,
  "num_hidden_layers": 8,
  "hybrid_override_pattern": "MEM*EM-E",
  "mtp_hybrid_override_pattern": "*E",
  "num_attention_heads": 8,
  "num_key_value_heads": 2,
  "attention_head_dim": 16,
  "intermediate_size": 160,
  "mlp_hidden_act": "relu2",
  "mlp_bias": false,
  "use_bias": false,
  "mamba_num_heads": 8,
  "mamba_head_dim": 16,
  "mamba_n_groups": 2,
  "ssm_state_size": 16,
  "mamba_d_conv": 4,
  "mamba_expand": 2,
  "mamba_hidden_act": "silu",
  "mamba_dt_min": 0.001,
  "mamba_dt_max": 0.1,
  "mamba_dt_limit": [0.0, Infinity],
  "mamba_dt_init_floor": 0.0001,
  "mamba_conv_bias": true,
  "mamba_proj_bias": false,
  "mamba_chunk_size": 16,
  "num_local_experts": 16,
  "num_experts_per_tok": 4,
  "n_group": 4,
  "topk_group": 2,
  "norm_topk_prob": true,
  "routed_scaling_factor": 2.5,
  "moe_intermediate_size": 48,
  "moe_shared_expert_intermediate_size": 96,
  "moe_latent_size": 32,
  "num_nextn_predict_layers": 0,
  "layer_norm_epsilon": 1e-05,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "pad_token_id": 0,
  "max_position_embeddings": 4096,
  "tie_word_embeddings": false
}"#;

#[test]
fn legacy_spelling_parses_to_the_same_config() {
    let legacy =
        ModelConfig::from_json_str(LEGACY_GROUPED, Path::new("legacy/config.json")).unwrap();
    assert_eq!(legacy, model(GROUPED));
}

#[test]
fn every_fixture_in_legacy_spelling() {
    const RENAMES: [(&str, &str); 10] = [
        ("n_groups", "mamba_n_groups"),
        ("conv_kernel", "mamba_d_conv"),
        ("expand", "mamba_expand"),
        ("time_step_min", "mamba_dt_min"),
        ("time_step_max", "mamba_dt_max"),
        ("time_step_limit", "mamba_dt_limit"),
        ("time_step_floor", "mamba_dt_init_floor"),
        ("use_conv_bias", "mamba_conv_bias"),
        ("chunk_size", "mamba_chunk_size"),
        ("n_routed_experts", "num_local_experts"),
    ];
    for fixture in ALL {
        let modern = model(fixture);
        let mut v: Value = serde_json::from_str(&text(fixture)).unwrap();
        let obj = v.as_object_mut().unwrap();
        for (new, old) in RENAMES {
            let x = obj.remove(new).unwrap();
            obj.insert(old.into(), x);
        }
        obj.remove("layers_block_type");
        obj.remove("mtp_layers_block_type");
        obj.insert(
            "hybrid_override_pattern".into(),
            json!(modern.layer_pattern()),
        );
        obj.insert("mtp_hybrid_override_pattern".into(), json!("*E"));
        obj.insert("num_hidden_layers".into(), json!(8));
        let legacy = ModelConfig::from_json_value(&v, Path::new("legacy.json")).unwrap();
        assert_eq!(legacy, modern, "{fixture}");
    }
}

#[test]
fn infinity_in_both_forms() {
    // HF's tagged form is in every fixture (time_step_limit); a float field may use it too.
    let mut v: Value = serde_json::from_str(&text(GROUPED)).unwrap();
    assert_eq!(v["time_step_limit"][1], json!({"__float__": "Infinity"}));
    v["routed_scaling_factor"] = json!({"__float__": "Infinity"});
    let e = ModelConfig::from_json_value(&v, Path::new("c.json")).unwrap_err();
    assert!(
        e.to_string()
            .contains("routed_scaling_factor (inf) must be finite"),
        "{e}"
    );
    // Python's bare tokens.
    let bare = text(GROUPED).replace(
        r#"{
      "__float__": "Infinity"
    }"#,
        "Infinity",
    );
    assert!(!bare.contains("__float__"), "{bare}");
    let c = ModelConfig::from_json_str(&bare, Path::new("c.json")).unwrap();
    assert_eq!(c, model(GROUPED));
    let v = parse_json(r#"{"x": -Infinity, "y": NaN}"#, Path::new("c.json")).unwrap();
    assert_eq!(v["x"], json!({"__float__": "-Infinity"}));
    assert_eq!(v["y"], json!({"__float__": "NaN"}));
}

#[test]
fn broken_configs_name_the_fields() {
    let cases: [(Value, &str); 8] = [
        (
            json!({"mamba_num_heads": 12, "n_groups": 5}),
            "mamba_num_heads (12) must be divisible by n_groups (5)",
        ),
        (
            json!({"num_key_value_heads": 3}),
            "num_attention_heads (8) must be divisible by num_key_value_heads (3)",
        ),
        (
            json!({"n_group": 5}),
            "n_routed_experts (16) must be divisible by n_group (5)",
        ),
        (
            json!({"topk_group": 8}),
            "topk_group (8) must be <= n_group (4)",
        ),
        (
            json!({"n_group": 16, "topk_group": 1, "num_experts_per_tok": 1}),
            "n_routed_experts / n_group (16 / 16 = 1) must be >= 2",
        ),
        (
            json!({"num_experts_per_tok": 0}),
            "num_experts_per_tok (0) must be >= 1",
        ),
        (
            json!({"eos_token_id": [2, 4096]}),
            "eos_token_id (4096) must be < vocab_size (512)",
        ),
        (
            json!({"mlp_hidden_act": "gelu"}),
            "mlp_hidden_act is \"gelu\"",
        ),
    ];
    for (patch, needle) in cases {
        let mut v: Value = serde_json::from_str(&text(GROUPED)).unwrap();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        let e = ModelConfig::from_json_value(&v, Path::new("broken/config.json")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("broken/config.json: ") && msg.contains(needle),
            "{patch}: {msg}"
        );
    }
}

#[test]
fn generation_config() {
    let c = model(GROUPED);
    let dir = tempfile::tempdir().unwrap();
    let g = load_generation_config(dir.path(), &c).unwrap();
    assert_eq!(
        (g.eos_token_ids, g.bos_token_id, g.pad_token_id),
        (vec![2], Some(1), Some(0))
    );
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"_from_model_config": true, "bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0}"#,
    )
    .unwrap();
    let g = load_generation_config(dir.path(), &c).unwrap();
    assert_eq!(g.eos_token_ids, vec![2, 3]);
}

/// Every Linear module name of a NemotronH model (main stack) plus `lm_head`.
fn linear_modules(c: &ModelConfig) -> Vec<String> {
    let mut out = vec!["lm_head".to_string()];
    for (i, kind) in c.layers.iter().enumerate() {
        let p = format!("backbone.layers.{i}.mixer");
        let names: Vec<String> = match kind {
            LayerKind::Mamba => vec![format!("{p}.in_proj"), format!("{p}.out_proj")],
            LayerKind::Attention => ["q_proj", "k_proj", "v_proj", "o_proj"]
                .iter()
                .map(|n| format!("{p}.{n}"))
                .collect(),
            LayerKind::Mlp => vec![format!("{p}.up_proj"), format!("{p}.down_proj")],
            LayerKind::Moe => {
                let mut v = vec![
                    format!("{p}.gate"),
                    format!("{p}.fc1_latent_proj"),
                    format!("{p}.fc2_latent_proj"),
                    format!("{p}.shared_experts.up_proj"),
                    format!("{p}.shared_experts.down_proj"),
                ];
                for e in 0..c.n_routed_experts {
                    v.push(format!("{p}.experts.{e}.up_proj"));
                    v.push(format!("{p}.experts.{e}.down_proj"));
                }
                v
            }
        };
        out.extend(names);
    }
    out
}

/// The format each fixture's recipe gives a module (ARCH_NOTES §8 and the fixtures' README).
fn expected_format(fixture: &str, kind: LayerKind, module: &str) -> Option<QuantFormat> {
    let nvfp4 = Some(QuantFormat::Nvfp4 { group_size: 16 });
    let routed = module.contains(".experts.");
    let shared = module.contains(".shared_experts.");
    match (fixture, kind) {
        (NVFP4_SUPER, LayerKind::Moe) if routed => nvfp4,
        (NVFP4_SUPER, LayerKind::Moe) if shared => Some(QuantFormat::Fp8),
        (NVFP4_SUPER, LayerKind::Mamba) => Some(QuantFormat::Fp8),
        (NVFP4, LayerKind::Moe) if routed || shared => nvfp4,
        (NVFP4, LayerKind::Mlp) => nvfp4,
        _ => None,
    }
}

#[test]
fn quant_fixtures_every_module() {
    for fixture in [NVFP4, NVFP4_SUPER] {
        let config: Value = read_json(&path(&format!("{fixture}.json"))).unwrap();
        let hf = read_json(&path(&format!("{fixture}.hf_quant_config.json"))).unwrap();
        let cfg = ModelConfig::from_json_value(&config, Path::new("c.json")).unwrap();
        let mut without_qc = config.clone();
        without_qc
            .as_object_mut()
            .unwrap()
            .remove("quantization_config");

        let both_dir = checkpoint_dir(&config, Some(&hf));
        let hf_dir = checkpoint_dir(&without_qc, Some(&hf));
        let cfg_dir = checkpoint_dir(&config, None);
        let both = QuantConfig::load(both_dir.path(), &config)
            .unwrap()
            .unwrap();
        let hf_only = QuantConfig::load(hf_dir.path(), &without_qc)
            .unwrap()
            .unwrap();
        let cfg_only = QuantConfig::load(cfg_dir.path(), &config).unwrap().unwrap();
        assert!(both.source.ends_with("hf_quant_config.json"));
        assert!(cfg_only.source.ends_with("config.json"));

        for q in [&both, &hf_only, &cfg_only] {
            assert_eq!(q.producer.as_deref(), Some("modelopt 0.47.0"));
            let kv = (fixture == NVFP4_SUPER).then_some(KvCacheQuant::Fp8);
            assert_eq!(q.kv_cache, kv, "{fixture}");
        }
        let mut quantized = 0;
        for (i, kind) in cfg.layers.iter().enumerate() {
            let prefix = format!("backbone.layers.{i}.");
            for module in linear_modules(&cfg)
                .iter()
                .filter(|m| m.starts_with(&prefix))
            {
                let want = expected_format(fixture, *kind, module);
                quantized += usize::from(want.is_some());
                for q in [&both, &hf_only, &cfg_only] {
                    assert_eq!(
                        q.format_of(module),
                        want,
                        "{fixture} {module} from {:?}",
                        q.source
                    );
                }
            }
        }
        for q in [&both, &hf_only, &cfg_only] {
            assert_eq!(q.format_of("lm_head"), None);
            assert_eq!(q.format_of("backbone.embeddings"), None);
        }
        assert!(quantized > 0);
    }
}

#[test]
fn quant_spot_checks() {
    let config = read_json(&path(&format!("{NVFP4_SUPER}.json"))).unwrap();
    let hf = read_json(&path(&format!("{NVFP4_SUPER}.hf_quant_config.json"))).unwrap();
    let dir = checkpoint_dir(&config, Some(&hf));
    let q = QuantConfig::load(dir.path(), &config).unwrap().unwrap();
    assert_eq!(q.default, None);
    assert_eq!(q.format_of("backbone.layers.3.mixer.q_proj"), None);
    assert_eq!(
        q.format_of("backbone.layers.1.mixer.experts.5.down_proj"),
        Some(QuantFormat::Nvfp4 { group_size: 16 })
    );
    assert_eq!(q.kv_cache, Some(KvCacheQuant::Fp8));
    for (name, format) in &q.layers {
        assert_eq!(q.format_of(name), Some(*format), "{name}");
    }

    // An unquantized checkpoint has no quantization description.
    let plain = read_json(&path(&format!("{GROUPED}.json"))).unwrap();
    let dir = checkpoint_dir(&plain, None);
    assert_eq!(QuantConfig::load(dir.path(), &plain).unwrap(), None);
}

#[test]
fn quant_errors_name_the_problem() {
    let config = read_json(&path(&format!("{NVFP4}.json"))).unwrap();
    let hf = read_json(&path(&format!("{NVFP4}.hf_quant_config.json"))).unwrap();
    let load = |config: &Value, hf: Option<&Value>| {
        let dir = checkpoint_dir(config, hf);
        QuantConfig::load(dir.path(), config)
            .unwrap_err()
            .to_string()
    };

    let mut bad = hf.clone();
    bad["quantization"]["quant_algo"] = json!("W4A16_AWQ");
    let e = load(&json!({}), Some(&bad));
    assert!(
        e.contains("\"W4A16_AWQ\"") && e.contains("hf_quant_config.json") && e.contains("NVFP4"),
        "{e}"
    );

    let e = load(
        &json!({"quantization_config": {"quant_method": "compressed-tensors"}}),
        None,
    );
    assert!(
        e.contains("\"compressed-tensors\"") && e.contains("modelopt"),
        "{e}"
    );

    let mut bad = hf.clone();
    bad["quantization"]["group_size"] = json!(32);
    let e = load(&json!({}), Some(&bad));
    assert!(e.contains("group_size 32"), "{e}");

    let super_hf = read_json(&path(&format!("{NVFP4_SUPER}.hf_quant_config.json"))).unwrap();
    let e = load(&config, Some(&super_hf));
    assert!(
        e.contains("hf_quant_config.json") && e.contains("config.json") && e.contains("algorithm"),
        "{e}"
    );
}

/// Another architecture's config.json is named for what it is, before any field it lacks.
#[test]
fn another_model_type_is_named() {
    let llama = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 128256
    });
    let e = ModelConfig::from_json_value(&llama, Path::new("config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"llama\"") && e.contains("nemotron_h"), "{e}");
    // The fixtures' own model_type, and none at all, are accepted.
    let mut v: Value = serde_json::from_str(&text(GROUPED)).unwrap();
    assert_eq!(v["model_type"], "nemotron_h");
    v.as_object_mut().unwrap().remove("model_type");
    ModelConfig::from_json_value(&v, Path::new("config.json")).unwrap();
}

/// `do_sample` with its settings becomes a hint in words (shown, never applied); without
/// `do_sample` there is none.
#[test]
fn generation_config_sampling_is_a_hint() {
    let cfg = model(GROUPED);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("generation_config.json");
    std::fs::write(
        &p,
        r#"{"eos_token_id": 2, "do_sample": true, "temperature": 0.6, "top_p": 0.95}"#,
    )
    .unwrap();
    let g = load_generation_config(dir.path(), &cfg).unwrap();
    assert_eq!(
        g.sampling_hint.as_deref(),
        Some("temperature 0.6, top_p 0.95")
    );
    std::fs::write(&p, r#"{"eos_token_id": 2, "temperature": 0.6}"#).unwrap();
    let g = load_generation_config(dir.path(), &cfg).unwrap();
    assert_eq!(g.sampling_hint, None);
}
