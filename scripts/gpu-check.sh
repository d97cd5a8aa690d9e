#!/usr/bin/env bash
# Checks Arbor's CUDA build on a machine with an NVIDIA GPU, in under 8 minutes:
#  1. the tiny fixture models through `arbor generate` on CUDA and on the CPU: greedy ids
#     equal each other and transformers' greedy_16 in f32 (bf16 agreement reported);
#  2. throughput with random weights in the real DeepSeek-R1-Distill-Qwen-7B and
#     Llama-8B configurations, made there with transformers: prefill and decode
#     tokens/s at batch 1, 16, 64 and 256, and the fraction of the HBM roofline.
# Prints a table and writes OUT_DIR/gpu-check.{md,json}. Exits 1 if a comparison fails.
#
# The GPU machine needs the NVIDIA driver (CUDA 13, e.g. the 580 series) and a Python
# with torch (a CUDA 13 build) and transformers; no Rust, toolkit or network. Build the
# binary on any machine (no GPU needed) and carry it over with the repository:
#
#   ./scripts/build-cuda-release.sh     # target-cuda/release/arbor and arbor-cuda.gz
#
# (14-40 minutes on 2 cores; see that script for the flags). Carry
# target-cuda/arbor-cuda.gz (19 MiB; the binary itself is over the 64 MiB a device
# runner carries): this script unpacks it when the binary is not there.
#
# Then, from the repository root on the GPU machine:
#
#   ./scripts/gpu-check.sh [OUT_DIR]     # ARBOR_BIN, PYTHON override the defaults
#
# The binary loads libcuda.so.1 from the driver and libcudart/libcublas/libcublasLt/
# libcurand (CUDA 13) from the torch environment's nvidia/cu13/lib, which this script
# puts on LD_LIBRARY_PATH (scripts/cuda-libs.sh). Built for CUDA_COMPUTE_CAP=90 (H100/H200); other GPUs need
# their own value at build time.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${ARBOR_BIN:-target-cuda/release/arbor}
python=${PYTHON:-python3}
out=${1:-${OUT:-gpu-check-out}}
mkdir -p "$out"

fail() {
  echo "gpu-check: $*" >&2
  exit 1
}

if [ ! -x "$bin" ] && [ -z "${ARBOR_BIN:-}" ] && [ -f target-cuda/arbor-cuda.gz ]; then
  mkdir -p "$(dirname "$bin")"
  gunzip -c target-cuda/arbor-cuda.gz > "$bin"
  chmod +x "$bin"
fi
[ -x "$bin" ] || fail "no arbor binary at $bin; build it with scripts/build-cuda-release.sh (see the top of $0)"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver on this machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv

# The CUDA 13 runtime libraries that came with torch (or CUDA_LIB_DIR), with a clear
# message when they or the driver are missing.
# shellcheck source=scripts/cuda-libs.sh
source scripts/cuda-libs.sh
ARBOR_BIN=$bin PYTHON=$python arbor_cuda_libs || exit 1
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

# Part 1 fails fast with a clear message if the driver or GPU cannot be opened.
"$python" scripts/gpu_check.py run --bin "$bin" --out "$out" --budget-s 420
