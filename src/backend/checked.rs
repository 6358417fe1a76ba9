//! The one place where op operands are checked against each other before any backend sees
//! them: [`Checked`] wraps every backend that [`super::create_with`] makes, validates the
//! shapes each op's contract in [`Backend`] states, and passes the call on. A backend can then
//! rely on consistent shapes and check only what is its own (element types of its buffers,
//! device limits, state it allocated itself).

use std::ops::Range;
use std::sync::Arc;

use super::{
    AttnDims, Backend, BackendInfo, Candidates, ElemType, ExpertWeights, RouterParams, Routing,
    Rows, SsmDims, Tensor, Weight,
};
use crate::error::{Error, Result};
use crate::weights::StoredLinear;

pub struct Checked(pub Arc<dyn Backend>);

fn bad(msg: String) -> Error {
    Error::Invalid(msg)
}

/// `x` has `cols` columns.
fn cols(x: &Tensor, cols: usize, what: &str) -> Result<()> {
    if x.cols() != cols {
        return Err(bad(format!(
            "{what}: input has {} columns, expected {cols}",
            x.cols()
        )));
    }
    Ok(())
}

/// `x` and `y` have the same number of rows (tokens).
fn same_rows(x: &Tensor, y: &Tensor, what: &str) -> Result<()> {
    if x.rows() != y.rows() {
        return Err(bad(format!(
            "{what}: {} rows against {} rows",
            x.rows(),
            y.rows()
        )));
    }
    Ok(())
}

/// A vector weight of `n` values.
fn vector(w: &Weight, n: usize, what: &str) -> Result<()> {
    if w.rows * w.cols != n {
        return Err(bad(format!(
            "{what}: {} has {} values, expected {n}",
            w.name,
            w.rows * w.cols
        )));
    }
    Ok(())
}

fn f32_tensor(x: &Tensor, what: &str) -> Result<()> {
    if x.elem() != ElemType::F32 {
        return Err(bad(format!("{what}: expected an F32 tensor")));
    }
    Ok(())
}

impl Backend for Checked {
    fn info(&self) -> BackendInfo {
        self.0.info()
    }

    fn enter(&self, f: &mut (dyn FnMut() + Send)) {
        self.0.enter(f)
    }

    fn memory_headroom(&self) -> Option<u64> {
        self.0.memory_headroom()
    }

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(bad(format!(
                "upload: {} values for a tensor of shape {shape:?}",
                data.len()
            )));
        }
        self.0.upload(data, shape)
    }

    fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.0.download(t)
    }

    fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        self.0.download_u32(t)
    }

    fn copy(&self, t: &Tensor) -> Result<Tensor> {
        self.0.copy(t)
    }

    fn load_linear(&self, w: &StoredLinear) -> Result<Weight> {
        self.0.load_linear(w)
    }

    fn load_vector(&self, name: &str, v: &[f32]) -> Result<Weight> {
        self.0.load_vector(name, v)
    }

    fn load_experts(
        &self,
        name: &str,
        up: &[StoredLinear],
        down: &[StoredLinear],
    ) -> Result<ExpertWeights> {
        if up.len() != down.len() || up.is_empty() {
            return Err(bad(format!(
                "{name}: {} up and {} down projections; expected one pair per expert",
                up.len(),
                down.len()
            )));
        }
        self.0.load_experts(name, up, down)
    }

    fn new_conv_state(&self, channels: usize, kernel: usize) -> Result<Tensor> {
        if channels == 0 || kernel == 0 {
            return Err(bad(format!(
                "conv state of {channels} channels and kernel {kernel}: both must be at least 1"
            )));
        }
        self.0.new_conv_state(channels, kernel)
    }

    fn new_ssm_state(&self, dims: SsmDims) -> Result<Tensor> {
        dims.state_elems()?;
        dims.xbc_width()?;
        self.0.new_ssm_state(dims)
    }

    fn new_kv_cache(&self, dims: AttnDims) -> Result<Tensor> {
        kv_dims(dims)?;
        self.0.new_kv_cache(dims)
    }

    fn new_kv_cache_fp8(&self, dims: AttnDims, k_scale: f32, v_scale: f32) -> Result<Tensor> {
        kv_dims(dims)?;
        for (name, s) in [("k_scale", k_scale), ("v_scale", v_scale)] {
            if !(s.is_finite() && s > 0.0) {
                return Err(bad(format!(
                    "FP8 KV cache: {name} is {s}; expected a positive finite scale"
                )));
            }
        }
        self.0.new_kv_cache_fp8(dims, k_scale, v_scale)
    }

    fn kv_len(&self, cache: &Tensor) -> Result<usize> {
        self.0.kv_len(cache)
    }

    fn kv_truncate(&self, cache: &mut Tensor, len: usize) -> Result<()> {
        let held = self.0.kv_len(cache)?;
        if len > held {
            return Err(bad(format!(
                "kv_truncate: cannot keep {len} positions of a cache holding {held}"
            )));
        }
        self.0.kv_truncate(cache, len)
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(bad(format!(
                "embed: token id {id} is outside {} ({} rows)",
                table.name, table.rows
            )));
        }
        self.0.embed(table, ids)
    }

    fn rms_norm(&self, x: &Tensor, w: &Weight, eps: f32) -> Result<Tensor> {
        vector(w, x.cols(), "rms_norm")?;
        self.0.rms_norm(x, w, eps)
    }

    fn add_rms_norm(
        &self,
        residual: &mut Tensor,
        delta: &Tensor,
        w: &Weight,
        eps: f32,
    ) -> Result<Tensor> {
        if residual.shape() != delta.shape() {
            return Err(bad(format!(
                "add_rms_norm: residual {:?} and delta {:?} differ",
                residual.shape(),
                delta.shape()
            )));
        }
        vector(w, residual.cols(), "add_rms_norm")?;
        self.0.add_rms_norm(residual, delta, w, eps)
    }

    fn linear_rows(&self, x: &Tensor, w: &Weight, rows: Rows) -> Result<Tensor> {
        cols(x, w.cols, &w.name)?;
        rows.check(x.rows(), "linear")?;
        self.0.linear_rows(x, w, rows)
    }

    fn relu2(&self, x: &Tensor) -> Result<Tensor> {
        self.0.relu2(x)
    }

    fn add(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        if a.shape() != b.shape() {
            return Err(bad(format!(
                "add: shapes {:?} and {:?} differ",
                a.shape(),
                b.shape()
            )));
        }
        self.0.add(a, b)
    }

    fn split_columns(&self, x: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
        let total = widths.iter().try_fold(0usize, |a, &w| a.checked_add(w));
        cols(x, total.unwrap_or(usize::MAX), "split_columns")?;
        self.0.split_columns(x, widths)
    }

    fn last_row(&self, x: &Tensor) -> Result<Tensor> {
        if x.rows() == 0 || x.shape().is_empty() {
            return Err(bad("last_row of an empty tensor".into()));
        }
        self.0.last_row(x)
    }

    fn conv1d_silu(
        &self,
        x: &Tensor,
        w: &Weight,
        b: Option<&Weight>,
        state: &mut Tensor,
    ) -> Result<Tensor> {
        cols(x, w.rows, "conv1d_silu")?;
        if let Some(b) = b {
            vector(b, w.rows, "conv1d_silu (bias)")?;
        }
        self.0.conv1d_silu(x, w, b, state)
    }

    fn ssm_scan(
        &self,
        xbc: &Tensor,
        dt: &Tensor,
        a_log: &Weight,
        d: &Weight,
        dt_bias: &Weight,
        state: &mut Tensor,
        dims: SsmDims,
        dt_min: Option<f32>,
    ) -> Result<Tensor> {
        cols(xbc, dims.xbc_width()?, "ssm_scan (xBC)")?;
        cols(dt, dims.heads, "ssm_scan (dt)")?;
        same_rows(xbc, dt, "ssm_scan (xBC, dt)")?;
        // Static names: a decode step's checks must not allocate.
        vector(a_log, dims.heads, "ssm_scan (A_log)")?;
        vector(d, dims.heads, "ssm_scan (D)")?;
        vector(dt_bias, dims.heads, "ssm_scan (dt_bias)")?;
        if state.numel() != dims.state_elems()? {
            return Err(bad(format!(
                "ssm_scan: the state has {} values, {dims:?} needs {}",
                state.numel(),
                dims.state_elems()?
            )));
        }
        self.0
            .ssm_scan(xbc, dt, a_log, d, dt_bias, state, dims, dt_min)
    }

    fn gated_group_rms_norm(
        &self,
        y: &Tensor,
        z: &Tensor,
        w: &Weight,
        groups: usize,
        eps: f32,
    ) -> Result<Tensor> {
        if y.shape() != z.shape() {
            return Err(bad(format!(
                "gated_group_rms_norm: y {:?} and z {:?} differ",
                y.shape(),
                z.shape()
            )));
        }
        vector(w, y.cols(), "gated_group_rms_norm")?;
        if groups == 0 || !y.cols().is_multiple_of(groups) {
            return Err(bad(format!(
                "gated_group_rms_norm: {} columns do not split into {groups} groups",
                y.cols()
            )));
        }
        self.0.gated_group_rms_norm(y, z, w, groups, eps)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut Tensor,
        dims: AttnDims,
    ) -> Result<Tensor> {
        kv_dims(dims)?;
        cols(q, dims.q_width()?, "attention (q)")?;
        cols(k, dims.kv_width()?, "attention (k)")?;
        cols(v, dims.kv_width()?, "attention (v)")?;
        same_rows(q, k, "attention (q, k)")?;
        same_rows(q, v, "attention (q, v)")?;
        self.0.attention(q, k, v, cache, dims)
    }

    fn router(&self, logits: &Tensor, bias: &Weight, p: &RouterParams) -> Result<Routing> {
        let experts = logits.cols();
        vector(bias, experts, "router (correction bias)")?;
        let groups_ok = p.n_group >= 1
            && experts.is_multiple_of(p.n_group)
            && (1..=p.n_group).contains(&p.topk_group);
        if p.top_k == 0 || p.top_k > experts || !groups_ok {
            return Err(bad(format!(
                "router: top-{} of {experts} experts in {} groups (top {}) is not a valid choice",
                p.top_k, p.n_group, p.topk_group
            )));
        }
        self.0.router(logits, bias, p)
    }

    fn moe_experts_rows(
        &self,
        x: &Tensor,
        experts: &ExpertWeights,
        routing: &Routing,
        rows: Rows,
    ) -> Result<Tensor> {
        cols(x, experts.latent, &experts.name)?;
        rows.check(x.rows(), "moe_experts")?;
        if routing.ids.shape() != routing.weights.shape() || routing.ids.rows() != x.rows() {
            return Err(bad(format!(
                "moe_experts: routing ids {:?} and weights {:?} for {} tokens",
                routing.ids.shape(),
                routing.weights.shape(),
                x.rows()
            )));
        }
        self.0.moe_experts_rows(x, experts, routing, rows)
    }

    fn gather_rows(&self, parts: &[(&Tensor, Range<usize>)]) -> Result<Tensor> {
        super::gather_shape(parts)?;
        self.0.gather_rows(parts)
    }

    fn argmax(&self, logits: &Tensor) -> Result<Vec<u32>> {
        f32_tensor(logits, "argmax")?;
        self.0.argmax(logits)
    }

    fn decode_step(&self, key: u64, step: &mut dyn FnMut() -> Result<Tensor>) -> Result<Tensor> {
        self.0.decode_step(key, step)
    }

    fn decode_step_summary(&self) -> Option<String> {
        self.0.decode_step_summary()
    }

    fn top_candidates(&self, logits: &Tensor, k: usize, inv_t: Option<f32>) -> Result<Candidates> {
        f32_tensor(logits, "top_candidates")?;
        self.0.top_candidates(logits, k, inv_t)
    }
}

fn kv_dims(dims: AttnDims) -> Result<()> {
    if dims.heads == 0 || dims.kv_heads == 0 || !dims.heads.is_multiple_of(dims.kv_heads) {
        return Err(bad(format!(
            "attention: {} query heads cannot share {} KV heads",
            dims.heads, dims.kv_heads
        )));
    }
    dims.q_width()?;
    dims.kv_width()?;
    Ok(())
}
