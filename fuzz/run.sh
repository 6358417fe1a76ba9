#!/usr/bin/env bash
# Fuzzes the targets in fuzz/fuzz_targets with libFuzzer and AddressSanitizer, then minimizes
# each corpus in place (fuzz/corpus/<target>, committed: tests/fuzz_replay.rs replays it).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 600 s, every target)
#
# Runs two targets at a time (one per core). Stable Rust 1.95 builds cargo-fuzz's nightly flags
# with RUSTC_BOOTSTRAP=1. A finding lands in fuzz/artifacts/<target>/; once fixed, copy it to
# fuzz/regressions/<target>/ so every `cargo test` replays it.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(safetensors_file config_json quant_config sharded_index generation_config tokenizer_json model_load)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
flags=(-O --debug-assertions)
cargo fuzz build "${flags[@]}"
mkdir -p logs

# Inputs no longer than the largest seed would keep the fuzzer away from long headers and
# configs; the tokenizer and the structured target need less.
max_len() {
    case "$1" in
        tokenizer_json) echo 131072 ;;
        model_load) echo 1024 ;;
        *) echo 16384 ;;
    esac
}

# Keeps the committed corpus small: the seeds, plus the fewest inputs that cover every edge
# the whole corpus covers (edges only, not hit counts: about a quarter of `cargo fuzz cmin`).
minimize() {
    local t="$1" tmp
    tmp="$(mktemp -d)"
    local ok=0
    "target/$(rustc -vV | sed -n 's/^host: //p')/release/$t" -merge=1 -set_cover_merge=1 \
        -use_counters=0 -rss_limit_mb=4096 "$tmp" "corpus/$t" >>"logs/$t.log" 2>&1 || ok=$?
    # A merge that stopped part-way (an input crashed it) leaves the corpus as it was.
    if [ "$ok" -eq 0 ] && [ -n "$(ls -A "$tmp")" ]; then
        find "corpus/$t" -type f ! -name 'seed-*' -delete
        cp "$tmp"/* "corpus/$t"/
    fi
    rm -rf "$tmp"
}

fuzz_one() {
    local t="$1"
    mkdir -p "corpus/$t" "artifacts/$t"
    # -timeout: an input taking over 10 s is a hang; -rss_limit_mb: over 4 GiB is a finding.
    local rc=0
    cargo fuzz run "${flags[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len="$(max_len "$t")" \
        -dict=dict/nemotron.dict -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
    echo "$t: exit $rc, $(grep -E '^stat::number_of_executed_units' "logs/$t.log" | tail -1)"
    minimize "$t"
    return $rc
}

status=0
i=0
pids=()
for t in "${targets[@]}"; do
    fuzz_one "$t" &
    pids+=($!)
    i=$((i + 1))
    if [ $((i % 2)) -eq 0 ]; then
        for p in "${pids[@]}"; do wait "$p" || status=1; done
        pids=()
    fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
ls artifacts/*/ 2>/dev/null | grep -v '^$' || true
exit $status
