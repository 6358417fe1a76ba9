"""What the training scripts share: where their work lives and the model's shape."""

import os


def work_dir():
    """Corpus, tokenizer, checkpoints and logs: outside the repository, so a training run
    survives a fresh checkout and can be resumed (`NEMOTRON_TRAIN_DIR` overrides)."""
    return os.environ.get(
        "NEMOTRON_TRAIN_DIR", os.path.expanduser("~/.cache/nemotron-rt/train")
    )
