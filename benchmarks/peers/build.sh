#!/usr/bin/env bash
# Builds the C peers into benchmarks/peers/build/ (git-ignored). Needs cc and libfabric's headers
# (Debian: libfabric-dev) with pkg-config.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$here/build"
CC="${CC:-cc}"
CFLAGS=(-std=c11 -O2 -Wall -Wextra -Werror)
# shellcheck disable=SC2046
"$CC" "${CFLAGS[@]}" $(pkg-config --cflags libfabric) -o "$here/build/fi_raw_bench" "$here/fi_raw_bench.c" $(pkg-config --libs libfabric) -lpthread
"$CC" "${CFLAGS[@]}" -o "$here/build/memcpy_bench" "$here/memcpy_bench.c"
echo "built $here/build/fi_raw_bench $here/build/memcpy_bench"
