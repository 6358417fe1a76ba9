//! Attention mixer (`*` layers), ARCH_NOTES §4: grouped-query causal softmax attention with a
//! KV cache and no positional encoding at all.

use crate::backend::{AttnDims, Backend, Tensor, Weight};
use crate::error::Result;
use crate::model::batch::Batch;
use crate::model::loader::Loader;

pub struct Attention {
    pub q_proj: Weight,
    pub k_proj: Weight,
    pub v_proj: Weight,
    pub o_proj: Weight,
    pub dims: AttnDims,
    /// FP8 KV-cache scales from the checkpoint. The exact path keeps the cache in f32, as the
    /// reference does; the scales are kept for a quantized-cache mode.
    pub k_scale: Option<f32>,
    pub v_scale: Option<f32>,
}

impl Attention {
    pub fn load(ld: &mut Loader, prefix: &str) -> Result<Attention> {
        let c = ld.config;
        let d = c.hidden_size;
        let (q, kv) = (c.sizes.attn_q_width, c.sizes.attn_kv_width);
        let dims = AttnDims {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        Ok(Attention {
            q_proj: ld.linear(&format!("{prefix}.q_proj"), q, d, false)?,
            k_proj: ld.linear(&format!("{prefix}.k_proj"), kv, d, false)?,
            v_proj: ld.linear(&format!("{prefix}.v_proj"), kv, d, false)?,
            o_proj: ld.linear(&format!("{prefix}.o_proj"), d, q, false)?,
            dims,
            k_scale: ld.kv_cache_scale(&format!("{prefix}.k_proj.k_scale"))?,
            v_scale: ld.kv_cache_scale(&format!("{prefix}.v_proj.v_scale"))?,
        })
    }

    pub fn new_cache(&self, be: &dyn Backend) -> Result<Tensor> {
        match (self.k_scale, self.v_scale) {
            (Some(k), Some(v)) => be.new_kv_cache_fp8(self.dims, k, v),
            _ => be.new_kv_cache(self.dims),
        }
    }

    /// `caches[i]` is the KV cache of the batch's sequence `i`.
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        batch: &Batch,
        caches: &mut [&mut Tensor],
    ) -> Result<Tensor> {
        let rows = batch.rows();
        let q = be.linear_rows(x, &self.q_proj, rows)?;
        let k = be.linear_rows(x, &self.k_proj, rows)?;
        let v = be.linear_rows(x, &self.v_proj, rows)?;
        let a = batch.each(be, &[&q, &k, &v], |i, _, qkv| {
            be.attention(qkv[0], qkv[1], qkv[2], caches[i], self.dims)
        })?;
        be.linear_rows(&a, &self.o_proj, rows)
    }
}
