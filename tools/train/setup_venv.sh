#!/usr/bin/env bash
# Creates the training venv (CPU use; PyPI's Linux torch wheel brings CUDA runtime wheels that
# `import torch` needs even without a GPU, about 6 GB) and installs the Debian packages the
# corpus is built from. Needs only PyPI and Debian.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-$HOME/.cache/nemotron-rt/train-venv}"
if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq bible-kjv jargon-text python3.11-doc >/dev/null
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -r requirements.lock.txt
"$VENV/bin/python" -c "import torch, transformers, tokenizers; print('ok', torch.__version__, transformers.__version__)"
echo "venv: $VENV"
