#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer into build-asan/ and runs the
# native-facing tests against it (KVF_ADDON points the loader at that build). Node itself is not
# instrumented, so the ASan runtime is preloaded; leak checking is off because V8 keeps memory until exit.
set -euo pipefail
cd "$(dirname "$0")/.."
npx cmake-js compile --out build-asan --debug --CDKVF_SANITIZE=ON --CDKVF_WERROR=ON >/dev/null
addon="$PWD/build-asan/Debug/kvfabric.node"
asan="$(gcc -print-file-name=libasan.so)"
ubsan="$(gcc -print-file-name=libubsan.so)"
export KVF_ADDON="$addon"
export KVF_SANITIZE_ENGINE=1  # test/engine-native.test.ts builds the C++ engine suite sanitized too
export LD_PRELOAD="$asan:$ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
if [ "$#" -gt 0 ]; then exec "$@"; fi
exec node scripts/run-tests.mjs --native-only
