//! `linear` in every stored format, with and without bias, one token and many, widths that are
//! not multiples of the workgroup size.

use nemotron_rt::backend::{Backend, Rows};
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
    for be in others_with_prefill_variants() {
        let mut worst = 0.0f32;
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
                // Prefill tiles with a partial last column step: a width that is a multiple of
                // 4 but not 8, and an odd one.
                (70, 100, 33, false),
                (33, 37, 12, true),
            ] {
                if matches!(fmt, Fmt::Nvfp4) && cols % 16 != 0 {
                    continue;
                }
                let w = linear(&mut rng, "w", rows, cols, fmt, bias);
                let x = rng.vec(tokens * cols, 1.0);
                let cpu = cpu();
                let want = apply(&*cpu, &w, &x, [tokens, cols]);
                let got = apply(&*be, &w, &x, [tokens, cols]);
                for (g, c) in got.iter().zip(&want) {
                    worst = worst.max((g - c).abs());
                }
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
        eprintln!("linear on {}: max |got - cpu| = {worst:e}", label(&*be));
    }
}

/// One-hot inputs read single weights back: the in-kernel decode must equal the CPU's bit for
/// bit (the CPU decode is itself checked against ModelOpt in tests/dequant.rs).
#[test]
fn linear_decodes_weights_exactly() {
    let mut rng = Rand::new(2);
    for be in others_with_prefill_variants() {
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

/// The same weights with every sign bit cleared: `|W|` in its stored format.
fn magnitudes(w: &StoredLinear) -> StoredLinear {
    use nemotron_rt::checkpoint::ByteView;
    use nemotron_rt::weights::LinearData;
    let mask = |bytes: &[u8], m: &dyn Fn(usize, u8) -> u8| -> ByteView {
        let v = bytes.iter().enumerate().map(|(i, &b)| m(i, b)).collect();
        ByteView::owned(v, "abs")
    };
    let data = match &w.data {
        LinearData::Dense { dtype, data } => LinearData::Dense {
            dtype: *dtype,
            // BF16 / F16: the high byte of each little-endian half holds the sign.
            data: mask(data.bytes(), &|i, b| if i % 2 == 1 { b & 0x7f } else { b }),
        },
        LinearData::Fp8 { data, scale } => LinearData::Fp8 {
            data: mask(data.bytes(), &|_, b| b & 0x7f),
            scale: *scale,
        },
        LinearData::Nvfp4 {
            packed,
            block_scales,
            tensor_scale,
        } => LinearData::Nvfp4 {
            packed: mask(packed.bytes(), &|_, b| b & 0x77),
            block_scales: block_scales.clone(),
            tensor_scale: *tensor_scale,
        },
    };
    StoredLinear {
        data,
        bias: None,
        ..w.clone()
    }
}

/// The prefill GEMM on the tensor cores (activations in three bf16 terms) against the f32
/// CUDA-core tiles, both measured against the CPU as error / Σ|w·x| per output, on a width
/// large enough for rounding to accumulate: three terms must keep f32's precision, so their
/// error may not exceed twice the f32 tiles' (two terms, 16 bits of x, give about three
/// times it on the emulator, and fail).
#[test]
fn prefill_tiles_keep_f32_precision() {
    let mut rng = Rand::new(3);
    let (rows, cols, tokens) = (80, 512, 72);
    let cuda: Vec<_> = others_with_prefill_variants()
        .into_iter()
        .filter(|b| b.info().name == "cuda")
        .collect();
    if cuda.is_empty() {
        eprintln!("skipped: no CUDA backend");
        return;
    }
    for fmt in [Fmt::Bf16, Fmt::Fp8, Fmt::Nvfp4] {
        let w = linear(&mut rng, "w", rows, cols, fmt, false);
        let x = rng.vec(tokens * cols, 1.0);
        let cpu = cpu();
        let want = apply(&*cpu, &w, &x, [tokens, cols]);
        let x_abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let size = apply(&*cpu, &magnitudes(&w), &x_abs, [tokens, cols]);
        let mut errors = Vec::new();
        for be in &cuda {
            let got = apply(&**be, &w, &x, [tokens, cols]);
            let rel = got
                .iter()
                .zip(&want)
                .zip(&size)
                .map(|((g, c), s)| (g - c).abs() / s.max(f32::MIN_POSITIVE))
                .fold(0.0f32, f32::max);
            eprintln!(
                "{} linear {fmt:?} [{rows}x{cols}] x{tokens}: max |got - cpu| / Σ|w·x| = {rel:.2e}",
                label(&**be)
            );
            // f32 summation of 512 terms in another order: a few 2^-24 · √512 at most.
            assert!(
                rel < 2e-6,
                "{} {fmt:?}: error {rel:e} of Σ|w·x| is beyond f32 rounding",
                label(&**be)
            );
            errors.push((be.info().device.contains("prefill f32"), rel));
        }
        let f32_tiles = errors.iter().find(|e| e.0).map(|e| e.1);
        if let Some(f32_tiles) = f32_tiles {
            for &(_, rel) in errors.iter().filter(|e| !e.0) {
                assert!(
                    rel <= 2.0 * f32_tiles + 1e-8,
                    "{fmt:?}: tensor-core tiles err by {rel:e} of Σ|w·x|, the f32 tiles by \
                     {f32_tiles:e}"
                );
            }
        }
    }
}

/// `linear_rows` with decode rows before prefill rows: each row bit for bit what the same
/// backend gives for it in a pass of its own kind alone (decode rows one at a time, prefill
/// rows together), and close to the CPU's; on the CPU too. A split past the rows is refused.
#[test]
fn decode_and_prefill_rows_in_one_pass_equal_their_own_passes() {
    let mut rng = Rand::new(5);
    let mut all = vec![cpu()];
    all.extend(others_with_prefill_variants());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for be in all {
        for fmt in ALL_FORMATS {
            for &(rows, cols, decode, tokens) in
                &[(37, 48, 3, 9), (130, 272, 1, 40), (65, 96, 6, 6)]
            {
                let sw = linear(&mut rng, "w", rows, cols, fmt, true);
                let w = be.load_linear(&sw).unwrap();
                let x = rng.vec(tokens * cols, 1.0);
                let what = format!(
                    "{} {fmt:?} [{rows}x{cols}] {decode} of {tokens}",
                    label(&*be)
                );
                let run = |x: &[f32], t: usize, kinds: Rows| {
                    let y = be
                        .linear_rows(&tensor(&*be, x, &[t, cols]), &w, kinds)
                        .unwrap();
                    be.download(&y).unwrap()
                };
                let mixed = run(&x, tokens, Rows::decode(decode));
                let mut parts = Vec::new();
                for t in 0..decode {
                    parts.extend(run(&x[t * cols..(t + 1) * cols], 1, Rows::decode(1)));
                }
                if tokens > decode {
                    parts.extend(run(&x[decode * cols..], tokens - decode, Rows::PREFILL));
                }
                assert!(
                    bits(&mixed) == bits(&parts),
                    "{what}: rows differ from their own passes"
                );
                let c = cpu();
                let want = c
                    .linear_rows(
                        &tensor(&*c, &x, &[tokens, cols]),
                        &c.load_linear(&sw).unwrap(),
                        Rows::decode(decode),
                    )
                    .unwrap();
                assert_close(&what, &mixed, &c.download(&want).unwrap(), ABS, REL);
            }
        }
        let w = be
            .load_linear(&linear(&mut rng, "w", 2, 4, Fmt::F32, false))
            .unwrap();
        let one_row = tensor(&*be, &[0.0; 4], &[1, 4]);
        assert!(be.linear_rows(&one_row, &w, Rows::decode(2)).is_err());
    }
}

/// `gather_rows`: row ranges of several tensors stacked, exactly; bad parts refused by name.
#[test]
fn gather_rows_copies_exactly_and_checks_its_parts() {
    let mut rng = Rand::new(6);
    let mut all = vec![cpu()];
    all.extend(others());
    for be in all {
        let (a, b) = (rng.vec(5 * 7, 1.0), rng.vec(3 * 7, 1.0));
        let (ta, tb) = (tensor(&*be, &a, &[5, 7]), tensor(&*be, &b, &[3, 7]));
        let g = be
            .gather_rows(&[(&ta, 1..4), (&tb, 0..3), (&ta, 4..5), (&tb, 2..2)])
            .unwrap();
        assert_eq!(g.shape(), &[7, 7]);
        let mut want = a[7..28].to_vec();
        want.extend(&b);
        want.extend(&a[28..35]);
        assert_eq!(be.download(&g).unwrap(), want, "{}", label(&*be));
        let narrow = tensor(&*be, &[0.0; 6], &[1, 6]);
        for bad in [
            be.gather_rows(&[]),
            be.gather_rows(&[(&ta, 4..6)]),
            be.gather_rows(&[(&ta, 0..1), (&narrow, 0..1)]),
        ] {
            let e = bad.err().expect("refused").to_string();
            assert!(e.contains("gather_rows"), "{}: {e}", label(&*be));
        }
    }
}
