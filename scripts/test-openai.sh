#!/usr/bin/env bash
# End-to-end test of `arbor serve` with the real `openai` Python client: builds the
# binary (debug profile), starts two servers on SmolLM2-135M-Instruct, runs pytest on
# tests/openai/, and always stops the servers.
#
#   ./scripts/test-openai.sh                 # everything
#   ./scripts/test-openai.sh -k streams      # extra arguments go to pytest
#
# The main server has an API key, a small KV cache (64 MiB, ~1456 tokens) and a small
# body limit, so that context, 401 and 413 errors are cheap to trigger, and reads
# hermes tool calls (tests/openai/test_tools.py). The queue
# server has no key and runs one sequence with one waiting, for the 503 test.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.60.0
PYTEST_VERSION=9.2.0
VENV=.venv-openai
API_KEY=sk-arbor-e2e
MAX_BODY_BYTES=262144

step() { printf '==> %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

if ! "$VENV/bin/python" - "$OPENAI_VERSION" "$PYTEST_VERSION" 2>/dev/null <<'PY'; then
import sys, openai, pytest
sys.exit(openai.__version__ != sys.argv[1] or pytest.__version__ != sys.argv[2])
PY
  step "installing openai==$OPENAI_VERSION and pytest==$PYTEST_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "openai==$OPENAI_VERSION" "pytest==$PYTEST_VERSION"
fi

model=${ARBOR_SMOLLM2_GGUF:-$(./scripts/fetch-smollm2.sh)}
step "cargo build -p arbor"
cargo build --quiet -p arbor
arbor=${CARGO_TARGET_DIR:-target}/debug/arbor

logs=$(mktemp -d)
pids=()
stop_servers() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    for log in "$logs"/*.log; do
      echo "---- last lines of $log" >&2
      tail -n 30 "$log" >&2 || true
    done
  fi
  rm -rf "$logs"
}
trap stop_servers EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server NAME PORT ARGS...: starts `arbor serve` in the background.
start_server() {
  local name=$1 port=$2
  shift 2
  "$arbor" serve --model "$model" --host 127.0.0.1 --port "$port" "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
}

# wait_healthy NAME PORT: waits for /health, failing if the server exits first.
wait_healthy() {
  local name=$1 port=$2 pid=${pids[-1]}
  for _ in $(seq 1200); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
      "http://127.0.0.1:$port/health" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "test-openai: the $name server exited during start-up" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "test-openai: the $name server did not answer /health within 120 s" >&2
  return 1
}

main_port=$(free_port)
queue_port=$(free_port)
step "starting arbor serve on ports $main_port (main) and $queue_port (queue)"
start_server main "$main_port" --kv-cache-memory 64MiB --api-key "$API_KEY" --tool-call-parser hermes \
  --max-body-bytes "$MAX_BODY_BYTES"
wait_healthy main "$main_port"
start_server queue "$queue_port" --kv-cache-memory 32MiB --max-running-requests 1 \
  --max-waiting-requests 1
wait_healthy queue "$queue_port"

step "pytest tests/openai"
export ARBOR_OPENAI_URL=http://127.0.0.1:$main_port
export ARBOR_OPENAI_API_KEY=$API_KEY
export ARBOR_OPENAI_MAX_BODY_BYTES=$MAX_BODY_BYTES
export ARBOR_OPENAI_QUEUE_URL=http://127.0.0.1:$queue_port
PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -q tests/openai "$@"
