#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, with .gpu and .gl carried (see
# scripts/gpu-kit.sh). Writes logs and a results table under $OUT and prints the table last.
#   scripts/gpu-run.sh tests   the CUDA kernels compiled for this card, then the conformance,
#                              golden, generation, variants, lossy-path and graph suites on every
#                              backend present, the unit tests, and where the host CPU has
#                              AVX-512F the golden and variant suites again on its kernels
#   scripts/gpu-run.sh bench   bench --backend cuda and --backend wgpu (the card's Vulkan
#                              driver) on the fixtures and on a Super-shaped slice synthesized
#                              there (SLICE_PATTERN, default MEMEM*EME)
# Without a GPU it still runs (the CUDA suites print that they skipped): a dry run of the script.
set -uo pipefail
mode=${1:-tests}
root=$PWD
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
kit=/tmp/nemotron-kit
rm -rf "$kit" && mkdir -p "$kit"
tar -C "$kit" -xJf .gpu/kit.tar.xz || { echo "no .gpu/kit.tar.xz: run scripts/gpu-kit.sh and carry .gpu" >&2; exit 2; }
bin=$kit/bin
cat "$bin/KIT"

# The tests find their fixtures through the folder they were built in.
built=$(sed -n 's/^built_in //p' "$bin/KIT")
if [ "$built" != "$root" ] && [ ! -e "$built" ]; then
    mkdir -p "$(dirname "$built")" && ln -s "$root" "$built"
fi
# Vulkan: the loaders from .gl where the image lacks them, and the NVIDIA ICD.
if ! ldconfig -p | grep -q libvulkan.so.1 && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

results=$out/results.md
{
    echo "## $(date -u +%Y-%m-%d) $mode"
    echo
    sed 's/^/    /' "$bin/KIT"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | head -3
    "$bin/nemotron-rt" devices 2>&1 | grep -v XDG_RUNTIME_DIR
    echo '```'
} >"$results"

case "$mode" in
tests)
    echo >>"$results"
    echo "| suite | result | time |" >>"$results"
    echo "|---|---|---|" >>"$results"
    for t in cuda_compile conformance golden generation variants cuda_lossy cuda_graphs unit; do
        start=$(date +%s)
        "$bin/$t" --test-threads=4 >"$out/test-$t.log" 2>&1
        rc=$?
        summary=$(grep -E '^test result' "$out/test-$t.log" | tail -1)
        echo "| $t | ${summary:-exit $rc} | $(($(date +%s) - start)) s |" >>"$results"
        grep -E 'skip|FAILED|panicked' "$out/test-$t.log" | sort | uniq -c | head -20 >"$out/test-$t.notes"
    done
    if grep -qw avx512f /proc/cpuinfo; then
        # The CPU engine on its opt-in AVX-512 NVFP4 kernel, against the same references.
        for t in golden variants; do
            start=$(date +%s)
            NEMOTRON_CPU_SIMD=avx512 "$bin/$t" --test-threads=4 >"$out/test-$t-avx512.log" 2>&1
            rc=$?
            summary=$(grep -E '^test result' "$out/test-$t-avx512.log" | tail -1)
            echo "| $t, NEMOTRON_CPU_SIMD=avx512 | ${summary:-exit $rc} | $(($(date +%s) - start)) s |" >>"$results"
        done
    else
        echo "| AVX-512 kernels | skipped: this host CPU has no AVX-512F | |" >>"$results"
    fi
    ;;
bench)
    nrt=$bin/nemotron-rt
    runb() { # label, args...
        local label=$1
        shift
        echo "### $label: nemotron-rt bench $*" >>"$results"
        echo '```' >>"$results"
        timeout 300 "$nrt" bench "$@" 2>&1 | grep -v XDG_RUNTIME_DIR | tail -12 >>"$results"
        echo '```' >>"$results"
    }
    fixture=tests/fixtures/models/nemotronh_tiny_grouped_nvfp4_super/hf
    # The card's own Vulkan driver, never a software one that may also be installed.
    wgpu=(--backend wgpu --adapter "${ADAPTER:-NVIDIA}")
    runb "fixture, cuda" --model "$fixture" --backend cuda --prompt-len 64 --gen 64 --repeat 5
    runb "fixture, wgpu" --model "$fixture" "${wgpu[@]}" --prompt-len 64 --gen 64 --repeat 5
    slice=/tmp/super_slice
    if [ ! -f "$slice/config.json" ]; then
        start=$(date +%s)
        "$nrt" synth --shape super --pattern "${SLICE_PATTERN:-MEMEM*EME}" --vocab 16384 \
            --recipe nvfp4 --seed 1 --out "$slice" >"$out/synth.log" 2>&1 || tail -5 "$out/synth.log"
        echo "synthesized $slice in $(($(date +%s) - start)) s" >>"$results"
    fi
    runb "Super slice, cuda" --model "$slice" --backend cuda --prompt-len 512 --gen 128 --repeat 3
    runb "Super slice, wgpu" --model "$slice" "${wgpu[@]}" --prompt-len 512 --gen 128 --repeat 3
    runb "Super slice, cuda, exact path only" --model "$slice" --backend cuda --cuda-fp4 off \
        --prompt-len 512 --gen 128 --repeat 3
    runb "Super slice, cuda, without CUDA graphs" --model "$slice" --backend cuda \
        --cuda-no-graphs --prompt-len 512 --gen 128 --repeat 3
    # Prefill GEMMs: the default tensor-core tiles (three bf16 terms) against the f32 CUDA-core
    # tiles and the lossy one-term tiles.
    runb "Super slice, cuda, f32 prefill tiles" --model "$slice" --backend cuda \
        --cuda-prefill f32 --prompt-len 512 --gen 16 --repeat 3
    runb "Super slice, cuda, bf16 prefill tiles" --model "$slice" --backend cuda \
        --cuda-prefill bf16 --prompt-len 512 --gen 16 --repeat 3
    # The host CPU, on the AVX2 kernels and (where it has AVX-512F) the AVX-512 NVFP4 dot.
    cores=$(nproc)
    NEMOTRON_CPU_SIMD=avx2 runb "Super slice, cpu AVX2" --model "$slice" --backend cpu \
        --threads "$cores" --prompt-len 64 --gen 32 --repeat 3
    if grep -qw avx512f /proc/cpuinfo; then
        NEMOTRON_CPU_SIMD=avx512 runb "Super slice, cpu AVX-512" --model "$slice" --backend cpu \
            --threads "$cores" --prompt-len 64 --gen 32 --repeat 3
    fi
    ;;
*)
    echo "usage: scripts/gpu-run.sh tests|bench" >&2
    exit 2
    ;;
esac
cat "$results"
