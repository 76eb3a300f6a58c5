"""``pyproject.toml`` builds a wheel that carries the whole package, and the installed copy runs.

The build works on a copy of ``priv/python`` (setuptools writes ``build/`` and ``*.egg-info``
next to the sources) without build isolation, so it needs no network: the test venv's
setuptools builds it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import PY_DIR, SHOWCASE, short_tempdir

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None, reason="setuptools not installed"
)

EXPECTED = {
    "snakepit_bridge/__init__.py",
    "snakepit_bridge/server.py",
    "snakepit_bridge/base_adapter.py",
    "snakepit_bridge/session_context.py",
    # Generated from proto/snakepit_bridge.proto and committed: must ship in the wheel.
    "snakepit_bridge/snakepit_bridge_pb2.py",
    "snakepit_bridge/snakepit_bridge_pb2.pyi",
    "snakepit_bridge/snakepit_bridge_pb2_grpc.py",
    "snakepit_bridge/py.typed",
    "snakepit_bridge/adapters/showcase/showcase_adapter.py",
    "snakepit_bridge/adapters/threaded_showcase.py",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(
        PY_DIR,
        source,
        ignore=shutil.ignore_patterns(
            "tests", "*.egg-info", "build", "dist", "__pycache__", ".pytest_cache"
        ),
    )
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("snakepit_bridge-*.whl")
    return built


def test_wheel_contains_the_package_and_the_generated_stubs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert EXPECTED <= names, sorted(EXPECTED - names)
    assert not any(name.startswith("tests/") for name in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: grpcio" in text and "Requires-Dist: protobuf" in text


def test_installed_package_serves_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    socket_dir = short_tempdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # grpcio/protobuf come from this interpreter's site-packages
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakepit_bridge.server", "--adapter", SHOWCASE,
         "--socket", os.path.join(socket_dir, "w.sock")],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline().decode()
        if not line.strip():  # the server starts its protocol line on a fresh line
            line = proc.stdout.readline().decode()
        if not line.startswith("SNAKEPIT_READY "):
            proc.kill()  # so that reading its stderr cannot block
            raise AssertionError((line, proc.stderr.read().decode()))
        endpoint = json.loads(line.split(" ", 1)[1])["endpoint"]
        origin = subprocess.run(
            [sys.executable, "-c", "import snakepit_bridge; print(snakepit_bridge.__file__)"],
            cwd=tmp_path, env=env, capture_output=True, check=True, text=True,
        ).stdout
        assert origin.startswith(str(target)), origin

        import grpc

        from snakepit_bridge import snakepit_bridge_pb2 as pb2
        from snakepit_bridge import snakepit_bridge_pb2_grpc as pb2_grpc

        with grpc.insecure_channel(endpoint) as channel:
            reply = pb2_grpc.BridgeServiceStub(channel).Ping(pb2.PingRequest(message="w"), timeout=10)
        assert reply.message == "Pong from Python: w"
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
        proc.stderr.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
