//! `embed`, `rms_norm`, `add_rms_norm`, `relu2`, `add`, `split_columns`, `last_row` and
//! `argmax` against the CPU reference, on widths that are not multiples of the workgroup size,
//! one row and many.
//!
//! Tolerances: every op here except the two norms moves or combines values with at most one
//! correctly rounded operation per element, so it must match the CPU bit for bit (NaN matching
//! any NaN); `embed` decodes stored weights and must be bit-exact too; `argmax` must return the
//! same indices. The norms sum squares in a different order (a tree on the GPU, left to right on
//! the CPU). The CPU's running f32 sum is the less accurate of the two: its relative error grows
//! like `sqrt(n)·2⁻²⁴` (halved by the square root), and a few more roundings follow, so the
//! norms are checked to `norm_rel(cols)` relative (measured worst on lavapipe: 1.4e-6 at width
//! 4099, 1.9e-6 at 8192, against bounds of 4.3e-6 and 5.9e-6), plus `NORM_ABS` absolute for
//! outputs near zero.

use nemotron_rt::backend::Backend;

use crate::common::*;

const NORM_ABS: f32 = 1e-7;

/// Relative tolerance of the norms for rows of `cols` values (see the module comment).
fn norm_rel(cols: usize) -> f32 {
    f32::EPSILON / 2.0 * (8.0 + (cols as f32).sqrt())
}

const WIDTHS: [usize; 6] = [1, 7, 64, 100, 4099, 8192];
const ROWS: [usize; 3] = [1, 3, 67];

/// Bit-for-bit equality; any NaN equals any NaN.
fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || g.is_nan() && w.is_nan(),
            "{what}: element {i} is {g:e} but the CPU reference gives {w:e}"
        );
    }
}

fn download(be: &dyn Backend, t: &nemotron_rt::backend::Tensor) -> Vec<f32> {
    be.download(t).unwrap()
}

/// Random values with some exact zeros, negative zeros and repeats mixed in.
fn values(rng: &mut Rand, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.u64() % 16 {
            0 => 0.0,
            1 => -0.0,
            _ => rng.normal(1.0),
        })
        .collect()
}

#[test]
fn embed_matches_cpu_bit_for_bit() {
    let mut rng = Rand::new(11);
    let cpu = cpu();
    for be in others() {
        for fmt in ALL_FORMATS {
            // NVFP4 packs 16-wide blocks, so its widths must be multiples of 16.
            let widths: &[usize] = match fmt {
                Fmt::Nvfp4 => &[16, 112, 4096],
                _ => &[1, 7, 64, 100, 4099],
            };
            for &cols in widths {
                let vocab = 37;
                let w = linear(&mut rng, "embed", vocab, cols, fmt, false);
                let (tc, tb) = (cpu.load_linear(&w).unwrap(), be.load_linear(&w).unwrap());
                for ids in [
                    vec![5],
                    vec![0, vocab as u32 - 1, 3, 3, 0, 36, 17, 3],
                    (0..67).map(|_| (rng.u64() % vocab as u64) as u32).collect(),
                ] {
                    let want = download(&*cpu, &cpu.embed(&tc, &ids).unwrap());
                    let got_t = be.embed(&tb, &ids).unwrap();
                    assert_eq!(got_t.shape(), &[ids.len(), cols]);
                    let what =
                        format!("{} embed {fmt:?} [{vocab}x{cols}] ids {ids:?}", label(&*be));
                    assert_exact(&what, &download(&*be, &got_t), &want);
                }
                let e = be
                    .embed(&tb, &[1, vocab as u32])
                    .err()
                    .expect("id out of range");
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("{vocab}")) && msg.contains("37 rows"),
                    "embed error should name the id and the vocabulary size: {msg}"
                );
            }
        }
    }
}

#[test]
fn embed_of_no_tokens_is_empty() {
    let mut rng = Rand::new(12);
    for be in others() {
        let w = be
            .load_linear(&linear(&mut rng, "embed", 4, 8, Fmt::F32, false))
            .unwrap();
        let y = be.embed(&w, &[]).unwrap();
        assert_eq!(y.shape(), &[0, 8]);
        assert!(be.download(&y).unwrap().is_empty());
    }
}

#[test]
fn rms_norm_matches_cpu() {
    let mut rng = Rand::new(13);
    let cpu = cpu();
    for be in others() {
        for cols in WIDTHS {
            for rows in ROWS {
                for eps in [1e-5f32, 1e-6] {
                    let x = values(&mut rng, rows * cols);
                    let w = rng.vec(cols, 1.0);
                    let want = download(
                        &*cpu,
                        &cpu.rms_norm(
                            &tensor(&*cpu, &x, &[rows, cols]),
                            &cpu.load_vector("norm", &w).unwrap(),
                            eps,
                        )
                        .unwrap(),
                    );
                    let got = download(
                        &*be,
                        &be.rms_norm(
                            &tensor(&*be, &x, &[rows, cols]),
                            &be.load_vector("norm", &w).unwrap(),
                            eps,
                        )
                        .unwrap(),
                    );
                    let what = format!("{} rms_norm [{rows}x{cols}] eps {eps}", label(&*be));
                    assert_close(&what, &got, &want, NORM_ABS, norm_rel(cols));
                }
            }
        }
        // An all-zero row normalises to zeros (eps keeps it finite).
        let w = be.load_vector("norm", &[1.0; 5]).unwrap();
        let y = be
            .rms_norm(&tensor(&*be, &[0.0; 5], &[1, 5]), &w, 1e-6)
            .unwrap();
        assert_exact("rms_norm of zeros", &download(&*be, &y), &[0.0; 5]);
        // A width that does not match the weight is an error, not a panic.
        let x = tensor(&*be, &[1.0; 6], &[1, 6]);
        assert!(be.rms_norm(&x, &w, 1e-6).is_err());
    }
}

#[test]
fn add_rms_norm_matches_cpu_and_updates_the_residual() {
    let mut rng = Rand::new(14);
    let cpu = cpu();
    for be in others() {
        for cols in WIDTHS {
            for rows in ROWS {
                let (r, d, w) = (
                    values(&mut rng, rows * cols),
                    values(&mut rng, rows * cols),
                    rng.vec(cols, 1.0),
                );
                let shape = [rows, cols];
                let mut rc = tensor(&*cpu, &r, &shape);
                let want = download(
                    &*cpu,
                    &cpu.add_rms_norm(
                        &mut rc,
                        &tensor(&*cpu, &d, &shape),
                        &cpu.load_vector("norm", &w).unwrap(),
                        1e-5,
                    )
                    .unwrap(),
                );
                let mut rb = tensor(&*be, &r, &shape);
                let got = download(
                    &*be,
                    &be.add_rms_norm(
                        &mut rb,
                        &tensor(&*be, &d, &shape),
                        &be.load_vector("norm", &w).unwrap(),
                        1e-5,
                    )
                    .unwrap(),
                );
                let what = format!("{} add_rms_norm [{rows}x{cols}]", label(&*be));
                assert_close(&what, &got, &want, NORM_ABS, norm_rel(cols));
                assert_exact(
                    &format!("{what} residual"),
                    &download(&*be, &rb),
                    &download(&*cpu, &rc),
                );
            }
        }
        let w = be.load_vector("norm", &[1.0; 4]).unwrap();
        let mut r = tensor(&*be, &[1.0; 8], &[2, 4]);
        assert!(
            be.add_rms_norm(&mut r, &tensor(&*be, &[1.0; 4], &[1, 4]), &w, 1e-5)
                .is_err()
        );
    }
}

#[test]
fn relu2_is_exact() {
    let mut rng = Rand::new(15);
    let cpu = cpu();
    for be in others() {
        for cols in WIDTHS {
            for rows in ROWS {
                let mut x = values(&mut rng, rows * cols);
                let specials = [
                    f32::NAN,
                    -f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    1e30,
                    -1e-40,
                ];
                for (v, s) in x.iter_mut().zip(specials) {
                    *v = s;
                }
                let want = download(
                    &*cpu,
                    &cpu.relu2(&tensor(&*cpu, &x, &[rows, cols])).unwrap(),
                );
                let y = be.relu2(&tensor(&*be, &x, &[rows, cols])).unwrap();
                assert_eq!(y.shape(), &[rows, cols]);
                let what = format!("{} relu2 [{rows}x{cols}]", label(&*be));
                assert_exact(&what, &download(&*be, &y), &want);
            }
        }
    }
}

#[test]
fn add_is_exact_and_in_place() {
    let mut rng = Rand::new(16);
    let cpu = cpu();
    for be in others() {
        for cols in WIDTHS {
            for rows in ROWS {
                let (a, b) = (values(&mut rng, rows * cols), values(&mut rng, rows * cols));
                let mut ac = tensor(&*cpu, &a, &[rows, cols]);
                cpu.add(&mut ac, &tensor(&*cpu, &b, &[rows, cols])).unwrap();
                let mut ab = tensor(&*be, &a, &[rows, cols]);
                let bb = tensor(&*be, &b, &[rows, cols]);
                be.add(&mut ab, &bb).unwrap();
                let what = format!("{} add [{rows}x{cols}]", label(&*be));
                assert_exact(&what, &download(&*be, &ab), &download(&*cpu, &ac));
                assert_exact(&format!("{what} (b untouched)"), &download(&*be, &bb), &b);
            }
        }
        let mut a = tensor(&*be, &[1.0; 6], &[2, 3]);
        assert!(be.add(&mut a, &tensor(&*be, &[1.0; 6], &[3, 2])).is_err());
    }
}

#[test]
fn split_columns_is_exact() {
    let mut rng = Rand::new(17);
    let cpu = cpu();
    for be in others() {
        for widths in [
            vec![1],
            vec![3, 4],
            vec![64, 0, 100, 1],
            vec![4099, 7, 2, 8192],
            vec![5, 5, 5, 5, 5, 5, 5],
        ] {
            let total: usize = widths.iter().sum();
            for rows in ROWS {
                let x = values(&mut rng, rows * total);
                let want = cpu
                    .split_columns(&tensor(&*cpu, &x, &[rows, total]), &widths)
                    .unwrap();
                let got = be
                    .split_columns(&tensor(&*be, &x, &[rows, total]), &widths)
                    .unwrap();
                assert_eq!(got.len(), widths.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.shape(), w.shape(), "split_columns part {i} shape");
                    let what = format!("{} split_columns {widths:?} x{rows} part {i}", label(&*be));
                    assert_exact(&what, &download(&*be, g), &download(&*cpu, w));
                }
            }
        }
        let x = tensor(&*be, &[1.0; 6], &[2, 3]);
        assert!(be.split_columns(&x, &[1, 1]).is_err());
    }
}

#[test]
fn last_row_is_exact() {
    let mut rng = Rand::new(18);
    let cpu = cpu();
    for be in others() {
        for cols in WIDTHS {
            for rows in ROWS {
                let x = values(&mut rng, rows * cols);
                let want = download(
                    &*cpu,
                    &cpu.last_row(&tensor(&*cpu, &x, &[rows, cols])).unwrap(),
                );
                let y = be.last_row(&tensor(&*be, &x, &[rows, cols])).unwrap();
                assert_eq!(y.shape(), &[1, cols]);
                let what = format!("{} last_row [{rows}x{cols}]", label(&*be));
                assert_exact(&what, &download(&*be, &y), &want);
            }
        }
        assert!(be.last_row(&tensor(&*be, &[], &[0, 4])).is_err());
    }
}

/// Rows built to exercise the tie and NaN rules of `sampling::argmax`.
fn argmax_rows(rng: &mut Rand, rows: usize, cols: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let mut row: Vec<f32> = match r % 6 {
            // Few distinct values: many ties for the maximum, spread over threads.
            0 => (0..cols).map(|_| (rng.u64() % 4) as f32).collect(),
            // NaNs sprinkled over random values.
            1 => (0..cols)
                .map(|_| {
                    if rng.u64().is_multiple_of(3) {
                        f32::NAN
                    } else {
                        rng.normal(1.0)
                    }
                })
                .collect(),
            // All NaN: index 0.
            2 => vec![f32::NAN; cols],
            // NaN first, then -inf only (ties at -inf), with one larger value late if wide.
            3 => {
                let mut v = vec![f32::NEG_INFINITY; cols];
                v[0] = f32::NAN;
                if cols > 5 {
                    v[cols - 2] = -1.0;
                }
                v
            }
            // -0 and +0 are equal: the first of them wins.
            4 => {
                let mut v: Vec<f32> = (0..cols).map(|_| -1.0 - rng.uniform()).collect();
                v[cols / 2] = -0.0;
                v[cols - 1] = 0.0;
                v
            }
            _ => (0..cols).map(|_| rng.normal(1.0)).collect(),
        };
        if r % 6 == 5 && cols > 1 {
            // The maximum twice, the later copy at a lower thread lane.
            let m = row.iter().cloned().fold(f32::MIN, f32::max) + 1.0;
            let (a, b) = (cols - 1, (rng.u64() as usize) % (cols - 1));
            row[a] = m;
            row[b] = m;
        }
        x.extend(row);
    }
    x
}

#[test]
fn argmax_matches_cpu() {
    let mut rng = Rand::new(19);
    let cpu = cpu();
    for be in others() {
        for (rows, cols) in [
            (1, 1),
            (6, 1),
            (6, 7),
            (12, 64),
            (67, 100),
            (6, 257),
            (6, 4099),
            (3, 131072),
        ] {
            let x = argmax_rows(&mut rng, rows, cols);
            let want = cpu.argmax(&tensor(&*cpu, &x, &[rows, cols])).unwrap();
            let got = be.argmax(&tensor(&*be, &x, &[rows, cols])).unwrap();
            assert_eq!(got, want, "{} argmax [{rows}x{cols}]", label(&*be));
        }
        assert!(be.argmax(&tensor(&*be, &[], &[0, 5])).unwrap().is_empty());
    }
}
