#!/usr/bin/env bash
# Agreement of `--cpu-activations q8` with the exact default: greedy tokens and the experts
# each token was routed to, generated from the same prompt in both modes.
# usage: scripts/q8-agreement.sh MODEL_DIR [PROMPT_IDS] [TOKENS]   (build with cargo build --release)
# Prints: tokens identical before the first divergence, and over those tokens the fraction of
# (token, MoE layer) pairs whose chosen experts are the same set, and the mean overlap.
set -euo pipefail
model=$1
ids=${2:-$(python3 -c "import json,sys; m=json.load(open('$model/../manifest.json')); print(','.join(map(str, m['prompts'][2]['ids'])))" 2>/dev/null || echo 1,2,3,4,5,6,7,8)}
n=${3:-64}
run() { ./target/release/nemotron-rt generate --model "$model" --prompt-ids "$ids" --max-tokens "$n" --ignore-eos --json --threads 2 --cpu-activations "$1" 2>/dev/null; }
python3 - "$(run f32)" "$(run q8)" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ta, tb = a["tokens"], b["tokens"]
same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
# Routing of token i comes from the forward that produced it; compare while the inputs agree.
pairs = exact = 0
overlap = 0.0
for ra, rb in zip(a["routing"][: same + 1], b["routing"][: same + 1]):
    for la, lb in zip(ra, rb):
        sa, sb = set(la["ids"]), set(lb["ids"])
        pairs += 1
        exact += sa == sb
        overlap += len(sa & sb) / len(sa)
print(f"tokens: {same}/{len(ta)} identical before the first divergence")
if pairs:
    print(f"routing over those: {exact}/{pairs} (token, layer) expert sets identical, mean overlap {overlap / pairs:.4f}")
PY
