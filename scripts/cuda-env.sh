#!/usr/bin/env bash
# Sets up a CUDA 13.0 toolkit for building `--features cuda` on a machine without one.
#
#   source scripts/cuda-env.sh      # installs on first use, then exports PATH/CUDA_HOME/...
#
# On a machine whose nvcc is already on PATH (a system toolkit), it changes nothing.
# Otherwise it installs NVIDIA's PyPI wheels (CUDA 13.0, which the 580-series driver of our
# GPU machines accepts; a newer nvcc writes PTX that driver rejects) into .cuda/ at the
# repo root, adds unversioned library links and a link-only libcuda stub, and exports
# the variables Candle's build scripts read. The stub is for linking only: at run time the
# real libcuda.so.1 comes from the GPU driver (see README, "Running on a GPU").

_arbor_cuda_main() {
  local root venv cu13 cudarc
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if command -v nvcc >/dev/null 2>&1 && [ -z "${ARBOR_FORCE_PIP_CUDA:-}" ]; then
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    return 0
  fi
  venv=$root/.cuda
  cu13=$venv/lib/python3.11/site-packages/nvidia/cu13
  if [ ! -x "$cu13/bin/nvcc" ]; then
    python3 -m venv "$venv" &&
      "$venv/bin/pip" install --quiet nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
        nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 ||
      return 1
  fi
  cu13=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13 | head -n 1)
  if [ ! -f "$cu13/lib/stubs/libcuda.so" ]; then
    (cd "$root" && cargo fetch --quiet) || return 1
    cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort | tail -n 1)
    "$root/scripts/make-cuda-link-shims.sh" "$cu13" "$cudarc" >/dev/null || return 1
  fi
  export PATH="$cu13/bin:$PATH"
  export CUDA_HOME="$cu13" CUDA_PATH="$cu13"
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  export LIBRARY_PATH="$cu13/lib:$cu13/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
}
_arbor_cuda_main
