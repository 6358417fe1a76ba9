"""The default model: Nemotron 3 Super's block structure at a size a 2-core CPU trains in two
hours, built from transformers' own NemotronH classes, plus the multi-token-prediction (MTP)
step that transformers does not implement.

Super (research/peers.md §4) -> here:
* 88 layers `MEMEMEM*EMEM...` (40 Mamba-2, 40 LatentMoE, 8 attention) -> 16 layers
  `MEMEM*EMEMEM*EME` (7 / 7 / 2: attention one layer in eight);
* hidden 4096 -> 256; vocabulary 131072 -> 4096;
* Mamba-2: 128 heads x 64, 8 groups, state 128, conv 4 -> 16 heads x 32 (inner = 2 x hidden, as
  Super), 2 groups, state 32, conv 4;
* attention: 32 query / 2 KV heads x 128, no positional encoding -> 8 / 2 x 32;
* LatentMoE: 512 experts, top-22, latent 1024 (hidden / 4), expert width 2688, shared expert
  5376, sigmoid router with `e_score_correction_bias`, relu^2 -> 32 experts, top-4, latent 128,
  expert width 192, shared expert 512;
* one MTP step, attention then MoE (`*E`), as Super.
Every NVFP4 (routed expert) and FP8 (shared expert, Mamba projection) input width is a multiple
of 64.
"""

import torch
from torch import nn
from transformers import NemotronHConfig, NemotronHForCausalLM
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHBlock, NemotronHRMSNorm

PATTERN = "MEMEM*EMEMEM*EME"
MTP_PATTERN = "*E"
NAMES = {"M": "mamba", "E": "moe", "*": "attention", "-": "mlp"}


def model_config(vocab_size):
    return NemotronHConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        layers_block_type=[NAMES[c] for c in PATTERN],
        mtp_layers_block_type=[NAMES[c] for c in MTP_PATTERN],
        num_nextn_predict_layers=1,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        mamba_num_heads=16,
        mamba_head_dim=32,
        n_groups=2,
        ssm_state_size=32,
        conv_kernel=4,
        chunk_size=64,
        n_routed_experts=32,
        num_experts_per_tok=4,
        moe_latent_size=128,
        moe_intermediate_size=192,
        moe_shared_expert_intermediate_size=512,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        intermediate_size=512,
        max_position_embeddings=262144,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        use_mamba_kernels=False,
    )


class MTP(nn.Module):
    """One MTP step, as vLLM's `nemotron_h_mtp.py` computes it (ARCH_NOTES §7):

        z = eh_proj([enorm(embed(token_{t+1})) ; hnorm(h_t)])
        z = block_j(z) for each block of the MTP pattern (pre-norm residual NemotronH blocks)
        out = final_layernorm(z);  logits = lm_head(out), the draft for token t+2

    `h_t` is the main model's hidden state at t after `norm_f` (what NemotronHModel returns and
    vLLM hands the drafter); for the k-th recursive draft it is this module's own previous
    `out`. Embeddings and `lm_head` are the main model's. Parameter names match the checkpoint's
    `mtp.layers.{j}.*` once prefixed with `mtp.` (see `mtp_state_dict`).
    """

    def __init__(self, config):
        super().__init__()
        kinds = list(config.mtp_layers_block_type)
        sub = NemotronHConfig(**{**config.to_dict(), "layers_block_type": kinds})
        sub._attn_implementation = config._attn_implementation
        sub._experts_implementation = getattr(config, "_experts_implementation", None)
        d, eps = config.hidden_size, config.layer_norm_epsilon
        self.enorm = NemotronHRMSNorm(d, eps=eps)
        self.hnorm = NemotronHRMSNorm(d, eps=eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.blocks = nn.ModuleList(NemotronHBlock(sub, i) for i in range(len(kinds)))
        self.final_layernorm = NemotronHRMSNorm(d, eps=eps)

    def forward(self, next_embeds, hidden):
        """`next_embeds` [B, T, D]: embeddings of tokens t+1; `hidden` [B, T, D]: h_t. Causal
        over the T positions. Returns the normed output (feed it to `lm_head`)."""
        z = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        # transformers' eager attention masks nothing unless given a mask (only SDPA turns
        # causal by itself), so the mask is explicit.
        t = z.shape[1]
        mask = torch.full((t, t), float("-inf"), dtype=z.dtype, device=z.device).triu(1)
        for block in self.blocks:
            z = block(z, attention_mask=mask[None, None])
        return self.final_layernorm(z)


def mtp_state_dict(mtp):
    """The MTP step's tensors under their checkpoint names: `enorm`, `hnorm`, `eh_proj` on the
    first layer, `final_layernorm` on the last, experts unstacked as `experts.{e}.*_proj`."""
    out = {}
    last = len(mtp.blocks) - 1
    for j, block in enumerate(mtp.blocks):
        p = f"mtp.layers.{j}"
        for name, t in block.state_dict().items():
            if name.endswith("experts.up_proj") or name.endswith("experts.down_proj"):
                base, proj = name.rsplit(".", 1)
                for e in range(t.shape[0]):
                    out[f"{p}.{base}.{e}.{proj}.weight"] = t[e]
            else:
                out[f"{p}.{name}"] = t
        if j == 0:
            out[f"{p}.enorm.weight"] = mtp.enorm.weight
            out[f"{p}.hnorm.weight"] = mtp.hnorm.weight
            out[f"{p}.eh_proj.weight"] = mtp.eh_proj.weight
        if j == last:
            out[f"{p}.final_layernorm.weight"] = mtp.final_layernorm.weight
    return {k: v.detach().clone() for k, v in out.items()}


def build(vocab_size, attn="sdpa"):
    """A freshly initialised model and MTP step: `(config, model, mtp)`.

    transformers starts routers at zero, so every token would tie on the same experts until the
    bias moved them: they are drawn from N(0, initializer_range) instead. The MTP step is not a
    PreTrainedModel, so nothing would initialise its expert stacks (`torch.empty`; all-zero up
    and down projections never get a gradient): the model's own `_init_weights` does.
    """
    config = model_config(vocab_size)
    config._attn_implementation = attn
    model = NemotronHForCausalLM(config)
    mtp = MTP(config)
    mtp.apply(model._init_weights)
    with torch.no_grad():
        for m in list(model.modules()) + list(mtp.modules()):
            if type(m).__name__ == "NemotronHTopkRouter":
                m.weight.normal_(0.0, config.initializer_range)
    return config, model, mtp
