//! Synthetic checkpoints (`nemotron_rt::synth`): for every recipe a Tiny-shape checkpoint in ≥ 3
//! shards must load with the crate's own loader, store each module in the recipe's format, count
//! the parameters a hand count from the Tiny dims gives, and run a finite forward pass whose
//! routing spreads over many experts; files are bit-identical per seed; the tokenizer has exactly
//! `vocab` ids. Super-shape checks write one attention layer for real, and count the parameters
//! of one MoE layer on a skeleton (sparse, zero-filled) checkpoint, since writing Super's 512
//! experts for real takes far longer than a test should.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use nemotron_rt::backend::{self, BackendKind};
use nemotron_rt::checkpoint::Checkpoint;
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};
use nemotron_rt::synth::{self, Recipe, Shape, SynthOptions, SynthSummary};
use nemotron_rt::tokenizer::Tokenizer;

const PATTERN: &str = "MEM*EM-E";
const VOCAB: usize = 512;
/// Small enough that the Tiny checkpoints need several shards.
const SHARD: u64 = 100_000;

// Tiny dims, written out by hand (not read from `Shape::Tiny.dims()`), so the counts below are an
// independent check of both the writer and the loader.
const D: u64 = 64;
const H: u64 = 8;
const P: u64 = 16;
const I: u64 = H * P;
const G: u64 = 2;
const N: u64 = 16;
const K: u64 = 4;
const NH: u64 = 4;
const NKV: u64 = 2;
const HD: u64 = 16;
const E: u64 = 16;
const TOP_K: usize = 4;
const L: u64 = 32;
const F: u64 = 48;
const FSH: u64 = 96;
const FMLP: u64 = 96;

fn tiny(recipe: Recipe, seed: u64, out: &Path) -> SynthOptions {
    SynthOptions {
        shape: Shape::Tiny,
        pattern: PATTERN.into(),
        vocab: VOCAB,
        recipe,
        seed,
        out: out.to_path_buf(),
        max_shard_bytes: SHARD,
        progress: false,
    }
}

fn load(dir: &Path) -> Model {
    let be = backend::create(BackendKind::Cpu, 2).unwrap();
    Model::load(dir, be, LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// `group -> (formats, params)` from the loader's books.
fn groups(model: &Model) -> BTreeMap<String, (Vec<String>, u64)> {
    model
        .info
        .groups
        .iter()
        .map(|g| (g.name.clone(), (g.formats.clone(), g.params)))
        .collect()
}

/// Parameters per group for pattern `MEM*EM-E` (3 Mamba, 3 MoE, 1 attention, 1 MLP layer).
fn expected_params() -> BTreeMap<&'static str, u64> {
    let conv_dim = I + 2 * G * N;
    let in_proj = (2 * I + 2 * G * N + H) * D;
    let (mamba, moe) = (3, 3);
    BTreeMap::from([
        ("embeddings", VOCAB as u64 * D),
        ("lm_head", VOCAB as u64 * D),
        ("norm_f", D),
        // The loader books the layer's pre-norm and the mixer's gated norm as one group.
        ("mamba.norm", mamba * D + mamba * I),
        ("mamba.in_proj", mamba * in_proj),
        ("mamba.conv1d", mamba * conv_dim * K),
        ("mamba.conv1d.bias", mamba * conv_dim),
        ("mamba.A_log", mamba * H),
        ("mamba.D", mamba * H),
        ("mamba.dt_bias", mamba * H),
        ("mamba.out_proj", mamba * D * I),
        ("attention.norm", D),
        ("attention.q_proj", NH * HD * D),
        ("attention.k_proj", NKV * HD * D),
        ("attention.v_proj", NKV * HD * D),
        ("attention.o_proj", D * NH * HD),
        ("mlp.norm", D),
        ("mlp.up_proj", FMLP * D),
        ("mlp.down_proj", D * FMLP),
        ("moe.norm", moe * D),
        ("moe.gate", moe * E * D),
        ("moe.gate.e_score_correction_bias", moe * E),
        ("moe.fc1_latent_proj", moe * L * D),
        ("moe.fc2_latent_proj", moe * D * L),
        // Routed experts: E * 2 * L * F per MoE layer, split over up and down.
        ("moe.experts.*.up_proj", moe * E * F * L),
        ("moe.experts.*.down_proj", moe * E * L * F),
        ("moe.shared_experts.up_proj", moe * FSH * D),
        ("moe.shared_experts.down_proj", moe * D * FSH),
    ])
}

/// The format each recipe stores each group in.
fn expected_format(recipe: Recipe, group: &str) -> &'static str {
    let routed = group.starts_with("moe.experts.");
    let shared = group.starts_with("moe.shared_experts.");
    let mamba_proj = group == "mamba.in_proj" || group == "mamba.out_proj";
    if group == "moe.gate.e_score_correction_bias" {
        return "F32";
    }
    match recipe {
        Recipe::Bf16 => "BF16",
        Recipe::Nvfp4 if routed || shared => "NVFP4",
        Recipe::Nvfp4 => "BF16",
        Recipe::Mixed if routed => "NVFP4",
        Recipe::Mixed if shared || mamba_proj => "FP8",
        Recipe::Mixed => "BF16",
    }
}

fn shard_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    v.sort();
    v
}

fn check_recipe(recipe: Recipe) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let summary = synth::synth(&tiny(recipe, 7, &dir)).unwrap();

    // Layout: ≥ 3 shards named like save_pretrained's, an index that lists every tensor.
    assert!(
        summary.shards >= 3,
        "{recipe:?}: only {} shards",
        summary.shards
    );
    let shards = shard_names(&dir);
    assert_eq!(shards.len(), summary.shards);
    for (i, s) in shards.iter().enumerate() {
        let want = format!("model-{:05}-of-{:05}.safetensors", i + 1, summary.shards);
        assert_eq!(s, &want);
    }
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["metadata"]["total_size"].as_u64(),
        Some(summary.tensor_bytes)
    );
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        summary.tensors
    );
    let on_disk: u64 = summary
        .files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(on_disk, summary.total_bytes);
    assert_eq!(
        dir.join("hf_quant_config.json").exists(),
        recipe != Recipe::Bf16
    );

    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.len(), summary.tensors);
    assert_eq!(ck.total_bytes(), summary.tensor_bytes);

    // The loader consumes every tensor and books the formats and counts we expect.
    let model = load(&dir);
    assert_eq!(model.info.pattern, PATTERN);
    assert_eq!(model.info.kv_cache_fp8, recipe == Recipe::Mixed);
    assert_eq!(model.quant.is_some(), recipe != Recipe::Bf16);
    let got = groups(&model);
    let want = expected_params();
    let got_names: BTreeSet<&str> = got.keys().map(String::as_str).collect();
    let want_names: BTreeSet<&str> = want.keys().copied().collect();
    assert_eq!(got_names, want_names, "{recipe:?}: tensor groups");
    for (name, &params) in &want {
        let (formats, p) = &got[*name];
        assert_eq!(*p, params, "{recipe:?}: parameters of {name}");
        assert_eq!(
            formats,
            &vec![expected_format(recipe, name).to_string()],
            "{recipe:?}: format of {name}"
        );
    }
    let total: u64 = want.values().sum();
    assert_eq!(model.info.total_params(), total);
    assert_eq!(summary.params, total);
    // Routed experts: E * 2 * L * F per MoE layer.
    assert_eq!(
        got["moe.experts.*.up_proj"].1 + got["moe.experts.*.down_proj"].1,
        3 * E * 2 * L * F
    );

    // A 16-token forward pass: finite, bounded, routing spread over more than k experts.
    let ids: Vec<u32> = (0..16u32)
        .map(|i| 3 + (i * 37) % (VOCAB as u32 - 3))
        .collect();
    let mut seq = model.new_sequence().unwrap();
    let opts = ForwardOptions {
        all_logits: true,
        routing: true,
        hidden: true,
        ..Default::default()
    };
    let out = model.forward(&mut seq, &ids, opts).unwrap();
    let logits = model.backend.download(&out.logits).unwrap();
    assert_eq!(logits.len(), 16 * VOCAB);
    assert!(logits.iter().all(|v| v.is_finite()), "{recipe:?}: logits");
    let spread = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        spread > 0.1 && spread < 100.0,
        "{recipe:?}: max |logit| {spread}"
    );
    for (name, h) in &out.hidden {
        let max = h.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            h.iter().all(|v| v.is_finite()) && max < 1e3,
            "{recipe:?}: residual stream after {name} reaches {max}"
        );
    }
    assert_eq!(out.routing.len(), 3);
    for r in &out.routing {
        assert_eq!(r.k, TOP_K);
        let used: BTreeSet<u32> = r.ids.iter().copied().collect();
        assert!(
            used.len() > TOP_K,
            "{recipe:?}: layer {} routes 16 tokens to only {} experts",
            r.layer,
            used.len()
        );
        assert!(r.weights.iter().all(|w| w.is_finite() && *w > 0.0));
    }
}

#[test]
fn tiny_bf16_loads_counts_and_runs() {
    check_recipe(Recipe::Bf16);
}

#[test]
fn tiny_nvfp4_loads_counts_and_runs() {
    check_recipe(Recipe::Nvfp4);
}

#[test]
fn tiny_mixed_loads_counts_and_runs() {
    check_recipe(Recipe::Mixed);
}

fn read_all(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_seed_same_bytes_other_seed_other_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
    synth::synth(&tiny(Recipe::Mixed, 1, &dirs[0])).unwrap();
    synth::synth(&tiny(Recipe::Mixed, 1, &dirs[1])).unwrap();
    synth::synth(&tiny(Recipe::Mixed, 2, &dirs[2])).unwrap();
    let (a, b, c) = (read_all(&dirs[0]), read_all(&dirs[1]), read_all(&dirs[2]));
    assert_eq!(a, b, "same options, same bytes");
    assert_eq!(a.keys().collect::<Vec<_>>(), c.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        if name.ends_with(".safetensors") {
            assert_ne!(bytes, &c[name], "{name} does not depend on the seed");
            assert_eq!(bytes.len(), c[name].len());
        } else {
            assert_eq!(bytes, &c[name], "{name} should not depend on the seed");
        }
    }
}

#[test]
fn skeleton_has_the_same_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, skel) = (tmp.path().join("full"), tmp.path().join("skel"));
    let s1 = synth::synth(&tiny(Recipe::Nvfp4, 3, &full)).unwrap();
    let s2 = synth::synth_skeleton(&tiny(Recipe::Nvfp4, 3, &skel)).unwrap();
    let strip = |s: &SynthSummary, root: &Path| {
        let files: Vec<PathBuf> = s
            .files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        (
            files,
            s.shards,
            s.total_bytes,
            s.tensor_bytes,
            s.tensors,
            s.params,
        )
    };
    assert_eq!(strip(&s1, &full), strip(&s2, &skel));
    for name in shard_names(&full) {
        let (a, b) = (
            std::fs::read(full.join(&name)).unwrap(),
            std::fs::read(skel.join(&name)).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let n = 8 + u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
        assert_eq!(a[..n], b[..n], "{name}: headers differ");
    }
    let model = load(&skel);
    assert_eq!(model.info.total_params(), s1.params);
}

#[test]
fn tokenizer_has_exactly_vocab_ids() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, vocab) in [259usize, 300, 1000].into_iter().enumerate() {
        let dir = tmp.path().join(i.to_string());
        let mut o = tiny(Recipe::Bf16, 0, &dir);
        o.vocab = vocab;
        o.pattern = "*".into();
        synth::synth(&o).unwrap();
        let tok = Tokenizer::from_dir(&dir).unwrap();
        assert_eq!(tok.vocab_size(), vocab);
        assert_eq!(tok.token_to_id("<unk>"), Some(0));
        assert_eq!(tok.token_to_id("<s>"), Some(1));
        assert_eq!(tok.token_to_id("</s>"), Some(2));
        assert!(tok.id_to_token(vocab as u32 - 1).is_some());
        assert_eq!(tok.id_to_token(vocab as u32), None);
        let text = "the quick brown fox, ünïcödé ✓";
        let ids = tok.encode(text, false).unwrap();
        assert!(ids.iter().all(|&id| (id as usize) < vocab));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        if vocab == 1000 {
            // Merged tokens make words shorter than their bytes.
            assert!(tok.encode("the quick", false).unwrap().len() < 9);
        }
        let model = load(&dir);
        assert_eq!(model.config.vocab_size, vocab);
    }
}

#[test]
fn bad_options_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("fresh");
    let msg = |o: &SynthOptions| synth::synth(o).unwrap_err().to_string();

    let mut o = tiny(Recipe::Bf16, 0, &fresh);
    o.pattern = "MEX*".into();
    let m = msg(&o);
    assert!(m.contains("'X'") && m.contains("position 2"), "{m}");
    o.pattern = String::new();
    assert!(msg(&o).contains("empty"));

    let mut o = tiny(Recipe::Bf16, 0, &fresh);
    o.vocab = 258;
    assert!(msg(&o).contains("vocab 258"), "{}", msg(&o));
    assert!(!fresh.exists(), "nothing is written for invalid options");

    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "x").unwrap();
    let m = msg(&tiny(Recipe::Bf16, 0, &full));
    assert!(m.contains("not empty"), "{m}");
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);

    let file = tmp.path().join("a_file");
    std::fs::write(&file, "x").unwrap();
    assert!(msg(&tiny(Recipe::Bf16, 0, &file)).contains("not a directory"));

    // An existing empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    synth::synth(&tiny(Recipe::Bf16, 0, &empty)).unwrap();
}

fn super_opts(pattern: &str, out: &Path) -> SynthOptions {
    let mut o = SynthOptions::new(Shape::Super, pattern, out);
    o.vocab = 512;
    o.recipe = Recipe::Mixed;
    o
}

#[test]
fn super_attention_layer_has_super_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("super_attn");
    let s = synth::synth(&super_opts("*", &dir)).unwrap();
    assert_eq!(s.shards, 1);
    assert!(dir.join("model.safetensors").exists());
    let ck = Checkpoint::open(&dir).unwrap();
    let shape = |n: &str| ck.get(n).unwrap_or_else(|| panic!("{n}")).shape.clone();
    let p = "backbone.layers.0.mixer";
    assert_eq!(shape(&format!("{p}.q_proj.weight")), [4096, 4096]);
    assert_eq!(shape(&format!("{p}.k_proj.weight")), [256, 4096]);
    assert_eq!(shape(&format!("{p}.v_proj.weight")), [256, 4096]);
    assert_eq!(shape(&format!("{p}.o_proj.weight")), [4096, 4096]);
    assert_eq!(shape(&format!("{p}.k_proj.k_scale")), Vec::<usize>::new());
    assert_eq!(shape(&format!("{p}.v_proj.v_scale")), Vec::<usize>::new());
    assert_eq!(shape("backbone.embeddings.weight"), [512, 4096]);
    assert_eq!(shape("lm_head.weight"), [512, 4096]);

    let model = load(&dir);
    let c = &model.config;
    assert_eq!(
        (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim
        ),
        (4096, 32, 2, 128)
    );
    assert_eq!(
        (c.n_routed_experts, c.num_experts_per_tok, c.moe_latent_size),
        (512, 22, Some(1024))
    );
    assert_eq!(
        (
            c.mamba_num_heads,
            c.mamba_head_dim,
            c.n_groups,
            c.ssm_state_size
        ),
        (128, 64, 8, 128)
    );
    assert_eq!(c.routed_scaling_factor, 5.0);
    assert!(model.info.kv_cache_fp8);
    let g = groups(&model);
    assert_eq!(
        g["attention.q_proj"],
        (vec!["BF16".to_string()], 4096 * 4096)
    );
    assert_eq!(
        g["attention.k_proj"],
        (vec!["BF16".to_string()], 256 * 4096)
    );

    let mut seq = model.new_sequence().unwrap();
    let out = model
        .forward(&mut seq, &[1, 300, 42, 7], ForwardOptions::default())
        .unwrap();
    let logits = model.backend.download(&out.logits).unwrap();
    assert_eq!(logits.len(), 512);
    assert!(logits.iter().all(|v| v.is_finite()));
}

/// Super's per-MoE-layer parameter count. Writing one real Super `E` layer (512 experts, 2.8G
/// NVFP4-quantized weights, ~1.6 GB) takes far more than 20 s on a 2-core machine, so the count
/// is checked on a skeleton checkpoint: the same headers and configs with sparse zero-filled
/// weight data, which the crate's loader opens, checks and books like any other.
#[test]
fn super_moe_layer_parameter_count() {
    let (hs, e, l, f, fsh) = (4096u64, 512u64, 1024u64, 2688u64, 5376u64);
    let routed = e * 2 * l * f;
    assert_eq!(routed, 512 * 2 * 1024 * 2688);
    let per_layer = hs // pre-norm
        + e * hs + e // router gate + e_score_correction_bias
        + l * hs + hs * l // fc1 / fc2 latent projections
        + routed
        + fsh * hs + hs * fsh; // shared expert

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("super_moe");
    let s = synth::synth_skeleton(&super_opts("E", &dir)).unwrap();
    let model = load(&dir);
    let g = groups(&model);
    let moe: u64 = g
        .iter()
        .filter(|(k, _)| k.starts_with("moe."))
        .map(|(_, v)| v.1)
        .sum();
    assert_eq!(moe, per_layer);
    assert_eq!(
        g["moe.experts.*.up_proj"],
        (vec!["NVFP4".to_string()], e * f * l)
    );
    assert_eq!(
        g["moe.experts.*.down_proj"],
        (vec!["NVFP4".to_string()], e * l * f)
    );
    assert_eq!(g["moe.shared_experts.up_proj"].0, ["FP8"]);
    assert_eq!(s.params, per_layer + 2 * 512 * hs + hs);
    // NVFP4 bytes: half a byte per weight, one E4M3 scale per 16, the f32 tensor scale
    // of each matrix.
    let experts_bytes: u64 = model
        .info
        .groups
        .iter()
        .filter(|g| g.name.starts_with("moe.experts."))
        .map(|g| g.bytes)
        .sum();
    assert_eq!(experts_bytes, routed / 2 + routed / 16 + 2 * e * 4);
}

#[test]
fn oversized_tensors_get_their_own_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("small_shards");
    let mut o = tiny(Recipe::Mixed, 5, &dir);
    let limit = 20_000;
    o.max_shard_bytes = limit;
    let s = synth::synth(&o).unwrap();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    let mut per_shard: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (name, file) in index["weight_map"].as_object().unwrap() {
        let t = ck.get(name).unwrap();
        let e = per_shard
            .entry(file.as_str().unwrap().to_string())
            .or_default();
        e.0 += 1;
        e.1 += t.data.len() as u64;
    }
    assert_eq!(per_shard.len(), s.shards);
    for (file, (tensors, bytes)) in &per_shard {
        assert!(
            *bytes <= limit || *tensors == 1,
            "{file}: {tensors} tensors, {bytes} bytes"
        );
    }
    // The embedding table (512 x 64 BF16 = 65536 bytes) is alone in its shard.
    let emb = index["weight_map"]["backbone.embeddings.weight"]
        .as_str()
        .unwrap();
    assert_eq!(per_shard[emb], (1, 65536));
    load(&dir);
}
