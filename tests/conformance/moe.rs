//! The MoE router (exact expert choice, grouped selection, ties, any top_k up to E) and the
//! routed experts in every stored weight format.

use nemotron_rt::backend::{Backend, ExpertWeights, RouterParams, Routing, Rows};
use nemotron_rt::checkpoint::{ByteView, DType};
use nemotron_rt::weights::{LinearData, StoredLinear};

use crate::common::*;

/// Router weights: the backends compute the same sigmoid / sum / divide, differing only in
/// `exp` and division rounding (a few ulp).
const W_REL: f32 = 1e-6;

fn route(
    be: &dyn Backend,
    logits: &[f32],
    bias: &[f32],
    tokens: usize,
    p: &RouterParams,
) -> (Vec<u32>, Vec<f32>) {
    let e = bias.len();
    let r = be
        .router(
            &tensor(be, logits, &[tokens, e]),
            &be.load_vector("bias", bias).unwrap(),
            p,
        )
        .unwrap();
    assert_eq!(r.ids.shape(), &[tokens, p.top_k]);
    assert_eq!(r.weights.shape(), &[tokens, p.top_k]);
    (
        be.download_u32(&r.ids).unwrap(),
        be.download(&r.weights).unwrap(),
    )
}

fn params(
    top_k: usize,
    n_group: usize,
    topk_group: usize,
    norm: bool,
    scaling: f32,
) -> RouterParams {
    RouterParams {
        top_k,
        n_group,
        topk_group,
        norm_topk_prob: norm,
        scaling,
    }
}

fn shuffle(rng: &mut Rand, v: &mut [usize]) {
    for i in (1..v.len()).rev() {
        let j = (rng.u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Logits and bias for `tokens` rows of `e` experts whose choice values `sigmoid(logit) + bias`
/// are, per token, a random permutation of the levels 0.25 + 0.5·i/e (spacing 0.5/e ≥ 9.7e-4
/// ≫ 1e-4), and whose groups' top-2 sums are pairwise distinct by at least one level, so the
/// choice is well-defined under a few ulp of rounding. The bias (one vector for all tokens) is
/// random in ±0.2, so scores `choice - bias` stay in (0.05, 0.95) and order differently from
/// the choice values: the bias really changes the choice.
fn separated(rng: &mut Rand, tokens: usize, e: usize, n_group: usize) -> (Vec<f32>, Vec<f32>) {
    let level = |i: usize| 0.25 + 0.5 * i as f64 / e as f64;
    let bias: Vec<f32> = (0..e).map(|_| 0.4 * rng.uniform() - 0.2).collect();
    let per = e / n_group.max(1);
    let mut logits = Vec::new();
    for _ in 0..tokens {
        let lv = loop {
            let mut lv: Vec<usize> = (0..e).collect();
            shuffle(rng, &mut lv);
            if n_group <= 1 {
                break lv;
            }
            let mut sums: Vec<usize> = lv
                .chunks_exact(per)
                .map(|g| {
                    let mut g = g.to_vec();
                    g.sort_unstable_by(|a, b| b.cmp(a));
                    g.iter().take(2).sum()
                })
                .collect();
            sums.sort_unstable();
            if sums.windows(2).all(|w| w[0] != w[1]) {
                break lv;
            }
        };
        for (i, &l) in lv.iter().enumerate() {
            let s = level(l) - bias[i] as f64;
            logits.push((s / (1.0 - s)).ln() as f32);
        }
    }
    (logits, bias)
}

#[test]
fn router_matches_cpu_exactly() {
    let mut rng = Rand::new(21);
    let mut worst = 0.0f32;
    for be in others() {
        for &(e, k, n_group, topk_group) in &[
            (8, 1, 1, 1),
            (8, 8, 1, 1),
            (16, 4, 4, 2),
            (512, 22, 8, 4),
            (512, 22, 1, 1),
            (64, 64, 1, 1),
        ] {
            for tokens in [1, 13] {
                let (logits, bias) = separated(&mut rng, tokens, e, n_group);
                for norm in [false, true] {
                    for scaling in [1.0, 2.5] {
                        let p = params(k, n_group, topk_group, norm, scaling);
                        let what = format!("{} router E={e} {p:?} T={tokens}", label(&*be));
                        let (cid, cw) = route(&*cpu(), &logits, &bias, tokens, &p);
                        let (gid, gw) = route(&*be, &logits, &bias, tokens, &p);
                        assert_eq!(gid, cid, "{what}: ids");
                        for row in cid.chunks(k) {
                            assert!(row.windows(2).all(|w| w[0] < w[1]), "{what}: {row:?}");
                        }
                        for (g, c) in gw.iter().zip(&cw) {
                            worst = worst.max((g - c).abs() / c.abs());
                        }
                        assert_close(&what, &gw, &cw, 0.0, W_REL);
                    }
                }
            }
        }
    }
    eprintln!("router: max relative weight error = {worst:e}");
}

/// Exact ties (equal logits give bit-equal scores on one backend) go to the lower index, both
/// among experts and among groups, and experts of dropped groups (-inf) are still taken, by
/// index, when top_k exceeds what the kept groups hold.
#[test]
fn router_breaks_ties_to_the_lower_index() {
    let cases: Vec<(Vec<f32>, RouterParams, Vec<u32>)> = vec![
        (
            vec![0.5, 0.9, 0.5, 0.9, 0.1, 0.9, 0.5, 0.1],
            params(4, 1, 1, true, 1.0),
            vec![0, 1, 3, 5],
        ),
        (vec![0.3; 8], params(3, 1, 1, false, 1.0), vec![0, 1, 2]),
        (vec![0.3; 8], params(3, 4, 2, false, 1.0), vec![0, 1, 2]),
        (
            vec![0.3; 8],
            params(6, 4, 2, true, 2.5),
            vec![0, 1, 2, 3, 4, 5],
        ),
        (
            // Groups {0,1} {2,3} {4,5} {6,7}: sums 1.2, 1.6, 1.6, 1.2 (in logit terms) -> keep
            // groups 1 and 2, ties among them to the lower index.
            vec![0.6, 0.6, 0.8, 0.8, 0.8, 0.8, 0.6, 0.6],
            params(3, 4, 2, false, 1.0),
            vec![2, 3, 4],
        ),
    ];
    let mut all = vec![cpu()];
    all.extend(others());
    for be in all {
        for (logits, p, want) in &cases {
            let bias = vec![0.0f32; logits.len()];
            let (ids, _) = route(&*be, logits, &bias, 1, p);
            assert_eq!(&ids, want, "{} router ties {logits:?} {p:?}", label(&*be));
            // Several tokens at once give the same answer in every row.
            let many: Vec<f32> = (0..5).flat_map(|_| logits.iter().copied()).collect();
            let (ids5, _) = route(&*be, &many, &bias, 5, p);
            assert_eq!(ids5, want.repeat(5), "{} router ties x5", label(&*be));
        }
    }
}

#[test]
fn router_rejects_bad_top_k() {
    let mut all = vec![cpu()];
    all.extend(others());
    for be in all {
        let logits = tensor(&*be, &[0.0; 16], &[2, 8]);
        let bias = be.load_vector("bias", &[0.0; 8]).unwrap();
        for k in [0, 9] {
            assert!(
                be.router(&logits, &bias, &params(k, 1, 1, true, 1.0))
                    .is_err(),
                "{} router accepted top_k {k} of 8",
                label(&*be)
            );
        }
    }
}

fn load(be: &dyn Backend, up: &[StoredLinear], down: &[StoredLinear]) -> ExpertWeights {
    be.load_experts("experts", up, down).unwrap()
}

/// Routes with the backend's own router (the ids are exact, checked against the CPU's) and
/// runs the experts.
fn run_experts(
    be: &dyn Backend,
    ex: &ExpertWeights,
    x: &[f32],
    logits: &[f32],
    bias: &[f32],
    tokens: usize,
    p: &RouterParams,
) -> (Vec<u32>, Vec<f32>) {
    let e = bias.len();
    let routing: Routing = be
        .router(
            &tensor(be, logits, &[tokens, e]),
            &be.load_vector("bias", bias).unwrap(),
            p,
        )
        .unwrap();
    let y = be
        .moe_experts(&tensor(be, x, &[tokens, ex.latent]), ex, &routing)
        .unwrap();
    assert_eq!(y.shape(), &[tokens, ex.latent]);
    (
        be.download_u32(&routing.ids).unwrap(),
        be.download(&y).unwrap(),
    )
}

/// Weights decode bit-exactly on both backends; what differs is the summation order of the
/// two dot products (length L, then F) and of the k-term tree vs serial sums. With |x| ≲ 1,
/// |w| ≲ 2, widths ≤ 96, |h| stays ≲ 50 and |y| ≲ 1e3, so f32 reordering error is bounded by
/// ~1e-6 · Σ|terms| ≲ 1e-3 absolute; relative 1e-5 covers the largest outputs.
const EX_ABS: f32 = 1e-3;
const EX_REL: f32 = 1e-5;

#[test]
fn moe_experts_match_cpu_in_every_format() {
    let mut rng = Rand::new(31);
    let mut worst = 0.0f32;
    for be in others_with_prefill_variants() {
        for fmt in ALL_FORMATS {
            // (E, F, L, k, T); NVFP4 needs widths that are multiples of its 16-element blocks,
            // so F = 33 becomes 48 there.
            for &(e, f, l, k, tokens) in &[
                (16usize, 48usize, 32usize, 4usize, 1usize),
                (16, 48, 32, 4, 7),
                (5, 33, 16, 5, 7),
                (5, 33, 16, 2, 1),
                (9, 96, 80, 3, 3),
                // Prefill sizes: backends may group slots by expert (CUDA does past 8
                // tokens); 70 tokens give every expert more than one tile of 64 slots.
                (16, 48, 32, 4, 40),
                (5, 33, 16, 5, 70),
            ] {
                let f = if matches!(fmt, Fmt::Nvfp4) {
                    f.next_multiple_of(16)
                } else {
                    f
                };
                let up: Vec<StoredLinear> = (0..e)
                    .map(|i| linear(&mut rng, &format!("up{i}"), f, l, fmt, false))
                    .collect();
                let down: Vec<StoredLinear> = (0..e)
                    .map(|i| linear(&mut rng, &format!("down{i}"), l, f, fmt, false))
                    .collect();
                let x = rng.vec(tokens * l, 0.5);
                let (logits, bias) = separated(&mut rng, tokens, e, 1);
                let p = params(k, 1, 1, true, 2.5);
                let cpu = cpu();
                let (cid, want) = run_experts(
                    &*cpu,
                    &load(&*cpu, &up, &down),
                    &x,
                    &logits,
                    &bias,
                    tokens,
                    &p,
                );
                let (gid, got) = run_experts(
                    &*be,
                    &load(&*be, &up, &down),
                    &x,
                    &logits,
                    &bias,
                    tokens,
                    &p,
                );
                let what = format!(
                    "{} moe_experts {fmt:?} E={e} F={f} L={l} k={k} T={tokens}",
                    label(&*be)
                );
                assert_eq!(gid, cid, "{what}: routing ids");
                for (g, c) in got.iter().zip(&want) {
                    worst = worst.max((g - c).abs());
                }
                assert_close(&what, &got, &want, EX_ABS, EX_REL);
            }
        }
    }
    eprintln!("moe_experts: max |gpu - cpu| = {worst:e}");
}

/// An expert that is never chosen is never read: one full of NaN, kept out by its bias, leaves
/// every output finite.
#[test]
fn moe_experts_skip_unchosen_experts() {
    let mut rng = Rand::new(32);
    let (e, f, l, k, tokens) = (6, 24, 16, 2, 4);
    let nan = |name: &str, rows: usize, cols: usize| StoredLinear {
        name: name.to_string(),
        rows,
        cols,
        data: LinearData::Dense {
            dtype: DType::F32,
            data: ByteView::owned(
                bytemuck::cast_slice(&vec![f32::NAN; rows * cols]).to_vec(),
                name,
            ),
        },
        input_scale: None,
        bias: None,
    };
    let mut up: Vec<StoredLinear> = (0..e)
        .map(|i| linear(&mut rng, &format!("up{i}"), f, l, Fmt::F32, false))
        .collect();
    let mut down: Vec<StoredLinear> = (0..e)
        .map(|i| linear(&mut rng, &format!("down{i}"), l, f, Fmt::F32, false))
        .collect();
    up[3] = nan("up3", f, l);
    down[3] = nan("down3", l, f);
    let x = rng.vec(tokens * l, 0.5);
    let logits = rng.vec(tokens * e, 1.0);
    let mut bias = vec![0.0f32; e];
    bias[3] = -100.0;
    let p = params(k, 1, 1, false, 1.0);
    let mut all = vec![cpu()];
    all.extend(others());
    let cpu = cpu();
    let (_, want) = run_experts(
        &*cpu,
        &load(&*cpu, &up, &down),
        &x,
        &logits,
        &bias,
        tokens,
        &p,
    );
    for be in all {
        let (ids, got) = run_experts(
            &*be,
            &load(&*be, &up, &down),
            &x,
            &logits,
            &bias,
            tokens,
            &p,
        );
        assert!(!ids.contains(&3), "{}: expert 3 chosen", label(&*be));
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{}: an unchosen expert was read",
            label(&*be)
        );
        assert_close(
            &format!("{} moe_experts unchosen", label(&*be)),
            &got,
            &want,
            EX_ABS,
            EX_REL,
        );
    }
}

/// `moe_experts_rows` with decode rows before prefill rows: each row bit for bit what the same
/// backend gives for it alone in a pass of its kind, and close to the CPU's.
#[test]
fn moe_decode_and_prefill_rows_in_one_pass_equal_their_own_passes() {
    let mut rng = Rand::new(37);
    let mut all = vec![cpu()];
    all.extend(others_with_prefill_variants());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for be in all {
        for fmt in [Fmt::Bf16, Fmt::Nvfp4] {
            let (e, f, l, k) = (16usize, 48usize, 32usize, 4usize);
            for &(decode, tokens) in &[(2usize, 12usize), (3, 3), (1, 70)] {
                let up: Vec<StoredLinear> = (0..e)
                    .map(|i| linear(&mut rng, &format!("up{i}"), f, l, fmt, false))
                    .collect();
                let down: Vec<StoredLinear> = (0..e)
                    .map(|i| linear(&mut rng, &format!("down{i}"), l, f, fmt, false))
                    .collect();
                let x = rng.vec(tokens * l, 0.5);
                let (logits, bias) = separated(&mut rng, tokens, e, 1);
                let p = params(k, 1, 1, true, 2.5);
                let ex = load(&*be, &up, &down);
                let bias_w = be.load_vector("bias", &bias).unwrap();
                let run = |r: std::ops::Range<usize>, kinds: Rows| {
                    let n = r.len();
                    let routing = be
                        .router(
                            &tensor(&*be, &logits[r.start * e..r.end * e], &[n, e]),
                            &bias_w,
                            &p,
                        )
                        .unwrap();
                    let xs = tensor(&*be, &x[r.start * l..r.end * l], &[n, l]);
                    let y = be.moe_experts_rows(&xs, &ex, &routing, kinds).unwrap();
                    be.download(&y).unwrap()
                };
                let mixed = run(0..tokens, Rows::decode(decode));
                let mut parts = Vec::new();
                for t in 0..decode {
                    parts.extend(run(t..t + 1, Rows::decode(1)));
                }
                if tokens > decode {
                    parts.extend(run(decode..tokens, Rows::PREFILL));
                }
                let what = format!("{} moe {fmt:?} {decode} of {tokens}", label(&*be));
                assert!(
                    bits(&mixed) == bits(&parts),
                    "{what}: rows differ from their own passes"
                );
                let c = cpu();
                let (_, want) =
                    run_experts(&*c, &load(&*c, &up, &down), &x, &logits, &bias, tokens, &p);
                assert_close(&what, &mixed, &want, EX_ABS, EX_REL);
            }
        }
    }
}
