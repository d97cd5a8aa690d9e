#!/usr/bin/env bash
# Builds the CUDA release binary that scripts/gpu-check.sh and scripts/cuda-run.sh run,
# on any machine (no GPU needed): target-cuda/release/arbor.
#
#   ./scripts/build-cuda-release.sh        # CUDA_COMPUTE_CAP=90 (H100/H200) unless set
#
# - the CUDA 13.0 toolkit comes from PyPI into .cuda/ (scripts/cuda-env.sh);
# - x86-64-v3 instead of .cargo/config.toml's target-cpu=native, so that the binary runs
#   on the GPU machine's CPU;
# - no debug info and stripped symbols; still about 66 MiB (33 MiB of it Candle's CUDA
#   fatbins), over the device runner's 64 MiB carry limit, so the script also writes
#   target-cuda/arbor-cuda.gz (about 19 MiB), which scripts/gpu-check.sh unpacks.
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
gzip -6 -c "$bin" > target-cuda/arbor-cuda.gz
echo "$bin: $(($(stat -c %s "$bin") / 1048576)) MiB, CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}"
echo "target-cuda/arbor-cuda.gz: $(($(stat -c %s target-cuda/arbor-cuda.gz) / 1048576)) MiB (carry this one)"
