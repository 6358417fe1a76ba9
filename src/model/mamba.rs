//! Mamba-2 mixer (`M` layers), ARCH_NOTES §3:
//! `z, xBC, dt = in_proj(x)`; `xBC = silu(conv1d(xBC))`; `y = SSM(x, B, C, dt) + D·x`;
//! `out = out_proj(norm(y · silu(z)))` with the norm grouped over `n_groups`.

use crate::backend::{Backend, SsmDims, Tensor, Weight};
use crate::error::Result;
use crate::model::batch::Batch;
use crate::model::loader::Loader;

pub struct Mamba {
    pub in_proj: Weight,
    pub conv_w: Weight,
    pub conv_b: Option<Weight>,
    pub a_log: Weight,
    pub d: Weight,
    pub dt_bias: Weight,
    pub norm: Weight,
    pub out_proj: Weight,
    pub dims: SsmDims,
    /// `I = H * P` and `G * N`, from the config's checked sizes.
    pub inner: usize,
    pub group_state: usize,
    pub conv_kernel: usize,
    pub eps: f32,
    /// The reference clamps `softplus(dt)` at `time_step_min` only in its chunked prefill path.
    pub prefill_dt_min: f32,
}

/// Per-sequence Mamba state: the last `K-1` conv inputs and the SSM state `[H, P, N]` (f32).
pub struct MambaState {
    pub conv: Tensor,
    pub ssm: Tensor,
    /// What undoes the last multi-token decode step, if that was the last step.
    pub undo: Option<Box<MambaUndo>>,
}

/// The state before a multi-token decode step and the step's conv inputs and raw dt: restoring
/// the state and re-running the conv and the scan over the first `n` rows gives exactly the
/// state after `n` of the step's tokens (decode rows are computed as single steps). One copy of
/// the state per step, rather than one per position: at Super's sizes an SSM state is 4 MiB a
/// layer, and a verify step holds several positions.
pub struct MambaUndo {
    pub conv: Tensor,
    pub ssm: Tensor,
    pub xbc: Tensor,
    pub dt: Tensor,
}

impl Mamba {
    pub fn load(ld: &mut Loader, prefix: &str) -> Result<Mamba> {
        let c = ld.config;
        let (d, h, i) = (c.hidden_size, c.mamba_num_heads, c.sizes.mamba_inner);
        let conv_dim = c.sizes.conv_dim;
        let dims = SsmDims {
            heads: h,
            head_dim: c.mamba_head_dim,
            groups: c.n_groups,
            state: c.ssm_state_size,
        };
        let (use_bias, conv_bias, kernel) = (c.use_bias, c.use_conv_bias, c.conv_kernel);
        let (eps, dt_min) = (c.layer_norm_epsilon, c.time_step_min);
        Ok(Mamba {
            in_proj: ld.linear(
                &format!("{prefix}.in_proj"),
                c.sizes.in_proj_dim,
                d,
                use_bias,
            )?,
            conv_w: ld.conv_weight(&format!("{prefix}.conv1d.weight"), conv_dim, kernel)?,
            conv_b: if conv_bias {
                Some(ld.vector(&format!("{prefix}.conv1d.bias"), conv_dim)?)
            } else {
                None
            },
            a_log: ld.vector(&format!("{prefix}.A_log"), h)?,
            d: ld.vector(&format!("{prefix}.D"), h)?,
            dt_bias: ld.vector(&format!("{prefix}.dt_bias"), h)?,
            norm: ld.vector(&format!("{prefix}.norm.weight"), i)?,
            out_proj: ld.linear(&format!("{prefix}.out_proj"), d, i, use_bias)?,
            dims,
            inner: i,
            group_state: c.sizes.mamba_group_state,
            conv_kernel: kernel,
            eps,
            prefill_dt_min: dt_min,
        })
    }

    pub fn new_state(&self, be: &dyn Backend) -> Result<MambaState> {
        let channels = self.inner + 2 * self.group_state;
        Ok(MambaState {
            conv: be.new_conv_state(channels, self.conv_kernel)?,
            ssm: be.new_ssm_state(self.dims)?,
            undo: None,
        })
    }

    /// `states[i]` is the state of the batch's sequence `i`.
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        batch: &Batch,
        states: &mut [&mut MambaState],
    ) -> Result<Tensor> {
        let (i, gn, rows) = (self.inner, self.group_state, batch.rows());
        let zxbcdt = be.linear_rows(x, &self.in_proj, rows)?;
        let mut parts = be.split_columns(&zxbcdt, &[i, i + 2 * gn, self.dims.heads])?;
        let dt = parts.pop().expect("three parts");
        let xbc = parts.pop().expect("three parts");
        let z = parts.pop().expect("three parts");
        let y = batch.each(be, &[&xbc, &dt], |s, seg, xd| {
            let st = &mut *states[s];
            st.undo = if seg.decode && seg.rows.len() > 1 {
                Some(Box::new(MambaUndo {
                    conv: be.copy(&st.conv)?,
                    ssm: be.copy(&st.ssm)?,
                    xbc: be.copy(xd[0])?,
                    dt: be.copy(xd[1])?,
                }))
            } else {
                None
            };
            let xbc = be.conv1d_silu(xd[0], &self.conv_w, self.conv_b.as_ref(), &mut st.conv)?;
            // The reference clamps dt in its prefill only; decode rows are decode steps.
            let dt_min = (!seg.decode).then_some(self.prefill_dt_min);
            be.ssm_scan(
                &xbc,
                xd[1],
                &self.a_log,
                &self.d,
                &self.dt_bias,
                &mut st.ssm,
                self.dims,
                dt_min,
            )
        })?;
        let y = be.gated_group_rms_norm(&y, &z, &self.norm, self.dims.groups, self.eps)?;
        be.linear_rows(&y, &self.out_proj, rows)
    }

    /// Puts `st` where it was after the first `keep` tokens of its last multi-token decode
    /// step (see [`MambaUndo`]).
    pub fn rewind(&self, be: &dyn Backend, st: &mut MambaState, keep: usize) -> Result<()> {
        let undo = st.undo.as_ref().ok_or_else(|| {
            crate::Error::Invalid("rollback: no multi-token step to undo in this layer".into())
        })?;
        st.conv = be.copy(&undo.conv)?;
        st.ssm = be.copy(&undo.ssm)?;
        if keep == 0 {
            return Ok(());
        }
        let xbc = be.gather_rows(&[(&undo.xbc, 0..keep)])?;
        let dt = be.gather_rows(&[(&undo.dt, 0..keep)])?;
        let xbc = be.conv1d_silu(&xbc, &self.conv_w, self.conv_b.as_ref(), &mut st.conv)?;
        be.ssm_scan(
            &xbc,
            &dt,
            &self.a_log,
            &self.d,
            &self.dt_bias,
            &mut st.ssm,
            self.dims,
            None,
        )?;
        Ok(())
    }
}
