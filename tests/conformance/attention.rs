//! `attention` over a KV cache carried across calls: a prefill, single-token decode steps,
//! `kv_truncate` (rejected drafts) and a long chunk that makes the cache grow with content in
//! it, compared with the CPU at every step.

use nemotron_rt::backend::{AttnDims, Backend, Tensor};

use crate::common::*;

/// Outputs are convex combinations of V rows (|v| ≲ 2); the backends differ only in summation
/// order (online vs two-pass softmax, tree vs serial sums) and in `exp` rounding, which for
/// these sizes stays far below 1e-5. Measured max |err| on lavapipe: see the test output.
const ABS: f32 = 2e-5;
const REL: f32 = 1e-4;

struct Side {
    be: std::sync::Arc<dyn Backend>,
    cache: Tensor,
}

impl Side {
    fn step(&mut self, q: &[f32], k: &[f32], v: &[f32], t: usize, dims: AttnDims) -> Vec<f32> {
        let be = &*self.be;
        let qw = dims.heads * dims.head_dim;
        let kw = dims.kv_heads * dims.head_dim;
        let out = be
            .attention(
                &tensor(be, q, &[t, qw]),
                &tensor(be, k, &[t, kw]),
                &tensor(be, v, &[t, kw]),
                &mut self.cache,
                dims,
            )
            .unwrap();
        assert_eq!(out.shape(), &[t, qw]);
        be.download(&out).unwrap()
    }
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// What happens to the cache before a call.
#[derive(Clone, Copy, Debug)]
enum Op {
    Run(usize),
    Truncate(usize),
}

#[test]
fn attention_matches_cpu_with_a_carried_cache() {
    let mut rng = Rand::new(11);
    let mut worst = 0.0f32;
    for be in others() {
        for &(heads, kv_heads, head_dim) in &[(1, 1, 8), (8, 2, 16), (6, 2, 32), (4, 4, 100)] {
            let dims = AttnDims {
                heads,
                kv_heads,
                head_dim,
            };
            for prefill in [1usize, 67] {
                let mut ops = vec![Op::Run(prefill)];
                ops.extend([Op::Run(1); 4]);
                // Drop the last three positions, as when a draft is rejected, and continue.
                ops.push(Op::Truncate(prefill + 1));
                ops.extend([Op::Run(1); 3]);
                // A chunk long enough to make the cache grow while it holds positions.
                ops.push(Op::Run(70));
                ops.push(Op::Run(1));
                ops.push(Op::Truncate(0));
                ops.push(Op::Run(3));
                let cpu = cpu();
                let mut sides = [
                    Side {
                        cache: cpu.new_kv_cache(dims).unwrap(),
                        be: cpu,
                    },
                    Side {
                        cache: be.new_kv_cache(dims).unwrap(),
                        be: be.clone(),
                    },
                ];
                let mut len = 0;
                for (i, op) in ops.iter().enumerate() {
                    let what = format!(
                        "{} attention heads={heads} kv={kv_heads} hd={head_dim} prefill={prefill} op {i} {op:?}",
                        label(&*be)
                    );
                    match *op {
                        Op::Truncate(n) => {
                            for s in &mut sides {
                                s.be.kv_truncate(&mut s.cache, n).unwrap();
                            }
                            len = len.min(n);
                        }
                        Op::Run(t) => {
                            let q = rng.vec(t * heads * head_dim, 1.0);
                            let k = rng.vec(t * kv_heads * head_dim, 1.0);
                            let v = rng.vec(t * kv_heads * head_dim, 1.0);
                            let want = sides[0].step(&q, &k, &v, t, dims);
                            let got = sides[1].step(&q, &k, &v, t, dims);
                            worst = worst.max(max_err(&got, &want));
                            assert_close(&what, &got, &want, ABS, REL);
                            len += t;
                        }
                    }
                    for s in &sides {
                        assert_eq!(s.be.kv_len(&s.cache).unwrap(), len, "{what}: kv_len");
                        assert_eq!(
                            s.cache.shape(),
                            &[len, kv_heads * head_dim],
                            "{what}: cache shape"
                        );
                    }
                }
            }
        }
    }
    eprintln!("attention: max |gpu - cpu| = {worst:e}");
}

/// Sharp attention (large logits) exercises the running-max rescaling: the online softmax
/// must agree with the CPU's two-pass softmax when a late position dominates.
#[test]
fn attention_handles_peaked_scores() {
    let mut rng = Rand::new(12);
    for be in others() {
        let dims = AttnDims {
            heads: 2,
            kv_heads: 1,
            head_dim: 16,
        };
        let t = 150;
        let q: Vec<f32> = rng.vec(t * 32, 4.0);
        let k: Vec<f32> = rng.vec(t * 16, 4.0);
        let v = rng.vec(t * 16, 1.0);
        let cpu = cpu();
        let mut a = Side {
            cache: cpu.new_kv_cache(dims).unwrap(),
            be: cpu,
        };
        let mut b = Side {
            cache: be.new_kv_cache(dims).unwrap(),
            be: be.clone(),
        };
        let want = a.step(&q, &k, &v, t, dims);
        let got = b.step(&q, &k, &v, t, dims);
        eprintln!(
            "attention (peaked): max |gpu - cpu| = {:e}",
            max_err(&got, &want)
        );
        assert_close(
            &format!("{} attention peaked", label(&*be)),
            &got,
            &want,
            ABS * 10.0,
            REL,
        );
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    for be in others() {
        let dims = AttnDims {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let mut cache = be.new_kv_cache(dims).unwrap();
        let q = tensor(&*be, &[0.0; 2 * 32], &[2, 32]);
        let k = tensor(&*be, &[0.0; 2 * 8], &[2, 8]);
        let v = tensor(&*be, &[0.0; 2 * 16], &[2, 16]);
        assert!(be.attention(&q, &k, &v, &mut cache, dims).is_err());
        let bad = AttnDims {
            heads: 3,
            kv_heads: 2,
            head_dim: 8,
        };
        let q3 = tensor(&*be, &[0.0; 2 * 24], &[2, 24]);
        let k2 = tensor(&*be, &[0.0; 2 * 16], &[2, 16]);
        assert!(be.attention(&q3, &k2, &v, &mut cache, bad).is_err());
        assert_eq!(be.kv_len(&cache).unwrap(), 0);
    }
}
