#!/usr/bin/env bash
# Runs the GPU tests packed by scripts/gpu-pack.sh, on a machine with neither Node nor npm. With a GPU present
# every GPU case runs (KVF_REQUIRE_GPU makes a missing GPU a failure, not a skip). `gpu-run.sh bench` runs
# benchmarks/gpu.ts instead (its JSON goes to $OUT, or benchmarks/out).
set -euo pipefail
cd "$(dirname "$0")/.."
node=/tmp/kvf-node
[ -x "$node" ] || { xz -dc .gpu/node.xz >"$node" && chmod +x "$node"; }
export KVF_ADDON="$PWD/.gpu/kvfabric.node" KVF_PEER_FIXTURE="$PWD/.gpu/peer.mjs" KVF_REQUIRE_GPU=1
if [ "${1:-}" = bench ]; then
  mkdir -p benchmarks/out
  KVF_CLI="$PWD/.gpu/kvfabric.mjs" exec "$node" .gpu/bench-gpu.mjs --out "${OUT:-benchmarks/out}/gpu.json"
fi
exec "$node" --test --test-reporter=spec .gpu/*.test.mjs
