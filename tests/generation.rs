//! The generation API: seeded sampling, streamed text, stop strings, EOS, cancellation, sequence
//! snapshots and timings. Reference tokens are the golden greedy generations of HF transformers
//! (tests/fixtures/models/nemotronh_tiny_grouped/golden.safetensors).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nemotron_rt::backend::{self, BackendKind};
use nemotron_rt::checkpoint::Checkpoint;
use nemotron_rt::generate::{self, Event, FinishReason, GenerateParams, Generation};
use nemotron_rt::model::{ForwardOptions, LoadOptions, Model};
use nemotron_rt::sampling::{SamplingParams, argmax};
use nemotron_rt::tokenizer::Tokenizer;

#[path = "support/backends.rs"]
mod support_backends;

const MODEL: &str = "nemotronh_tiny_grouped";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(MODEL)
}

fn load(dir: &Path) -> Model {
    let be = backend::create(BackendKind::Cpu, 2).unwrap();
    Model::load(dir, be, LoadOptions::default()).unwrap()
}

fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_dir(&fixture().join("hf")).unwrap())
}

fn golden_ids(name: &str) -> Vec<u32> {
    let g = Checkpoint::open_file(&fixture().join("golden.safetensors")).unwrap();
    g.get(name)
        .unwrap_or_else(|| panic!("golden key {name}"))
        .to_i64_vec()
        .unwrap()
        .into_iter()
        .map(|v| u32::try_from(v).unwrap())
        .collect()
}

fn prompt() -> Vec<u32> {
    golden_ids("prompt1.input_ids")
}

/// Greedy tokens HF produced for `prompt()` (EOS disabled).
fn golden_tokens() -> Vec<u32> {
    golden_ids("prompt1.gen.tokens")
}

fn params(max_tokens: usize, sampling: SamplingParams) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling,
        ignore_eos: true,
        ..Default::default()
    }
}

fn sampled(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p: 0.0,
        seed,
    }
}

/// A generation plus everything it streamed.
struct Run {
    g: Generation,
    /// `Event::Token` deltas, in order.
    deltas: Vec<String>,
    /// `Event::Finished` text.
    tail: String,
    finished: Vec<FinishReason>,
}

fn run(model: &Model, tok: Option<&Arc<Tokenizer>>, p: &GenerateParams) -> Run {
    let mut deltas = Vec::new();
    let mut tail = String::new();
    let mut finished = Vec::new();
    let g = generate::generate(model, tok, &prompt(), p, &mut |ev| {
        match ev {
            Event::Token { text, .. } => deltas.push(text.clone()),
            Event::Finished { reason, text } => {
                finished.push(*reason);
                tail = text.clone();
            }
            Event::Prefilled { .. } => {}
        }
        true
    })
    .unwrap();
    Run {
        g,
        deltas,
        tail,
        finished,
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let model = load(&fixture().join("hf"));
    let greedy = run(&model, None, &params(24, SamplingParams::greedy())).g;
    assert_eq!(greedy.tokens, golden_tokens(), "greedy = HF greedy");

    let a = run(&model, None, &params(24, sampled(0.8, 0, 0.9, 7))).g;
    let b = run(&model, None, &params(24, sampled(0.8, 0, 0.9, 7))).g;
    let c = run(&model, None, &params(24, sampled(0.8, 0, 0.9, 8))).g;
    assert_eq!(a.tokens.len(), 24);
    assert_eq!(a.tokens, b.tokens, "same seed, same tokens");
    assert_ne!(a.tokens, c.tokens, "another seed, other tokens");
    assert_ne!(a.tokens, greedy.tokens, "sampling at T=0.8 is not greedy");

    let top1 = run(&model, None, &params(24, sampled(1.0, 1, 1.0, 123))).g;
    assert_eq!(top1.tokens, golden_tokens(), "top_k = 1 is greedy");
}

#[test]
fn streamed_text_adds_up_to_the_decoded_tokens() {
    let model = load(&fixture().join("hf"));
    let tok = tokenizer();
    let r = run(&model, Some(&tok), &params(24, SamplingParams::greedy()));
    assert_eq!(r.g.tokens, golden_tokens());
    assert_eq!(r.deltas.len(), 24, "one Token event per token");
    assert_eq!(r.finished, [FinishReason::Length]);
    let streamed: String = r.deltas.concat() + &r.tail;
    assert_eq!(streamed, r.g.text, "deltas + tail = Generation.text");
    let decoded = tok.decode(&r.g.tokens, true).unwrap();
    assert!(!decoded.is_empty());
    assert_eq!(r.g.text, decoded, "Generation.text = decode(tokens)");
}

#[test]
fn stop_string_cuts_the_text_before_it() {
    let model = load(&fixture().join("hf"));
    let tok = tokenizer();
    let full = run(&model, Some(&tok), &params(24, SamplingParams::greedy())).g;
    let text = full.text.clone();
    // Three characters from the middle of the text, on character boundaries.
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = bounds.len() - 1;
    assert!(chars >= 10, "enough text to cut: {text:?}");
    let mid = chars / 2;
    let stop = text[bounds[mid]..bounds[mid + 3]].to_string();
    let cut = text.find(&stop).unwrap();
    assert!(
        cut >= bounds[3],
        "stop {stop:?} first occurs a few characters into {text:?}"
    );
    let want = &text[..cut];

    let mut p = params(24, SamplingParams::greedy());
    p.stop_strings = vec![stop.clone()];
    let r = run(&model, Some(&tok), &p);
    assert_eq!(r.g.finish_reason, FinishReason::Stop);
    assert_eq!(r.finished, [FinishReason::Stop]);
    assert_eq!(r.g.text, want, "text ends right before {stop:?}");
    assert!(r.g.tokens.len() < 24, "generation stopped early");
    assert_eq!(r.g.tokens[..], full.tokens[..r.g.tokens.len()]);
    // Nothing at or past the stop position was ever handed out.
    let mut so_far = String::new();
    for d in &r.deltas {
        so_far.push_str(d);
        assert!(
            want.starts_with(&so_far),
            "streamed {so_far:?} goes past {want:?}"
        );
    }
    so_far.push_str(&r.tail);
    assert_eq!(so_far, want, "deltas + tail = truncated text");
}

/// A writable copy of the fixture checkpoint with `eos_token_id` set to `eos`.
fn copy_with_eos(eos: u32) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture().join("hf")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let p = tmp.path().join("generation_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["eos_token_id"] = eos.into();
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    tmp
}

#[test]
fn eos_from_generation_config_stops_generation() {
    let greedy = golden_tokens();
    // The first step >= 5 whose token has not been generated before.
    let s = (5..greedy.len())
        .find(|&s| !greedy[..s].contains(&greedy[s]))
        .expect("a fresh token");
    let eos = greedy[s];
    let dir = copy_with_eos(eos);
    let model = load(dir.path());
    assert_eq!(model.generation.eos_token_ids, [eos]);
    let tok = tokenizer();

    let mut p = params(24, SamplingParams::greedy());
    p.ignore_eos = false;
    let r = run(&model, Some(&tok), &p);
    assert_eq!(r.g.finish_reason, FinishReason::Eos);
    assert_eq!(r.g.tokens, greedy[..=s], "stops after the EOS token");
    assert_eq!(
        r.g.text,
        tok.decode(&greedy[..s], true).unwrap(),
        "EOS adds no text"
    );

    p.ignore_eos = true;
    let r = run(&model, Some(&tok), &p);
    assert_eq!(r.g.finish_reason, FinishReason::Length);
    assert_eq!(r.g.tokens, greedy, "ignore_eos runs to max_tokens");
}

#[test]
fn callback_returning_false_cancels() {
    let model = load(&fixture().join("hf"));
    let mut tokens_seen = 0;
    let mut finished = None;
    let g = generate::generate(
        &model,
        None,
        &prompt(),
        &params(24, SamplingParams::greedy()),
        &mut |ev| match ev {
            Event::Token { .. } => {
                tokens_seen += 1;
                tokens_seen < 3
            }
            Event::Finished { reason, .. } => {
                finished = Some(*reason);
                true
            }
            Event::Prefilled { .. } => true,
        },
    )
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(finished, Some(FinishReason::Cancelled));
    assert_eq!(g.tokens, golden_tokens()[..3]);
    assert_eq!(tokens_seen, 3);
}

#[test]
fn snapshot_continues_exactly_like_the_original() {
    let model = load(&fixture().join("hf"));
    let be = model.backend.clone();
    let opts = ForwardOptions::default();
    let mut seq = model.new_sequence().unwrap();
    let out = model.forward(&mut seq, &prompt(), opts).unwrap();
    let first = argmax(&be.download(&out.logits).unwrap());
    let mut snap = model.snapshot(&seq).unwrap();
    assert_eq!(snap.pos, seq.pos);

    let decode = |seq: &mut nemotron_rt::model::Sequence| {
        let mut tok = first;
        let mut tokens = vec![first];
        let mut logits = Vec::new();
        for _ in 0..5 {
            let out = model.forward(seq, &[tok], opts).unwrap();
            let l = be.download(&out.logits).unwrap();
            tok = argmax(&l);
            tokens.push(tok);
            logits.push(l);
        }
        (tokens, logits)
    };
    let (tokens_a, logits_a) = decode(&mut seq);
    let (tokens_b, logits_b) = decode(&mut snap);
    assert_eq!(tokens_a, golden_tokens()[..6], "original = HF greedy");
    assert_eq!(tokens_b, tokens_a, "snapshot tokens");
    for (s, (a, b)) in logits_a.iter().zip(&logits_b).enumerate() {
        let a: Vec<u32> = a.iter().map(|x| x.to_bits()).collect();
        let b: Vec<u32> = b.iter().map(|x| x.to_bits()).collect();
        assert!(a == b, "decode step {s}: snapshot logits differ bitwise");
    }
    assert_eq!(snap.pos, seq.pos);
}

#[test]
fn one_decode_time_per_token_after_the_first() {
    let model = load(&fixture().join("hf"));
    let g = run(&model, None, &params(10, SamplingParams::greedy())).g;
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.tokens.len(), 10);
    assert_eq!(g.decode_ms.len(), g.tokens.len() - 1);
    assert!(g.prefill_ms > 0.0);
    assert!(g.decode_ms.iter().all(|&ms| ms > 0.0 && ms.is_finite()));
    assert!(g.decode_tok_s() > 0.0);
}

/// Seeded sampling picks the same tokens on every backend: top-k and min-p through the
/// candidates the backend selects on the device, top-p alone through the whole row.
#[test]
fn seeded_sampling_is_the_same_on_every_backend() {
    let wgpu = match backend::create(BackendKind::Wgpu, 0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: no wgpu adapter ({e})");
            return;
        }
    };
    let dir = fixture().join("hf");
    let cpu = load(&dir);
    let gpu = Model::load(&dir, wgpu, LoadOptions::default()).unwrap();
    let cases = [
        sampled(1.0, 5, 1.0, 11),
        sampled(0.7, 40, 0.9, 12),
        sampled(1.5, 0, 0.8, 13),
        SamplingParams {
            min_p: 0.1,
            ..sampled(1.0, 0, 1.0, 14)
        },
    ];
    for s in cases {
        let want = run(&cpu, None, &params(24, s)).g.tokens;
        let got = run(&gpu, None, &params(24, s)).g.tokens;
        assert_eq!(got, want, "{s:?}");
    }
}

/// A prompt run through the model in pieces (as `generate` does with long prompts) continues
/// like one run all at once, on every backend: the last logits agree to float rounding
/// (prefill kernels group tokens differently), and generation gives the same tokens and
/// routes, the HF ones.
#[test]
fn prefill_in_pieces_continues_like_prefill_at_once() {
    let p = golden_ids("prompt2.input_ids");
    assert!(p.len() > 20, "the prompt must span several pieces");
    for (kind, be) in support_backends::all() {
        let model = Model::load(&fixture().join("hf"), be.clone(), LoadOptions::default()).unwrap();
        let opts = ForwardOptions::default();
        let mut whole = model.new_sequence().unwrap();
        let a = be
            .download(&model.forward(&mut whole, &p, opts).unwrap().logits)
            .unwrap();
        let mut pieces = model.new_sequence().unwrap();
        let mut last = None;
        for piece in p.chunks(16) {
            last = Some(model.forward(&mut pieces, piece, opts).unwrap());
        }
        let b = be.download(&last.unwrap().logits).unwrap();
        assert_eq!(pieces.pos, whole.pos);
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-5 * scale,
            "{kind:?}: largest difference {worst} (logit scale {scale})"
        );

        let at_once = GenerateParams {
            prefill_chunk: 0,
            routing: true,
            ..params(8, SamplingParams::greedy())
        };
        let chunked = GenerateParams {
            prefill_chunk: 16,
            ..at_once.clone()
        };
        let g_once = generate::generate(&model, None, &p, &at_once, &mut |_| true).unwrap();
        let g_chunked = generate::generate(&model, None, &p, &chunked, &mut |_| true).unwrap();
        assert_eq!(
            g_once.tokens,
            golden_ids("prompt2.gen.tokens")[..8],
            "{kind:?}"
        );
        assert_eq!(g_chunked.tokens, g_once.tokens, "{kind:?}");
        let ids = |g: &Generation| {
            g.routing
                .iter()
                .map(|r| r.iter().map(|l| l.ids.clone()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&g_chunked), ids(&g_once), "{kind:?}");
    }
}
