//! The MTP step of the default model against the training tool's PyTorch `MTP` module
//! (tools/train/goldens.py, fp32 on the stored BF16 `mtp.*` weights, fed the reference model's
//! `norm_f` output): the step's logits at every prompt position, and three recursive greedy
//! drafts from the end of each prompt, on every backend present. Logits within 1e-4, as the
//! main model's; draft tokens exact.

use std::path::Path;

use nemotron_rt::default_model;
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};

#[path = "support/golden.rs"]
mod golden_file;
#[path = "support/backends.rs"]
mod support_backends;
use golden_file::{Golden, max_abs_diff};

const LOGIT_TOL: f32 = 1e-4;

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn mtp_logits_and_recursive_drafts_equal_the_reference_on_every_backend() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/default_model");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    let listing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let prompts = listing["prompts"].as_array().unwrap().len();
    let drafts = listing["mtp_drafts"].as_u64().unwrap() as usize;
    let model_dir = default_model::dir().unwrap();
    for (name, be) in support_backends::all() {
        let model = Model::load(&model_dir, be.clone(), LoadOptions::default()).unwrap();
        assert!(model.has_mtp(), "the default model has an MTP step");
        let v = model.config.vocab_size;
        for p in 0..prompts {
            let key = |s: &str| format!("p{p}.{s}");
            let ctx = format!("prompt {p}, backend {name}");
            let ids = golden.ids(&key("ids"));
            let greedy = golden.ids(&key("greedy"));
            let mut seq = model.new_sequence().unwrap();
            let opts = ForwardOptions {
                all_logits: true,
                final_hidden: true,
                ..Default::default()
            };
            let out = model.forward(&mut seq, &ids, opts).unwrap();
            let h = out.final_hidden.expect("asked for the norm_f output");
            assert_eq!(h.shape(), [ids.len(), model.config.hidden_size], "{ctx}");

            // Teacher-forced: position t reads token t+1 (the first greedy token at the end).
            let next: Vec<u32> = ids[1..].iter().copied().chain([greedy[0]]).collect();
            let mut mtp = model.new_mtp_sequence().unwrap();
            let step = model.mtp_step(&mut mtp, &next, &h, (true, false)).unwrap();
            let got = be.download(&step.logits).unwrap();
            let want = golden.f32(&key("mtp_logits"));
            assert_eq!(got.len(), want.len(), "{ctx}");
            let d = max_abs_diff(&got, &want);
            assert!(d <= LOGIT_TOL, "{ctx}: MTP logits differ by {d}");

            // Recursive drafts: each feeds the previous draft and the step's own last output.
            let want_ids = golden.ids(&key("mtp_draft"));
            let want_logits = golden.f32(&key("mtp_draft_logits"));
            assert_eq!(want_ids.len(), drafts, "{ctx}");
            let mut logits = got[got.len() - v..].to_vec();
            let mut h = be.last_row(&step.out).unwrap();
            for k in 0..drafts {
                let d = max_abs_diff(&logits, &want_logits[k * v..(k + 1) * v]);
                assert!(d <= LOGIT_TOL, "{ctx}: draft {k} logits differ by {d}");
                let draft = argmax(&logits);
                assert_eq!(draft, want_ids[k], "{ctx}: draft {k}");
                if k + 1 < drafts {
                    let s = model
                        .mtp_step(&mut mtp, &[draft], &h, (false, true))
                        .unwrap();
                    logits = be.download(&s.logits).unwrap();
                    h = s.out;
                }
            }
            // Cutting the drafts back leaves the teacher-forced positions.
            model.mtp_truncate(&mut mtp, next.len()).unwrap();
            assert_eq!(mtp.pos, next.len());
        }
    }
}

/// Without an MTP step, asking for one is a clear error.
#[test]
fn a_model_without_mtp_says_so() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/nemotronh_tiny_grouped_nvfp4_super/hf");
    let be = nemotron_rt::backend::create(nemotron_rt::backend::BackendKind::Cpu, 1).unwrap();
    let model = Model::load(&dir, be, LoadOptions::default()).unwrap();
    assert!(!model.has_mtp());
    let e = model.new_mtp_sequence().err().unwrap().to_string();
    assert!(e.contains("no MTP step"), "{e}");
}
