//! The engine runs several requests batched on one thread: each request's tokens, text, finish
//! reason, routing and events must be exactly what `generate` gives it alone, whether the
//! requests start together or join a running batch, whatever their prompts' lengths (read in
//! pieces between decode steps); a cancelled request stops and the others go on; a bad request
//! gets its error and the others go on.

use std::sync::Arc;

use nemotron_rt::backend::{self, BackendKind};
use nemotron_rt::default_model;
use nemotron_rt::engine::{Engine, Ticket, Update};
use nemotron_rt::generate::{self, Event, FinishReason, GenerateParams, Generation};
use nemotron_rt::model::{LoadOptions, Model};
use nemotron_rt::sampling::SamplingParams;
use nemotron_rt::tokenizer::Tokenizer;

#[path = "support/backends.rs"]
mod support_backends;

fn setup() -> (Arc<Model>, Arc<Tokenizer>) {
    let dir = default_model::dir().unwrap();
    let be = backend::create(BackendKind::Cpu, 2).unwrap();
    let model = Model::load(&dir, be, LoadOptions::default()).unwrap();
    (
        Arc::new(model),
        Arc::new(Tokenizer::from_dir(&dir).unwrap()),
    )
}

/// (token id, text) of every Token event, and the Finished event's (reason, text).
type Trace = (Vec<(u32, String)>, Option<(FinishReason, String)>);

fn trace_of(events: &[Event]) -> Trace {
    let mut t = (Vec::new(), None);
    for e in events {
        match e {
            Event::Token { id, text, .. } => t.0.push((*id, text.clone())),
            Event::Finished { reason, text } => t.1 = Some((*reason, text.clone())),
            Event::Prefilled { .. } => {}
        }
    }
    t
}

fn alone(
    model: &Model,
    tok: &Arc<Tokenizer>,
    prompt: &[u32],
    p: &GenerateParams,
) -> (Generation, Trace) {
    let mut events = Vec::new();
    let g = generate::generate(model, Some(tok), prompt, p, &mut |e| {
        events.push(e.clone());
        true
    })
    .unwrap();
    (g, trace_of(&events))
}

fn collect(t: Ticket) -> (Generation, Trace) {
    let mut events = Vec::new();
    let g = t.wait(&mut |e| events.push(e.clone())).unwrap();
    (g, trace_of(&events))
}

fn same(got: &(Generation, Trace), want: &(Generation, Trace), what: &str) {
    assert_eq!(got.0.tokens, want.0.tokens, "{what}: tokens");
    assert_eq!(got.0.text, want.0.text, "{what}: text");
    assert_eq!(got.0.finish_reason, want.0.finish_reason, "{what}: finish");
    // Compared whole but not printed: a routing trace is thousands of numbers.
    assert!(got.0.routing == want.0.routing, "{what}: routing differs");
    assert_eq!(got.1, want.1, "{what}: events");
}

fn requests(tok: &Tokenizer) -> Vec<(Vec<u32>, GenerateParams)> {
    let enc = |s: &str| tok.encode(s, true).unwrap();
    vec![
        (
            enc("In the beginning God created the heaven and the earth."),
            GenerateParams {
                max_tokens: 12,
                routing: true,
                ..Default::default()
            },
        ),
        (
            enc("def read_config(path):\n"),
            GenerateParams {
                max_tokens: 10,
                sampling: SamplingParams {
                    temperature: 0.8,
                    top_p: 0.9,
                    seed: 7,
                    ..SamplingParams::greedy()
                },
                ..Default::default()
            },
        ),
        (
            enc("The hacker"),
            GenerateParams {
                max_tokens: 30,
                stop_strings: vec!["}".into()],
                ..Default::default()
            },
        ),
        (
            // A long prompt read 8 tokens at a time, between the others' decode steps.
            enc(&"And the LORD spake unto Moses, saying, ".repeat(6)),
            GenerateParams {
                max_tokens: 6,
                prefill_chunk: 8,
                ..Default::default()
            },
        ),
        (
            enc("Hello"),
            GenerateParams {
                max_tokens: 0,
                ..Default::default()
            },
        ),
    ]
}

#[test]
fn batched_requests_equal_each_request_alone() {
    let (model, tok) = setup();
    let reqs = requests(&tok);
    let want: Vec<_> = reqs
        .iter()
        .map(|(p, q)| alone(&model, &tok, p, q))
        .collect();
    let engine = Engine::start(model.clone(), Some(tok.clone()));

    // All at once.
    let tickets: Vec<Ticket> = reqs
        .iter()
        .map(|(p, q)| engine.submit(p.clone(), q.clone()))
        .collect();
    for (i, t) in tickets.into_iter().enumerate() {
        same(
            &collect(t),
            &want[i],
            &format!("request {i}, submitted together"),
        );
    }

    // Joining a running batch: the first request is generating when the others arrive.
    let first = engine.submit(reqs[0].0.clone(), reqs[0].1.clone());
    let mut early = Vec::new();
    loop {
        match first.updates.recv().unwrap() {
            Update::Event(e) => {
                let token = matches!(e, Event::Token { .. });
                early.push(e);
                if token {
                    break;
                }
            }
            Update::Done(_) => panic!("finished before the others joined"),
        }
    }
    let later: Vec<Ticket> = reqs[1..]
        .iter()
        .map(|(p, q)| engine.submit(p.clone(), q.clone()))
        .collect();
    for (i, t) in later.into_iter().enumerate() {
        same(
            &collect(t),
            &want[i + 1],
            &format!("request {}, joining", i + 1),
        );
    }
    let g = first.wait(&mut |e| early.push(e.clone())).unwrap();
    same(
        &(g, trace_of(&early)),
        &want[0],
        "request 0, joined by the others",
    );
}

#[test]
fn cancelled_and_bad_requests_leave_the_others_running() {
    let (model, tok) = setup();
    let reqs = requests(&tok);
    let want = alone(&model, &tok, &reqs[0].0, &reqs[0].1);
    let engine = Engine::start(model.clone(), Some(tok.clone()));
    let long = GenerateParams {
        max_tokens: 500,
        ignore_eos: true,
        ..Default::default()
    };
    let doomed = engine.submit(reqs[2].0.clone(), long.clone());
    let empty = engine.submit(Vec::new(), GenerateParams::default());
    let outside = engine.submit(vec![1, 999_999], GenerateParams::default());
    let over = engine.submit(
        reqs[0].0.clone(),
        GenerateParams {
            max_context: Some(2),
            ..Default::default()
        },
    );
    let kept = engine.submit(reqs[0].0.clone(), reqs[0].1.clone());
    let mut seen = 0;
    let mut tokens = Vec::new();
    let result = loop {
        match doomed.updates.recv().unwrap() {
            Update::Event(Event::Token { id, .. }) => {
                tokens.push(id);
                seen += 1;
                if seen == 3 {
                    engine.cancel(doomed.id);
                }
            }
            Update::Event(_) => {}
            Update::Done(r) => break r.unwrap(),
        }
    };
    assert_eq!(result.finish_reason, FinishReason::Cancelled);
    assert!(result.tokens.len() >= 3 && result.tokens.len() < 500);
    assert_eq!(result.tokens, tokens);
    let reference = alone(&model, &tok, &reqs[2].0, &long).0.tokens;
    assert_eq!(
        tokens,
        reference[..tokens.len()],
        "the cancelled request's tokens"
    );
    // Room for the prompt, but a KV cache for 2^31 positions would not fit anywhere.
    let huge = engine.submit(
        reqs[0].0.clone(),
        GenerateParams {
            max_tokens: 1 << 31,
            max_context: Some(1 << 31),
            ..Default::default()
        },
    );
    for (t, what) in [
        (empty, "prompt is empty"),
        (outside, "outside the vocabulary"),
        (over, "context"),
        (
            huge,
            "GiB for its KV cache and state (2147483648 positions), but only",
        ),
    ] {
        let e = t.wait(&mut |_| {}).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
    same(
        &collect(kept),
        &want,
        "the request beside the cancelled and bad ones",
    );
}

/// The engine reserves a request's KV cache and state in the memory of the backend that holds
/// them: on a GPU (the CUDA emulator, with 8 GiB of device memory) a request that would need
/// more than the device has is refused with the device's numbers, whatever the host has, and
/// the engine goes on serving requests that fit.
#[test]
fn requests_are_reserved_in_the_backends_own_memory() {
    let Some((_, be)) = support_backends::all()
        .into_iter()
        .find(|(name, _)| *name == "cuda")
    else {
        eprintln!("skipped: no CUDA backend (the emulator did not install)");
        return;
    };
    let free = be.memory_headroom().expect("CUDA reports its free memory");
    assert!(
        free <= 8 << 30,
        "the emulator's device has 8 GiB, {free} free"
    );
    let dir = default_model::dir().unwrap();
    let model = Arc::new(Model::load(&dir, be, LoadOptions::default()).unwrap());
    let per_token = model.config.sizes.kv_bytes_per_token;
    // Twice the device's free memory in KV positions.
    let positions = (2 * free / per_token) as usize;
    let engine = Engine::start(model.clone(), None);
    let too_big = engine.submit(
        vec![1, 2, 3],
        GenerateParams {
            max_tokens: positions,
            max_context: Some(positions + 3),
            ignore_eos: true,
            ..Default::default()
        },
    );
    let e = too_big.wait(&mut |_| {}).unwrap_err().to_string();
    assert!(
        e.contains("but only") && e.contains("GiB is available"),
        "{e}"
    );
    let available: f64 = e
        .split("but only ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {e}"));
    assert!(available <= 8.0, "device numbers expected: {e}");
    let fits = engine.submit(
        vec![1, 2, 3],
        GenerateParams {
            max_tokens: 4,
            ignore_eos: true,
            ..Default::default()
        },
    );
    assert_eq!(fits.wait(&mut |_| {}).unwrap().tokens.len(), 4);
}
