#!/usr/bin/env python3
"""The default model's report: loss curves, held-out perplexity of the BF16 and of the quantized
model, the MTP step's greedy acceptance at draft positions 1..3, and how many distinct experts
each MoE layer uses per domain.

* Loss curves: `<work>/run/log.csv` -> `<out>/loss.png` (training loss and MTP loss by step,
  smoothed over 20 steps; held-out loss per domain at each evaluation).
* Perplexity: exp(mean next-token cross-entropy) over the first `--eval-tokens` tokens of each
  domain's held-out documents, in windows of 256, for the BF16 model (`<work>/export/bf16`) and
  the quantized export (every weight as ModelOpt dequantizes it), both in fp32.
* MTP acceptance, as greedy speculative decoding would see it: from each of `--mtp-prompts`
  held-out prompts per domain the quantized model generates `--mtp-tokens` greedy tokens; on
  that text every position t drafts up to three tokens (the first from the embedding of token
  t+1 and `h_t`, each next from the previous draft and the step's own output) and a draft is
  accepted when it equals the model's own next greedy token and every earlier draft was
  accepted. Reported per position: accepted / reached (conditional) and accepted / positions.
* Experts: over the held-out tokens of each domain, how many of the experts each MoE layer picks
  at all, and the share of picks the busiest expert gets.
* Specialisation, from the runtime's own routing (`heatmaps.sh` writes `<out>/routing-<domain>.csv`
  first; skipped when absent): per MoE layer and domain, the total variation distance between
  the domain's expert load (picks per expert / all picks) and the mean load of the other
  domains. 0 = the domain uses the experts exactly as the others do; 1 = disjoint experts.

Writes `<out>/report.json` and prints a Markdown summary.
"""

import argparse
import csv
import json
import math
import os

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import NemotronHForCausalLM

from common import work_dir
from export import REPO
from goldens import dequantized_copy, load_mtp

DOMAINS = ("scripture", "prose", "code", "chat")


def loss_plot(work, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(os.path.join(work, "run", "log.csv"))))
    train = [r for r in rows if r["split"] == "train"]
    steps = [int(r["step"]) for r in train]

    def smooth(xs, n=20):
        return [sum(xs[max(0, i - n + 1) : i + 1]) / len(xs[max(0, i - n + 1) : i + 1])
                for i in range(len(xs))]

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(steps, smooth([float(r["loss"]) for r in train]), label="train: next token")
    ax.plot(steps, smooth([float(r["mtp_loss"]) for r in train]), label="train: MTP (token t+2)")
    for d in DOMAINS:
        ev = [r for r in rows if r["split"] == f"eval:{d}"]
        if ev:
            ax.plot([int(r["step"]) for r in ev], [float(r["loss"]) for r in ev], "o--",
                    markersize=3, label=f"held out: {d}")
    ax.set_xlabel("step (16 x 256 tokens)")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("nemotron-3-tiny: training")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"))
    return {"steps": steps[-1] if steps else 0, "final_train_loss": float(train[-1]["loss"])}


def held_out(work, tok, domain, n_tokens):
    ids = []
    for line in open(os.path.join(work, "corpus", "eval.jsonl")):
        d = json.loads(line)
        if d["domain"] == domain:
            ids += tok.encode(d["text"]).ids + [2]
        if len(ids) > n_tokens:
            break
    return torch.tensor(ids[: n_tokens + 1])


@torch.no_grad()
def perplexity(model, ids, seq=256):
    total, count = 0.0, 0
    for s in range(0, len(ids) - 1, seq):
        x = ids[s : s + seq + 1]
        if len(x) < 2:
            break
        logits = model(input_ids=x[None, :-1]).logits[0]
        total += float(F.cross_entropy(logits.float(), x[1:], reduction="sum"))
        count += len(x) - 1
    return math.exp(total / count)


@torch.no_grad()
def mtp_acceptance(model, mtp, prompts, n_new, depth=3):
    reached, accepted = [0] * depth, [0] * depth
    positions = 0
    emb, head = model.model.embeddings, model.lm_head
    for p in prompts:
        y = model.generate(input_ids=p[None], max_new_tokens=n_new, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0]
        h = model.model(input_ids=y[None]).last_hidden_state
        start = len(p) - 1
        # Positions whose drafts are checked against the generated (greedy) tokens only; the
        # k-th draft at t predicts y[t + 2 + k], so the last position is len(y) - 2 - depth.
        for t in range(start, len(y) - 1 - depth):
            positions += 1
            tokens, hs = y[None, 1 : t + 2], h[:, : t + 1]
            for k in range(depth):
                reached[k] += 1
                d = mtp(emb(tokens), hs)
                draft = head(d[:, -1]).argmax(-1)
                if int(draft) != int(y[t + 2 + k]):
                    break
                accepted[k] += 1
                tokens = torch.cat([tokens, draft.view(1, 1)], dim=1)
                hs = torch.cat([hs, d[:, -1:]], dim=1)
    return {
        "positions": positions,
        "conditional": [a / r if r else None for a, r in zip(accepted, reached)],
        "cumulative": [a / positions if positions else None for a in accepted],
    }


@torch.no_grad()
def expert_use(model, ids):
    counts = {}
    hooks = []
    for i, b in enumerate(model.model.layers):
        if b.block_type == "moe":
            def hook(mod, inp, out, i=i):
                c = torch.bincount(out[2].reshape(-1), minlength=mod.num_experts)
                counts[i] = counts.get(i, 0) + c
            hooks.append(b.mixer.gate.register_forward_hook(hook))
    for s in range(0, len(ids) - 1, 256):
        model(input_ids=ids[None, s : s + 256])
    for h in hooks:
        h.remove()
    return {
        str(i): {"distinct": int((c > 0).sum()), "busiest_share": float(c.max() / c.sum())}
        for i, c in counts.items()
    }


def specialisation(out):
    loads = {}
    for d in DOMAINS:
        path = os.path.join(out, f"routing-{d}.csv")
        if not os.path.exists(path):
            return None
        for r in csv.DictReader(open(path)):
            layer = loads.setdefault(d, {}).setdefault(int(r["layer"]), {})
            layer[int(r["expert"])] = int(r["count"])
    result = {}
    for layer in sorted(loads[DOMAINS[0]]):
        experts = sorted(loads[DOMAINS[0]][layer])
        share = {}
        for d in DOMAINS:
            counts = [loads[d][layer][e] for e in experts]
            share[d] = [c / sum(counts) for c in counts]
        result[str(layer)] = {}
        for d in DOMAINS:
            others = [o for o in DOMAINS if o != d]
            mean = [sum(share[o][i] for o in others) / len(others) for i in range(len(experts))]
            tv = 0.5 * sum(abs(a - b) for a, b in zip(share[d], mean))
            result[str(layer)][d] = tv
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=work_dir())
    ap.add_argument("--model", default=os.path.join(REPO, "models", "nemotron-3-tiny"))
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "default-model"))
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--mtp-prompts", type=int, default=4)
    ap.add_argument("--mtp-tokens", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    os.makedirs(args.out, exist_ok=True)

    report = {"training": loss_plot(args.work, args.out)}
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    load = lambda d: NemotronHForCausalLM.from_pretrained(  # noqa: E731
        d, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    bf16 = load(os.path.join(args.work, "export", "bf16"))
    # generate() would stop at `</s>`; acceptance is measured over a fixed number of tokens.
    deq_dir, mtp_tensors = dequantized_copy(args.model)
    quant = load(deq_dir)
    mtp = load_mtp(quant.config, mtp_tensors)
    quant.generation_config.eos_token_id = None

    report["perplexity"], report["experts"] = {}, {}
    for d in DOMAINS:
        ids = held_out(args.work, tok, d, args.eval_tokens)
        report["perplexity"][d] = {"bf16": perplexity(bf16, ids), "quantized": perplexity(quant, ids)}
        report["experts"][d] = expert_use(quant, ids)

    prompts = []
    for d in DOMAINS:
        ids = held_out(args.work, tok, d, 64 * args.mtp_prompts)
        prompts += [ids[i * 64 : i * 64 + 32] for i in range(args.mtp_prompts)]
    report["mtp_acceptance"] = mtp_acceptance(quant, mtp, prompts, args.mtp_tokens)
    report["specialisation"] = specialisation(args.out)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)

    print(f"trained {report['training']['steps']} steps\n")
    print("| domain | perplexity BF16 | perplexity quantized |\n|---|---|---|")
    for d, p in report["perplexity"].items():
        print(f"| {d} | {p['bf16']:.2f} | {p['quantized']:.2f} |")
    a = report["mtp_acceptance"]
    print(f"\nMTP greedy acceptance over {a['positions']} positions:")
    for k in range(3):
        print(f"  draft {k + 1}: {a['conditional'][k]:.3f} of those reached, "
              f"{a['cumulative'][k]:.3f} of all positions")
    print("\n| layer | " + " | ".join(DOMAINS) + " |\n|---|" + "---|" * len(DOMAINS))
    for layer in report["experts"][DOMAINS[0]]:
        cells = [f"{report['experts'][d][layer]['distinct']} "
                 f"({report['experts'][d][layer]['busiest_share']:.0%})" for d in DOMAINS]
        print(f"| {layer} | " + " | ".join(cells) + " |")

    if report["specialisation"]:
        print("\nTotal variation distance of each domain's expert load from the other domains':")
        print("\n| layer | " + " | ".join(DOMAINS) + " |\n|---|" + "---|" * len(DOMAINS))
        for layer, tv in report["specialisation"].items():
            print(f"| {layer} | " + " | ".join(f"{tv[d]:.2f}" for d in DOMAINS) + " |")
    else:
        print("\n(no routing-<domain>.csv: run heatmaps.sh first for the specialisation table)")


if __name__ == "__main__":
    main()
