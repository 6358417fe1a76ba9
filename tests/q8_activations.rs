//! The opt-in int8-activation decode path (`--cpu-activations q8`) on the NVFP4 fixtures: it is
//! really taken (its logits differ from the exact path's) and stays near the reference logits
//! computed by transformers on ModelOpt's dequantized weights while it follows the reference's
//! tokens. How many tokens it keeps is printed, not asserted: the tiny random models have
//! near-ties that any activation rounding flips. Its agreement is measured by
//! scripts/q8-agreement.sh (docs/benchmarks.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nemotron_rt::backend::cpu::CpuBackend;
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};
use nemotron_rt::sampling::argmax;

#[path = "support/golden.rs"]
mod golden_file;
use golden_file::Golden;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// Greedy decode of `prompt{p}` step by step: (tokens, every step's logits).
fn decode(model: &Model, ids: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut seq = model.new_sequence().unwrap();
    let opts = ForwardOptions::default();
    let mut out = model.forward(&mut seq, ids, opts).unwrap();
    let (mut tokens, mut all) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let logits = model.backend.download(&out.logits).unwrap();
        let t = argmax(&logits[logits.len() - model.config.vocab_size..]);
        tokens.push(t);
        all.push(logits);
        out = model.forward(&mut seq, &[t], opts).unwrap();
    }
    (tokens, all)
}

#[test]
fn q8_activations_stay_close_to_the_reference() {
    for dir in [
        "nemotronh_tiny_grouped_nvfp4",
        "nemotronh_tiny_grouped_nvfp4_super",
    ] {
        let golden = Golden::open(&fixtures().join(dir).join("golden.safetensors"));
        let load = |q8| {
            let be = Arc::new(CpuBackend::with_q8_activations(2, q8).unwrap());
            Model::load(&fixtures().join(dir).join("hf"), be, LoadOptions::default()).unwrap()
        };
        let (exact, fast) = (load(false), load(true));
        let v = exact.config.vocab_size;
        for p in 0..3 {
            let ids = golden.ids(&format!("prompt{p}.input_ids"));
            let want = golden.ids(&format!("prompt{p}.gen.tokens"));
            let want_logits = golden.f32(&format!("prompt{p}.gen.logits"));
            let (et, el) = decode(&exact, &ids, want.len());
            let (ft, fl) = decode(&fast, &ids, want.len());
            assert_eq!(et, want, "{dir} prompt {p}: the exact path");
            let agree = ft.iter().zip(&want).take_while(|(a, b)| a == b).count();
            let mut worst = 0.0f32;
            let mut differs = false;
            // Step s's logits come from the reference's tokens up to s, so they are comparable
            // up to and including the first step that disagrees (step 0 is the prefill, which
            // q8 never touches: it is a decode-only path).
            for s in 0..(agree + 1).min(want.len()) {
                let g = &want_logits[s * v..(s + 1) * v];
                let scale = g.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let d = fl[s]
                    .iter()
                    .zip(g)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                worst = worst.max(d / scale);
                differs |= fl[s] != el[s];
            }
            eprintln!(
                "{dir} prompt {p}: q8 keeps {agree}/{} reference tokens, logits within {worst:.2e} of the largest",
                want.len()
            );
            assert!(
                differs,
                "{dir} prompt {p}: q8 logits equal the exact ones; the path is not taken"
            );
            assert!(
                worst < 0.5,
                "{dir} prompt {p}: q8 logits off by {worst} of the largest"
            );
        }
    }
}
