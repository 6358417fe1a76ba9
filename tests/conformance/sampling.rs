//! `top_candidates`, what seeded top-k / top-p / min-p sampling reads back: exactly the
//! reference selection (`sampling::top_by_logit`), ids and values bit for bit, ties to the
//! lower id, NaN after every number, across slice boundaries and on the last row of several;
//! and the softmax mass within a tenth of the error sampling allows it.

use nemotron_rt::backend::MASS_REL_ERR;
use nemotron_rt::sampling::{softmax_mass, top_by_logit};

use crate::common::*;

#[test]
fn top_candidates_match_the_reference_selection() {
    let mut rng = Rand::new(41);
    for be in others() {
        for &(rows, vocab) in &[
            (1usize, 1usize),
            (1, 7),
            (2, 2048),
            (1, 2049),
            (3, 5000),
            (1, 70_001),
        ] {
            // A coarse grid gives many ties; a few NaN, ±inf and signed zeros.
            let logits: Vec<f32> = (0..rows * vocab)
                .map(|_| match rng.uniform() {
                    u if u < 0.01 => f32::NAN,
                    u if u < 0.02 => f32::NEG_INFINITY,
                    u if u < 0.025 => f32::INFINITY,
                    u if u < 0.03 => -0.0,
                    u if u < 0.035 => 0.0,
                    _ => (rng.normal(3.0) * 4.0).round() / 4.0,
                })
                .collect();
            let last = &logits[(rows - 1) * vocab..];
            let t = tensor(&*be, &logits, &[rows, vocab]);
            for k in [1usize, 2, 23, 256, 300] {
                let inv_t = (k % 3 == 1).then_some(1.0 / (0.5 + k as f32 / 100.0));
                let got = be.top_candidates(&t, k, inv_t).unwrap();
                if let Some(inv_t) = inv_t {
                    let want = softmax_mass(last, inv_t);
                    let m = got.mass.expect("mass asked for");
                    assert!(
                        (m - want).abs() <= 0.1 * MASS_REL_ERR * want,
                        "{} softmax mass of [{rows}, {vocab}] at 1/T {inv_t}: {m} vs {want}",
                        label(&*be)
                    );
                }
                let got = got.top;
                let want = top_by_logit(last, k);
                let bits = |v: &[(u32, f32)]| -> Vec<(u32, u32)> {
                    v.iter().map(|c| (c.0, c.1.to_bits())).collect()
                };
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{} top_candidates k={k} of [{rows}, {vocab}]",
                    label(&*be)
                );
            }
        }
    }
}
