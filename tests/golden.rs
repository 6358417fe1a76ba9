//! Golden tests: the CPU engine against outputs computed by Hugging Face transformers 5.23 (and,
//! for the quantized checkpoints, ModelOpt 0.47's dequantization), copied unchanged from
//! ../shared/fixtures into tests/fixtures/models. Tolerances are those of
//! tests/fixtures/models/README.md: logits 1e-4 absolute, router weights 1e-5, every greedy
//! token and every routing decision exact.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nemotron_rt::backend::Backend;
use nemotron_rt::generate::{self, GenerateParams};
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};

#[path = "support/golden.rs"]
mod golden_file;
#[path = "support/backends.rs"]
mod support_backends;
use golden_file::{Golden, max_abs_diff};

const LOGIT_TOL: f32 = 1e-4;
const ROUTER_WEIGHT_TOL: f32 = 1e-5;
/// Hidden states: relative to the largest magnitude in the tensor (fixtures README: ~1e-5).
const HIDDEN_REL_TOL: f32 = 2e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// The CPU engine and every other backend present; an absent one is skipped with the reason.
fn backends() -> Vec<Arc<dyn Backend>> {
    support_backends::all()
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

/// Runs every check of one checkpoint against one golden file.
fn check_model(model_dir: &str, golden_file: &str) {
    let root = fixtures();
    let golden = Golden::open(&root.join(golden_file));
    for be in backends() {
        let name = be.info().name;
        let model = Model::load(&root.join(model_dir), be, LoadOptions::default())
            .unwrap_or_else(|e| panic!("{model_dir} loads: {e}"));
        let moe_layers = model.moe_layers();
        assert!(!moe_layers.is_empty());
        let v = model.config.vocab_size;
        for p in 0..3 {
            let key = |s: &str| format!("prompt{p}.{s}");
            let ids = golden.ids(&key("input_ids"));
            let t = ids.len();
            let ctx = format!("{model_dir} vs {golden_file}, prompt {p} (T={t}), backend {name}");

            // Prefill: logits, routing and (where recorded) every hidden state.
            let mut seq = model.new_sequence().unwrap();
            let want_hidden = golden.has(&key("hidden.layer0"));
            let out = model
                .forward(
                    &mut seq,
                    &ids,
                    ForwardOptions {
                        all_logits: true,
                        routing: true,
                        hidden: want_hidden,
                        ..Default::default()
                    },
                )
                .unwrap();
            let logits = model.backend.download(&out.logits).unwrap();
            let d = max_abs_diff(&logits, &golden.f32(&key("prefill_logits")));
            assert!(d <= LOGIT_TOL, "{ctx}: prefill logits differ by {d}");
            for r in &out.routing {
                let gi = golden.ids(&key(&format!("router.layer{}.topk_ids_sorted", r.layer)));
                let gw = golden.f32(&key(&format!(
                    "router.layer{}.topk_weights_sorted",
                    r.layer
                )));
                assert_eq!(r.ids, gi, "{ctx}: prefill experts of layer {}", r.layer);
                let d = max_abs_diff(&r.weights, &gw);
                assert!(
                    d <= ROUTER_WEIGHT_TOL,
                    "{ctx}: prefill router weights of layer {} differ by {d}",
                    r.layer
                );
            }
            assert_eq!(out.routing.len(), moe_layers.len());
            for (hname, h) in &out.hidden {
                let want = golden.f32(&key(&format!("hidden.{hname}")));
                let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1.0);
                let d = max_abs_diff(h, &want);
                assert!(
                    d <= HIDDEN_REL_TOL * scale,
                    "{ctx}: hidden state {hname} differs by {d} (scale {scale})"
                );
            }

            // Greedy decode with the cache: every token, every step's logits and routing.
            let want_tokens = golden.ids(&key("gen.tokens"));
            let want_logits = golden.f32(&key("gen.logits"));
            let mut seq = model.new_sequence().unwrap();
            let out = model
                .forward(
                    &mut seq,
                    &ids,
                    ForwardOptions {
                        routing: false,
                        ..Default::default()
                    },
                )
                .unwrap();
            let mut logits = model.backend.download(&out.logits).unwrap();
            for (s, &want) in want_tokens.iter().enumerate() {
                let d = max_abs_diff(&logits, &want_logits[s * v..(s + 1) * v]);
                assert!(
                    d <= LOGIT_TOL,
                    "{ctx}: logits of generated token {s} differ by {d}"
                );
                let got = nemotron_rt::sampling::argmax(&logits);
                assert_eq!(got, want, "{ctx}: generated token {s}");
                if s + 1 == want_tokens.len() {
                    break;
                }
                let out = model
                    .forward(
                        &mut seq,
                        &[got],
                        ForwardOptions {
                            routing: true,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                for r in &out.routing {
                    let gi = golden.ids(&key(&format!(
                        "gen.router.layer{}.topk_ids_sorted",
                        r.layer
                    )));
                    let gw = golden.f32(&key(&format!(
                        "gen.router.layer{}.topk_weights_sorted",
                        r.layer
                    )));
                    let k = r.k;
                    assert_eq!(
                        r.ids,
                        gi[s * k..(s + 1) * k],
                        "{ctx}: decode step {s} layer {}",
                        r.layer
                    );
                    let d = max_abs_diff(&r.weights, &gw[s * k..(s + 1) * k]);
                    assert!(
                        d <= ROUTER_WEIGHT_TOL,
                        "{ctx}: decode step {s} layer {} weights differ by {d}",
                        r.layer
                    );
                }
                logits = model.backend.download(&out.logits).unwrap();
            }

            // The generation API must produce the same tokens, and the routing it reports for
            // token s+1 is the routing of the decode step that consumed token s.
            let params = GenerateParams {
                max_tokens: want_tokens.len(),
                ignore_eos: true,
                routing: true,
                ..Default::default()
            };
            let g = generate::generate(&model, None, &ids, &params, &mut |_| true).unwrap();
            assert_eq!(g.tokens, want_tokens, "{ctx}: generate() tokens");
            for s in 0..want_tokens.len() - 1 {
                for r in &g.routing[s + 1] {
                    let gi = golden.ids(&key(&format!(
                        "gen.router.layer{}.topk_ids_sorted",
                        r.layer
                    )));
                    let k = r.ids.len();
                    assert_eq!(
                        r.ids,
                        gi[s * k..(s + 1) * k],
                        "{ctx}: generate() routing, step {s}"
                    );
                }
            }
        }
    }
}

#[test]
fn flat_fp32_matches_transformers() {
    check_model(
        "nemotronh_tiny_flat/hf",
        "nemotronh_tiny_flat/golden.safetensors",
    );
}

#[test]
fn flat_bf16_matches_transformers_fp32_compute() {
    check_model(
        "nemotronh_tiny_flat/hf_bf16",
        "nemotronh_tiny_flat/golden_bf16w_fp32compute.safetensors",
    );
}

#[test]
fn grouped_fp32_matches_transformers() {
    check_model(
        "nemotronh_tiny_grouped/hf",
        "nemotronh_tiny_grouped/golden.safetensors",
    );
}

#[test]
fn grouped_bf16_matches_transformers_fp32_compute() {
    check_model(
        "nemotronh_tiny_grouped/hf_bf16",
        "nemotronh_tiny_grouped/golden_bf16w_fp32compute.safetensors",
    );
}

#[test]
fn nvfp4_conservative_matches_modelopt_and_transformers() {
    check_model(
        "nemotronh_tiny_grouped_nvfp4/hf",
        "nemotronh_tiny_grouped_nvfp4/golden.safetensors",
    );
}

#[test]
fn nvfp4_super_recipe_matches_modelopt_and_transformers() {
    check_model(
        "nemotronh_tiny_grouped_nvfp4_super/hf",
        "nemotronh_tiny_grouped_nvfp4_super/golden.safetensors",
    );
}

/// The same model on wgpu with every weight split into chunks of at most 2 KiB (rows of the
/// embedding table and lm_head, experts of each MoE layer): the paths real checkpoints take
/// when a tensor exceeds the adapter's binding limit must give the same tokens and routing.
#[test]
fn chunked_weights_on_wgpu_match_transformers() {
    let be: Arc<dyn Backend> =
        match nemotron_rt::backend::wgpu::WgpuBackend::with_weight_chunk_cap(None, Some(2048)) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                eprintln!("chunked wgpu golden skipped: {e}");
                return;
            }
        };
    let root = fixtures();
    let golden = Golden::open(&root.join("nemotronh_tiny_grouped_nvfp4_super/golden.safetensors"));
    let model = Model::load(
        &root.join("nemotronh_tiny_grouped_nvfp4_super/hf"),
        be,
        LoadOptions::default(),
    )
    .unwrap();
    let ids = golden.ids("prompt1.input_ids");
    let want = golden.ids("prompt1.gen.tokens");
    let params = GenerateParams {
        max_tokens: want.len(),
        ignore_eos: true,
        routing: true,
        ..Default::default()
    };
    let g = generate::generate(&model, None, &ids, &params, &mut |_| true).unwrap();
    assert_eq!(g.tokens, want, "chunked wgpu tokens");
    for s in 0..want.len() - 1 {
        for r in &g.routing[s + 1] {
            let gi = golden.ids(&format!(
                "prompt1.gen.router.layer{}.topk_ids_sorted",
                r.layer
            ));
            let k = r.ids.len();
            assert_eq!(
                r.ids,
                gi[s * k..(s + 1) * k],
                "chunked wgpu routing, step {s}"
            );
        }
    }
}
