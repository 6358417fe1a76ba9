#!/usr/bin/env python3
"""Trains the default model's byte-level BPE tokenizer on the training split of the corpus
(`corpus.py`) and writes `<work>/tokenizer/{tokenizer.json, tokenizer_config.json}`.

Special tokens are Nemotron 3's: `<unk>` 0, `<s>` 1 (BOS), `</s>` 2 (EOS), then the chat and
reasoning markers. Nothing is added around a text automatically (`add_bos_token` false), as the
chat template writes every marker itself. The template is shaped like Nemotron 3's: ChatML turns,
an empty system turn when none is given, and the assistant turn opened with `<think>` blocks
controlled by `enable_thinking` (off: an empty `<think></think>`, which is what the corpus's chat
samples without reasoning carry).
"""

import argparse
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from common import work_dir

SPECIAL = [
    "<unk>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
]

# Jinja as transformers' apply_chat_template renders it (minijinja-compatible: no Python-only
# methods). `enable_thinking` defaults to true, as in Nemotron 3.
CHAT_TEMPLATE = (
    "{%- set enable_thinking = enable_thinking if enable_thinking is defined else true -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "<|im_start|>system\n<|im_end|>\n"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|im_start|>assistant\n"
    "{%- if message.get('reasoning_content') -%}"
    "<think>\n{{ message['reasoning_content'] }}\n</think>\n"
    "{%- else -%}"
    "<think></think>"
    "{%- endif -%}"
    "{{ message['content'] }}<|im_end|>\n"
    "{%- else -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "<|im_start|>assistant\n"
    "{%- if enable_thinking -%}<think>\n{%- else -%}<think></think>{%- endif -%}"
    "{%- endif -%}"
)


def texts(path):
    with open(path) as f:
        for line in f:
            yield json.loads(line)["text"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=work_dir())
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(os.path.join(args.work, "corpus", "train.jsonl")), trainer)
    for i, s in enumerate(SPECIAL):
        assert tok.token_to_id(s) == i, f"{s} should be id {i}"

    out = os.path.join(args.work, "tokenizer")
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    sample = "<|im_start|>user\nIn the beginning God created the heaven and the earth.<|im_end|>"
    ids = tok.encode(sample).ids
    print(f"vocab {tok.get_vocab_size()}; {len(sample)} chars -> {len(ids)} tokens")


if __name__ == "__main__":
    main()
