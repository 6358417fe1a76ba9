//! The multi-token-prediction step (ARCH_NOTES §7), as vLLM's `nemotron_h_mtp.py` and the
//! training tool's `MTP` module compute it:
//!
//! `z = eh_proj([enorm(embed(token_{t+1})) ; hnorm(h_t)])`, then the MTP pattern's blocks
//! (ordinary pre-norm residual blocks, attention then MoE by default) on the residual stream
//! `z`, then `final_layernorm`: `out_t`, whose `lm_head` logits draft token t+2. `h_t` is the
//! main model's `norm_f` output at t, or, for a recursive draft, the step's own previous `out`.
//! Embeddings and `lm_head` are the main model's. The step has its own per-sequence state (the
//! KV cache of its attention layer), kept in a [`Sequence`] of its layers.

use crate::backend::{Backend, Rows, Tensor, Weight};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

use super::loader::{Access, Loader};
use super::{Layer, load_layer};

pub struct Mtp {
    enorm: Weight,
    hnorm: Weight,
    /// `eh_proj` applied as its two column halves, `W_e·enorm(e) + W_h·hnorm(h)`, which is
    /// `eh_proj` of the concatenation up to the order of the additions (no backend op
    /// concatenates columns).
    eh_embed: Weight,
    eh_hidden: Weight,
    pub(super) layers: Vec<Layer>,
    pub(super) final_norm: Weight,
}

impl Mtp {
    /// The MTP step of the checkpoint, when its config has one (`num_nextn_predict_layers`).
    pub(super) fn load(ld: &mut Loader, config: &ModelConfig) -> Result<Option<Mtp>> {
        match config.num_nextn_predict_layers {
            0 => return Ok(None),
            1 => {}
            n => {
                return Err(Error::Invalid(format!(
                    "num_nextn_predict_layers is {n}: only one MTP step is supported (as in \
                     Nemotron 3 and vLLM), drafting further steps recursively"
                )));
            }
        }
        let d = config.hidden_size;
        let kinds = &config.mtp_layers;
        let first = "mtp.layers.0";
        let last = format!("mtp.layers.{}", kinds.len() - 1);
        let enorm = ld.vector(&format!("{first}.enorm.weight"), d)?;
        let hnorm = ld.vector(&format!("{first}.hnorm.weight"), d)?;
        let eh = ld.stored_linear(&format!("{first}.eh_proj"), d, 2 * d, false, Access::Full)?;
        let be: &dyn Backend = ld.backend;
        let eh_embed =
            be.load_linear(&eh.columns(0..d, &format!("{first}.eh_proj (embedding)"))?)?;
        let eh_hidden =
            be.load_linear(&eh.columns(d..2 * d, &format!("{first}.eh_proj (hidden)"))?)?;
        let layers = kinds
            .iter()
            .enumerate()
            .map(|(j, &kind)| load_layer(ld, config, &format!("mtp.layers.{j}"), j, kind))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = ld.vector(&format!("{last}.final_layernorm.weight"), d)?;
        Ok(Some(Mtp {
            enorm,
            hnorm,
            eh_embed,
            eh_hidden,
            layers,
            final_norm,
        }))
    }

    /// The residual stream the blocks start from: `eh_proj([enorm(e) ; hnorm(h)])`.
    pub(super) fn input(
        &self,
        be: &dyn Backend,
        embedded: &Tensor,
        hidden: &Tensor,
        (rows, eps): (Rows, f32),
    ) -> Result<Tensor> {
        let e = be.rms_norm(embedded, &self.enorm, eps)?;
        let h = be.rms_norm(hidden, &self.hnorm, eps)?;
        let mut z = be.linear_rows(&e, &self.eh_embed, rows)?;
        be.add(&mut z, &be.linear_rows(&h, &self.eh_hidden, rows)?)?;
        Ok(z)
    }
}
