#!/usr/bin/env bash
# Builds the CUDA release binary that scripts/gpu-check.sh and scripts/cuda-run.sh run,
# on any machine (no GPU needed): target-cuda/release/arbor.
#
#   ./scripts/build-cuda-release.sh        # CUDA_COMPUTE_CAP=90 (H100/H200) unless set
#
# - the CUDA 13.0 toolkit comes from PyPI into .cuda/ (scripts/cuda-env.sh);
# - x86-64-v3 instead of .cargo/config.toml's target-cpu=native, so that the binary runs
#   on the GPU machine's CPU;
# - no debug info and stripped symbols, so that the binary stays small enough to carry
#   (the device runner takes 64 MiB; with line tables it would be over 100 MB).
# On 2 cores a build from clean takes about 40 minutes (Candle's kernels about 10).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh
export RUSTFLAGS="-C target-cpu=x86-64-v3"
export CARGO_TARGET_DIR=target-cuda
export CARGO_PROFILE_RELEASE_DEBUG=false
export CARGO_PROFILE_RELEASE_STRIP=symbols
cargo build --release -p arbor --features cuda
bin=target-cuda/release/arbor
size=$(stat -c %s "$bin")
echo "$bin: $((size / 1048576)) MiB, CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}"
if [ "$size" -gt $((64 << 20)) ]; then
  echo "warning: over 64 MiB, too large to carry to the device runner" >&2
fi
