#!/usr/bin/env bash
# AIPerf (NVIDIA's benchmark client for Dynamo, from PyPI) against a running `kvfabric serve`, offline: its
# own tokenizer would be downloaded, so the model's tokenizer is rebuilt from the GGUF file (gguf_tokenizer.py).
# Outside the default install: this folder gets its own virtual environment.
#   bash benchmarks/aiperf/run.sh [url] [concurrency ...]     (default http://127.0.0.1:8000, concurrency 1 4)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
url="${1:-http://127.0.0.1:8000}"
shift || true
levels=("${@:-1 4}")
venv="$here/.venv"
[ -x "$venv/bin/aiperf" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q aiperf==0.13.0 gguf; }
model="${KVF_MODEL_CACHE:-$HOME/.cache/kvfabric/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
tok="$here/out/tokenizer"
mkdir -p "$tok"
"$venv/bin/python" "$here/gguf_tokenizer.py" "$model" "$tok"
for c in ${levels[*]}; do
  "$venv/bin/aiperf" profile --model SmolLM2-135M-Instruct.Q4_1 --url "$url" --endpoint-type chat --streaming \
    --tokenizer "$tok" --isl 128 --osl 32 --use-legacy-max-tokens --concurrency "$c" --request-count $((c * 8)) \
    --warmup-request-count 2 --ui none --output-artifact-dir "$here/out/c$c"
done
