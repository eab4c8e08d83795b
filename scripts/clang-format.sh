#!/usr/bin/env bash
# Formats the native sources with clang-format (.clang-format); --check reports what differs and fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=(-i)
[ "${1:-}" = "--check" ] && mode=(--dry-run --Werror)
command -v clang-format >/dev/null || { echo "clang-format is not installed (apt-get install -y clang-format)" >&2; exit 1; }
git ls-files -z 'native/*.cc' 'native/*.h' 'native/*.cpp' 'fuzz/*.cc' | xargs -0 -r clang-format "${mode[@]}"
