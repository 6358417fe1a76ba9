//! The W4A4 FP4 tensor-core path (sm_120-class Blackwell only). It rounds activations to NVFP4,
//! so it is not bit-faithful: these tests bound its error on one linear and report how often its
//! greedy tokens and expert choices agree with the exact path. Skipped, with the reason,
//! on machines without such a GPU.

use std::path::Path;
use std::sync::Arc;

use nemotron_rt::backend::Backend;
use nemotron_rt::backend::cuda::{CudaBackend, CudaOptions};
use nemotron_rt::checkpoint::ByteView;
use nemotron_rt::codec::nvfp4;
use nemotron_rt::generate::{self, GenerateParams};
use nemotron_rt::model::{LoadOptions, Model};
use nemotron_rt::weights::{LinearData, StoredLinear};

fn fp4_backend() -> Option<CudaBackend> {
    match CudaBackend::new(CudaOptions {
        device: 0,
        fp4_mma: Some(true),
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
