//! Every size the runtime derives from `config.json`, computed once, in checked arithmetic,
//! while the config is validated.
//!
//! A config's numbers are untrusted. Multiplied as plain `usize`, a head count of 2^60 + 8 times
//! a head size of 16 wraps to 128 in a release build: the product then matches the stored
//! tensor's width, the model loads, and every head reads KV head 0. So each dimension is bounded
//! on its own, each product is taken with `checked_mul` and bounded again, and the model code
//! and the backends read the products from [`Sizes`] instead of multiplying fields themselves.

use std::path::Path;

use super::{LayerKind, ModelConfig};
use crate::{Error, Result};

/// The bounds a config is held to. Each is far above any released Nemotron-H (Super: vocabulary
/// 131,072 = 2^17, widths up to 18,560, 88 layers, 1M-token context), and low enough that any
/// product of two widths, and any element count times 8 bytes, fits in 64 bits.
pub mod limits {
    /// A single dimension (vocabulary, hidden size, head counts, head sizes, state size, expert
    /// count, intermediate widths) or a matrix width derived from them (`q` width, Mamba
    /// `in_proj` rows): 2^24.
    pub const MAX_DIM: u64 = 1 << 24;
    /// Layers in the main stack, and MTP layers: 2^12.
    pub const MAX_LAYERS: u64 = 1 << 12;
    /// Taps of the Mamba depthwise conv: 2^10.
    pub const MAX_CONV_KERNEL: u64 = 1 << 10;
    /// `max_position_embeddings`: 2^31 tokens (the GPU kernels index positions with 32-bit
    /// ints).
    pub const MAX_CONTEXT: u64 = 1 << 31;
    /// Elements of one weight matrix, expert stack, embedding table or per-layer state: 2^40
    /// (4 TiB in f32).
    pub const MAX_ELEMENTS: u64 = 1 << 40;
}

use limits::*;

/// Sizes derived from a validated [`ModelConfig`]. Those of a mixer kind the model does not use
/// are 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// `I = mamba_num_heads * mamba_head_dim`, the Mamba inner width.
    pub mamba_inner: usize,
    /// `n_groups * ssm_state_size`, the width of Mamba's B (and of C).
    pub mamba_group_state: usize,
    /// `I + 2GN`: channels of the depthwise conv (x, B and C).
    pub conv_dim: usize,
    /// `2I + 2GN + H`: rows of `in_proj` (z, xBC and dt).
    pub in_proj_dim: usize,
    /// `conv_dim * (conv_kernel - 1)`: one layer's conv state.
    pub conv_state_elems: usize,
    /// `H * P * N`: one layer's SSM state.
    pub ssm_state_elems: usize,
    /// `num_attention_heads * head_dim`: rows of `q_proj`.
    pub attn_q_width: usize,
    /// `num_key_value_heads * head_dim`: rows of `k_proj` / `v_proj`, one token's K (or V).
    pub attn_kv_width: usize,
    /// The width the routed experts work in: `moe_latent_size`, or the hidden size when null.
    pub latent_dim: usize,
    /// `n_routed_experts * moe_intermediate_size * latent`: one layer's up (or down) stack.
    pub expert_stack_elems: usize,
    /// `vocab_size * hidden_size`: the embedding table (and `lm_head`).
    pub embedding_elems: usize,
    /// Bytes one token adds to the f32 KV caches of all attention layers of the main stack
    /// (K and V).
    pub kv_bytes_per_token: u64,
    /// Bytes of one sequence's f32 conv and SSM states over all Mamba layers of the main stack.
    pub state_bytes_per_sequence: u64,
}

/// Checked arithmetic whose errors name the config file, the fields and their values.
struct Check<'a> {
    file: &'a Path,
}

impl Check<'_> {
    fn err(&self, msg: String) -> Error {
        Error::config(self.file, msg)
    }

    /// A field on its own: `value <= max`.
    fn field(&self, name: &str, value: usize, max: u64, unit: &str) -> Result<usize> {
        if value as u64 > max {
            let unit = if unit.is_empty() {
                String::new()
            } else {
                format!(" {unit}")
            };
            return Err(self.err(format!(
                "{name} ({value}) is above the limit of {max}{unit} ({}); is the config corrupt?",
                pow2(max)
            )));
        }
        Ok(value)
    }

    /// The product of `factors` (`(field, value)`), named `what`, bounded by `max`.
    fn product(&self, what: &str, factors: &[(&str, usize)], max: u64) -> Result<usize> {
        let names = factors.iter().map(|f| f.0).collect::<Vec<_>>().join(" * ");
        let values = factors
            .iter()
            .map(|f| f.1.to_string())
            .collect::<Vec<_>>()
            .join(" * ");
        let product = factors
            .iter()
            .try_fold(1u64, |acc, f| acc.checked_mul(f.1 as u64));
        match product {
            None => Err(self.err(format!(
                "{what} = {names} ({values}) overflows 64 bits; is the config corrupt?"
            ))),
            Some(p) if p > max => Err(self.err(format!(
                "{what} = {names} ({values} = {p}) is above the limit of {max} ({}); is the \
                 config corrupt?",
                pow2(max)
            ))),
            Some(p) => usize::try_from(p).map_err(|_| {
                self.err(format!(
                    "{what} = {names} ({p}) does not fit this machine's {}-bit address space",
                    usize::BITS
                ))
            }),
        }
    }

    /// `a + b`, both already bounded products, bounded by `max`.
    fn sum(&self, what: &str, terms: &[(&str, usize)], max: u64) -> Result<usize> {
        // Each term is at most twice a bounded width (2^25), so the sum cannot overflow.
        let total: u64 = terms.iter().map(|t| t.1 as u64).sum();
        if total > max {
            let names = terms.iter().map(|t| t.0).collect::<Vec<_>>().join(" + ");
            let values = terms
                .iter()
                .map(|t| t.1.to_string())
                .collect::<Vec<_>>()
                .join(" + ");
            return Err(self.err(format!(
                "{what} = {names} ({values} = {total}) is above the limit of {max} ({}); is the \
                 config corrupt?",
                pow2(max)
            )));
        }
        Ok(total as usize)
    }
}

fn pow2(max: u64) -> String {
    format!("2^{}", max.trailing_zeros())
}

impl Sizes {
    /// Bounds every dimension the model uses and derives the products. The relations between
    /// fields (divisibility, group counts) are [`ModelConfig::validate`]'s, checked after this.
    pub(super) fn derive(c: &ModelConfig, file: &Path) -> Result<Sizes> {
        let ck = Check { file };
        let has = |kind: LayerKind| c.uses(kind);

        ck.field("the number of layers", c.layers.len(), MAX_LAYERS, "layers")?;
        ck.field(
            "num_nextn_predict_layers",
            c.num_nextn_predict_layers,
            MAX_LAYERS,
            "layers",
        )?;
        ck.field(
            "the number of MTP layers",
            c.mtp_layers.len(),
            MAX_LAYERS,
            "layers",
        )?;
        ck.field(
            "max_position_embeddings",
            c.max_position_embeddings,
            MAX_CONTEXT,
            "tokens",
        )?;
        let v = ck.field("vocab_size", c.vocab_size, MAX_DIM, "tokens")?;
        let d = ck.field("hidden_size", c.hidden_size, MAX_DIM, "")?;
        let mut s = Sizes {
            embedding_elems: ck.product(
                "the embedding table",
                &[("vocab_size", v), ("hidden_size", d)],
                MAX_ELEMENTS,
            )?,
            ..Sizes::default()
        };
        // A [rows, hidden_size] (or [hidden_size, rows]) projection.
        let projection = |what: &str, rows: (&str, usize)| {
            ck.product(what, &[rows, ("hidden_size", d)], MAX_ELEMENTS)
        };

        if has(LayerKind::Attention) {
            let heads = ck.field("num_attention_heads", c.num_attention_heads, MAX_DIM, "")?;
            let kv_heads = ck.field("num_key_value_heads", c.num_key_value_heads, MAX_DIM, "")?;
            let head_dim = ck.field("head_dim", c.head_dim, MAX_DIM, "")?;
            s.attn_q_width = ck.product(
                "the q width",
                &[("num_attention_heads", heads), ("head_dim", head_dim)],
                MAX_DIM,
            )?;
            s.attn_kv_width = ck.product(
                "the k/v width",
                &[("num_key_value_heads", kv_heads), ("head_dim", head_dim)],
                MAX_DIM,
            )?;
            projection("q_proj", ("num_attention_heads * head_dim", s.attn_q_width))?;
            projection(
                "k_proj",
                ("num_key_value_heads * head_dim", s.attn_kv_width),
            )?;
            let layers = c.count(LayerKind::Attention) as u64;
            // Both factors are bounded (2^12 layers, 2^24 wide): no overflow.
            s.kv_bytes_per_token = layers * 2 * s.attn_kv_width as u64 * 4;
        }

        if has(LayerKind::Mamba) {
            let h = ck.field("mamba_num_heads", c.mamba_num_heads, MAX_DIM, "")?;
            let p = ck.field("mamba_head_dim", c.mamba_head_dim, MAX_DIM, "")?;
            let g = ck.field("n_groups", c.n_groups, MAX_DIM, "")?;
            let n = ck.field("ssm_state_size", c.ssm_state_size, MAX_DIM, "")?;
            let k = ck.field("conv_kernel", c.conv_kernel, MAX_CONV_KERNEL, "taps")?;
            ck.field("chunk_size", c.chunk_size, MAX_DIM, "tokens")?;
            s.mamba_inner = ck.product(
                "the Mamba inner width I",
                &[("mamba_num_heads", h), ("mamba_head_dim", p)],
                MAX_DIM,
            )?;
            s.mamba_group_state = ck.product(
                "the width of B (G*N)",
                &[("n_groups", g), ("ssm_state_size", n)],
                MAX_DIM,
            )?;
            let (i, gn) = (s.mamba_inner, s.mamba_group_state);
            s.conv_dim = ck.sum(
                "the conv channels",
                &[("I", i), ("2*n_groups*ssm_state_size", 2 * gn)],
                MAX_DIM,
            )?;
            s.in_proj_dim = ck.sum(
                "the in_proj rows",
                &[
                    ("2*I", 2 * i),
                    ("2*n_groups*ssm_state_size", 2 * gn),
                    ("mamba_num_heads", h),
                ],
                MAX_DIM,
            )?;
            s.conv_state_elems = ck.product(
                "the conv state",
                &[
                    ("conv channels", s.conv_dim),
                    ("conv_kernel - 1", k.saturating_sub(1)),
                ],
                MAX_ELEMENTS,
            )?;
            s.ssm_state_elems = ck.product(
                "the SSM state",
                &[
                    ("mamba_num_heads", h),
                    ("mamba_head_dim", p),
                    ("ssm_state_size", n),
                ],
                MAX_ELEMENTS,
            )?;
            projection("in_proj", ("in_proj rows", s.in_proj_dim))?;
            projection("out_proj", ("I", i))?;
            // Each term is at most 2^40 and there are at most 2^12 layers: no overflow.
            let layers = c.count(LayerKind::Mamba) as u64;
            s.state_bytes_per_sequence =
                layers * (s.conv_state_elems as u64 + s.ssm_state_elems as u64) * 4;
        }

        if has(LayerKind::Mlp) {
            let w = ck.field("intermediate_size", c.intermediate_size, MAX_DIM, "")?;
            projection("the MLP up_proj", ("intermediate_size", w))?;
        }

        if has(LayerKind::Moe) {
            let e = ck.field("n_routed_experts", c.n_routed_experts, MAX_DIM, "experts")?;
            ck.field(
                "num_experts_per_tok",
                c.num_experts_per_tok,
                MAX_DIM,
                "experts",
            )?;
            ck.field("n_group", c.n_group, MAX_DIM, "groups")?;
            let f = ck.field(
                "moe_intermediate_size",
                c.moe_intermediate_size,
                MAX_DIM,
                "",
            )?;
            let shared = ck.field(
                "moe_shared_expert_intermediate_size",
                c.moe_shared_expert_intermediate_size,
                MAX_DIM,
                "",
            )?;
            s.latent_dim = match c.moe_latent_size {
                Some(l) => {
                    let l = ck.field("moe_latent_size", l, MAX_DIM, "")?;
                    projection("fc1_latent_proj", ("moe_latent_size", l))?;
                    l
                }
                None => d,
            };
            projection("the router gate", ("n_routed_experts", e))?;
            projection(
                "the shared expert",
                ("moe_shared_expert_intermediate_size", shared),
            )?;
            let latent = if c.moe_latent_size.is_some() {
                "moe_latent_size"
            } else {
                "hidden_size"
            };
            s.expert_stack_elems = ck.product(
                "one layer's routed experts",
                &[
                    ("n_routed_experts", e),
                    ("moe_intermediate_size", f),
                    (latent, s.latent_dim),
                ],
                MAX_ELEMENTS,
            )?;
        }
        Ok(s)
    }
}
