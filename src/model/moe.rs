//! LatentMoE mixer (`E` layers), ARCH_NOTES §6:
//! `out = fc2_latent(Σ_k w_k · expert_k(fc1_latent(x))) + shared(x)`, with a sigmoid router whose
//! correction bias only chooses experts, and a shared expert on the full hidden width.

use crate::backend::{Backend, ExpertWeights, RouterParams, Routing, Rows, Tensor, Weight};
use crate::error::Result;
use crate::model::loader::{Access, Loader};
use crate::model::mlp::Mlp;

pub struct Moe {
    pub gate: Weight,
    pub bias: Weight,
    /// `None` when `moe_latent_size` is null: the experts work on the hidden width directly.
    pub fc1_latent: Option<Weight>,
    pub fc2_latent: Option<Weight>,
    pub experts: ExpertWeights,
    pub shared: Mlp,
    pub router: RouterParams,
}

impl Moe {
    pub fn load(ld: &mut Loader, prefix: &str) -> Result<Moe> {
        let c = ld.config;
        let (d, e, f, l) = (
            c.hidden_size,
            c.n_routed_experts,
            c.moe_intermediate_size,
            c.sizes.latent_dim,
        );
        let router = RouterParams {
            top_k: c.num_experts_per_tok,
            n_group: c.n_group,
            topk_group: c.topk_group,
            norm_topk_prob: c.norm_topk_prob,
            scaling: c.routed_scaling_factor,
        };
        let (latent, mlp_bias, shared_width) = (
            c.moe_latent_size.is_some(),
            c.mlp_bias,
            c.moe_shared_expert_intermediate_size,
        );
        let gate = ld.linear(&format!("{prefix}.gate"), e, d, false)?;
        let bias = ld.vector(&format!("{prefix}.gate.e_score_correction_bias"), e)?;
        let (fc1_latent, fc2_latent) = if latent {
            (
                Some(ld.linear(&format!("{prefix}.fc1_latent_proj"), l, d, mlp_bias)?),
                Some(ld.linear(&format!("{prefix}.fc2_latent_proj"), d, l, mlp_bias)?),
            )
        } else {
            (None, None)
        };
        let access = Access::Routed {
            top_k: router.top_k,
            experts: e,
        };
        let mut up = Vec::with_capacity(e);
        let mut down = Vec::with_capacity(e);
        for j in 0..e {
            up.push(ld.stored_linear(
                &format!("{prefix}.experts.{j}.up_proj"),
                f,
                l,
                false,
                access,
            )?);
            down.push(ld.stored_linear(
                &format!("{prefix}.experts.{j}.down_proj"),
                l,
                f,
                false,
                access,
            )?);
        }
        let experts = ld
            .backend
            .load_experts(&format!("{prefix}.experts"), &up, &down)?;
        let shared = Mlp::load(
            ld,
            &format!("{prefix}.shared_experts"),
            shared_width,
            mlp_bias,
        )?;
        Ok(Moe {
            gate,
            bias,
            fc1_latent,
            fc2_latent,
            experts,
            shared,
            router,
        })
    }

    /// Returns the layer output and the routing it used.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor, rows: Rows) -> Result<(Tensor, Routing)> {
        let logits = be.linear_rows(x, &self.gate, rows)?;
        let routing = be.router(&logits, &self.bias, &self.router)?;
        let latent = match &self.fc1_latent {
            Some(fc1) => &be.linear_rows(x, fc1, rows)?,
            None => x,
        };
        let routed = be.moe_experts_rows(latent, &self.experts, &routing, rows)?;
        let mut out = match &self.fc2_latent {
            Some(fc2) => be.linear_rows(&routed, fc2, rows)?,
            None => routed,
        };
        be.add(&mut out, &self.shared.forward(be, x, rows)?)?;
        Ok((out, routing))
    }
}
