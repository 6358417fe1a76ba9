//! Causal GQA softmax attention over a growing KV cache. No RoPE: Nemotron-H attention has no
//! positional encoding (ARCH_NOTES surprise 1).

use super::linear::dot;
use super::par;
use crate::backend::AttnDims;
use crate::error::Result;

#[derive(Clone)]
pub(crate) struct KvCache {
    /// `[len, kv_heads * head_dim]` each.
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub len: usize,
    pub width: usize,
}

impl KvCache {
    pub(crate) fn new(dims: AttnDims) -> Result<KvCache> {
        Ok(KvCache {
            k: Vec::new(),
            v: Vec::new(),
            len: 0,
            width: dims.kv_width()?,
        })
    }

    pub(crate) fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            self.k.truncate(len * self.width);
            self.v.truncate(len * self.width);
        }
    }
}

/// Appends `k`, `v` (`[T, kv_width]`) and attends `q` (`[T, heads*head_dim]`) causally: token
/// `t` of this call sees every cached position up to its own.
pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tokens: usize,
    cache: &mut KvCache,
    dims: AttnDims,
    par: bool,
) -> Vec<f32> {
    let AttnDims {
        heads,
        kv_heads,
        head_dim: hd,
    } = dims;
    let start = cache.len;
    cache.k.extend_from_slice(&k[..tokens * cache.width]);
    cache.v.extend_from_slice(&v[..tokens * cache.width]);
    cache.len += tokens;
    let (ck, cv, kw) = (&cache.k, &cache.v, cache.width);
    let group = heads / kv_heads;
    let scale = (hd as f32).powf(-0.5);
    let qw = heads * hd;
    let mut out = vec![0.0f32; tokens * qw];
    par::chunks_mut(&mut out, hd, par, |idx, o| {
        SCORES.with_borrow_mut(|scores| {
            let (t, h) = (idx / heads, idx % heads);
            let kvh = h / group;
            let qv = &q[t * qw + h * hd..t * qw + (h + 1) * hd];
            let visible = start + t + 1;
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in 0..visible {
                let s = dot(qv, &ck[j * kw + kvh * hd..j * kw + (kvh + 1) * hd]) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            o.fill(0.0);
            for (j, &s) in scores.iter().enumerate() {
                let p = s * inv;
                let vr = &cv[j * kw + kvh * hd..j * kw + (kvh + 1) * hd];
                for (oi, &vi) in o.iter_mut().zip(vr) {
                    *oi += p * vi;
                }
            }
        });
    });
    out
}

thread_local! {
    /// Each worker's score row, kept between calls so that a decode step allocates nothing
    /// but its output once the context stops growing past what it has seen.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
