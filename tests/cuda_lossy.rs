//! The CUDA backend's two lossy modes, each against its exact path. The W4A4 FP4 tensor-core
//! path (sm_120-class Blackwell only) rounds activations to NVFP4: its error on one linear is
//! bounded, and how often its greedy tokens and expert choices agree with the exact path is
//! reported. The FP8 KV cache (any CUDA GPU, opt-in) rounds keys and values to E4M3: attention
//! through it stays within FP8's error. Skipped, with the reason, without such a GPU.

use std::path::Path;
use std::sync::Arc;

use nemotron_rt::backend::cuda::{CudaBackend, CudaOptions};
use nemotron_rt::backend::{AttnDims, Backend};
use nemotron_rt::checkpoint::ByteView;
use nemotron_rt::codec::nvfp4;
use nemotron_rt::generate::{self, GenerateParams};
use nemotron_rt::model::{LoadOptions, Model};
use nemotron_rt::weights::{LinearData, StoredLinear};

#[path = "support/cuda_emulator.rs"]
mod cuda_emulator;

fn fp4_backend() -> Option<CudaBackend> {
    if let Err(e) = cuda_emulator::install() {
        eprintln!("skipped: {e}");
        return None;
    }
    match CudaBackend::new(CudaOptions {
        device: 0,
        fp4_mma: Some(true),
        fp8_kv_cache: false,
        ..Default::default()
    }) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipped: no CUDA device with FP4 tensor cores (sm_120 class): {e}");
            None
        }
    }
}

/// Relative RMS error of W4A4 against the f32 product of the same (decoded) weights: NVFP4
/// activations carry about 3 significant bits, so a few percent, never tens.
#[test]
fn fp4_linear_error_is_bounded() {
    let Some(be) = fp4_backend() else { return };
    let (rows, cols, tokens) = (96, 256, 5);
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
    let x: Vec<f32> = (0..tokens * cols).map(|_| rnd()).collect();
    let q = nvfp4::quantize(&w, rows, cols).unwrap();
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let stored = StoredLinear {
        name: "w".into(),
        rows,
        cols,
        data: LinearData::Nvfp4 {
            packed: ByteView::owned(q.packed.clone(), "w"),
            block_scales: ByteView::owned(q.block_scales.clone(), "w"),
            tensor_scale: q.tensor_scale,
        },
        input_scale: Some(amax / (6.0 * 448.0)),
        bias: None,
    };
    let exact = CudaBackend::exact(0).unwrap();
    let run = |b: &dyn Backend| {
        let y = b.linear(
            &b.upload(&x, &[tokens, cols]).unwrap(),
            &b.load_linear(&stored).unwrap(),
        );
        b.download(&y.unwrap()).unwrap()
    };
    let (want, got) = (run(&exact), run(&be));
    let num: f32 = got.iter().zip(&want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f32 = want.iter().map(|w| w * w).sum();
    let rel = (num / den).sqrt();
    eprintln!("W4A4 linear: relative RMS error {rel:.4}");
    assert!(rel < 0.15, "W4A4 linear error {rel} is too large");
}

/// Greedy tokens and expert choices of the FP4 path against the exact path on the release-recipe
/// fixture, reported (W4A4 may legitimately diverge on a random-weight model); the FP4 run must
/// still produce every token with finite routing weights.
#[test]
fn fp4_agreement_with_the_exact_path() {
    let Some(be) = fp4_backend() else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/nemotronh_tiny_grouped_nvfp4_super/hf");
    let fp4 = Model::load(&dir, Arc::new(be), LoadOptions::default()).unwrap();
    let exact = Model::load(
        &dir,
        Arc::new(CudaBackend::exact(0).unwrap()),
        LoadOptions::default(),
    )
    .unwrap();
    let params = GenerateParams {
        max_tokens: 16,
        ignore_eos: true,
        routing: true,
        ..Default::default()
    };
    let prompt = [1u32, 7, 42, 99, 5, 17];
    let a = generate::generate(&exact, None, &prompt, &params, &mut |_| true).unwrap();
    let b = generate::generate(&fp4, None, &prompt, &params, &mut |_| true).unwrap();
    let same_tokens = a
        .tokens
        .iter()
        .zip(&b.tokens)
        .filter(|(x, y)| x == y)
        .count();
    let prefix = a
        .tokens
        .iter()
        .zip(&b.tokens)
        .take_while(|(x, y)| x == y)
        .count();
    let (mut ids_same, mut ids_all) = (0, 0);
    for (ra, rb) in a.routing.iter().zip(&b.routing).take(prefix) {
        for (la, lb) in ra.iter().zip(rb) {
            ids_all += la.ids.len();
            ids_same += la.ids.iter().filter(|e| lb.ids.contains(e)).count();
        }
    }
    eprintln!(
        "FP4 vs exact: {same_tokens}/{} tokens equal, first {prefix} identical; expert ids over \
         that prefix {ids_same}/{ids_all}",
        a.tokens.len()
    );
    assert_eq!(b.tokens.len(), a.tokens.len());
    assert!(
        b.routing
            .iter()
            .flatten()
            .all(|r| r.weights.iter().all(|w| w.is_finite())),
        "FP4 path produced non-finite routing weights"
    );
}

/// Attention through an FP8 cache (scales as a checkpoint would give them: amax / 448) against
/// the f32 cache: E4M3 keeps 3 mantissa bits, so outputs agree to a few percent.
#[test]
fn fp8_kv_cache_attention_error_is_bounded() {
    if let Err(e) = cuda_emulator::install() {
        eprintln!("skipped: {e}");
        return;
    }
    let (fp8, exact) = match (
        CudaBackend::new(CudaOptions {
            device: 0,
            fp4_mma: Some(false),
            fp8_kv_cache: true,
            ..Default::default()
        }),
        CudaBackend::exact(0),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipped: no CUDA device: {e}");
            return;
        }
    };
    let dims = AttnDims {
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
    };
    let (tokens, kw, qw) = (9, 2 * 32, 4 * 32);
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut rnd = move |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    };
    let (q, k, v) = (rnd(tokens * qw), rnd(tokens * kw), rnd(tokens * kw));
    let amax = |x: &[f32]| x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (ks, vs) = (amax(&k) / 448.0, amax(&v) / 448.0);
    let run = |b: &dyn Backend| {
        let mut cache = b.new_kv_cache_fp8(dims, ks, vs).unwrap();
        // Prefill five tokens, then decode the rest one by one through the cache.
        let mut out = Vec::new();
        for (t0, t1) in [(0, 5), (5, 6), (6, 7), (7, 8), (8, 9)] {
            let up = |x: &[f32], w: usize| b.upload(&x[t0 * w..t1 * w], &[t1 - t0, w]).unwrap();
            let a = b
                .attention(&up(&q, qw), &up(&k, kw), &up(&v, kw), &mut cache, dims)
                .unwrap();
            out.extend(b.download(&a).unwrap());
        }
        out
    };
    let (want, got) = (run(&exact), run(&fp8));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    eprintln!("FP8 KV cache: max |fp8 - f32| = {worst:e}");
    assert!(worst > 0.0, "the FP8 cache was not used");
    assert!(worst < 0.05, "FP8 KV attention differs by {worst}");
}
