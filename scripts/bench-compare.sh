#!/usr/bin/env bash
# Measures Arbor on a fixed set of workloads with `arbor bench`, and optionally a second
# server already serving the same model on the identical workloads, then writes the
# records (JSONL), the report and a plot into a results directory and prints the
# ratios (other / arbor).
#
#   ./scripts/bench-compare.sh                                  # Arbor on SmolLM2
#   ./scripts/bench-compare.sh --other-url http://127.0.0.1:8000 \
#       --other-backend openai --other-label llama-cpp-python    # and a second server
#
# Workloads (each run against each server):
#   - throughput: random text prompts of IN tokens, OUT output tokens, at max
#     concurrency 1, 4 and 16 (max(8, 2 x concurrency) requests each);
#   - generated-shared-prefix: GSP_GROUPS x GSP_PER_GROUP prompts sharing a SYS-token
#     system prompt, QUESTION-token questions, GSP_OUT output tokens, concurrency 8;
#   - its control: the same lengths with no shared prefix.
#
# Options:
#   --model PATH          model to serve and tokenizer for counting (default: SmolLM2,
#                         fetched by scripts/fetch-smollm2.sh)
#   --binary PATH         arbor binary (default: target/release/arbor, built first with
#                         `cargo build --release -p arbor` unless --no-build)
#   --no-build            use --binary as it is
#   --port N              port for arbor serve (default 30123)
#   --results DIR         results directory (default target/bench-results/<time>)
#   --other-url URL       base URL of a second server serving the same model
#   --other-backend B     its backend: arbor, sglang, vllm or openai (default openai)
#   --other-label L       its name in reports (default: the backend name)
#   --other-model NAME    model name the second server expects (default: ask /v1/models)
#   --serve-args "..."    extra flags for arbor serve
#   --quick               smaller workloads, for a smoke test of the script itself
# Environment: IN, OUT, SYS, QUESTION, GSP_OUT, GSP_GROUPS, GSP_PER_GROUP override the sizes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

model=""
binary="$root/target/release/arbor"
build=1
port=30123
results=""
other_url=""
other_backend="openai"
other_label=""
other_model=""
serve_args=""
quick=0

while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --binary) binary=$2; build=0; shift 2 ;;
    --no-build) build=0; shift ;;
    --port) port=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --other-url) other_url=$2; shift 2 ;;
    --other-backend) other_backend=$2; shift 2 ;;
    --other-label) other_label=$2; shift 2 ;;
    --other-model) other_model=$2; shift 2 ;;
    --serve-args) serve_args=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-compare: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$quick" = 1 ]; then
  : "${IN:=32}" "${OUT:=16}" "${SYS:=128}" "${QUESTION:=16}" "${GSP_OUT:=8}"
  : "${GSP_GROUPS:=2}" "${GSP_PER_GROUP:=4}"
else
  : "${IN:=256}" "${OUT:=64}" "${SYS:=512}" "${QUESTION:=32}" "${GSP_OUT:=16}"
  : "${GSP_GROUPS:=4}" "${GSP_PER_GROUP:=8}"
fi
other_label=${other_label:-$other_backend}
step() { printf '\n==> %s (%s)\n' "$*" "$(date +%H:%M:%S)" >&2; }

[ -n "$model" ] || model=$(./scripts/fetch-smollm2.sh)
if [ "$build" = 1 ]; then
  step "cargo build --release -p arbor"
  cargo build --release -p arbor
fi
[ -x "$binary" ] || { echo "bench-compare: no arbor binary at $binary" >&2; exit 1; }
results=${results:-$root/target/bench-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
jsonl=$results/runs.jsonl

step "starting arbor serve on port $port (log: $results/arbor-serve.log)"
# shellcheck disable=SC2086 # --serve-args is split into flags on purpose
"$binary" serve --model "$model" --port "$port" $serve_args >"$results/arbor-serve.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
arbor_url="http://127.0.0.1:$port"
for _ in $(seq 1 600); do
  curl -sf "$arbor_url/health" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || {
    echo "bench-compare: arbor serve exited; its log:" >&2
    cat "$results/arbor-serve.log" >&2
    exit 1
  }
  sleep 0.5
done
curl -sf "$arbor_url/health" >/dev/null || { echo "bench-compare: arbor serve did not come up" >&2; exit 1; }

# One `arbor bench` run: LABEL BACKEND URL MODEL_NAME then workload flags.
bench() {
  local label=$1 backend=$2 url=$3 served=$4
  shift 4
  local name_flag=()
  [ -n "$served" ] && name_flag=(--served-model-name "$served")
  "$binary" bench --backend "$backend" --base-url "$url" --tokenizer "$model" \
    "${name_flag[@]}" --label "$label" --api completions --seed 1 \
    --output "$jsonl" --note "bench-compare $(uname -m) $(nproc) cores" "$@" \
    >>"$results/bench.log"
}

# Every workload of the fixed set, against one server.
workloads() {
  local label=$1 backend=$2 url=$3 served=$4
  for c in 1 4 16; do
    local n=$(( 2 * c > 8 ? 2 * c : 8 ))
    step "$label: random in=$IN out=$OUT, concurrency $c, $n requests"
    bench "$label" "$backend" "$url" "$served" --dataset-name random \
      --random-input-len "$IN" --random-output-len "$OUT" --random-range-ratio 1 \
      --random-prompt text --num-prompts "$n" --max-concurrency "$c"
  done
  for shared in yes no; do
    local flag=()
    [ "$shared" = no ] && flag=(--gsp-no-shared-prefix)
    step "$label: generated-shared-prefix ${GSP_GROUPS}x$GSP_PER_GROUP sys=$SYS (shared: $shared)"
    bench "$label" "$backend" "$url" "$served" --dataset-name generated-shared-prefix \
      --gsp-num-groups "$GSP_GROUPS" --gsp-prompts-per-group "$GSP_PER_GROUP" \
      --gsp-system-prompt-len "$SYS" --gsp-question-len "$QUESTION" \
      --gsp-output-len "$GSP_OUT" --max-concurrency 8 "${flag[@]}"
  done
}

workloads arbor arbor "$arbor_url" ""
if [ -n "$other_url" ]; then
  workloads "$other_label" "$other_backend" "$other_url" "$other_model"
fi

step "report"
report_flags=()
[ -n "$other_url" ] && report_flags=(--baseline arbor)
"$binary" bench report "$jsonl" "${report_flags[@]}" --plot "$results/runs.png" \
  --title "arbor bench: $(basename "$model")" | tee "$results/report.txt"
echo "results: $results (runs.jsonl, report.txt, runs.png, bench.log)" >&2
