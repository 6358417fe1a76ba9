//! `attention`: appends K/V to a growable GPU KV cache (buffer copies) and runs causal GQA
//! softmax attention without RoPE (`shaders/attention.wgsl`), one workgroup per (token, head).

use crate::backend::wgpu::{GpuKv, Shader, WgpuBackend, groups_2d};
use crate::backend::{AttnDims, Tensor};
use crate::error::Result;

pub(crate) const SHADER: Shader = Shader {
    name: "attention",
    source: include_str!("../../../../shaders/attention.wgsl"),
};

/// Smallest capacity (positions) a cache grows to.
const MIN_CAP: usize = 64;

pub(crate) fn attention(
    be: &WgpuBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &mut Tensor,
    dims: AttnDims,
) -> Result<Tensor> {
    let AttnDims {
        heads,
        kv_heads,
        head_dim: hd,
    } = dims;
    if heads == 0 || kv_heads == 0 || hd == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(be.gpu.err(format!(
            "attention: {heads} query heads, {kv_heads} kv heads and head_dim {hd} do not form grouped-query attention"
        )));
    }
    let (q_width, kv_width) = (dims.q_width()?, dims.kv_width()?);
    let tokens = q.rows();
    let (qb, kb, vb) = (be.buf(q)?, be.buf(k)?, be.buf(v)?);
    let c = cache
        .inner_mut::<GpuKv>()
        .ok_or_else(|| be.gpu.err("attention: not a wgpu KV cache"))?;
    if c.width != kv_width {
        return Err(be.gpu.err(format!(
            "attention: the KV cache holds rows of {} values but kv_heads * head_dim = {kv_width}",
            c.width,
        )));
    }
    let width = c.width;
    let start = c.len;
    let total = start + tokens;
    let row_bytes = (width * 4) as u64;

    if total > c.cap {
        // Grow geometrically, but never past what one storage binding can cover.
        let max_rows = (be.gpu.max_binding() / row_bytes) as usize;
        if total > max_rows {
            return Err(be.gpu.err(format!(
                "attention: a KV cache of {total} positions x {width} values needs {} bytes but a storage binding holds at most {}",
                total as u64 * row_bytes,
                be.gpu.max_binding()
            )));
        }
        let cap = (2 * c.cap).max(total).max(MIN_CAP).min(max_rows);
        let nk = be.gpu.alloc(cap as u64 * row_bytes, "kv cache")?;
        let nv = be.gpu.alloc(cap as u64 * row_bytes, "kv cache")?;
        let used = start as u64 * row_bytes;
        be.gpu.copy(&c.k, 0, &nk, 0, used);
        be.gpu.copy(&c.v, 0, &nv, 0, used);
        c.k = nk;
        c.v = nv;
        c.cap = cap;
    }
    let new_bytes = tokens as u64 * row_bytes;
    be.gpu
        .copy(kb, 0, &c.k, start as u64 * row_bytes, new_bytes);
    be.gpu
        .copy(vb, 0, &c.v, start as u64 * row_bytes, new_bytes);
    c.len = total;

    let out = be.output(vec![tokens, q_width], "attention output")?;
    if tokens > 0 {
        let params = [
            tokens as u32,
            heads as u32,
            kv_heads as u32,
            hd as u32,
            start as u32,
            width as u32,
            (hd as f32).powf(-0.5).to_bits(),
            0,
        ];
        be.gpu.dispatch(
            &SHADER,
            "main",
            &[],
            &params,
            &[
                (qb, false),
                (&c.k, false),
                (&c.v, false),
                (be.buf(&out)?, true),
            ],
            groups_2d(tokens * heads, 1),
        )?;
    }
    cache.set_shape(vec![total, width]);
    Ok(out)
}
