//! Shapes and options the main fixtures do not have (tests/fixtures/variants/README.md), on
//! every backend present: a forward pass's logits against transformers', greedy tokens exactly,
//! and, where the reference's Mamba clamps dt in prefill, a prompt prefilled in pieces.

use std::path::{Path, PathBuf};

use nemotron_rt::checkpoint::Checkpoint;
use nemotron_rt::generate::{self, GenerateParams};
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};
use nemotron_rt::sampling::SamplingParams;

#[path = "support/backends.rs"]
mod support_backends;

fn variants() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/variants")
}

struct Golden {
    ids: Vec<u32>,
    logits: Vec<f32>,
    tokens: Vec<u32>,
}

fn golden(name: &str) -> Golden {
    let g = Checkpoint::open_file(&variants().join(name).join("golden.safetensors")).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        let t = g.get(k).unwrap_or_else(|| panic!("{name}: golden key {k}"));
        t.to_i64_vec()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    };
    Golden {
        ids: ids("input_ids"),
        logits: g.get("prefill_logits").unwrap().to_f32_vec().unwrap(),
        tokens: ids("gen.tokens"),
    }
}

fn names() -> Vec<String> {
    let text = std::fs::read_to_string(variants().join("MANIFEST.json")).unwrap();
    let m: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    m.keys().cloned().collect()
}

/// Largest difference relative to the largest reference logit.
fn rel_diff(want: &[f32], got: &[f32]) -> f32 {
    assert_eq!(want.len(), got.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    want.iter()
        .zip(got)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Transformers' fp32 logits; the runtime is within 1e-6 of them everywhere here, so 1e-5
/// leaves room for summation order while catching any real difference in the math.
const LOGIT_TOL: f32 = 1e-5;

fn greedy(tokens: usize, chunk: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        prefill_chunk: chunk,
        ..Default::default()
    }
}

#[test]
fn every_variant_matches_transformers_on_every_backend() {
    let names = names();
    assert!(names.len() >= 10, "MANIFEST.json lists the variants");
    for (kind, be) in support_backends::all() {
        for name in &names {
            let g = golden(name);
            let dir = variants().join(name).join("hf");
            let model = Model::load(&dir, be.clone(), LoadOptions::default())
                .unwrap_or_else(|e| panic!("{kind:?} {name}: {e}"));
            let mut seq = model.new_sequence().unwrap();
            let opts = ForwardOptions {
                all_logits: true,
                ..Default::default()
            };
            let out = model.forward(&mut seq, &g.ids, opts).unwrap();
            let d = rel_diff(&g.logits, &be.download(&out.logits).unwrap());
            assert!(
                d <= LOGIT_TOL,
                "{kind:?} {name}: logits differ by {d:e} (relative)"
            );
            let run =
                generate::generate(&model, None, &g.ids, &greedy(16, 0), &mut |_| true).unwrap();
            assert_eq!(run.tokens, g.tokens, "{kind:?} {name}: greedy tokens");
        }
    }
}

/// `dt_clamp_active` has `time_step_min` above some of its `softplus(dt)`, which transformers
/// clamps in prefill and not in a one-token decode step. Prefilled in pieces of 5 (21 = 5+5+5+6:
/// the lone last token joins its piece), every prompt token still sees the clamp, so the last
/// logits and the tokens are those of the prefill at once.
#[test]
fn prompt_in_pieces_keeps_the_prefill_dt_clamp() {
    let g = golden("dt_clamp_active");
    let v = g.logits.len() / g.ids.len();
    let last = &g.logits[g.logits.len() - v..];
    for (kind, be) in support_backends::all() {
        let dir = variants().join("dt_clamp_active").join("hf");
        let model = Model::load(&dir, be.clone(), LoadOptions::default()).unwrap();
        let mut seq = model.new_sequence().unwrap();
        let mut out = None;
        for r in generate::prefill_pieces(g.ids.len(), 5) {
            out = Some(
                model
                    .forward(&mut seq, &g.ids[r], ForwardOptions::default())
                    .unwrap(),
            );
        }
        let got = be.download(&out.unwrap().logits).unwrap();
        let d = rel_diff(last, &got);
        assert!(
            d <= LOGIT_TOL,
            "{kind:?}: last logits differ by {d:e} (relative)"
        );
        let run = generate::generate(&model, None, &g.ids, &greedy(16, 5), &mut |_| true).unwrap();
        assert_eq!(run.tokens, g.tokens, "{kind:?}");
    }
}
