#!/usr/bin/env bash
# Until `nemotron-rt bench` exists: decode speed on the tiny fixtures (build with cargo build --release).
# usage: bench.sh MODEL_DIR THREADS  -> median prefill ms (67 tokens) and decode ms/token over 5 runs of 128 tokens
ids=$(python3 -c "import json; m=json.load(open('$1/../manifest.json')); print(','.join(map(str, m['prompts'][2]['ids'])))")
for r in 1 2 3 4 5; do ./target/release/nemotron-rt generate --model $1 --prompt-ids $ids --max-tokens 128 --ignore-eos --json --threads $2; done | python3 -c "
import json,sys,statistics as st
runs=[json.loads(l) for l in sys.stdin]
pre=st.median(r['prefill_ms'] for r in runs); dec=st.median(st.median(r['decode_ms']) for r in runs)
print(f'prefill {pre:.2f} ms, decode {dec:.3f} ms/token ({1000/dec:.0f} tok/s)')"
