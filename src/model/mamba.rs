//! Mamba-2 mixer (`M` layers), ARCH_NOTES §3:
//! `z, xBC, dt = in_proj(x)`; `xBC = silu(conv1d(xBC))`; `y = SSM(x, B, C, dt) + D·x`;
//! `out = out_proj(norm(y · silu(z)))` with the norm grouped over `n_groups`.

use crate::backend::{Backend, SsmDims, Tensor, Weight};
use crate::error::Result;
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
        })
    }

    pub fn forward(&self, be: &dyn Backend, x: &Tensor, st: &mut MambaState) -> Result<Tensor> {
        let (i, gn) = (self.inner, self.group_state);
        let zxbcdt = be.linear(x, &self.in_proj)?;
        let mut parts = be.split_columns(&zxbcdt, &[i, i + 2 * gn, self.dims.heads])?;
        let dt = parts.pop().expect("three parts");
        let xbc = parts.pop().expect("three parts");
        let z = parts.pop().expect("three parts");
        let xbc = be.conv1d_silu(&xbc, &self.conv_w, self.conv_b.as_ref(), &mut st.conv)?;
        let dt_min = (x.rows() > 1).then_some(self.prefill_dt_min);
        let y = be.ssm_scan(
            &xbc,
            &dt,
            &self.a_log,
            &self.d,
            &self.dt_bias,
            &mut st.ssm,
            self.dims,
            dt_min,
        )?;
        let y = be.gated_group_rms_norm(&y, &z, &self.norm, self.dims.groups, self.eps)?;
        be.linear(&y, &self.out_proj)
    }
}
