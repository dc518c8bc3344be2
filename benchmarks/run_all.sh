#!/bin/sh
# Every streamgw vs nginx-rtmp benchmark, then a summary (~4-5 min). See docs/benchmarks.md.
# Usage: benchmarks/run_all.sh [--quick] [--publishers 10 20]
cd "$(dirname "$0")/.." || exit 1
exec python -m benchmarks "$@"
