#!/usr/bin/env python3
"""Exports the trained default model (train.py's checkpoint) in the real release's on-disk
layout: transformers' `save_pretrained` names and config spelling, quantized with NVIDIA
ModelOpt 0.47 using the recipe ModelOpt ships for Nemotron 3 Super
(`models/nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16/ptq/nvfp4-max-calib`: NVFP4 routed
experts, FP8 shared experts and Mamba in/out projections, FP8 KV cache, BF16 elsewhere; the
published checkpoint calibrates weights by MSE, which needs a GPU, and this is the same format
with max calibration), calibrated on held-out text. The MTP step is stored in BF16 under
`mtp.*`, as in the release.

Writes `<out>/{config.json, generation_config.json, hf_quant_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json}` and `<work>/export/bf16/` (the unquantized model, for
the report).
"""

import argparse
import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import NemotronHForCausalLM

from common import work_dir
from model import build, mtp_state_dict

RECIPE = "models/nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16/ptq/nvfp4-max-calib"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# `<|im_end|>` ends a chat turn; `</s>` ends a document.
EOS_IDS = [2, 4]

# modelopt 0.47 + transformers 5.23: the reverse rename `model.` -> `backbone.` is a regex whose
# `.` matches the `o` of the export's name sentinel `.\x00modelopt_name_sentinel`, which then
# survives into hf_quant_config.json (the refgen fixtures hit the same bug).
MANGLED_SENTINEL = ".\x00backbone.pt_name_sentinel"


def unmangle(obj):
    if isinstance(obj, str):
        return obj.replace(MANGLED_SENTINEL, "")
    if isinstance(obj, list):
        return [unmangle(x) for x in obj]
    if isinstance(obj, dict):
        return {unmangle(k): unmangle(v) for k, v in obj.items()}
    return obj


def load_trained(work):
    tok = Tokenizer.from_file(os.path.join(work, "tokenizer", "tokenizer.json"))
    config, model, mtp = build(tok.get_vocab_size(), attn="eager")
    state = torch.load(os.path.join(work, "run", "checkpoint.pt"), weights_only=False)
    model.load_state_dict(state["model"])
    mtp.load_state_dict(state["mtp"])
    return config, model, mtp, state["step"]


def calibration(work, tok, n=16, seq=256):
    """`n` held-out sequences, a quarter from each domain."""
    docs = [json.loads(l) for l in open(os.path.join(work, "corpus", "eval.jsonl"))]
    out = []
    for domain in ("scripture", "prose", "code", "chat"):
        ids = []
        for d in docs:
            if d["domain"] == domain:
                ids += tok.encode(d["text"]).ids + [2]
        for i in range(n // 4):
            out.append(torch.tensor([ids[i * seq : (i + 1) * seq]]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=work_dir())
    ap.add_argument("--out", default=os.path.join(REPO, "models", "nemotron-3-tiny"))
    args = ap.parse_args()
    import modelopt.torch.quantization as mtq
    from modelopt.recipe import load_recipe
    from modelopt.torch.export import export_hf_checkpoint

    torch.set_num_threads(os.cpu_count())
    config, model, mtp, step = load_trained(args.work)
    tok_dir = os.path.join(args.work, "tokenizer")
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))

    # The BF16 model as a real release is quantized from.
    bf16 = os.path.join(args.work, "export", "bf16")
    shutil.rmtree(bf16, ignore_errors=True)
    model.config.eos_token_id = 2
    # Routers' correction biases stay F32, as in the release (ARCH_NOTES §7): rounding them to
    # BF16 and back would move routing decisions away from the trained model's.
    biases = {n: b.detach().clone() for n, b in model.named_buffers()
              if n.endswith("e_score_correction_bias")}
    model.to(torch.bfloat16)
    for n, b in biases.items():
        module = model.get_submodule(n.rsplit(".", 1)[0])
        module.e_score_correction_bias = b
    model.save_pretrained(bf16)
    mtp_tensors = {
        k: (v.float() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16))
        .contiguous()
        for k, v in mtp_state_dict(mtp).items()
    }
    save_file(mtp_tensors, os.path.join(bf16, "mtp.safetensors"), metadata={"format": "pt"})
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), bf16)

    qmodel = NemotronHForCausalLM.from_pretrained(
        bf16, dtype=torch.bfloat16, attn_implementation="eager", experts_implementation="eager"
    )
    qmodel.eval()
    qcfg = load_recipe(RECIPE).quantize.model_dump(exclude_unset=True)
    calib = calibration(args.work, tok)

    def loop(m):
        with torch.no_grad():
            for c in calib:
                m(input_ids=c, use_cache=False)

    mtq.quantize(qmodel, qcfg, loop)
    tmp = tempfile.mkdtemp(prefix="nemotron-export-")
    with torch.no_grad():
        export_hf_checkpoint(qmodel, export_dir=tmp)

    # Written next to its place and moved there only once it is known to fit the size limit.
    out = args.out.rstrip("/") + ".new"
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    hqc = unmangle(json.load(open(os.path.join(tmp, "hf_quant_config.json"))))
    cfg = unmangle(json.load(open(os.path.join(tmp, "config.json"))))
    assert "pt_name_sentinel" not in json.dumps([hqc, cfg])
    cfg["num_nextn_predict_layers"] = 1
    cfg["mtp_layers_block_type"] = list(config.mtp_layers_block_type)
    with open(os.path.join(out, "hf_quant_config.json"), "w") as f:
        json.dump(hqc, f, indent=4)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    weights = load_file(os.path.join(tmp, "model.safetensors"))
    assert not any(k.startswith("mtp.") for k in weights)
    # Whatever dtype the reload for quantization gave them, the stored biases are the trained
    # F32 values.
    for n, b in biases.items():
        key = "backbone." + n.removeprefix("model.")
        assert key in weights, key
        weights[key] = b.float().contiguous()
    weights.update(mtp_tensors)
    save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    generation = {
        "bos_token_id": 1,
        "eos_token_id": EOS_IDS,
        "pad_token_id": 0,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), out)
    shutil.rmtree(tmp)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    if size > 25 * 2**20:
        raise SystemExit(f"{out} is {size / 2**20:.2f} MiB: the shipped model must stay within 25 MiB")
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(out, args.out)
    print(f"step {step}: wrote {args.out} ({size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
