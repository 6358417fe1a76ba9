//! Speculative decoding with the model's own MTP step is lossless: greedy tokens with drafts
//! of K = 1, 2, 3 per step are the reference's greedy tokens (tools/train/goldens.py), on every
//! backend present, whether the requests run alone or batched together with different K; a
//! run of over a thousand tokens stays identical to the plain run (the drift other runtimes hit
//! when a rejected draft leaves stale state). Requests the engine cannot speculate on get a
//! clear error.

use std::path::Path;
use std::sync::Arc;

use nemotron_rt::default_model;
use nemotron_rt::engine::Engine;
use nemotron_rt::generate::{GenerateParams, Generation};
use nemotron_rt::model::{LoadOptions, Model};
use nemotron_rt::sampling::SamplingParams;

#[path = "support/golden.rs"]
mod golden_file;
#[path = "support/backends.rs"]
mod support_backends;
use golden_file::Golden;

fn greedy(max_tokens: usize, speculative: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        ignore_eos: true,
        speculative,
        ..Default::default()
    }
}

#[test]
fn greedy_tokens_with_drafts_equal_the_reference_on_every_backend() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/default_model");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    let listing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let prompts = listing["prompts"].as_array().unwrap().len();
    let n = listing["greedy_tokens"].as_u64().unwrap() as usize;
    let model_dir = default_model::dir().unwrap();
    for (name, be) in support_backends::all() {
        let model = Arc::new(Model::load(&model_dir, be, LoadOptions::default()).unwrap());
        let engine = Engine::start(model.clone(), None);
        // Every prompt with every K on the CPU (one K per prompt, in turn, on the slower
        // backends), all submitted together: they share every step.
        let mut requests = Vec::new();
        for p in 0..prompts {
            for k in 1..=3 {
                if name == "cpu" || k == 1 + p % 3 {
                    requests.push((p, k, golden.ids(&format!("p{p}.ids"))));
                }
            }
        }
        let tickets = engine.submit_all(
            requests
                .iter()
                .map(|(_, k, ids)| (ids.clone(), greedy(n, *k)))
                .collect(),
        );
        let mut drafted = 0;
        for ((p, k, _), t) in requests.iter().zip(tickets) {
            let g = t.wait(&mut |_| {}).unwrap();
            let want = golden.ids(&format!("p{p}.greedy"));
            assert_eq!(g.tokens, want, "backend {name}, prompt {p}, K = {k}");
            let stats = g.drafts.expect("drafting statistics");
            assert_eq!(stats.drafted.len(), *k);
            assert!(
                stats
                    .accepted
                    .iter()
                    .zip(&stats.drafted)
                    .all(|(a, d)| a <= d)
            );
            drafted += stats.drafted[0];
        }
        assert!(drafted > 0, "backend {name}: nothing was drafted");
    }
}

/// 1,200 tokens from a held-out prompt, plain and with drafts of 1 and 3: the same tokens.
#[test]
fn a_long_run_with_drafts_stays_identical_to_the_plain_run() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/default_model");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    let prompt = golden.ids("p5.ids");
    let be = nemotron_rt::backend::create(nemotron_rt::backend::BackendKind::Cpu, 2).unwrap();
    let model =
        Arc::new(Model::load(&default_model::dir().unwrap(), be, LoadOptions::default()).unwrap());
    let engine = Engine::start(model, None);
    let run = |k: usize| -> Generation {
        engine
            .submit(prompt.clone(), greedy(1200, k))
            .wait(&mut |_| {})
            .unwrap()
    };
    let plain = run(0);
    assert_eq!(plain.tokens.len(), 1200);
    for k in [1, 3] {
        let g = run(k);
        let first_diff = g.tokens.iter().zip(&plain.tokens).position(|(a, b)| a != b);
        assert_eq!(
            first_diff, None,
            "K = {k}: tokens differ from the plain run"
        );
        assert_eq!(g.tokens.len(), 1200);
        let stats = g.drafts.unwrap();
        let accepted: usize = stats.accepted.iter().sum();
        assert!(
            accepted > 0,
            "K = {k}: no draft was ever accepted over 1,200 tokens"
        );
    }
}

#[test]
fn requests_that_cannot_speculate_are_refused_by_name() {
    let be = nemotron_rt::backend::create(nemotron_rt::backend::BackendKind::Cpu, 1).unwrap();
    let model =
        Arc::new(Model::load(&default_model::dir().unwrap(), be, LoadOptions::default()).unwrap());
    let engine = Engine::start(model, None);
    let sampled = GenerateParams {
        sampling: SamplingParams {
            temperature: 0.8,
            seed: 1,
            ..Default::default()
        },
        ..greedy(4, 2)
    };
    let e = engine
        .submit(vec![5, 6, 7], sampled)
        .wait(&mut |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("greedy decoding only"), "{e}");

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/nemotronh_tiny_grouped_nvfp4_super/hf");
    let be = nemotron_rt::backend::create(nemotron_rt::backend::BackendKind::Cpu, 1).unwrap();
    let plain = Arc::new(Model::load(&fixture, be, LoadOptions::default()).unwrap());
    let engine = Engine::start(plain, None);
    let e = engine
        .submit(vec![5, 6, 7], greedy(4, 2))
        .wait(&mut |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("no MTP step"), "{e}");
}
