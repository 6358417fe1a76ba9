#!/usr/bin/env python3
"""Trains the default model (model.py) with its MTP step on the corpus (corpus.py) with the
tokenizer (tokenizer.py), on the CPU, resumably.

Objective: next-token cross-entropy plus `--mtp-weight` times the MTP step's cross-entropy for
token t+2. Routing is kept balanced without an auxiliary loss, as DeepSeek-V3 and Nemotron 3 do
it: after every step each router's `e_score_correction_bias` moves by `--bias-rate` towards the
experts that received fewer than their share of the step's tokens (sign of the deviation).

State lives in `<work>/run/`: `checkpoint.pt` (model, MTP, optimizer, step, data position,
RNG), rewritten atomically every `--save-every` steps and at the end, and `log.csv` (one row a
step, eval rows too). Run the same command again to continue where it stopped; `--max-minutes`
stops a session cleanly after a checkpoint, so the 2-hour budget can be spent in pieces.
"""

import argparse
import csv
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from common import work_dir
from model import build

EOS = 2


def load_ids(work, split, tok):
    """Every document of the split as token ids, each followed by `</s>`, in file order (the
    corpus is shuffled once when it is built)."""
    docs = [json.loads(l) for l in open(os.path.join(work, "corpus", f"{split}.jsonl"))]
    enc = tok.encode_batch([d["text"] for d in docs])
    return [(d["domain"], e.ids + [EOS]) for d, e in zip(docs, enc)]


def stream(docs):
    out = []
    for _, ids in docs:
        out.extend(ids)
    return torch.tensor(out, dtype=torch.long)


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


class Routers:
    """Counts the experts each MoE router picks during a step and nudges its bias."""

    def __init__(self, modules):
        self.routers = [m for m in modules if type(m).__name__ == "NemotronHTopkRouter"]
        self.counts = [None] * len(self.routers)
        for i, r in enumerate(self.routers):
            r.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def hook(module, args, output):
            idx = output[2].reshape(-1)
            c = torch.bincount(idx, minlength=module.num_experts)
            self.counts[i] = c if self.counts[i] is None else self.counts[i] + c

        return hook

    @torch.no_grad()
    def update(self, rate):
        """Returns the largest expert load over its fair share, across layers (1.0 = balanced)."""
        worst = 0.0
        for r, c in zip(self.routers, self.counts):
            if c is None:
                continue
            c = c.float()
            mean = c.mean()
            r.e_score_correction_bias += rate * torch.sign(mean - c)
            worst = max(worst, float(c.max() / mean))
        self.counts = [None] * len(self.routers)
        return worst


def losses(model, mtp, x):
    """Main and MTP cross-entropy of a batch [B, T+1]."""
    inp, tgt = x[:, :-1], x[:, 1:]
    out = model.model(input_ids=inp)
    h = out.last_hidden_state
    logits = model.lm_head(h)
    main = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1))
    # Draft for t+2 from h_t and the embedding of token t+1, for t = 0 .. T-2.
    emb = model.model.embeddings(inp[:, 1:])
    d = mtp(emb, h[:, :-1])
    dl = model.lm_head(d)
    draft = F.cross_entropy(dl.reshape(-1, dl.shape[-1]).float(), tgt[:, 1:].reshape(-1))
    return main, draft


@torch.no_grad()
def evaluate(model, mtp, docs, seq, max_tokens):
    """Mean main and MTP loss per domain over the first `max_tokens` tokens of each domain."""
    model.eval()
    mtp.eval()
    result = {}
    for domain in sorted({d for d, _ in docs}):
        ids = stream([d for d in docs if d[0] == domain])[: max_tokens + 1]
        n = (len(ids) - 1) // seq
        if n == 0:
            continue
        x = torch.stack([ids[i * seq : i * seq + seq + 1] for i in range(n)])
        m, t = 0.0, 0.0
        for b in range(0, n, 8):
            mm, tt = losses(model, mtp, x[b : b + 8])
            w = min(8, n - b)
            m, t = m + float(mm) * w, t + float(tt) * w
        result[domain] = (m / n, t / n)
    model.train()
    mtp.train()
    return result


def save(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=work_dir())
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--mtp-weight", type=float, default=0.3)
    ap.add_argument("--bias-rate", type=float, default=1e-2)
    ap.add_argument("--router-lr-scale", type=float, default=0.1)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=19)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    run = os.path.join(args.work, "run")
    os.makedirs(run, exist_ok=True)
    ckpt_path = os.path.join(run, "checkpoint.pt")
    tok = Tokenizer.from_file(os.path.join(args.work, "tokenizer", "tokenizer.json"))

    torch.manual_seed(args.seed)
    config, model, mtp = build(tok.get_vocab_size())
    params = list(model.parameters()) + list(mtp.parameters())
    # At this learning rate Adam moves a router's logits by tenths per step, far faster than
    # the bias can follow, and a layer's routing collapses onto k experts within ten steps;
    # the routers learn at a tenth of the rate.
    routers_w = {
        id(m.weight)
        for m in list(model.modules()) + list(mtp.modules())
        if type(m).__name__ == "NemotronHTopkRouter"
    }
    router = [p for p in params if id(p) in routers_w]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in routers_w]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1, "scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "scale": 1.0},
            {"params": router, "weight_decay": 0.0, "scale": args.router_lr_scale},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    routers = Routers(list(model.modules()) + list(mtp.modules()))

    train_docs = load_ids(args.work, "train", tok)
    eval_docs = load_ids(args.work, "eval", tok)
    rng = random.Random(args.seed)
    step, epoch, pos, elapsed = 0, 0, 0, 0.0
    if os.path.exists(ckpt_path):
        s = torch.load(ckpt_path, weights_only=False)
        # The schedule and the data position depend on these: a resumed run must keep them.
        for k in ("steps", "batch", "seq", "lr", "warmup", "seed"):
            if s["args"][k] != getattr(args, k):
                raise SystemExit(
                    f"the checkpoint was trained with --{k} {s['args'][k]}, not {getattr(args, k)}"
                    "; resume with the same value (or remove run/ to start over)"
                )
        model.load_state_dict(s["model"])
        mtp.load_state_dict(s["mtp"])
        opt.load_state_dict(s["opt"])
        step, epoch, pos, elapsed = s["step"], s["epoch"], s["pos"], s["elapsed"]
        rng.setstate(s["rng"])
        torch.set_rng_state(s["torch_rng"])
        print(f"resumed at step {step} ({elapsed / 60:.1f} min trained)")

    def epoch_stream(e):
        docs = list(train_docs)
        random.Random(args.seed * 1000 + e).shuffle(docs)
        return stream(docs)

    data = epoch_stream(epoch)
    n_params = sum(p.numel() for p in params)
    print(f"{n_params / 1e6:.2f}M parameters; {len(data) / 1e6:.2f}M training tokens an epoch")
    log_path = os.path.join(run, "log.csv")
    if step and os.path.exists(log_path):
        # Rows written after the checkpoint belong to steps that will be run again.
        rows = list(csv.reader(open(log_path)))
        rows = rows[:1] + [r for r in rows[1:] if int(r[0]) <= step]
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    new_log = not os.path.exists(log_path)
    log = open(log_path, "a", newline="")
    w = csv.writer(log)
    if new_log:
        w.writerow(["step", "tokens", "loss", "mtp_loss", "lr", "minutes", "max_load", "split"])

    session_start = time.time()
    span = args.batch * (args.seq + 1)
    while step < args.steps:
        t0 = time.time()
        if pos + span > len(data):
            epoch, pos = epoch + 1, 0
            data = epoch_stream(epoch)
        x = data[pos : pos + span].view(args.batch, args.seq + 1)
        pos += span
        lr = lr_at(step, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        main_loss, mtp_loss = losses(model, mtp, x)
        (main_loss + args.mtp_weight * mtp_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        worst = routers.update(args.bias_rate)
        step += 1
        elapsed += time.time() - t0
        tokens = step * args.batch * args.seq
        w.writerow([step, tokens, f"{float(main_loss):.4f}", f"{float(mtp_loss):.4f}",
                    f"{lr:.2e}", f"{elapsed / 60:.2f}", f"{worst:.2f}", "train"])
        if step % 10 == 0:
            log.flush()
            print(f"step {step} loss {float(main_loss):.3f} mtp {float(mtp_loss):.3f} "
                  f"lr {lr:.1e} max load {worst:.2f} {elapsed / 60:.1f} min", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            results = evaluate(model, mtp, eval_docs, args.seq, args.eval_tokens)
            # Held-out routing must not move the biases: drop what the evaluation counted.
            routers.counts = [None] * len(routers.routers)
            for domain, (m, t) in results.items():
                w.writerow([step, tokens, f"{m:.4f}", f"{t:.4f}", "", f"{elapsed / 60:.2f}", "",
                            f"eval:{domain}"])
            log.flush()
        out_of_time = (
            args.max_minutes is not None
            and (time.time() - session_start) / 60 >= args.max_minutes
        )
        if step % args.save_every == 0 or step == args.steps or out_of_time:
            save(ckpt_path, {
                "model": model.state_dict(), "mtp": mtp.state_dict(), "opt": opt.state_dict(),
                "step": step, "epoch": epoch, "pos": pos, "elapsed": elapsed,
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                "args": vars(args),
            })
        if out_of_time:
            print(f"stopping after {args.max_minutes} minutes at step {step}; run again to resume")
            break
    log.close()


if __name__ == "__main__":
    main()
