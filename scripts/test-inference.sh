#!/usr/bin/env bash
# End-to-end check of a kvfabric deployment (the seed's quick start step 4), which — unlike the seed's —
# fails unless the answer is real text AND the response's `kvfabric` transport report shows the KV crossed
# the fabric: backend LIBFABRIC, the expected provider, bytes > 0. An HTTP 2xx alone proves nothing.
#
# Usage: scripts/test-inference.sh <service-name> [model] [prompt]
#   e.g. scripts/test-inference.sh kvfabric-libfabric
#        KVF_URL=http://127.0.0.1:8000 scripts/test-inference.sh local     # a local `kvfabric serve`, no kubectl
# Env:
#   KVF_URL          frontend URL; when set, kubectl is not used
#   NAMESPACE        namespace of the service (kubectl's current one by default)
#   LOCAL_PORT       local port for kubectl port-forward (default 8000); SERVICE_PORT (default 8000)
#   EXPECT_BACKEND   default LIBFABRIC
#   EXPECT_PROVIDER  e.g. efa (EKS), tcp, shm; default: any non-empty provider. "tcp" matches "tcp;ofi_rxm".
#                    When set, the bytes must also have gone over that provider (path "fabric"), not the
#                    same-host fast path (path "cma" or "mapped"), which bypasses it.
#   MAX_TOKENS       default 16; TIMEOUT seconds per request, default 120
# Needs curl and node (JSON is read with node, so no jq).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
name="$1"
model="${2:-}"
prompt="${3:-The capital of France is}"
expect_backend="${EXPECT_BACKEND:-LIBFABRIC}"
expect_provider="${EXPECT_PROVIDER:-}"
max_tokens="${MAX_TOKENS:-16}"
timeout="${TIMEOUT:-120}"

fail() { echo "FAIL: $*" >&2; exit 1; }
work="$(mktemp -d)"
pf_pid=""
cleanup() {
  [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${KVF_URL:-}" ]; then
  url="${KVF_URL%/}"
else
  command -v kubectl >/dev/null || fail "kubectl not found (set KVF_URL to test a frontend directly)"
  port="${LOCAL_PORT:-8000}"
  ns=()
  [ -n "${NAMESPACE:-}" ] && ns=(-n "$NAMESPACE")
  kubectl "${ns[@]}" port-forward "svc/$name" "$port:${SERVICE_PORT:-8000}" >"$work/port-forward.log" 2>&1 &
  pf_pid=$!
  url="http://127.0.0.1:$port"
  for _ in $(seq 1 60); do
    curl -fsS -o /dev/null --max-time 2 "$url/live" 2>/dev/null && break
    kill -0 "$pf_pid" 2>/dev/null || fail "kubectl port-forward svc/$name exited: $(cat "$work/port-forward.log")"
    sleep 0.5
  done
fi
echo "testing $name at $url"

# GET/POST to a file; prints the HTTP status (000 when the connection failed).
request() {
  local out="$1"; shift
  curl -sS -o "$out" -w '%{http_code}' --max-time "$timeout" "$@" 2>"$work/curl.err" || true
}

# 1. Readiness: the frontend answers 200 only once a decode worker is healthy.
status="$(request "$work/health.json" "$url/health")"
[ "$status" = "200" ] || fail "GET /health: HTTP $status $(cat "$work/health.json" "$work/curl.err" 2>/dev/null)"
echo "health: ok"

# 2. The served model, unless given.
if [ -z "$model" ]; then
  status="$(request "$work/models.json" "$url/v1/models")"
  [ "$status" = "200" ] || fail "GET /v1/models: HTTP $status $(cat "$work/models.json" "$work/curl.err" 2>/dev/null)"
  model="$(node -e 'const m = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); process.stdout.write(String(m.data?.[0]?.id ?? ""))' "$work/models.json")"
  [ -n "$model" ] || fail "GET /v1/models listed no model"
fi

# 3. A completion, then the proof: non-empty text and the transport report.
body="$(node -e 'process.stdout.write(JSON.stringify({ model: process.argv[1], prompt: process.argv[2], max_tokens: Number(process.argv[3]), temperature: 0 }))' "$model" "$prompt" "$max_tokens")"
status="$(request "$work/completion.json" "$url/v1/completions" -H 'content-type: application/json' -d "$body")"
case "$status" in 2??) ;; *) fail "POST /v1/completions: HTTP $status $(cat "$work/completion.json" "$work/curl.err" 2>/dev/null)" ;; esac

node - "$work/completion.json" "$expect_backend" "$expect_provider" <<'JS'
const [file, backend, provider] = process.argv.slice(2);
const fail = (why) => { console.error(`FAIL: ${why}`); process.exit(1); };
let res;
try { res = JSON.parse(require('fs').readFileSync(file, 'utf8')); } catch (e) { fail(`response is not JSON: ${e.message}`); }
const text = res?.choices?.[0]?.text ?? res?.choices?.[0]?.message?.content;
if (typeof text !== 'string' || text.trim() === '') fail(`empty completion text: ${JSON.stringify(res?.choices ?? res)}`);
const kv = res.kvfabric;
if (!kv || typeof kv !== 'object') fail('no `kvfabric` transport report in the response: nothing shows the KV crossed the fabric');
if (kv.backend !== backend) fail(`KV backend is ${JSON.stringify(kv.backend)}, expected ${backend}`);
if (typeof kv.provider !== 'string' || kv.provider === '') fail(`KV provider is ${JSON.stringify(kv.provider)}`);
if (provider && kv.provider !== provider && kv.provider.split(';')[0] !== provider) fail(`KV provider is ${kv.provider}, expected ${provider}`);
if (provider && kv.path !== 'fabric') fail(`KV went by path ${JSON.stringify(kv.path)}, not over the ${provider} provider (same-host fast path? set KVF_FAST_PATH=0)`);
if (!(Number(kv.bytes) > 0)) fail(`KV bytes moved: ${JSON.stringify(kv.bytes)} (mode ${kv.mode}${kv.fallback_reason ? `, fallback: ${kv.fallback_reason}` : ''})`);
console.log(`text: ${JSON.stringify(text)}`);
console.log(`PASS: KV over ${kv.backend}/${kv.provider} (path ${kv.path}), rails ${JSON.stringify(kv.rails)}, ${kv.op ?? ''} ${kv.bytes} bytes in ${kv.transfer_ms} ms, ` +
  `${kv.prefill_worker} -> ${kv.decode_worker} (mode ${kv.mode})`);
JS
