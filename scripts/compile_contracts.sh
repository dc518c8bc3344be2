#!/usr/bin/env bash
# Compile contracts/*.sol with the pinned solc-js into streamgw/payments/contracts.json (ABI + bytecode).
# Usage: bash scripts/compile_contracts.sh [OUTPUT]   (tests/test_contracts.py checks the committed file
# still equals a fresh compile)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d contracts/node_modules/solc ] || npm ci --prefix contracts --no-audit --no-fund --ignore-scripts >/dev/null
out="${1:-streamgw/payments/contracts.json}"
node contracts/compile.mjs > "$out.tmp"
mv "$out.tmp" "$out"
