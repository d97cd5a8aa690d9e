#!/usr/bin/env bash
# Checks that the CUDA build still compiles, on any machine: no GPU, driver or system
# toolkit needed. Installs the CUDA 13.0 toolkit from PyPI into .cuda/ on first use
# (scripts/cuda-env.sh), then type-checks every crate and target with `--features cuda`.
# That runs the build scripts too, so nvcc compiles Candle's kernels and Arbor's own
# kernels/cuda/*.cu to PTX; the script then checks that Arbor's PTX is there.
#
#   ./scripts/check-cuda.sh                    # CI: scripts/test.sh runs it last
#   CUDA_COMPUTE_CAP=89 ./scripts/check-cuda.sh
#
# It builds into target-cuda/ (override with ARBOR_CUDA_TARGET_DIR), so it neither
# invalidates nor waits on the CPU build in target/. Cold, on 2 cores, it takes about
# 20 minutes, nearly all of it nvcc on Candle's kernels; warm, seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

step() { printf '==> %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

step "CUDA toolkit (scripts/cuda-env.sh)"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# shellcheck source=scripts/cuda-env.sh
if ! source scripts/cuda-env.sh; then
  echo "check-cuda: could not set up a CUDA toolkit (see the messages above)" >&2
  exit 1
fi
nvcc --version | tail -n 2

export CARGO_TARGET_DIR=${ARBOR_CUDA_TARGET_DIR:-$PWD/target-cuda}
# The crates with CUDA code, every target (tests included, so their
# `cfg(feature = "cuda")` code is checked); the others are the same as in the CPU build.
packages=(-p arbor -p arbor-engine -p arbor-models -p arbor-kernels)
step "cargo check --all-targets ${packages[*]} --features arbor/cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
# Feature unification turns `cuda` on in arbor-engine, arbor-models and arbor-kernels.
cargo check --all-targets "${packages[@]}" --features arbor/cuda

step "Arbor's kernels compiled to PTX"
for src in kernels/cuda/*.cu; do
  name=$(basename "$src" .cu)
  # The newest build directory of arbor-kernels is the one this check used.
  ptx=$(ls -t "$CARGO_TARGET_DIR"/debug/build/arbor-kernels-*/out/"$name.ptx" 2>/dev/null |
    head -n 1 || true)
  if [ -z "$ptx" ] || ! grep -q "^.visible .entry arbor_" "$ptx"; then
    echo "check-cuda: no PTX with arbor_ entry points for $src" >&2
    exit 1
  fi
  if [ "$src" -nt "$ptx" ]; then
    echo "check-cuda: $ptx is older than $src: nvcc did not rebuild it" >&2
    exit 1
  fi
  printf '    %-20s %3d entry points, %s\n' "$name.cu" \
    "$(grep -c '^.visible .entry' "$ptx")" "$(grep -m1 '^.target' "$ptx")"
done

step "CUDA check passed in $(($(date +%s) - started)) s"
