#!/usr/bin/env bash
# A/B of two builds on one machine, pair after pair, so that drift of a shared machine hits both alike. Each
# side is a checkout with its dist/ and build/Release built (its own TS beside its own addon), or an addon
# .node file, which this checkout's dist/ then loads through KVF_ADDON. Prints one line per run:
#   <build> <config> p50_us wall_p50_us gbps cost_us_per_desc
# Usage: benchmarks/ab-addon.sh <checkout or addon A> <checkout or addon B> [pairs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
a="$1" b="$2" pairs="${3:-3}"
out="$(mktemp -d)"
# --fast-path off: same-host runs take the fabric (the provider's path), not the cma/mapped copy.
configs=(
  "tcp-4K-lat|--provider tcp --latency --fast-path off"
  "shm-4K-lat|--provider shm --latency --fast-path off"
  "mapped-4K-lat|--provider shm --latency"
  "tcp-1M-read|--provider tcp --rails 1 --op READ --block-sizes 1M --fast-path off"
  "tcp-1M-write|--provider tcp --rails 1 --op WRITE --block-sizes 1M --fast-path off"
  "tcp4-1M-read|--provider tcp --rails 4 --op READ --block-sizes 1M --fast-path off"
  "shm-1M-read|--provider shm --op READ --block-sizes 1M --fast-path off"
  "samehost-1M-read|--provider tcp --op READ --block-sizes 1M"
  "tcp-4Kx32-unprepared|--provider tcp --op READ --block-sizes 4K --batch 32 --no-prepared --fast-path off"
)
for ((p = 1; p <= pairs; p++)); do
  for entry in "${configs[@]}"; do
    name="${entry%%|*}" args="${entry#*|}"
    for build in A B; do
      side="$a"; [ "$build" = B ] && side="$b"
      if [ -d "$side" ]; then
        # shellcheck disable=SC2086
        node "$side/dist/cli/main.js" bench $args --duration 2 --no-progress --json "$out/r.json" >/dev/null
      else
        # shellcheck disable=SC2086
        KVF_ADDON="$side" node dist/cli/main.js bench $args --duration 2 --no-progress --json "$out/r.json" >/dev/null
      fi
      node -e '
        const p = require(process.argv[1]).points[0];
        const us = (ms) => (ms * 1000).toFixed(1);
        console.log([process.argv[2], process.argv[3], us(p.latencyMs.p50), us(p.wallLatencyMs.p50), p.gbps.toFixed(3), p.costUsPerDesc.toFixed(2)].join(" "));
      ' "$out/r.json" "$build" "$name"
    done
  done
done
