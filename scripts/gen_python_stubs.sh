#!/usr/bin/env bash
# Regenerate the Python gRPC stubs of the worker package from proto/snakepit_bridge.proto.
#
# Usage: scripts/gen_python_stubs.sh [OUT_DIR]
#   OUT_DIR defaults to priv/python/snakepit_bridge (the committed location). The drift test
#   (priv/python/tests/test_stubs_drift.py) passes a temp dir and compares the result.
# Env: PYTHON (default: <repo>/.venv/bin/python) must have grpcio-tools installed.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo_root/.venv/bin/python}"
out_dir="${1:-$repo_root/priv/python/snakepit_bridge}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

cd "$repo_root"
"$python" -m grpc_tools.protoc -I proto \
  --python_out="$out_dir" --pyi_out="$out_dir" --grpc_python_out="$out_dir" \
  proto/snakepit_bridge.proto

# protoc emits a flat `import snakepit_bridge_pb2 as ...`, which only works when the package
# directory itself is on sys.path. Make it package-relative so `snakepit_bridge` is importable
# as a normal package.
grpc_module="$out_dir/snakepit_bridge_pb2_grpc.py"
sed -i -E 's/^import snakepit_bridge_pb2 as /from . import snakepit_bridge_pb2 as /' "$grpc_module"
if grep -qE '^import snakepit_bridge_pb2' "$grpc_module"; then
  echo "gen_python_stubs: failed to rewrite the flat import in $grpc_module" >&2
  exit 1
fi
