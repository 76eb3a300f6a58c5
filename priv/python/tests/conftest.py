"""Shared helpers: run real worker processes and call them through the generated stub."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2

from snakepit_bridge import snakepit_bridge_pb2 as pb2
from snakepit_bridge import snakepit_bridge_pb2_grpc as pb2_grpc

TESTS_DIR = Path(__file__).resolve().parent
PY_DIR = TESTS_DIR.parent
REPO_ROOT = PY_DIR.parent.parent
FIXTURES_DIR = REPO_ROOT / "test" / "fixtures" / "python"

# In-process tests import the fixture and support adapters directly.
for _path in (FIXTURES_DIR, TESTS_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SHOWCASE = "snakepit_bridge.adapters.showcase.ShowcaseAdapter"
CONTRACT = "snakepit_test_adapters.ContractAdapter"
EXECUTE_TOOL = "snakepit_test_adapters.ExecuteToolAdapter"
SUPPORT = "support_adapters.SupportAdapter"
READY_TIMEOUT_S = 20.0


def param(value: Any) -> any_pb2.Any:
    """One request parameter the way the Rust client sends it (JSON in a StringValue Any)."""
    return any_pb2.Any(
        type_url="type.googleapis.com/google.protobuf.StringValue",
        value=json.dumps(_marked(value), allow_nan=False).encode("utf-8"),
    )


def _marked(value: Any) -> Any:
    """Replace non-finite floats by the wire marker (as the Rust codec does)."""
    if isinstance(value, float) and not math.isfinite(value):
        tag = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return {"__snakepit_float__": tag}
    if isinstance(value, dict):
        return {k: _marked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_marked(v) for v in value]
    return value


def request(
    tool: str,
    *,
    session_id: str = "",
    binary: dict[str, bytes] | None = None,
    metadata: dict[str, str] | None = None,
    **arguments: Any,
) -> pb2.ExecuteToolRequest:
    """Build an ``ExecuteToolRequest``."""
    return pb2.ExecuteToolRequest(
        session_id=session_id,
        tool_name=tool,
        parameters={k: param(v) for k, v in arguments.items()},
        binary_parameters=binary or {},
        metadata=metadata or {},
    )


def short_tempdir() -> str:
    """A fresh private directory with a short path (unix socket paths are limited to ~107 bytes)."""
    return tempfile.mkdtemp(prefix="sp-", dir="/tmp")


def worker_env(**extra: str) -> dict[str, str]:
    """Environment for a worker subprocess: package, fixtures and support adapters importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PY_DIR), str(FIXTURES_DIR), str(TESTS_DIR), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.update(extra)
    return env


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (missing or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in (b"Z", b"X")


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Worker:
    """A worker subprocess started like the Elixir side starts it."""

    def __init__(
        self,
        adapter: str,
        *,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        socket_dir: str | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.dir = socket_dir or short_tempdir()
        self.socket = os.path.join(self.dir, "w.sock")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "snakepit_bridge.server",
                "--adapter",
                adapter,
                "--socket",
                self.socket,
                "--worker-id",
                "test-worker",
                *(extra_args or []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env or worker_env(),
        )
        self.first_line: str = ""
        self.channel: grpc.Channel | None = None
        self.stub: pb2_grpc.BridgeServiceStub | None = None
        if wait_ready:
            self.first_line = self.read_line()
            if not self.first_line.startswith("SNAKEPIT_READY "):
                raise AssertionError(
                    f"worker not ready: {self.first_line!r}\nstderr:\n{self.stderr()}"
                )
            self.ready = json.loads(self.first_line.split(" ", 1)[1])
            self.channel = grpc.insecure_channel(self.ready["endpoint"])
            self.stub = pb2_grpc.BridgeServiceStub(self.channel)

    def read_line(self, timeout: float = READY_TIMEOUT_S) -> str:
        """Next non-empty stdout line (without newline); "" on EOF or timeout.

        The server starts each protocol line on a fresh line, so an empty line comes first.
        """
        result: list[bytes] = []

        def read() -> None:
            line = self.proc.stdout.readline()
            while line == b"\n":
                line = self.proc.stdout.readline()
            result.append(line)

        reader = threading.Thread(target=read)
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        return result[0].decode("utf-8").rstrip("\n") if result else ""

    def stderr(self) -> str:
        self._stderr.flush()
        return Path(self.stderr_path).read_text(errors="replace")

    def call(self, tool: str, **kwargs: Any) -> pb2.ExecuteToolResponse:
        return self.stub.ExecuteTool(request(tool, **kwargs), timeout=30)

    def close_stdin(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Stop the worker the normal way (stdin EOF), killing it if that does not work."""
        if self.channel is not None:
            self.channel.close()
        self.close_stdin()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def result_value(response: pb2.ExecuteToolResponse) -> Any:
    """Decode a successful response's JSON result (asserting success)."""
    assert response.success, response.error_message
    return json.loads(response.result.value)


def error_of(response: pb2.ExecuteToolResponse) -> dict[str, Any]:
    """Decode a failed response's error payload (asserting failure)."""
    assert not response.success, response
    return json.loads(response.error_message)


@pytest.fixture(scope="module")
def showcase() -> Iterator[Worker]:
    worker = Worker(SHOWCASE)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def marker_dir() -> Iterator[str]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def contract(marker_dir: str) -> Iterator[Worker]:
    worker = Worker(CONTRACT, env=worker_env(SNAKEPIT_TEST_MARKER_DIR=marker_dir))
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def execute_tool_worker() -> Iterator[Worker]:
    worker = Worker(EXECUTE_TOOL)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def support() -> Iterator[Worker]:
    worker = Worker(SUPPORT)
    yield worker
    worker.stop()
