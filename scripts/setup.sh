#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: system packages (when root and missing), then the npm
# dependencies, the native addon and the TypeScript build. Safe to run again; fast when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# iproute2 and nftables: the simulated-hosts tests (test/helpers/hosts.ts: namespaces, veths, tc; nft drops packets
# where the kernel has no sch_netem). util-linux (unshare) is essential on Debian. chromium: the dashboard's test
# drives the page in a headless browser (test/dashboard.test.ts).
packages=(libfabric-dev libfabric-bin libgtest-dev pkg-config cmake make g++ etcd-server curl openssl iproute2 nftables chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "missing system packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
[ -f build/Release/kvfabric.node ] || npm run build:native
[ -f dist/index.js ] || npm run build:ts
