#!/usr/bin/env bash
# Packs what a GPU machine without Node or npm needs to run the GPU tests (the workplace's device machines:
# their tool carries the working tree plus named ignored paths, 64 MiB in all): node, xz-compressed; the addon;
# and each GPU test bundled with everything it imports into one .mjs. There: bash scripts/gpu-run.sh.
# A GPU machine with Node and this checkout built needs none of this: npm run test:gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu
rm -rf "$out"
mkdir -p "$out"
[ -f build/Release/kvfabric.node ] || npm run build:native
cp build/Release/kvfabric.node "$out/"
xz -T0 -6 -c "$(command -v node)" >"$out/node.xz"
# CommonJS dependencies inside an ES module bundle call require(): give them one.
banner="import { createRequire as kvfCreateRequire } from 'node:module'; const require = kvfCreateRequire(import.meta.url);"
# The GPU tests, the device-memory transfer tests (run on cuda:0 there too) and the peer process they start;
# the CLI and the GPU benchmark (bash scripts/gpu-run.sh bench).
bundle() {
  node_modules/.bin/esbuild "$1" --bundle --platform=node --format=esm --log-level=warning --outfile="$out/$2" --banner:js="$banner"
}
for t in test/gpu*.test.ts test/staging.test.ts test/fixtures/peer.ts; do bundle "$t" "$(basename "$t" .ts).mjs"; done
bundle src/cli/main.ts kvfabric.mjs
bundle benchmarks/gpu.ts bench-gpu.mjs
du -sh "$out"
