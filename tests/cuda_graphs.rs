//! Decode steps replayed as CUDA graphs compute exactly what the same kernels launched one by
//! one compute: the same logits bit for bit, the same routing, across KV-cache growth, for
//! sequences that interleave and for snapshots. Runs on a CUDA GPU, or on the CUDA emulator
//! without one (tests/cuda_emulator); skipped with the reason where neither is there.

use std::path::Path;
use std::sync::Arc;

use nemotron_rt::backend::Backend;
use nemotron_rt::backend::cuda::{CudaBackend, CudaOptions, GraphStats};
use nemotron_rt::model::{ForwardOptions, LayerRouting, LoadOptions, Model, Sequence};

#[path = "support/cuda_emulator.rs"]
mod cuda_emulator;

const MODEL: &str = "tests/fixtures/models/nemotronh_tiny_grouped_nvfp4_super/hf";

fn backend(no_graphs: bool) -> Option<Arc<CudaBackend>> {
    if let Err(e) = cuda_emulator::install() {
        eprintln!("skipped: {e}");
        return None;
    }
    let opts = CudaOptions {
        fp4_mma: Some(false),
        no_graphs,
        ..Default::default()
    };
    match CudaBackend::new(opts) {
        Ok(b) => Some(Arc::new(b)),
        Err(e) => {
            eprintln!("skipped: no CUDA device: {e}");
            None
        }
    }
}

fn load(be: &Arc<CudaBackend>) -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    Model::load(&dir, be.clone(), LoadOptions::default()).unwrap()
}

/// One decode step's result: its logits and its routing.
#[derive(Debug, PartialEq)]
struct StepOut {
    logits: Vec<u32>,
    routing: Vec<LayerRouting>,
}

fn step(model: &Model, seq: &mut Sequence, token: u32) -> StepOut {
    let opts = ForwardOptions {
        routing: true,
        ..Default::default()
    };
    let out = model.forward(seq, &[token], opts).unwrap();
    let logits = model.backend.download(&out.logits).unwrap();
    StepOut {
        // Bits, so that the comparison is exact and NaN compares equal to itself.
        logits: logits.iter().map(|v| v.to_bits()).collect(),
        routing: out.routing,
    }
}

fn argmax(logits: &[u32]) -> u32 {
    let v: Vec<f32> = logits.iter().map(|b| f32::from_bits(*b)).collect();
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best }) as u32
}

/// Greedy decoding for `steps` tokens after `prompt`, every step's output kept.
fn greedy(model: &Model, prompt: &[u32], steps: usize) -> Vec<StepOut> {
    let mut seq = model.new_sequence().unwrap();
    let out = model
        .forward(&mut seq, prompt, ForwardOptions::default())
        .unwrap();
    let mut next = model.backend.argmax(&out.logits).unwrap()[0];
    let mut outs = Vec::new();
    for _ in 0..steps {
        let o = step(model, &mut seq, next);
        next = argmax(&o.logits);
        outs.push(o);
    }
    outs
}

/// 5 prompt tokens and 40 decode steps: the KV cache grows from 16 to 32 to 64 positions on
/// the way, so replays must follow both the KV length and the caches' new addresses.
#[test]
fn graph_replays_match_direct_launches() {
    let (Some(graphs), Some(direct)) = (backend(false), backend(true)) else {
        return;
    };
    let prompt = [1, 17, 42, 230, 7];
    let want = greedy(&load(&direct), &prompt, 40);
    let got = greedy(&load(&graphs), &prompt, 40);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "decode step {i}: the graph replay differs from direct launches"
        );
    }
    let s = graphs.graph_stats();
    eprintln!("graph stats: {s:?}");
    // Two growths of the KV cache run directly (the copy into the bigger cache cannot be a
    // graph node); every other step runs as a graph, all but the first as replays.
    assert_eq!(s.built + s.replayed + s.direct, 40, "{s:?}");
    assert!(s.direct <= 2 && s.built <= 2, "{s:?}");
    // Attention reads a KV length that changes every step: each replay rewrites its nodes.
    assert!(s.nodes_updated >= s.replayed, "{s:?}");
    assert!(s.last_nodes > 0, "{s:?}");
    assert_eq!(direct.graph_stats(), GraphStats::default());
}

/// Two sequences decoded in turn, and a snapshot that then goes its own way: each keeps its
/// own graph and its own state.
#[test]
fn interleaved_sequences_and_snapshots_stay_apart() {
    let (Some(graphs), Some(direct)) = (backend(false), backend(true)) else {
        return;
    };
    let run = |model: &Model| {
        let mut a = model.new_sequence().unwrap();
        let mut b = model.new_sequence().unwrap();
        model
            .forward(&mut a, &[3, 9, 27], ForwardOptions::default())
            .unwrap();
        model
            .forward(&mut b, &[100, 200], ForwardOptions::default())
            .unwrap();
        let mut outs = Vec::new();
        let mut c = None;
        for i in 0..12u32 {
            outs.push(step(model, &mut a, 5 + i));
            outs.push(step(model, &mut b, 50 + 3 * i));
            if i == 5 {
                c = Some(model.snapshot(&a).unwrap());
            }
            if let Some(c) = c.as_mut() {
                outs.push(step(model, c, 400 - i));
            }
        }
        outs
    };
    let want = run(&load(&direct));
    let got = run(&load(&graphs));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "step {i}: interleaved graph replays differ from direct launches"
        );
    }
    let s = graphs.graph_stats();
    assert!(s.replayed >= 20, "{s:?}");
}

/// What a step returns outlives the next step; anything else made inside it does not, and
/// using it afterwards is an error, not a read of memory the next step has reused.
#[test]
fn tensors_from_an_earlier_step_are_refused() {
    let Some(be) = backend(false) else { return };
    let x = be.upload(&[1.0, -2.0, 3.0], &[1, 3]).unwrap();
    let mut kept = None;
    let first = be
        .decode_step(7, &mut || {
            kept = Some(be.relu2(&x)?);
            let y = be.relu2(&x)?;
            be.relu2(&y)
        })
        .unwrap();
    let kept = kept.unwrap();
    assert_eq!(be.download(&kept).unwrap(), vec![1.0, 0.0, 9.0]);
    let second = be.decode_step(7, &mut || be.relu2(&first)).unwrap();
    assert_eq!(be.download(&second).unwrap(), vec![1.0, 0.0, 6561.0]);
    let err = be.download(&kept).unwrap_err().to_string();
    assert!(err.contains("after the next step began"), "{err}");
    assert_eq!(be.download(&first).unwrap(), vec![1.0, 0.0, 81.0]);
}
