//! The Mamba-2 mixer ops (ARCH_NOTES §3): `conv1d_silu` (`shaders/conv1d_silu.wgsl`),
//! `ssm_scan` (`shaders/ssm_scan.wgsl`) and `gated_group_rms_norm`
//! (`shaders/gated_group_rms_norm.wgsl`). States are plain f32 `GpuTensor`s: conv state
//! `[K-1, C]` (the last K-1 pre-conv inputs, oldest first), SSM state `[H, P, N]`.

use crate::backend::wgpu::{Shader, WgpuBackend, groups_2d};
use crate::backend::{SsmDims, Tensor, Weight};
use crate::error::Result;

pub(crate) const CONV_SHADER: Shader = Shader {
    name: "conv1d_silu",
    source: concat!(
        include_str!("../../../../shaders/decode.wgsl"),
        include_str!("../../../../shaders/conv1d_silu.wgsl")
    ),
};

pub(crate) const SCAN_SHADER: Shader = Shader {
    name: "ssm_scan",
    source: include_str!("../../../../shaders/ssm_scan.wgsl"),
};

pub(crate) const NORM_SHADER: Shader = Shader {
    name: "gated_group_rms_norm",
    source: include_str!("../../../../shaders/gated_group_rms_norm.wgsl"),
};

/// Threads per workgroup in all three shaders.
const WG: usize = 64;
/// State values one scan thread keeps in registers (`MAXK` in the shader).
const SCAN_MAXK: usize = 4;

/// Fails unless `n` elements can be indexed with u32 arithmetic in a shader.
fn check_u32(be: &WgpuBackend, n: usize, what: &str) -> Result<()> {
    if n > u32::MAX as usize {
        return Err(be.gpu.err(format!(
            "{what}: {n} elements are more than a shader can index"
        )));
    }
    Ok(())
}

pub(crate) fn conv1d_silu(
    be: &WgpuBackend,
    x: &Tensor,
    w: &Weight,
    b: Option<&Weight>,
    state: &mut Tensor,
) -> Result<Tensor> {
    let l = be.linear_of(w)?;
    if state.shape().len() != 2 {
        return Err(be.gpu.err(format!(
            "conv1d_silu: conv state has shape {:?}, expected [K-1, C]",
            state.shape()
        )));
    }
    let (hist, channels) = (state.shape()[0], state.shape()[1]);
    if l.rows != channels || l.cols != hist + 1 {
        return Err(be.gpu.err(format!(
            "conv1d_silu: weight `{}` is [{}, {}], state expects [{}, {}]",
            w.name,
            l.rows,
            l.cols,
            channels,
            hist + 1
        )));
    }
    if l.chunks.len() != 1 {
        return Err(be.gpu.err(format!(
            "conv1d_silu: weight `{}` is split into {} chunks; a conv weight must be one",
            w.name,
            l.chunks.len()
        )));
    }
    let chunk = &l.chunks[0];
    let tokens = x.rows();
    let (bias, has_bias) = match b {
        Some(bw) => {
            let (buf, len) = be.vector_of(bw)?;
            if len != channels {
                return Err(be.gpu.err(format!(
                    "conv1d_silu: bias `{}` has {len} values for {channels} channels",
                    bw.name
                )));
            }
            (buf, true)
        }
        // The weight's own bias buffer (a 4-byte dummy for a conv weight) stands in.
        None => (&l.bias, false),
    };
    check_u32(be, (tokens + hist) * channels, "conv1d_silu")?;
    let y = be.output(vec![tokens, channels], "conv1d_silu output")?;
    if tokens == 0 || channels == 0 {
        return Ok(y);
    }
    let params = [
        tokens as u32,
        channels as u32,
        (hist + 1) as u32,
        hist as u32,
        has_bias as u32,
        l.tensor_scale.to_bits(),
        0,
        0,
    ];
    let constants = [("FORMAT", l.format as f64)];
    let (xb, yb) = (be.buf(x)?, be.buf(&y)?);
    let sb = be.buf(state)?;
    let buffers = [
        (&chunk.data, false),
        (&chunk.scales, false),
        (bias, false),
        (xb, false),
        (sb, true),
        (yb, true),
    ];
    be.gpu.dispatch(
        &CONV_SHADER,
        "conv",
        &constants,
        &params,
        &buffers,
        groups_2d((tokens * channels).div_ceil(WG), 1),
    )?;
    // A separate dispatch (and compute pass), so every output has read the old state first.
    if hist > 0 {
        be.gpu.dispatch(
            &CONV_SHADER,
            "shift",
            &constants,
            &params,
            &buffers,
            groups_2d(channels.div_ceil(WG), 1),
        )?;
    }
    Ok(y)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn ssm_scan(
    be: &WgpuBackend,
    xbc: &Tensor,
    dt: &Tensor,
    a_log: &Weight,
    d: &Weight,
    dt_bias: &Weight,
    state: &mut Tensor,
    dims: SsmDims,
    dt_min: Option<f32>,
) -> Result<Tensor> {
    let SsmDims {
        heads,
        head_dim,
        groups,
        state: n,
    } = dims;
    if heads == 0 || head_dim == 0 || n == 0 || groups == 0 || !heads.is_multiple_of(groups) {
        return Err(be.gpu.err(format!(
            "ssm_scan: {heads} heads of {head_dim} channels with {groups} groups of state {n} \
             (heads must be a positive multiple of groups, every size positive)"
        )));
    }
    if n > SCAN_MAXK * WG {
        return Err(be.gpu.err(format!(
            "ssm_scan: state size {n} is more than the {} the shader supports",
            SCAN_MAXK * WG
        )));
    }
    let (inner, width) = (dims.inner()?, dims.xbc_width()?);
    let tokens = xbc.rows();
    if state.shape() != [heads, head_dim, n] {
        return Err(be.gpu.err(format!(
            "ssm_scan: state has shape {:?}, expected [{heads}, {head_dim}, {n}]",
            state.shape()
        )));
    }
    let mut vecs = Vec::with_capacity(3);
    for (wt, what) in [(a_log, "A_log"), (d, "D"), (dt_bias, "dt_bias")] {
        let (buf, len) = be.vector_of(wt)?;
        if len != heads {
            return Err(be.gpu.err(format!(
                "ssm_scan: {what} `{}` has {len} values for {heads} heads",
                wt.name
            )));
        }
        vecs.push(buf);
    }
    check_u32(be, tokens * width, "ssm_scan (xBC)")?;
    check_u32(be, inner * n, "ssm_scan (state)")?;
    let y = be.output(vec![tokens, inner], "ssm_scan output")?;
    if tokens == 0 {
        return Ok(y);
    }
    let lanes = n.next_power_of_two().min(WG);
    let rows = WG / lanes;
    let params = [
        tokens as u32,
        heads as u32,
        head_dim as u32,
        groups as u32,
        n as u32,
        lanes as u32,
        rows as u32,
        (heads / groups) as u32,
        width as u32,
        inner as u32,
        dt_min.is_some() as u32,
        dt_min.unwrap_or(0.0).to_bits(),
    ];
    be.gpu.dispatch(
        &SCAN_SHADER,
        "main",
        &[],
        &params,
        &[
            (be.buf(xbc)?, false),
            (be.buf(dt)?, false),
            (vecs[0], false),
            (vecs[1], false),
            (vecs[2], false),
            (be.buf(state)?, true),
            (be.buf(&y)?, true),
        ],
        groups_2d(inner.div_ceil(rows), 1),
    )?;
    Ok(y)
}

pub(crate) fn gated_group_rms_norm(
    be: &WgpuBackend,
    y: &Tensor,
    z: &Tensor,
    w: &Weight,
    groups: usize,
    eps: f32,
) -> Result<Tensor> {
    let (wb, width) = be.vector_of(w)?;
    if groups == 0 || !width.is_multiple_of(groups) {
        return Err(be.gpu.err(format!(
            "gated_group_rms_norm: width {width} does not split into {groups} groups"
        )));
    }
    let rows = y.rows();
    check_u32(be, rows * width, "gated_group_rms_norm")?;
    let out = be.output(vec![rows, width], "gated_group_rms_norm output")?;
    if rows == 0 || width == 0 {
        return Ok(out);
    }
    let params = [
        rows as u32,
        width as u32,
        groups as u32,
        (width / groups) as u32,
        eps.to_bits(),
        0,
        0,
        0,
    ];
    be.gpu.dispatch(
        &NORM_SHADER,
        "main",
        &[],
        &params,
        &[
            (be.buf(y)?, false),
            (be.buf(z)?, false),
            (wb, false),
            (be.buf(&out)?, true),
        ],
        groups_2d(rows * groups, 1),
    )?;
    Ok(out)
}
