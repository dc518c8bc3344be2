#!/usr/bin/env bash
# Regenerate streamgw/livepeer/lp_rpc_pb2{.py,.pyi,_grpc.py} from streamgw/livepeer/lp_rpc.proto.
# Usage: bash scripts/gen_proto.sh [OUT_DIR]   (default: the repository root, i.e. in place)
# PYTHON picks the interpreter (default python3).
# The proto is compiled with the repository root as the include path, so the generated gRPC module
# imports `from streamgw.livepeer import lp_rpc_pb2`, which works wherever the package is installed.
# Needs grpcio-tools (the `test` extra); the output depends on its version, so commit what it writes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"
"${PYTHON:-python3}" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  streamgw/livepeer/lp_rpc.proto
