//! `linear` in every stored format, with and without bias, one token and many, widths that are
//! not multiples of the workgroup size.

use nemotron_rt::backend::Backend;
use nemotron_rt::weights::StoredLinear;

use crate::common::*;

/// `x W^T` on one backend, from upload to read-back.
fn apply(be: &dyn Backend, w: &StoredLinear, x: &[f32], [rows, cols]: [usize; 2]) -> Vec<f32> {
    let y = be.linear(&tensor(be, x, &[rows, cols]), &be.load_linear(w).unwrap());
    be.download(&y.unwrap()).unwrap()
}

/// Summation order differs between backends; the error bound scales with Σ|w·x|, which for
/// these inputs (|w|, |x| ≲ 2, width ≤ 300) stays below 1e-3 · 300.
const ABS: f32 = 2e-4;
const REL: f32 = 1e-5;

#[test]
fn linear_matches_cpu_in_every_format() {
    let mut rng = Rand::new(1);
    for be in others() {
        for fmt in ALL_FORMATS {
            for &(rows, cols, tokens, bias) in &[
                (1, 16, 1, false),
                (37, 48, 1, true),
                (130, 272, 3, false),
                (65, 96, 67, true),
                // Rows not on 16-element block boundaries (dense formats only; NVFP4 rows
                // are whole blocks by definition).
                (7, 37, 5, true),
                (300, 30, 1, false),
            ] {
                if matches!(fmt, Fmt::Nvfp4) && cols % 16 != 0 {
                    continue;
                }
                let w = linear(&mut rng, "w", rows, cols, fmt, bias);
                let x = rng.vec(tokens * cols, 1.0);
                let cpu = cpu();
                let want = apply(&*cpu, &w, &x, [tokens, cols]);
                let got = apply(&*be, &w, &x, [tokens, cols]);
                assert_close(
                    &format!(
                        "{} linear {fmt:?} [{rows}x{cols}] x{tokens} bias={bias}",
                        label(&*be)
                    ),
                    &got,
                    &want,
                    ABS,
                    REL,
                );
            }
        }
    }
}

/// One-hot inputs read single weights back: the in-kernel decode must equal the CPU's bit for
/// bit (the CPU decode is itself checked against ModelOpt in tests/dequant.rs).
#[test]
fn linear_decodes_weights_exactly() {
    let mut rng = Rand::new(2);
    for be in others() {
        for fmt in ALL_FORMATS {
            let (rows, cols) = (9, 32);
            let w = linear(&mut rng, "w", rows, cols, fmt, false);
            let mut eye = vec![0.0f32; cols * cols];
            for c in 0..cols {
                eye[c * cols + c] = 1.0;
            }
            let cpu = cpu();
            let want = apply(&*cpu, &w, &eye, [cols, cols]);
            let got = apply(&*be, &w, &eye, [cols, cols]);
            for (i, (g, c)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == c.to_bits() || (*g == 0.0 && *c == 0.0),
                    "{} {fmt:?}: weight {i} decodes to {g:e}, CPU gives {c:e}",
                    label(&*be)
                );
            }
        }
    }
}
