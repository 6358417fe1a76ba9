//! The default model (models/nemotron-3-tiny, compiled into the library) against its reference
//! outputs, written by tools/train/goldens.py: transformers 5.23 in fp32 on ModelOpt 0.47's
//! dequantization of the stored weights, two held-out prompts of each domain. Tolerances as for
//! the fixture models (tests/golden.rs): logits 1e-4 absolute, router weights 1e-5, every expert
//! choice and every greedy token exact.

use std::path::{Path, PathBuf};
use std::process::Command;

use nemotron_rt::default_model;
use nemotron_rt::generate::{self, GenerateParams};
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};

#[path = "support/golden.rs"]
mod golden_file;
#[path = "support/backends.rs"]
mod support_backends;
use golden_file::{Golden, max_abs_diff};

const LOGIT_TOL: f32 = 1e-4;
const ROUTER_WEIGHT_TOL: f32 = 1e-5;

fn goldens() -> (Golden, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/default_model");
    let listing = std::fs::read_to_string(dir.join("golden.json")).unwrap();
    (
        Golden::open(&dir.join("golden.safetensors")),
        serde_json::from_str(&listing).unwrap(),
    )
}

#[test]
fn the_default_model_is_embedded() {
    assert!(
        default_model::embedded(),
        "models/{} was not compiled in",
        default_model::NAME
    );
}

#[test]
fn prefill_routing_and_greedy_tokens_equal_the_reference_on_every_backend() {
    let (golden, listing) = goldens();
    let prompts = listing["prompts"].as_array().unwrap();
    let n_greedy = listing["greedy_tokens"].as_u64().unwrap() as usize;
    let dir = default_model::dir().unwrap();
    for (name, be) in support_backends::all() {
        let model = Model::load(&dir, be, LoadOptions::default()).unwrap();
        for (p, prompt) in prompts.iter().enumerate() {
            let key = |s: &str| format!("p{p}.{s}");
            let ids = golden.ids(&key("ids"));
            let ctx = format!("prompt {p} ({}), backend {name}", prompt["domain"]);

            let mut seq = model.new_sequence().unwrap();
            let opts = ForwardOptions {
                all_logits: true,
                routing: true,
                hidden: false,
                ..Default::default()
            };
            let out = model.forward(&mut seq, &ids, opts).unwrap();
            let logits = model.backend.download(&out.logits).unwrap();
            let d = max_abs_diff(&logits, &golden.f32(&key("logits")));
            assert!(d <= LOGIT_TOL, "{ctx}: prefill logits differ by {d}");
            assert_eq!(out.routing.len(), model.moe_layers().len());
            for r in &out.routing {
                let want = golden.ids(&key(&format!("route{}.ids", r.layer)));
                assert_eq!(r.ids, want, "{ctx}: experts of layer {}", r.layer);
                let w = golden.f32(&key(&format!("route{}.weights", r.layer)));
                let d = max_abs_diff(&r.weights, &w);
                assert!(
                    d <= ROUTER_WEIGHT_TOL,
                    "{ctx}: router weights of layer {} differ by {d}",
                    r.layer
                );
            }

            let params = GenerateParams {
                max_tokens: n_greedy,
                ignore_eos: true,
                ..Default::default()
            };
            let g = generate::generate(&model, None, &ids, &params, &mut |_| true).unwrap();
            assert_eq!(
                g.tokens,
                golden.ids(&key("greedy")),
                "{ctx}: greedy tokens (the reference's smallest top-2 gap was {})",
                golden
                    .f32(&key("greedy_margin"))
                    .iter()
                    .fold(f32::INFINITY, |m, &x| m.min(x))
            );
        }
    }
}

/// What a newcomer runs: no `--model`, from a folder that is not the repository, with a fresh
/// cache folder the default model is written to.
#[test]
fn generate_and_inspect_need_no_model_from_any_folder() {
    let elsewhere = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nemotron-rt"))
            .args(args)
            .current_dir(elsewhere.path())
            .env("NEMOTRON_RT_CACHE", cache.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?} failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run(&[
        "generate",
        "--prompt",
        "In the beginning",
        "--max-tokens",
        "8",
    ]);
    assert!(!text.trim().is_empty(), "generate printed nothing");
    // The same command on a reference prompt's ids prints the reference's greedy tokens.
    let (golden, listing) = goldens();
    let n = listing["greedy_tokens"].as_u64().unwrap().to_string();
    let ids: Vec<String> = golden.ids("p0.ids").iter().map(u32::to_string).collect();
    let j: serde_json::Value = serde_json::from_str(&run(&[
        "generate",
        "--prompt-ids",
        &ids.join(","),
        "--max-tokens",
        &n,
        "--ignore-eos",
        "--json",
    ]))
    .unwrap();
    let tokens: Vec<u32> = j["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        tokens,
        golden.ids("p0.greedy"),
        "greedy tokens from the CLI"
    );
    let j: serde_json::Value = serde_json::from_str(&run(&["inspect", "--json"])).unwrap();
    assert_eq!(j["embedded"], true);
    let folder = PathBuf::from(j["model"].as_str().unwrap());
    assert!(
        folder.starts_with(cache.path()),
        "{} is not under the cache folder given",
        folder.display()
    );
    assert!(folder.join("model.safetensors").is_file());
}
