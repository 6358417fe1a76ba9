#!/usr/bin/env bash
# Packs what a lent GPU machine needs to run the CUDA and Vulkan checks. It has no Rust
# toolchain and cannot reach the network, so everything is built and fetched here:
#   .gpu/kit.tar.xz  the release CLI, the test binaries that exercise GPUs and the unit tests
#                    (for the host CPU's AVX-512 kernels), stripped, plus
#                    the commit and the folder they were built in (the tests find fixtures
#                    there);
#   .gl/             the Vulkan/EGL loader packages (the NVIDIA driver brings only the ICD).
# Both are git-ignored (.git/info/exclude). Then, with the device tool:
#   run  carry [".gpu", ".gl"]  command "scripts/gpu-run.sh tests"   (then "bench")
# and append what it prints to docs/gpu-log.md.
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.gpu/ /.gl/; do
    grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude
done

rm -rf .gpu && mkdir -p .gpu/bin
cargo build --release
cp target/release/nemotron-rt .gpu/bin/
for t in cuda_compile conformance golden generation variants cuda_lossy cuda_graphs; do
    exe=$(cargo test --release --no-run --test "$t" --message-format=json 2>/dev/null |
        jq -r 'select(.executable != null and .target.kind == ["test"]) | .executable' | tail -1)
    [ -n "$exe" ] || { echo "no test binary for $t" >&2; exit 1; }
    cp "$exe" ".gpu/bin/$t"
done
# The library's unit tests: on the machine's own CPU they test the AVX-512 kernels, which
# this one cannot run.
exe=$(cargo test --release --no-run --lib --message-format=json 2>/dev/null |
    jq -r 'select(.executable != null and .target.kind == ["lib"]) | .executable' | tail -1)
[ -n "$exe" ] || { echo "no unit-test binary" >&2; exit 1; }
cp "$exe" .gpu/bin/unit
strip .gpu/bin/*
{
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
    echo "built_in $PWD"
    echo "built_on $(date -u +%Y-%m-%dT%H:%MZ)"
} >.gpu/bin/KIT
tar -C .gpu -cJf .gpu/kit.tar.xz bin
rm -rf .gpu/bin

if [ ! -d .gl ] || ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update -qq
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .gpu .gl
echo "kit ready: carry .gpu and .gl (64 MiB in all with the working tree)"
