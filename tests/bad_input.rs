//! Broken checkpoints and requests: each must give an error that names the file, tensor or field
//! and what was expected, never a panic and never a model that loads anyway.

use std::path::{Path, PathBuf};

use nemotron_rt::backend::{self, BackendKind};
use nemotron_rt::generate::{self, GenerateParams};
use nemotron_rt::model::{LoadOptions, Model};
use serde_json::{Map, Value};

#[path = "support/backends.rs"]
mod backends;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// A writable copy of a fixture checkpoint folder.
fn copy_of(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    let be = backend::create(BackendKind::Cpu, 1).unwrap();
    match Model::load(dir, be, LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "error `{msg}` should mention `{n}`");
    }
}

fn read_st(path: &Path) -> (Map<String, Value>, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), b[8 + n..].to_vec())
}

fn write_st(path: &Path, header: &Map<String, Value>, data: &[u8]) {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn wrong_path_names_the_path() {
    let msg = load_err(Path::new("/no/such/checkpoint"));
    assert_mentions(&msg, &["/no/such/checkpoint"]);
}

#[test]
fn missing_config_is_named() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    assert_mentions(&load_err(d.path()), &["config.json"]);
}

#[test]
fn missing_weights_file_is_named() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    assert_mentions(&load_err(d.path()), &["model.safetensors"]);
}

#[test]
fn truncated_file_is_reported() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    assert_mentions(&load_err(d.path()), &["model.safetensors", "truncated"]);
    // Cut inside the header itself.
    std::fs::write(&p, &b[..100]).unwrap();
    assert_mentions(&load_err(d.path()), &["model.safetensors", "truncated"]);
    std::fs::write(&p, &b[..5]).unwrap();
    assert_mentions(&load_err(d.path()), &["model.safetensors", "too short"]);
}

#[test]
fn header_that_lies_about_sizes_is_reported() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("model.safetensors");
    let (mut h, data) = read_st(&p);
    let name = "backbone.layers.0.mixer.in_proj.weight";
    let e = h.get_mut(name).unwrap().as_object_mut().unwrap();
    // Claim a larger shape than the byte range holds.
    let shape = e["shape"].as_array().unwrap().clone();
    e["shape"] = serde_json::json!([shape[0].as_u64().unwrap() * 2, shape[1]]);
    write_st(&p, &h, &data);
    assert_mentions(&load_err(d.path()), &[name, "needs"]);
}

#[test]
fn overlapping_tensors_are_reported() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("model.safetensors");
    let (mut h, data) = read_st(&p);
    let a = h["backbone.layers.0.mixer.A_log"]["data_offsets"].clone();
    h.get_mut("backbone.layers.0.mixer.D").unwrap()["data_offsets"] = a;
    write_st(&p, &h, &data);
    assert_mentions(&load_err(d.path()), &["overlap"]);
}

#[test]
fn shape_not_matching_config_names_tensor_and_shapes() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    edit_config(d.path(), |c| {
        c.insert("intermediate_size".into(), 128.into());
    });
    assert_mentions(
        &load_err(d.path()),
        &[
            "backbone.layers.6.mixer.up_proj.weight",
            "[160, 64]",
            "[128, 64]",
        ],
    );
}

#[test]
fn missing_tensor_is_named() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("model.safetensors");
    let (mut h, data) = read_st(&p);
    h.remove("backbone.layers.4.mixer.experts.9.down_proj.weight");
    write_st(&p, &h, &data);
    assert_mentions(
        &load_err(d.path()),
        &[
            "backbone.layers.4.mixer.experts.9.down_proj.weight",
            "missing",
        ],
    );
}

#[test]
fn unknown_dtype_is_named() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("model.safetensors");
    let (mut h, data) = read_st(&p);
    h.get_mut("backbone.norm_f.weight").unwrap()["dtype"] = "F4_WEIRD".into();
    write_st(&p, &h, &data);
    assert_mentions(&load_err(d.path()), &["backbone.norm_f.weight", "F4_WEIRD"]);
}

#[test]
fn unsupported_known_dtype_is_named() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("model.safetensors");
    let (mut h, data) = read_st(&p);
    // Same byte count, so only the dtype is wrong: I32 where a float weight belongs.
    h.get_mut("backbone.layers.3.mixer.q_proj.weight").unwrap()["dtype"] = "I32".into();
    write_st(&p, &h, &data);
    assert_mentions(
        &load_err(d.path()),
        &["backbone.layers.3.mixer.q_proj.weight", "I32"],
    );
}

#[test]
fn extra_tensor_is_reported() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("model.safetensors");
    let (mut h, data) = read_st(&p);
    let v = h["backbone.norm_f.weight"].clone();
    h.insert("backbone.layers.8.norm.weight".into(), v);
    write_st(&p, &h, &data);
    // Shares bytes with norm_f: rejected either as overlap or as an unknown tensor.
    let msg = load_err(d.path());
    assert!(
        msg.contains("backbone.layers.8.norm.weight") || msg.contains("overlap"),
        "{msg}"
    );
}

#[test]
fn mtp_tensors_are_kept_not_rejected() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("model.safetensors");
    let (mut h, mut data) = read_st(&p);
    let start = data.len() as u64;
    data.extend_from_slice(&[0u8; 64 * 4]);
    h.insert(
        "mtp.layers.0.enorm.weight".into(),
        serde_json::json!({"dtype": "F32", "shape": [64], "data_offsets": [start, start + 256]}),
    );
    write_st(&p, &h, &data);
    let be = backend::create(BackendKind::Cpu, 1).unwrap();
    Model::load(d.path(), be, LoadOptions::default()).expect("mtp.* tensors are not an error");
}

#[test]
fn unknown_layer_type_is_named() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    edit_config(d.path(), |c| {
        let layers = c
            .get_mut("layers_block_type")
            .unwrap()
            .as_array_mut()
            .unwrap();
        layers[2] = "retention".into();
    });
    assert_mentions(&load_err(d.path()), &["retention", "config.json"]);
}

#[test]
fn unknown_quant_algo_is_named() {
    let d = copy_of("nemotronh_tiny_grouped_nvfp4/hf");
    let p = d.path().join("hf_quant_config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"NVFP4\"", "\"W4A16_AWQ\"");
    std::fs::write(&p, text).unwrap();
    assert_mentions(&load_err(d.path()), &["W4A16_AWQ"]);
}

#[test]
fn mislabelled_quantization_names_the_module() {
    let d = copy_of("nemotronh_tiny_grouped_nvfp4_super/hf");
    // Claim layer 1's experts are FP8 while they are stored as NVFP4, in both descriptions.
    for f in ["hf_quant_config.json", "config.json"] {
        let p = d.path().join(f);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let q = if f == "config.json" {
            v.get_mut("quantization_config").unwrap()
        } else {
            v.get_mut("quantization").unwrap()
        };
        q["quantized_layers"]["backbone.layers.1.mixer.experts"] =
            serde_json::json!({"quant_algo": "FP8"});
        if let Some(groups) = q.get_mut("config_groups") {
            // Keep config_groups consistent with quantized_layers as a real export would.
            for g in groups.as_object_mut().unwrap().values_mut() {
                if let Some(t) = g.get_mut("targets").and_then(Value::as_array_mut) {
                    t.retain(|x| x != "backbone.layers.1.mixer.experts");
                }
            }
        }
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    assert_mentions(
        &load_err(d.path()),
        &["backbone.layers.1.mixer.experts.", "NVFP4", "FP8"],
    );
}

#[test]
fn quantized_weights_without_quant_config_are_rejected() {
    let d = copy_of("nemotronh_tiny_grouped_nvfp4/hf");
    std::fs::remove_file(d.path().join("hf_quant_config.json")).unwrap();
    edit_config(d.path(), |c| {
        c.remove("quantization_config");
    });
    assert_mentions(&load_err(d.path()), &["NVFP4", "no quantization config"]);
}

#[test]
fn sharded_index_naming_a_missing_shard_is_reported() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    // Index only: beside model.safetensors the index is ignored, as in transformers.
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"backbone.norm_f.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    assert_mentions(
        &load_err(d.path()),
        &["model-00002-of-00002.safetensors", "does not exist"],
    );
}

fn tiny_model() -> Model {
    let be = backend::create(BackendKind::Cpu, 1).unwrap();
    Model::load(
        &fixture("nemotronh_tiny_grouped/hf"),
        be,
        LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn prompt_over_the_context_is_refused() {
    let model = tiny_model();
    let params = GenerateParams {
        max_context: Some(4),
        ..Default::default()
    };
    let err = generate::generate(&model, None, &[5, 6, 7, 8, 9], &params, &mut |_| true)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["5 tokens", "at most 4"]);
}

#[test]
fn token_outside_vocabulary_is_refused() {
    let model = tiny_model();
    let err = generate::generate(
        &model,
        None,
        &[3, 512],
        &GenerateParams::default(),
        &mut |_| true,
    )
    .unwrap_err()
    .to_string();
    assert_mentions(&err, &["512", "vocab"]);
}

#[test]
fn empty_prompt_and_bad_sampling_are_refused() {
    let model = tiny_model();
    let p = GenerateParams::default();
    assert!(generate::generate(&model, None, &[], &p, &mut |_| true).is_err());
    let mut p = GenerateParams::default();
    p.sampling.top_p = 1.5;
    let err = generate::generate(&model, None, &[3], &p, &mut |_| true)
        .unwrap_err()
        .to_string();
    assert_mentions(&err, &["top_p", "1.5"]);
}

/// Python's `json.dumps` writes non-finite floats as bare `Infinity`: such a config.json (here
/// in `time_step_limit`'s list) loads, for the model as well as for its own parser.
#[test]
fn python_style_infinity_in_config_loads() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let p = d.path().join("config.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let hf_tagged = "{\n      \"__float__\": \"Infinity\"\n    }";
    assert!(
        text.contains(hf_tagged),
        "the fixture writes HF's tagged form"
    );
    std::fs::write(&p, text.replace(hf_tagged, "Infinity")).unwrap();
    let be = backend::create(BackendKind::Cpu, 1).unwrap();
    Model::load(d.path(), be, LoadOptions::default()).unwrap();
}

/// Overwrites `bytes` at element `index` (of `size` bytes each) of tensor `name`.
fn poke(path: &Path, name: &str, index: usize, bytes: &[u8]) {
    let (h, mut data) = read_st(path);
    let start = h[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = start + index * bytes.len();
    data[at..at + bytes.len()].copy_from_slice(bytes);
    write_st(path, &h, &data);
}

/// A NaN or infinity in a weight matrix (F32, BF16, FP8 E4M3) or an NVFP4 block scale is
/// named at load with its row and column, instead of loading into NaN logits and empty text.
#[test]
fn non_finite_weights_are_named_with_their_place() {
    let cases: [(&str, &str, usize, &[u8], &str); 4] = [
        (
            "nemotronh_tiny_grouped/hf",
            "backbone.layers.3.mixer.q_proj.weight",
            2 * 64 + 5,
            &f32::NAN.to_le_bytes(),
            "row 2, column 5",
        ),
        (
            "nemotronh_tiny_grouped_nvfp4_super/hf",
            "backbone.embeddings.weight",
            3 * 64 + 1,
            &half::bf16::INFINITY.to_le_bytes(),
            "row 3, column 1",
        ),
        (
            "nemotronh_tiny_grouped_nvfp4_super/hf",
            "backbone.layers.0.mixer.in_proj.weight",
            64 + 63,
            &[0xff],
            "row 1, column 63",
        ),
        (
            "nemotronh_tiny_grouped_nvfp4_super/hf",
            "backbone.layers.1.mixer.experts.0.up_proj.weight_scale",
            2 * 2 + 1,
            &[0x7f],
            "row 2, column 1",
        ),
    ];
    for (model, name, index, bytes, place) in cases {
        let d = copy_of(model);
        poke(&d.path().join("model.safetensors"), name, index, bytes);
        assert_mentions(&load_err(d.path()), &[name, place, "NaN or infinite"]);
    }
}

/// A checkpoint that declares an FP8 KV cache but lacks an attention layer's scale is
/// mislabelled: the missing scale is named, with the file that declares the cache.
#[test]
fn fp8_kv_cache_without_its_scale_is_named() {
    let d = copy_of("nemotronh_tiny_grouped_nvfp4_super/hf");
    let p = d.path().join("model.safetensors");
    let (mut h, data) = read_st(&p);
    let name = "backbone.layers.3.mixer.v_proj.v_scale";
    assert!(h.remove(name).is_some(), "the fixture has {name}");
    write_st(&p, &h, &data);
    assert_mentions(
        &load_err(d.path()),
        &[name, "hf_quant_config.json", "kv_cache_quant_algo"],
    );
}

/// A folder with both `model.safetensors` and an index loads the single file, as transformers'
/// `from_pretrained` does (here the index names a shard that does not exist).
#[test]
fn single_file_wins_over_an_index_as_in_transformers() {
    let d = copy_of("nemotronh_tiny_grouped/hf");
    let index = serde_json::json!({
        "metadata": {"total_size": 0},
        "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}
    });
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    let be = backend::create(BackendKind::Cpu, 1).unwrap();
    Model::load(d.path(), be, LoadOptions::default()).unwrap();
}

/// Loads `dir` on every backend present and returns each one's error.
fn load_errs_everywhere(dir: &Path) -> Vec<(&'static str, String)> {
    backends::all()
        .into_iter()
        .map(
            |(name, be)| match Model::load(dir, be, LoadOptions::default()) {
                Ok(_) => panic!("{} loaded on {name} but should have failed", dir.display()),
                Err(e) => (name, e.to_string()),
            },
        )
        .collect()
}

/// Corrupt values of one config field each, on the fixture `nemotronh_tiny_grouped_nvfp4_super`
/// (head_dim 16, 8 heads, 2 KV heads, mamba 8 x 16 with 2 groups of state 16, hidden 64,
/// vocabulary 512, 16 experts of 48 on a latent 32, MLP 160, shared expert 96).
///
/// The first four make a product of fields wrap around 2^64 back to exactly the width the
/// fixture stores, so that with plain usize products a release build loaded the model with
/// wrong shapes (the issue's reproductions are the first three). The others are caught by the
/// bounds before anything else: each is also a stored tensor's dimension (or a relation such as
/// heads % kv_heads), so the old code refused them too, only later and by another rule.
const WRAPPING: &[(&str, u64)] = &[
    // 8 * (2^61 + 16) = 2^64 + 128: the mamba inner width I (the issue used 999999999999999999).
    ("mamba_head_dim", (1 << 61) + 16),
    // 2 * 2 * (2^62 + 16) = 2^64 + 64: B and C's width in the conv channels and in_proj.
    ("ssm_state_size", (1 << 62) + 16),
    // (2^60 + 8) * 16 = 2^64 + 128: the q width; every head then read KV head 0.
    ("num_attention_heads", (1 << 60) + 8),
    // 8 * (2^63 + 16) = 2^66 + 128 and 2 * (2^63 + 16) = 2^64 + 32: q and k/v widths both wrap.
    ("head_dim", (1 << 63) + 16),
    ("num_key_value_heads", (1 << 60) + 2),
    ("mamba_num_heads", (1 << 60) + 8),
    ("n_groups", (1 << 61) + 2),
    ("hidden_size", (1 << 55) + 64),
    ("vocab_size", (1 << 58) + 512),
    ("n_routed_experts", (1 << 55) + 16),
    ("moe_intermediate_size", (1 << 55) + 48),
    ("moe_latent_size", (1 << 56) + 32),
    ("intermediate_size", (1 << 58) + 160),
    ("moe_shared_expert_intermediate_size", (1 << 58) + 96),
    ("conv_kernel", 1 << 62),
    ("max_position_embeddings", 1 << 62),
    ("chunk_size", 1 << 62),
];

#[test]
fn config_sizes_that_would_wrap_are_refused_by_name_on_every_backend() {
    // The config is refused before a backend is touched; loading through each one checks that
    // no backend opens the model some other way.
    for &(field, value) in WRAPPING {
        let d = copy_of("nemotronh_tiny_grouped_nvfp4_super/hf");
        edit_config(d.path(), |c| {
            c.insert(field.into(), value.into());
        });
        for (backend, msg) in load_errs_everywhere(d.path()) {
            assert_mentions(&msg, &["config.json", field, &value.to_string()]);
            assert!(
                msg.contains("above the limit") || msg.contains("overflows"),
                "{field} = {value} on {backend}: `{msg}` should say which bound it broke"
            );
        }
    }
}

/// The issue's first reproduction as the user wrote it: the number is named, and so is the limit.
#[test]
fn huge_mamba_head_dim_names_field_and_limit() {
    let d = copy_of("nemotronh_tiny_grouped_nvfp4_super/hf");
    edit_config(d.path(), |c| {
        c.insert("mamba_head_dim".into(), 999_999_999_999_999_999u64.into());
    });
    let msg = load_err(d.path());
    assert_mentions(
        &msg,
        &["mamba_head_dim", "999999999999999999", "16777216", "2^24"],
    );
}

/// Sizes within each bound on their own, whose product is not: 2^24 experts of 2^24 x 2^24
/// would be 2^72 elements.
#[test]
fn product_over_the_element_limit_is_named() {
    let d = copy_of("nemotronh_tiny_grouped_nvfp4_super/hf");
    edit_config(d.path(), |c| {
        for f in [
            "n_routed_experts",
            "moe_intermediate_size",
            "moe_latent_size",
        ] {
            c.insert(f.into(), (1u64 << 24).into());
        }
        c.insert("n_group".into(), 1.into());
        c.insert("topk_group".into(), 1.into());
    });
    let msg = load_err(d.path());
    assert_mentions(
        &msg,
        &[
            "n_routed_experts * moe_intermediate_size * moe_latent_size",
            "overflows",
        ],
    );
}

/// The backends' own size arithmetic is checked too: dims whose products overflow (which a
/// validated config never gives, but the trait is public) are an error on every backend, not a
/// wrapped buffer size or an abort.
#[test]
fn backends_refuse_dims_whose_products_overflow() {
    use nemotron_rt::backend::{AttnDims, SsmDims};
    let attn = AttnDims {
        heads: 1 << 62,
        kv_heads: 1 << 62,
        head_dim: 16,
    };
    let ssm = SsmDims {
        heads: 1 << 40,
        head_dim: 1 << 40,
        groups: 1,
        state: 16,
    };
    for (name, be) in backends::all() {
        let e = be.new_kv_cache(attn).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("overflows")),
            "{name}: new_kv_cache gave {e:?}"
        );
        let e = be.new_ssm_state(ssm).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("overflows")
                || e.contains("more bytes than this machine can address")),
            "{name}: new_ssm_state gave {e:?}"
        );
        let e = be
            .new_conv_state(usize::MAX / 2, 5)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("more bytes than this machine can address")),
            "{name}: new_conv_state gave {e:?}"
        );
    }
}

/// `tokenizers` 0.23 panics on a `decoder` object holding a string it cannot decode (found by
/// fuzzing); such a tokenizer.json must be an error naming the file and the place.
#[test]
fn tokenizer_json_that_panics_the_library_is_an_error() {
    use nemotron_rt::tokenizer::Tokenizer;
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.json"),
    )
    .unwrap();
    let at = good.find("\"decoder\"").unwrap();
    let open = at + good[at..].find('{').unwrap() + 1;
    let with = |insert: &[u8]| {
        let mut b = good.as_bytes()[..open].to_vec();
        b.extend_from_slice(insert);
        b.extend_from_slice(&good.as_bytes()[open..]);
        b
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    for (bad, expected) in [
        (with(b"\"x\\udc00\": true, "), "lone leading surrogate"),
        (with(b"\"x\xff\": true, "), "not valid UTF-8"),
    ] {
        std::fs::write(&path, bad).unwrap();
        let msg = Tokenizer::from_file(&path).unwrap_err().to_string();
        assert_mentions(&msg, &["tokenizer.json", expected]);
    }
    std::fs::write(&path, &good).unwrap();
    Tokenizer::from_file(&path).unwrap();
}

/// Each kind of bound, at its edge: a field at the limit is accepted and one past it refused; a
/// product over the width or element limit that does not overflow 64 bits is refused by the
/// limit; so is a sum (the conv channels) and the layer count.
#[test]
fn every_bound_is_enforced_at_its_edge() {
    use nemotron_rt::config::ModelConfig;
    let text =
        std::fs::read_to_string(fixture("nemotronh_tiny_grouped_nvfp4_super/hf/config.json"))
            .unwrap();
    let base: Map<String, Value> = serde_json::from_str(&text).unwrap();
    let check = |edits: &[(&str, Value)]| {
        let mut c = base.clone();
        for (k, v) in edits {
            c.insert((*k).into(), v.clone());
        }
        ModelConfig::from_json_str(&Value::Object(c).to_string(), Path::new("config.json"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let limit = 1u64 << 24;
    // A field at the limit passes the bounds (it is then refused by no rule of the config).
    assert_eq!(check(&[("vocab_size", limit.into())]), Ok(()));
    let e = check(&[("vocab_size", (limit + 1).into())]).unwrap_err();
    assert_mentions(
        &e,
        &["vocab_size (16777217)", "above the limit of 16777216"],
    );
    // A width over 2^24 without overflow: 2^20 heads of 2^10.
    let e = check(&[
        ("num_attention_heads", (1u64 << 20).into()),
        ("num_key_value_heads", 2.into()),
        ("head_dim", (1u64 << 10).into()),
    ])
    .unwrap_err();
    assert_mentions(
        &e,
        &[
            "num_attention_heads * head_dim",
            "1048576 * 1024 = 1073741824",
            "above the limit",
        ],
    );
    // An expert stack over 2^40 elements without overflow: 2^16 experts of 2^16 x 2^16.
    let e = check(&[
        ("n_routed_experts", (1u64 << 16).into()),
        ("moe_intermediate_size", (1u64 << 16).into()),
        ("moe_latent_size", (1u64 << 16).into()),
    ])
    .unwrap_err();
    assert_mentions(
        &e,
        &["one layer's routed experts", "281474976710656", "2^40"],
    );
    // A sum over the width limit: I = 2^23 and 2GN = 2^24.
    let e = check(&[
        ("mamba_num_heads", (1u64 << 13).into()),
        ("mamba_head_dim", (1u64 << 10).into()),
        ("n_groups", (1u64 << 11).into()),
        ("ssm_state_size", (1u64 << 12).into()),
    ])
    .unwrap_err();
    assert_mentions(
        &e,
        &["the conv channels", "8388608 + 16777216", "above the limit"],
    );
    // The layer count.
    let many: Vec<Value> = (0..4097).map(|_| "mlp".into()).collect();
    let e = check(&[("layers_block_type", many.into())]).unwrap_err();
    assert_mentions(
        &e,
        &["the number of layers (4097)", "above the limit of 4096"],
    );
}
