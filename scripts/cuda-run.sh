#!/usr/bin/env bash
# Runs a CUDA build of arbor on a GPU machine without a CUDA toolkit, finding CUDA 13's
# libraries and failing with a clear message when the driver or they are missing
# (scripts/cuda-libs.sh says where it looks). Arguments go to arbor:
#
#   scripts/cuda-run.sh serve --model DIR_OR_GGUF --device cuda
#   ARBOR_BIN=/opt/arbor/arbor PYTHON=/opt/venv/bin/python scripts/cuda-run.sh generate ...
set -euo pipefail
ARBOR_BIN=${ARBOR_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target-cuda/release/arbor}
# shellcheck source=scripts/cuda-libs.sh
source "$(dirname "$0")/cuda-libs.sh"
arbor_cuda_libs || exit 1
exec "$ARBOR_BIN" "$@"
