//! Speculative decoding with the model's own MTP step is lossless: greedy tokens with drafts
//! of K = 1, 2, 3 per step are the reference's greedy tokens (tools/train/goldens.py), on every
//! backend present, whether the requests run alone or batched together with different K; a
//! run of over a thousand tokens stays identical to the plain run (the drift other runtimes hit
//! when a rejected draft leaves stale state). With sampling, the tokens keep the model's own
//! distribution (a chi-square test). A checkpoint without an MTP step gets a clear error.

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

/// With sampling, drafts change the speed, not the distribution. The second generated token
/// is the first that a draft can decide: a draft from the MTP step's distribution q, kept with
/// probability min(1, p/q), else a draw from the residual. Over 3,000 seeded runs its counts
/// must fit the model's own distribution, computed exactly (the first token's distribution
/// times each continuation's), by a chi-square test at p = 1e-4. The test can fail: always
/// keeping the draft would give the MTP step's marginal instead, whose expected statistic is
/// checked to lie far above the critical value.
#[test]
fn sampling_with_drafts_keeps_the_models_distribution() {
    use nemotron_rt::model::ForwardOptions;
    use nemotron_rt::sampling::Sampler;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/default_model");
    let prompt = Golden::open(&dir.join("golden.safetensors")).ids("p3.ids");
    let be = nemotron_rt::backend::create(nemotron_rt::backend::BackendKind::Cpu, 2).unwrap();
    let model = Arc::new(
        Model::load(
            &default_model::dir().unwrap(),
            be.clone(),
            LoadOptions::default(),
        )
        .unwrap(),
    );
    let sampling = SamplingParams {
        temperature: 1.0,
        top_k: 6,
        ..Default::default()
    };
    let v = model.config.vocab_size;
    let mut sampler = Sampler::new(sampling).unwrap();
    // The exact marginal of token 2 (p) and what always keeping the draft would give (q).
    let mut seq = model.new_sequence().unwrap();
    let opts = ForwardOptions {
        all_logits: true,
        final_hidden: true,
        ..Default::default()
    };
    let out = model.forward(&mut seq, &prompt, opts).unwrap();
    let logits = be.download(&out.logits).unwrap();
    let h = out.final_hidden.unwrap();
    let first = sampler.distribution(&logits[logits.len() - v..]);
    let (mut p, mut q) = (vec![0.0f64; v], vec![0.0f64; v]);
    for (t1, &w) in first.iter().enumerate().filter(|(_, w)| **w > 0.0) {
        let mut s = model.snapshot(&seq).unwrap();
        let o = model
            .forward(&mut s, &[t1 as u32], ForwardOptions::default())
            .unwrap();
        let next = sampler.distribution(&be.download(&o.logits).unwrap());
        let mut mtp = model.new_mtp_sequence().unwrap();
        let ids: Vec<u32> = prompt[1..].iter().copied().chain([t1 as u32]).collect();
        let d = model.mtp_step(&mut mtp, &ids, &h, (false, false)).unwrap();
        let draft = sampler.distribution(&be.download(&d.logits).unwrap());
        for t2 in 0..v {
            p[t2] += w * next[t2];
            q[t2] += w * draft[t2];
        }
    }
    const N: usize = 3000;
    let engine = Engine::start(model.clone(), None);
    let mut counts = vec![0usize; v];
    let (mut drafted, mut accepted) = (0, 0);
    for chunk in (0..N as u64).collect::<Vec<_>>().chunks(500) {
        let reqs = chunk
            .iter()
            .map(|&seed| {
                let params = GenerateParams {
                    sampling: SamplingParams { seed, ..sampling },
                    ..greedy(3, 1)
                };
                (prompt.clone(), params)
            })
            .collect();
        for t in engine.submit_all(reqs) {
            let g = t.wait(&mut |_| {}).unwrap();
            counts[g.tokens[1] as usize] += 1;
            let st = g.drafts.unwrap();
            drafted += st.drafted[0];
            accepted += st.accepted[0];
        }
    }
    assert!(drafted >= N, "every run drafts at least once");
    let rejected = drafted - accepted;
    assert!(
        rejected * 20 > drafted,
        "the residual path must be exercised: {accepted}/{drafted} kept"
    );
    // Bins of expected count >= 5; the rest pooled.
    let stat_for = |dist: &[f64]| -> (f64, usize) {
        let (mut stat, mut bins, mut rest_e, mut rest_o) = (0.0, 0usize, 0.0, 0.0);
        for t in 0..v {
            let e = p[t] * N as f64;
            let o = dist[t];
            if e >= 5.0 {
                stat += (o - e) * (o - e) / e;
                bins += 1;
            } else {
                rest_e += e;
                rest_o += o;
            }
        }
        if rest_e >= 5.0 {
            stat += (rest_o - rest_e) * (rest_o - rest_e) / rest_e;
            bins += 1;
        }
        (stat, bins)
    };
    let observed: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    let (stat, bins) = stat_for(&observed);
    let df = (bins - 1) as f64;
    // Wilson-Hilferty: the chi-square quantile at 1 - 1e-4 (z = 3.719).
    let a = 2.0 / (9.0 * df);
    let critical = df * (1.0 - a + 3.719 * a.sqrt()).powi(3);
    assert!(
        bins >= 3,
        "too few bins ({bins}) for the test to mean anything"
    );
    assert!(
        stat < critical,
        "chi-square {stat:.1} over {bins} bins exceeds {critical:.1}"
    );
    let wrong: Vec<f64> = q.iter().map(|x| x * N as f64).collect();
    let (wrong_stat, _) = stat_for(&wrong);
    assert!(
        wrong_stat > 3.0 * critical,
        "always keeping drafts would give a statistic of only {wrong_stat:.1} (critical \
         {critical:.1}): the test could not tell the rules apart"
    );
    eprintln!(
        "chi-square {stat:.1} over {bins} bins (critical {critical:.1}); keeping every draft \
         would give {wrong_stat:.1}; drafts kept {accepted}/{drafted}"
    );
}

/// A checkpoint without an MTP step cannot draft: such a request is refused by name.
#[test]
fn drafting_without_an_mtp_step_is_refused_by_name() {
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
