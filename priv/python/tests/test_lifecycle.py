"""Worker process protocol: readiness, startup failure, stopping, leftover processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time

import grpc

from conftest import (
    CONTRACT,
    SHOWCASE,
    SUPPORT,
    Worker,
    process_gone,
    request,
    result_value,
    short_tempdir,
    wait_until,
    worker_env,
)
from snakepit_bridge import snakepit_bridge_pb2 as pb2
from snakepit_bridge import snakepit_bridge_pb2_grpc as pb2_grpc

READY_LINE = re.compile(r'^SNAKEPIT_READY \{"pid": (\d+), "endpoint": "unix:(/[^"]+)"\}$')


def _failed(adapter: str) -> tuple[dict, int]:
    worker = Worker(adapter, wait_ready=False)
    try:
        line = worker.read_line()
        code = worker.wait()
    finally:
        worker.stop()
    assert line.startswith("SNAKEPIT_FAILED "), line
    return json.loads(line.split(" ", 1)[1]), code


def test_ready_line_and_socket_permissions():
    worker = Worker(SHOWCASE)
    try:
        match = READY_LINE.match(worker.first_line)
        assert match, worker.first_line
        assert int(match.group(1)) == worker.proc.pid
        assert match.group(2) == worker.socket
        assert stat.S_IMODE(os.stat(worker.socket).st_mode) == 0o600
    finally:
        worker.stop()


def test_stale_socket_is_replaced_and_upstream_flags_are_accepted():
    directory = short_tempdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.path.join(directory, "w.sock"))
    stale.close()  # leaves the socket file behind, like a killed worker
    worker = Worker(
        SHOWCASE,
        socket_dir=directory,
        extra_args=[
            "--elixir-address", "localhost:50051",
            "--snakepit-run-id", "abc1234",
            "--snakepit-instance-name", "test",
            "--heartbeat-enabled",
            "--heartbeat-interval-ms", "1000",
            "--max-workers", "4",
        ],
    )
    try:
        assert worker.stub.Ping(pb2.PingRequest(message="x")).message == "Pong from Python: x"
    finally:
        worker.stop()


def test_import_failure_reports_and_exits_3():
    report, code = _failed("snakepit_broken_adapter.BrokenImportAdapter")
    assert code == 3
    assert report["type"] == "ImportError"
    assert "broken on purpose" in report["message"]
    assert "Traceback" in report["traceback"]


def test_missing_module_or_class_exits_3():
    report, code = _failed("no_such_module_here.Adapter")
    assert (report["type"], code) == ("ModuleNotFoundError", 3)
    report, code = _failed("snakepit_test_adapters.NoSuchAdapter")
    assert (report["type"], code) == ("AttributeError", 3)


def test_an_interpreter_without_grpcio_is_told_what_to_install():
    # `-S`: no site-packages, so neither grpcio nor protobuf can be imported.
    result = subprocess.run(
        [sys.executable, "-S", "-m", "snakepit_bridge.server", "--adapter", SHOWCASE,
         "--socket", os.path.join(short_tempdir(), "w.sock")],
        env=worker_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "requirements.txt" in result.stderr, result.stderr


def test_stdin_eof_stops_the_worker():
    worker = Worker(SHOWCASE)
    worker.close_stdin()
    assert worker.wait(timeout=5) == 0
    assert not os.path.exists(worker.socket)
    worker.stop()


def test_sigterm_lets_in_flight_calls_finish():
    worker = Worker(CONTRACT)
    try:
        future = worker.stub.ExecuteTool.future(request("sleep_ms", ms=600), timeout=10)
        time.sleep(0.2)
        worker.proc.send_signal(signal.SIGTERM)
        assert result_value(future.result()) == {"slept_ms": 600}
        assert worker.wait(timeout=5) == 0
    finally:
        worker.stop()


def test_sigterm_with_a_hung_call_exits_after_the_grace():
    worker = Worker(CONTRACT, env=worker_env(SNAKEPIT_SHUTDOWN_GRACE_MS="300"))
    try:
        future = worker.stub.ExecuteTool.future(request("hang"), timeout=10)
        time.sleep(0.2)
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.5
        assert future.exception() is not None
    finally:
        worker.stop()


def test_descendants_are_killed_on_exit():
    worker = Worker(CONTRACT)
    try:
        plain = result_value(worker.call("spawn_child"))
        detached = result_value(worker.call("spawn_child", setsid=True))
        assert not process_gone(plain) and not process_gone(detached)
        worker.close_stdin()
        assert worker.wait(timeout=5) == 0
        assert wait_until(lambda: process_gone(plain) and process_gone(detached), timeout=3)
    finally:
        worker.stop()


def test_parent_death_stops_the_worker():
    # The intermediate parent starts a worker (stdin watching off, so only PDEATHSIG can stop
    # it), prints the worker's pid once ready, and exits.
    launcher = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'snakepit_bridge.server', '--adapter', "
        f"{SHOWCASE!r}, '--socket', sys.argv[1]], stdin=subprocess.DEVNULL, "
        "stdout=subprocess.PIPE)\n"
        "line = p.stdout.readline().decode()\n"
        "line = line if line.strip() else p.stdout.readline().decode()\n"
        "print(p.pid if line.startswith('SNAKEPIT_READY') else -1, flush=True)\n"
    )
    directory = short_tempdir()
    output = subprocess.run(
        [sys.executable, "-c", launcher, os.path.join(directory, "w.sock")],
        env=worker_env(SNAKEPIT_STDIN_WATCH="0"),
        capture_output=True,
        timeout=20,
        check=True,
    )
    pid = int(output.stdout.decode().strip())
    assert pid > 0
    assert wait_until(lambda: process_gone(pid), timeout=5)


def test_tcp_port_in_addition_to_the_socket():
    worker = Worker(SHOWCASE, extra_args=["--port", "0"])
    try:
        port = worker.ready["tcp_port"]
        assert worker.ready["endpoint"] == f"unix:{worker.socket}"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.BridgeServiceStub(channel)
            assert stub.Ping(pb2.PingRequest(message="tcp"), timeout=5).message.endswith("tcp")
    finally:
        worker.stop()


def test_native_thread_caps():
    worker = Worker(SUPPORT, env=worker_env(MKL_NUM_THREADS="4"))
    try:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
            if name not in os.environ:
                assert result_value(worker.call("env", name=name)) == "1"
        assert result_value(worker.call("env", name="MKL_NUM_THREADS")) == "4"
    finally:
        worker.stop()
