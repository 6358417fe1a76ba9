//! The MoE router (`shaders/router.wgsl`: sigmoid, correction bias for choosing only, grouped
//! top-k, one workgroup per token) and the routed experts (`shaders/moe_experts.wgsl` +
//! `shaders/moe_experts_sum.wgsl`), which read only the experts each token chose
//! (ARCH_NOTES §6).

use crate::backend::wgpu::{GpuExperts, Shader, WgpuBackend, groups_2d};
use crate::backend::{ElemType, ExpertWeights, RouterParams, Routing, Tensor, Weight};
use crate::error::Result;

pub(crate) const ROUTER: Shader = Shader {
    name: "router",
    source: include_str!("../../../../shaders/router.wgsl"),
};

pub(crate) const EXPERTS: Shader = Shader {
    name: "moe_experts",
    source: concat!(
        include_str!("../../../../shaders/decode.wgsl"),
        include_str!("../../../../shaders/moe_experts.wgsl")
    ),
};

pub(crate) const EXPERTS_SUM: Shader = Shader {
    name: "moe_experts_sum",
    source: include_str!("../../../../shaders/moe_experts_sum.wgsl"),
};

/// Largest scratch buffer (bytes) one batch of tokens may use; bigger inputs run in batches.
const MAX_SCRATCH: u64 = 256 << 20;

/// Threads sharing one expert row in `shaders/moe_experts.wgsl` (divides its workgroup, 64).
const EXPERT_LANES: u32 = 16;

/// Workgroups per dispatch dimension that every adapter accepts.
const MAX_DIM: usize = 65535;

/// Tokens per batch so that `per_token` scratch bytes per token fit one binding and
/// [`MAX_SCRATCH`]; at least one.
fn batch_tokens(be: &WgpuBackend, tokens: usize, per_token: u64) -> usize {
    let max = be.gpu.max_binding().min(MAX_SCRATCH);
    ((max / per_token.max(1)) as usize).clamp(1, tokens.max(1))
}

pub(crate) fn router(
    be: &WgpuBackend,
    logits: &Tensor,
    bias: &Weight,
    p: &RouterParams,
) -> Result<Routing> {
    let (bias_buf, experts) = be.vector_of(bias)?;
    if p.top_k == 0 || p.top_k > experts {
        return Err(be.gpu.err(format!(
            "router: top_k {} is outside 1..={experts}",
            p.top_k
        )));
    }
    let grouped = p.n_group > 1;
    if grouped && p.n_group > experts {
        return Err(be.gpu.err(format!(
            "router: {} expert groups but only {experts} experts",
            p.n_group
        )));
    }
    let (n_group, per_group) = if grouped {
        (p.n_group, experts / p.n_group)
    } else {
        (0, 0)
    };
    let tokens = logits.rows();
    let k = p.top_k;
    let ids = be.output_u32(vec![tokens, k], "router ids")?;
    let weights = be.output(vec![tokens, k], "router weights")?;
    if tokens == 0 {
        return Ok(Routing { ids, weights });
    }
    let stride = (experts + n_group) as u64 * 4;
    let batch = batch_tokens(be, tokens, stride);
    let scratch = be.gpu.alloc(batch as u64 * stride, "router scratch")?;
    let lb = be.buf(logits)?;
    let (ib, wb) = (be.buf(&ids)?, be.buf(&weights)?);
    let mut t0 = 0;
    while t0 < tokens {
        let n = batch.min(tokens - t0);
        let params = [
            n as u32,
            experts as u32,
            k as u32,
            n_group as u32,
            p.topk_group as u32,
            per_group as u32,
            p.norm_topk_prob as u32,
            p.scaling.to_bits(),
            t0 as u32,
            0,
            0,
            0,
        ];
        be.gpu.dispatch(
            &ROUTER,
            "main",
            &[],
            &params,
            &[
                (lb, false),
                (bias_buf, false),
                (&scratch, true),
                (ib, true),
                (wb, true),
            ],
            groups_2d(n, 1),
        )?;
        t0 += n;
    }
    Ok(Routing { ids, weights })
}

/// `Σ_j w_j · down_{id_j}(relu(up_{id_j} x)²)` per token. The expert ids are not checked
/// against the expert count here (that would need a read-back): they are trusted to come from
/// [`router`], which only produces ids below the logits' width.
pub(crate) fn moe_experts(
    be: &WgpuBackend,
    x: &Tensor,
    experts: &ExpertWeights,
    routing: &Routing,
) -> Result<Tensor> {
    let ex = experts.inner::<GpuExperts>().ok_or_else(|| {
        be.gpu
            .err(format!("`{}` is not a wgpu expert set", experts.name))
    })?;
    let (hidden, latent) = (experts.hidden, experts.latent);
    let tokens = x.rows();
    if routing.ids.elem() != ElemType::U32 {
        return Err(be.gpu.err("moe_experts: routing ids are not a u32 tensor"));
    }
    let k = routing.ids.cols();
    if (ex.up.rows, ex.up.cols, ex.down.rows, ex.down.cols) != (hidden, latent, latent, hidden) {
        return Err(be.gpu.err(format!(
            "moe_experts: `{}` up is [{}, {}] and down [{}, {}], expected [{hidden}, {latent}] and [{latent}, {hidden}]",
            experts.name, ex.up.rows, ex.up.cols, ex.down.rows, ex.down.cols
        )));
    }
    if hidden > MAX_DIM || latent > MAX_DIM {
        return Err(be.gpu.err(format!(
            "moe_experts: `{}` has expert width {hidden} and latent width {latent}; at most {MAX_DIM} rows per dispatch",
            experts.name
        )));
    }
    for stack in [&ex.up, &ex.down] {
        for c in &stack.chunks {
            if (c.count * stack.rows * stack.cols) as u64 > u32::MAX as u64 {
                return Err(be.gpu.err(format!(
                    "moe_experts: a chunk of {} experts of [{}, {}] has more elements than 32-bit shader indices reach",
                    c.count, stack.rows, stack.cols
                )));
            }
        }
    }
    let y = be.output(vec![tokens, latent], "moe_experts output")?;
    if tokens == 0 || k == 0 {
        // Nothing routed: the freshly allocated output is zero.
        return Ok(y);
    }
    let per_token = (k * hidden.max(latent)) as u64 * 4;
    let batch = batch_tokens(be, tokens, per_token);
    let h = be
        .gpu
        .alloc((batch * k * hidden) as u64 * 4, "moe_experts hidden")?;
    let o = be
        .gpu
        .alloc((batch * k * latent) as u64 * 4, "moe_experts outputs")?;
    let (xb, yb) = (be.buf(x)?, be.buf(&y)?);
    let (ib, wb) = (be.buf(&routing.ids)?, be.buf(&routing.weights)?);
    let mut t0 = 0;
    while t0 < tokens {
        let n = batch.min(tokens - t0);
        let slots = n * k;
        let s0 = t0 * k;
        for (entry, stack, input, out) in [("up", &ex.up, xb, &h), ("down", &ex.down, &h, &o)] {
            for c in &stack.chunks {
                let params = [
                    slots as u32,
                    k as u32,
                    stack.rows as u32,
                    stack.cols as u32,
                    c.e0 as u32,
                    c.count as u32,
                    s0 as u32,
                    0,
                ];
                be.gpu.dispatch(
                    &EXPERTS,
                    entry,
                    &[
                        ("FORMAT", stack.format as f64),
                        ("LANES", EXPERT_LANES as f64),
                        ("BLOCKED", (stack.cols % 16 == 0) as u8 as f64),
                    ],
                    &params,
                    &[
                        (&c.data, false),
                        (&c.scales, false),
                        (&stack.tensor_scales, false),
                        (ib, false),
                        (wb, false),
                        (input, false),
                        (out, true),
                    ],
                    groups_2d(slots, stack.rows.div_ceil(64 / EXPERT_LANES as usize)),
                )?;
            }
        }
        let params = [n as u32, k as u32, latent as u32, t0 as u32];
        be.gpu.dispatch(
            &EXPERTS_SUM,
            "main",
            &[],
            &params,
            &[(&o, false), (yb, true)],
            groups_2d((n * latent).div_ceil(64), 1),
        )?;
        t0 += n;
    }
    Ok(y)
}
