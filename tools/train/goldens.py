#!/usr/bin/env python3
"""Reference outputs of the exported default model (export.py), for the Rust tests.

The reference is what transformers 5.23 computes in fp32 (eager attention and experts) on the
weights the runtime reads: ModelOpt 0.47's own dequantization of every NVFP4 and FP8 weight
(weight-only, as the reference fixtures; activation and KV-cache scales unused). The MTP step is
`model.MTP` in fp32 on the stored BF16 `mtp.*` weights, fed with that model's `norm_f` output.

For each prompt (two held-out passages per domain, `--tokens` tokens each), `golden.safetensors`
holds, with `p{i}.` before each name:
* `ids` [T]; `logits` [T, V] of the prefill;
* `greedy` [N]: N greedy tokens by transformers' cached `generate()`, and `greedy_margin` [N], the
  gap between the two best logits at each step (how close a tie was);
* `route{L}.ids` [T, k] (ascending within a row, as the runtime reports them) and
  `route{L}.weights` [T, k] for every MoE layer L of the prefill;
* `mtp_logits` [T, V]: the MTP step at positions 0..T-1, its input at position t being the
  embedding of token t+1 (the prompt's, then the first greedy token at t = T-1) and `h_t`; row
  T-1 drafts token T+1;
* `mtp_draft` [K] and `mtp_draft_logits` [K, V]: K greedy drafts from the end of the prompt,
  each step feeding the previous draft token and the MTP's own previous output as `h`
  (row 0 = `mtp_logits` row T-1).
`golden.json` lists the prompts (domain, name, text) and what was used.
"""

import argparse
import json
import os
import tempfile

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import GenerationConfig, NemotronHForCausalLM

from common import work_dir
from export import REPO
from model import MTP


def dequantized_copy(qdir):
    """A float32 copy of the checkpoint with every quantized weight dequantized by ModelOpt."""
    from modelopt.torch.quantization.qtensor import FP8QTensor, NVFP4QTensor

    sd = load_file(os.path.join(qdir, "model.safetensors"))
    out = {}
    skip = (".weight_scale", ".weight_scale_2", ".input_scale", ".k_scale", ".v_scale")
    for k, v in sd.items():
        if k.endswith(skip) or k.startswith("mtp."):
            continue
        base = k[: -len(".weight")] if k.endswith(".weight") else None
        if base is not None and v.dtype == torch.uint8:
            qt = NVFP4QTensor(torch.Size((v.shape[0], v.shape[1] * 2)), torch.float32, v)
            out[k] = qt.dequantize(
                dtype=torch.float32,
                scale=sd[base + ".weight_scale"],
                double_scale=sd[base + ".weight_scale_2"],
                block_sizes={-1: 16},
            ).contiguous()
        elif base is not None and v.dtype == torch.float8_e4m3fn:
            qt = FP8QTensor(v.shape, torch.float32, v)
            out[k] = qt.dequantize(dtype=torch.float32, scale=sd[base + ".weight_scale"])
        else:
            out[k] = v.float().contiguous()
    d = tempfile.mkdtemp(prefix="nemotron-deq-")
    save_file(out, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(qdir, "config.json")))
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    mtp = {k: v.float() for k, v in sd.items() if k.startswith("mtp.")}
    return d, mtp


def load_mtp(config, tensors):
    """`model.MTP` with the checkpoint's `mtp.*` tensors (experts restacked)."""
    mtp = MTP(config)
    sd = {}
    for j, block in enumerate(mtp.blocks):
        prefix = f"mtp.layers.{j}."
        for name, t in block.state_dict().items():
            if name.endswith("experts.up_proj") or name.endswith("experts.down_proj"):
                base, proj = name.rsplit(".", 1)
                sd[f"blocks.{j}.{name}"] = torch.stack(
                    [tensors[f"{prefix}{base}.{e}.{proj}.weight"] for e in range(t.shape[0])]
                )
            else:
                sd[f"blocks.{j}.{name}"] = tensors[prefix + name]
    first, last = "mtp.layers.0.", f"mtp.layers.{len(mtp.blocks) - 1}."
    sd["enorm.weight"] = tensors[first + "enorm.weight"]
    sd["hnorm.weight"] = tensors[first + "hnorm.weight"]
    sd["eh_proj.weight"] = tensors[first + "eh_proj.weight"]
    sd["final_layernorm.weight"] = tensors[last + "final_layernorm.weight"]
    mtp.load_state_dict(sd)
    return mtp.float().eval()


def prompts(work, tok, per_domain, tokens):
    docs = [json.loads(l) for l in open(os.path.join(work, "corpus", "eval.jsonl"))]
    out = []
    for domain in ("scripture", "prose", "code", "chat"):
        picked = 0
        for d in docs:
            ids = tok.encode(d["text"]).ids
            if d["domain"] != domain or len(ids) < tokens:
                continue
            out.append((domain, d["name"], ids[:tokens]))
            picked += 1
            if picked == per_domain:
                break
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=work_dir())
    ap.add_argument("--model", default=os.path.join(REPO, "models", "nemotron-3-tiny"))
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "default_model"))
    ap.add_argument("--per-domain", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--greedy", type=int, default=16)
    ap.add_argument("--drafts", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())

    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    deq_dir, mtp_tensors = dequantized_copy(args.model)
    model = NemotronHForCausalLM.from_pretrained(
        deq_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    config = model.config
    mtp = load_mtp(config, mtp_tensors)
    moe_layers = [i for i, b in enumerate(model.model.layers) if b.block_type == "moe"]
    routes = {}
    for li in moe_layers:
        def hook(mod, inp, out, li=li):
            routes.setdefault(li, out)

        model.model.layers[li].mixer.gate.register_forward_hook(hook)

    golden, listing = {}, []
    emb, head = model.model.embeddings, model.lm_head
    for i, (domain, name, ids) in enumerate(prompts(args.work, tok, args.per_domain, args.tokens)):
        p = f"p{i}."
        x = torch.tensor([ids])
        routes.clear()
        with torch.no_grad():
            out = model.model(input_ids=x)
            h = out.last_hidden_state
            logits = head(h)[0]
        golden[p + "ids"] = x[0]
        golden[p + "logits"] = logits.contiguous()
        for li in moe_layers:
            _, w, idx = routes[li]
            order = idx.argsort(dim=-1)
            golden[f"{p}route{li}.ids"] = idx.gather(-1, order).to(torch.int32).contiguous()
            golden[f"{p}route{li}.weights"] = w.gather(-1, order).float().contiguous()

        gc = GenerationConfig(max_new_tokens=args.greedy, do_sample=False, num_beams=1,
                              eos_token_id=None, pad_token_id=0, use_cache=True,
                              output_logits=True, return_dict_in_generate=True)
        saved = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = None
        g = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
        model.generation_config.eos_token_id = saved
        greedy = g.sequences[0, x.shape[1]:]
        assert greedy.numel() == args.greedy
        golden[p + "greedy"] = greedy.contiguous()
        top2 = torch.stack([l[0].float() for l in g.logits]).topk(2, dim=-1).values
        golden[p + "greedy_margin"] = (top2[:, 0] - top2[:, 1]).contiguous()

        with torch.no_grad():
            nxt = torch.cat([x[0, 1:], greedy[:1]])[None]
            d = mtp(emb(nxt), h)
            mtp_logits = head(d)[0]
            golden[p + "mtp_logits"] = mtp_logits.contiguous()
            # Recursive drafts: the MTP sequence grows by (draft token, own output) per step.
            tokens, hs, drafts, draft_logits = nxt, h, [], [mtp_logits[-1]]
            last_out = d[:, -1:]
            for _ in range(args.drafts - 1):
                t = draft_logits[-1].argmax()
                drafts.append(t)
                tokens = torch.cat([tokens, t.view(1, 1)], dim=1)
                hs = torch.cat([hs, last_out], dim=1)
                d = mtp(emb(tokens), hs)
                last_out = d[:, -1:]
                draft_logits.append(head(d)[0, -1])
            drafts.append(draft_logits[-1].argmax())
        golden[p + "mtp_draft"] = torch.stack(drafts).contiguous()
        golden[p + "mtp_draft_logits"] = torch.stack(draft_logits).contiguous()
        listing.append({"domain": domain, "name": name, "text": tok.decode(ids), "ids": ids})
        print(f"{domain:9} {tok.decode(ids)[:40]!r} -> {tok.decode(greedy.tolist())[:50]!r}")

    os.makedirs(args.out, exist_ok=True)
    save_file(golden, os.path.join(args.out, "golden.safetensors"),
              metadata={"producer": "transformers 5.23 fp32 eager on ModelOpt-dequantized weights"})
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump({
            "model": os.path.relpath(args.model, REPO),
            "reference": "transformers 5.23.0 NemotronHForCausalLM, fp32, eager attention and "
                         "experts, on the weights dequantized by ModelOpt 0.47 "
                         "(NVFP4QTensor / FP8QTensor); MTP: tools/train/model.py MTP in fp32",
            "moe_layers": moe_layers,
            "greedy_tokens": args.greedy,
            "mtp_drafts": args.drafts,
            "prompts": listing,
        }, f, indent=1)


if __name__ == "__main__":
    main()
