"""The committed gRPC stubs match what scripts/gen_python_stubs.sh generates from the proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import PY_DIR, REPO_ROOT

GENERATED = ("snakepit_bridge_pb2.py", "snakepit_bridge_pb2.pyi", "snakepit_bridge_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    script = REPO_ROOT / "scripts" / "gen_python_stubs.sh"
    subprocess.run(
        ["bash", str(script), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    package = PY_DIR / "snakepit_bridge"
    for name in GENERATED:
        fresh = (tmp_path / name).read_text()
        committed = (package / name).read_text()
        assert fresh == committed, (
            f"{name} is out of date with proto/snakepit_bridge.proto; "
            "run scripts/gen_python_stubs.sh"
        )


def test_grpc_module_uses_a_package_relative_import() -> None:
    source = (PY_DIR / "snakepit_bridge" / "snakepit_bridge_pb2_grpc.py").read_text()
    assert "from . import snakepit_bridge_pb2 as" in source
    assert "\nimport snakepit_bridge_pb2" not in source
