//! The Mamba-2 mixer ops: `conv1d_silu` and `ssm_scan` with their state carried over a prefill
//! and several decode steps (compared after every call, so a state written wrongly shows up in
//! the next output), and `gated_group_rms_norm` over group widths that are not multiples of the
//! workgroup size. Shape mismatches must be errors.

use std::sync::Arc;

use nemotron_rt::backend::{Backend, SsmDims, Tensor, Weight};

use crate::common::*;

/// conv1d_silu: the taps are summed in the same order as the CPU (bias first), so only FMA
/// contraction and the `exp` inside SiLU (not correctly rounded in WGSL) differ: for
/// |acc| ≲ 10 that is a few ulp, well inside 1e-5 abs + 1e-5 relative.
const CONV_ABS: f32 = 1e-5;
const CONV_REL: f32 = 1e-5;

/// ssm_scan: the shader's exp/log1p are accurate to ~1 ulp, so the remaining differences are
/// the N-term dot product summed in another order and FMA contraction, carried through the
/// recurrence. y = S·C sums terms of either sign, so the error scales with the size of the
/// state rather than with |y|: the absolute part grows with the largest |y| of the call (a
/// step of ~20 from dt = 25 makes states of ~50). Measured against an f64 recurrence, both
/// backends stay within ~1.5e-6 · max|y| (the CPU's own error dominates); 1e-5 relative and
/// 5e-6 · max|y| leave margin without hiding a wrong step, decay or dt_min (errors ≳ 1e-2).
const SCAN_ABS: f32 = 1e-5;
const SCAN_SCALE: f32 = 5e-6;
const SCAN_REL: f32 = 1e-5;

/// gated_group_rms_norm: SiLU's `exp`, Σv² in another order, `1/sqrt`: a few ulp relative.
const NORM_ABS: f32 = 1e-6;
const NORM_REL: f32 = 1e-5;

/// Largest absolute error, and largest relative error where |want| > 1e-3, for the report.
fn max_errors(got: &[f32], want: &[f32]) -> (f32, f32) {
    got.iter()
        .zip(want)
        .fold((0.0f32, 0.0f32), |(a, r), (g, w)| {
            let e = (g - w).abs();
            let rel = if w.abs() > 1e-3 { e / w.abs() } else { 0.0 };
            (a.max(e), r.max(rel))
        })
}

fn vector(be: &dyn Backend, name: &str, v: &[f32]) -> Weight {
    be.load_vector(name, v).unwrap()
}

#[test]
fn conv1d_silu_matches_cpu_with_carried_state() {
    let mut rng = Rand::new(31);
    for be in others() {
        let cpu = cpu();
        let mut worst = (0.0f32, 0.0f32);
        for kernel in [1, 2, 4, 8] {
            for channels in [1, 37, 130] {
                for fmt in [Fmt::F32, Fmt::Bf16] {
                    for bias in [false, true] {
                        for seq in [&[5usize, 1, 1, 2][..], &[1, 2, 1, 3][..]] {
                            let what = format!(
                                "{} conv1d_silu K={kernel} C={channels} {fmt:?} bias={bias} \
                                 seq={seq:?}",
                                label(&*be)
                            );
                            let e = conv_case(
                                &mut rng, &cpu, &be, kernel, channels, fmt, bias, seq, &what,
                            );
                            worst = (worst.0.max(e.0), worst.1.max(e.1));
                        }
                    }
                }
            }
        }
        eprintln!(
            "{}: conv1d_silu max abs error {:.3e}, max rel error {:.3e}",
            label(&*be),
            worst.0,
            worst.1
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_case(
    rng: &mut Rand,
    cpu: &Arc<dyn Backend>,
    be: &Arc<dyn Backend>,
    kernel: usize,
    channels: usize,
    fmt: Fmt,
    bias: bool,
    seq: &[usize],
    what: &str,
) -> (f32, f32) {
    let w = linear(rng, "conv1d.weight", channels, kernel, fmt, false);
    let b = rng.vec(channels, 0.1);
    let (cw, gw) = (cpu.load_linear(&w).unwrap(), be.load_linear(&w).unwrap());
    let (cb, gb) = (
        vector(&**cpu, "conv1d.bias", &b),
        vector(&**be, "conv1d.bias", &b),
    );
    let mut cs = cpu.new_conv_state(channels, kernel).unwrap();
    let mut gs = be.new_conv_state(channels, kernel).unwrap();
    // The whole input timeline, zero history first: the state must end as its last K-1 rows.
    let mut timeline = vec![0.0f32; (kernel - 1) * channels];
    let mut worst = (0.0f32, 0.0f32);
    for (call, &t) in seq.iter().enumerate() {
        let x = rng.vec(t * channels, 1.0);
        timeline.extend_from_slice(&x);
        let want = cpu
            .download(
                &cpu.conv1d_silu(
                    &tensor(&**cpu, &x, &[t, channels]),
                    &cw,
                    bias.then_some(&cb),
                    &mut cs,
                )
                .unwrap(),
            )
            .unwrap();
        let got = be
            .download(
                &be.conv1d_silu(
                    &tensor(&**be, &x, &[t, channels]),
                    &gw,
                    bias.then_some(&gb),
                    &mut gs,
                )
                .unwrap(),
            )
            .unwrap();
        assert_close(
            &format!("{what} call {call} (T={t})"),
            &got,
            &want,
            CONV_ABS,
            CONV_REL,
        );
        let e = max_errors(&got, &want);
        worst = (worst.0.max(e.0), worst.1.max(e.1));
        // The state holds raw inputs, copied exactly.
        assert_eq!(gs.shape(), [kernel - 1, channels], "{what}: state shape");
        let state = be.download(&gs).unwrap();
        let tail = &timeline[timeline.len() - (kernel - 1) * channels..];
        assert_eq!(
            state, tail,
            "{what} call {call}: state is not the last K-1 inputs"
        );
    }
    worst
}

struct ScanWeights {
    a_log: Vec<f32>,
    d: Vec<f32>,
    dt_bias: Vec<f32>,
}

fn scan_call(
    be: &dyn Backend,
    w: &[Weight; 3],
    state: &mut Tensor,
    xbc: &[f32],
    dt: &[f32],
    dims: SsmDims,
    dt_min: Option<f32>,
) -> Vec<f32> {
    let t = dt.len() / dims.heads;
    let width = xbc.len() / t;
    let y = be
        .ssm_scan(
            &tensor(be, xbc, &[t, width]),
            &tensor(be, dt, &[t, dims.heads]),
            &w[0],
            &w[1],
            &w[2],
            state,
            dims,
            dt_min,
        )
        .unwrap();
    be.download(&y).unwrap()
}

#[test]
fn ssm_scan_matches_cpu_over_prefill_and_decode() {
    let mut rng = Rand::new(32);
    for be in others() {
        let cpu = cpu();
        let mut worst = (0.0f32, 0.0f32, 0.0f32);
        for &(heads, head_dim, groups, n) in &[(3, 5, 1, 7), (8, 16, 2, 16), (12, 8, 4, 32)] {
            let dims = SsmDims {
                heads,
                head_dim,
                groups,
                state: n,
            };
            let width = heads * head_dim + 2 * groups * n;
            // A = -exp(A_log) in [-16, -1]; dt_bias = softplus⁻¹ of steps in [1e-3, 0.1], as
            // Mamba-2 initialises them.
            let sw = ScanWeights {
                a_log: (0..heads).map(|_| rng.uniform() * 16f32.ln()).collect(),
                d: rng.vec(heads, 1.0),
                dt_bias: (0..heads)
                    .map(|_| {
                        let step = (1e-3f32.ln() + rng.uniform() * 100f32.ln()).exp();
                        step.exp_m1().ln()
                    })
                    .collect(),
            };
            let load = |be: &dyn Backend| {
                [
                    vector(be, "A_log", &sw.a_log),
                    vector(be, "D", &sw.d),
                    vector(be, "dt_bias", &sw.dt_bias),
                ]
            };
            let (cw, gw) = (load(&*cpu), load(&*be));
            // 300 tokens: the CUDA backend cuts that prefill into chunks where the (head,
            // channel) pairs cannot fill the device (on the emulator's 4 SMs, 4 chunks for
            // H=3 P=5 and 2 for H=12 P=8).
            for prefill in [1, 37, 300] {
                for dt_min in [None, Some(0.01f32)] {
                    let mut cs = cpu.new_ssm_state(dims).unwrap();
                    let mut gs = be.new_ssm_state(dims).unwrap();
                    for (call, t) in [prefill, 1, 1, 1].into_iter().enumerate() {
                        let xbc = rng.vec(t * width, 1.0);
                        let mut dt = rng.vec(t * heads, 1.0);
                        // Both sides of softplus's threshold and a deep negative.
                        if call == 0 && t > 1 {
                            dt[0] = 25.0;
                            dt[1] = -30.0;
                        }
                        let want = scan_call(&*cpu, &cw, &mut cs, &xbc, &dt, dims, dt_min);
                        let got = scan_call(&*be, &gw, &mut gs, &xbc, &dt, dims, dt_min);
                        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        assert_close(
                            &format!(
                                "{} ssm_scan H={heads} P={head_dim} G={groups} N={n} \
                                 prefill={prefill} dt_min={dt_min:?} call {call} (T={t})",
                                label(&*be)
                            ),
                            &got,
                            &want,
                            SCAN_ABS + SCAN_SCALE * scale,
                            SCAN_REL,
                        );
                        let e = max_errors(&got, &want);
                        worst = (worst.0.max(e.0), worst.1.max(e.1), worst.2.max(e.0 / scale));
                    }
                    assert_eq!(gs.shape(), [heads, head_dim, n]);
                }
            }
        }
        eprintln!(
            "{}: ssm_scan max abs error {:.3e}, max rel error {:.3e}, max abs error / max|y| {:.3e}",
            label(&*be),
            worst.0,
            worst.1,
            worst.2
        );
    }
}

/// The comparisons above would pass vacuously if dt_min or the carried state had no effect
/// on these inputs; on the CPU, both change y by far more than the tolerance.
#[test]
fn ssm_scan_inputs_exercise_dt_min_and_state() {
    let cpu = cpu();
    let mut rng = Rand::new(33);
    let dims = SsmDims {
        heads: 8,
        head_dim: 16,
        groups: 2,
        state: 16,
    };
    let width = 8 * 16 + 2 * 2 * 16;
    let w = [
        vector(&*cpu, "A_log", &rng.vec(8, 0.5)),
        vector(&*cpu, "D", &rng.vec(8, 1.0)),
        vector(&*cpu, "dt_bias", &[-4.6f32; 8]),
    ];
    let xbc = rng.vec(5 * width, 1.0);
    let dt = rng.vec(5 * 8, 1.0);
    let run = |dt_min, steps: &[(usize, usize)]| {
        let mut s = cpu.new_ssm_state(dims).unwrap();
        let mut last = Vec::new();
        for &(a, b) in steps {
            last = scan_call(
                &*cpu,
                &w,
                &mut s,
                &xbc[a * width..b * width],
                &dt[a * 8..b * 8],
                dims,
                dt_min,
            );
        }
        last
    };
    let differs = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .any(|(x, y)| (x - y).abs() > 100.0 * (SCAN_ABS + SCAN_SCALE + SCAN_REL * y.abs()))
    };
    let plain = run(None, &[(0, 4), (4, 5)]);
    assert!(differs(&plain, &run(Some(0.01), &[(0, 4), (4, 5)])));
    assert!(differs(&plain, &run(None, &[(4, 5)])));
}

#[test]
fn gated_group_rms_norm_matches_cpu() {
    let mut rng = Rand::new(34);
    for be in others() {
        let cpu = cpu();
        let mut worst = (0.0f32, 0.0f32);
        for &(groups, width) in &[(1, 130), (2, 200), (4, 148), (4, 36), (1, 3)] {
            for rows in [1, 5] {
                let w = rng.vec(width, 1.0);
                let y = rng.vec(rows * width, 1.0);
                let mut z = rng.vec(rows * width, 2.0);
                // SiLU's tails.
                z[0] = -90.0;
                z[width - 1] = 90.0;
                let eps = 1e-5;
                let run = |be: &dyn Backend| {
                    let out = be
                        .gated_group_rms_norm(
                            &tensor(be, &y, &[rows, width]),
                            &tensor(be, &z, &[rows, width]),
                            &vector(be, "norm.weight", &w),
                            groups,
                            eps,
                        )
                        .unwrap();
                    be.download(&out).unwrap()
                };
                let (want, got) = (run(&*cpu), run(&*be));
                assert_close(
                    &format!(
                        "{} gated_group_rms_norm groups={groups} width={width} rows={rows}",
                        label(&*be)
                    ),
                    &got,
                    &want,
                    NORM_ABS,
                    NORM_REL,
                );
                let e = max_errors(&got, &want);
                worst = (worst.0.max(e.0), worst.1.max(e.1));
            }
        }
        eprintln!(
            "{}: gated_group_rms_norm max abs error {:.3e}, max rel error {:.3e}",
            label(&*be),
            worst.0,
            worst.1
        );
    }
}

#[test]
fn mamba_ops_reject_mismatched_shapes() {
    let mut rng = Rand::new(35);
    for be in others() {
        let be = &*be;
        let name = label(be);
        // conv: weight [6, 4] against a state for K=3, and x with the wrong width.
        let w = be
            .load_linear(&linear(&mut rng, "conv", 6, 4, Fmt::F32, false))
            .unwrap();
        let mut st = be.new_conv_state(6, 3).unwrap();
        let x = tensor(be, &rng.vec(12, 1.0), &[2, 6]);
        assert!(be.conv1d_silu(&x, &w, None, &mut st).is_err(), "{name}");
        let mut st = be.new_conv_state(6, 4).unwrap();
        let x5 = tensor(be, &rng.vec(10, 1.0), &[2, 5]);
        assert!(be.conv1d_silu(&x5, &w, None, &mut st).is_err(), "{name}");
        let b5 = vector(be, "b", &[0.0; 5]);
        assert!(
            be.conv1d_silu(&x, &w, Some(&b5), &mut st).is_err(),
            "{name}"
        );
        assert!(be.conv1d_silu(&x, &w, None, &mut st).is_ok(), "{name}");

        // scan: dt width, token counts, vector lengths and state shape.
        let dims = SsmDims {
            heads: 4,
            head_dim: 2,
            groups: 2,
            state: 3,
        };
        let width = 4 * 2 + 2 * 2 * 3;
        let v4 = vector(be, "v", &[0.1; 4]);
        let v3 = vector(be, "v", &[0.1; 3]);
        let xbc = tensor(be, &rng.vec(2 * width, 1.0), &[2, width]);
        let dt = tensor(be, &rng.vec(8, 1.0), &[2, 4]);
        let mut s = be.new_ssm_state(dims).unwrap();
        let scan = |xbc: &Tensor, dt: &Tensor, a: &Weight, s: &mut Tensor, dims: SsmDims| {
            be.ssm_scan(xbc, dt, a, &v4, &v4, s, dims, None)
        };
        assert!(scan(&xbc, &dt, &v4, &mut s, dims).is_ok(), "{name}");
        let dt3 = tensor(be, &rng.vec(6, 1.0), &[2, 3]);
        assert!(scan(&xbc, &dt3, &v4, &mut s, dims).is_err(), "{name}");
        let dt1 = tensor(be, &rng.vec(4, 1.0), &[1, 4]);
        assert!(scan(&xbc, &dt1, &v4, &mut s, dims).is_err(), "{name}");
        assert!(scan(&xbc, &dt, &v3, &mut s, dims).is_err(), "{name}");
        let mut wrong = be
            .new_ssm_state(SsmDims {
                head_dim: 3,
                ..dims
            })
            .unwrap();
        assert!(scan(&xbc, &dt, &v4, &mut wrong, dims).is_err(), "{name}");
        let odd = SsmDims { groups: 3, ..dims };
        assert!(scan(&xbc, &dt, &v4, &mut s, odd).is_err(), "{name}");

        // norm: groups that do not divide the width, z of another shape.
        let y = tensor(be, &rng.vec(12, 1.0), &[2, 6]);
        let w6 = vector(be, "w", &[1.0; 6]);
        assert!(
            be.gated_group_rms_norm(&y, &y, &w6, 4, 1e-5).is_err(),
            "{name}"
        );
        assert!(
            be.gated_group_rms_norm(&y, &y, &w6, 0, 1e-5).is_err(),
            "{name}"
        );
        let z1 = tensor(be, &rng.vec(6, 1.0), &[1, 6]);
        assert!(
            be.gated_group_rms_norm(&y, &z1, &w6, 2, 1e-5).is_err(),
            "{name}"
        );
        assert!(
            be.gated_group_rms_norm(&y, &y, &w6, 3, 1e-5).is_ok(),
            "{name}"
        );
    }
}
