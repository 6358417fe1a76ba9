#!/usr/bin/env bash
# Routing heatmaps of the default model, one per domain, drawn by the runtime itself: the
# held-out text of each domain goes through `nemotron-rt forward --trace-routing` (every token's
# routing, exactly as the engine computes it) and `nemotron-studio heatmap` (the app's heatmap
# export, without a window). Writes <out>/routing-<domain>.png (rows: MoE layers, columns:
# experts; colour: how many tokens picked the expert) and routing-<domain>.csv, which report.py
# reads to measure how much the domains' expert loads differ.
#
# usage: tools/train/heatmaps.sh [OUT_DIR]   (default docs/default-model)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="${NEMOTRON_TRAIN_DIR:-$HOME/.cache/nemotron-rt/train}"
out="${1:-$repo/docs/default-model}"
model="$repo/models/nemotron-3-tiny"
# Characters of held-out text per domain (about 4 per token): enough tokens that every expert of
# a balanced layer would be picked about 400 times.
chars="${HEATMAP_CHARS:-16000}"

cd "$repo"
cargo build --release --quiet -p nemotron-rt -p nemotron-studio
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for domain in scripture prose code chat; do
    # Whole held-out documents, in corpus order, separated by `</s>` as in training.
    python3 - "$work/corpus/eval.jsonl" "$domain" "$chars" > "$tmp/$domain.txt" <<'PY'
import json, sys
path, domain, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
docs, n = [], 0
for line in open(path, encoding="utf-8"):
    d = json.loads(line)
    if d["domain"] == domain and n < limit:
        docs.append(d["text"])
        n += len(d["text"])
if not docs:
    sys.exit(f"no held-out {domain} documents in {path}")
sys.stdout.write("</s>".join(docs))
PY
    target/release/nemotron-rt forward --model "$model" --prompt-file "$tmp/$domain.txt" \
        --trace-routing "$tmp/$domain.jsonl"
    target/release/nemotron-studio heatmap --model "$model" --out "$out/routing-$domain.png" \
        --csv "$out/routing-$domain.csv" "$tmp/$domain.jsonl"
done
