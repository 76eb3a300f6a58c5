"""Worker entry point: ``python -m snakepit_bridge.server --adapter mod.Class --socket PATH ...``.

Protocol with the owner (docs/ARCHITECTURE.md, "Worker process protocol"):

* ready: one stdout line ``SNAKEPIT_READY {"pid": <pid>, "endpoint": "unix:<socket>"}``,
  flushed, once the gRPC server accepts calls;
* adapter import failure: one stdout line ``SNAKEPIT_FAILED {"type", "message", "traceback"}``
  and exit status 3 (other startup failures, e.g. the socket cannot be bound: same line, 1);
* stop: stdin EOF, SIGTERM/SIGINT or parent death → in-flight calls get
  ``SNAKEPIT_SHUTDOWN_GRACE_MS`` (default 2000) → exit 0, after SIGKILLing all descendants.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import stat
import sys
import time
import traceback
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_ADAPTER_FAILED = 3
MAX_MESSAGE_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_WORKERS = 10
READY_PREFIX = "SNAKEPIT_READY"
FAILED_PREFIX = "SNAKEPIT_FAILED"

logger = logging.getLogger("snakepit_bridge.server")


def build_parser() -> argparse.ArgumentParser:
    """CLI of the worker; upstream-only flags are accepted and ignored."""
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_bridge.server", description="Snakepit Python worker"
    )
    parser.add_argument("--adapter", required=True, help="adapter class as module.Class")
    parser.add_argument("--socket", help="absolute path of the Unix socket to serve on")
    parser.add_argument(
        "--port", type=int, help="also serve on 127.0.0.1:PORT (0 = any free port)"
    )
    parser.add_argument("--worker-id", default="", help="worker id (for logs and metadata)")
    parser.add_argument(
        "--max-workers",
        type=int,
        default=DEFAULT_MAX_WORKERS,
        help="threads for sync tool code (default %(default)s)",
    )
    # Upstream Snakepit flags: accepted so existing launch scripts keep working, no effect.
    for flag in (
        "--elixir-address",
        "--snakepit-run-id",
        "--run-id",
        "--snakepit-instance-name",
        "--snakepit-instance-token",
        "--heartbeat-interval-ms",
        "--heartbeat-timeout-ms",
        "--heartbeat-max-missed",
        "--heartbeat-initial-delay-ms",
    ):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    for flag in (
        "--heartbeat-enabled",
        "--heartbeat-dependent",
        "--heartbeat-independent",
        "--thread-safety-check",
    ):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.socket is None and args.port is None:
        parser.error("one of --socket or --port is required")
    if args.socket is not None and not os.path.isabs(args.socket):
        parser.error("--socket must be an absolute path")
    if args.max_workers < 1:
        parser.error("--max-workers must be >= 1")
    return args


def _emit_line(prefix: str, payload: dict[str, Any]) -> None:
    # stdout and stderr share the parent's pipe, and the adapter may have left a line
    # unfinished (a progress bar, "Loading model... "): start on a line of our own, so the
    # parent sees the protocol line at the start of a line.
    sys.stderr.flush()
    sys.stdout.write(f"\n{prefix} {json.dumps(payload, separators=(', ', ': '))}\n")
    sys.stdout.flush()


def _prepare_socket_path(path: str) -> None:
    """Remove a stale socket left by a previous worker; refuse to delete anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)


async def serve(args: argparse.Namespace, adapter_class: type) -> int:
    """Run the gRPC server until a stop is requested; returns the exit status."""
    # Imported here so that a broken grpc install is reported like any startup failure and
    # the adapter import (with thread caps already applied) comes first.
    import grpc

    from . import snakepit_bridge_pb2_grpc as pb2_grpc
    from .lifecycle import StopController, shutdown_grace_seconds
    from .servicer import BridgeServicer

    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(
            max_workers=args.max_workers, thread_name_prefix="snakepit-tool"
        )
    )
    grace = shutdown_grace_seconds()
    stopper = StopController(loop, grace)
    stopper.install_signal_handlers()
    if os.environ.get("SNAKEPIT_STDIN_WATCH", "1") != "0":
        stopper.watch_stdin()

    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    servicer = BridgeServicer(adapter_class, worker_id=args.worker_id)
    pb2_grpc.add_BridgeServiceServicer_to_server(servicer, server)

    endpoint: str
    extra: dict[str, Any] = {}
    try:
        if args.socket is not None:
            _prepare_socket_path(args.socket)
            # The socket inode is created by bind(); a restrictive umask closes the window
            # before the chmod below (the per-run directory is 0700 as well).
            previous_umask = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix:{args.socket}")
            finally:
                os.umask(previous_umask)
            endpoint = f"unix:{args.socket}"
        if args.port is not None:
            bound = server.add_insecure_port(f"127.0.0.1:{args.port}")
            if bound == 0:
                raise OSError(f"cannot bind 127.0.0.1:{args.port}")
            if args.socket is None:
                endpoint = f"http://127.0.0.1:{bound}"
            else:
                extra["tcp_port"] = bound
        await server.start()
        if args.socket is not None:
            os.chmod(args.socket, 0o600)
    except Exception as exc:  # bind/start failures: report on the protocol line
        _emit_line(
            FAILED_PREFIX,
            {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()},
        )
        return EXIT_STARTUP_FAILED

    _emit_line(READY_PREFIX, {"pid": os.getpid(), "endpoint": endpoint, **extra})
    reason = await stopper.wait()
    logger.info("worker %s stopping: %s", args.worker_id, reason)

    started = time.monotonic()
    # Stop accepting new RPCs; in-flight ones get `grace`, then are cancelled.
    await server.stop(grace)
    await servicer.drain(grace - (time.monotonic() - started))
    if args.socket is not None:
        try:
            os.unlink(args.socket)
        except OSError:
            pass
    return EXIT_OK


def main(argv: list[str] | None = None) -> NoReturn:
    """Start the worker; never returns (exits with the protocol's status codes)."""
    from . import lifecycle
    from .adapter_loader import AdapterLoadError, load_adapter
    from .logging_config import configure_logging

    parent = os.getppid()
    args = parse_args(argv)
    configure_logging()
    lifecycle.cap_native_threads()  # before the adapter (and numpy & co.) is imported
    if os.environ.get("SNAKEPIT_PROCESS_GROUP", "").lower() in ("1", "true", "yes"):
        try:
            os.setsid()
        except OSError:
            pass  # already a session leader
    lifecycle.set_parent_death_signal(parent)
    lifecycle.become_child_subreaper()

    try:
        adapter_class = load_adapter(args.adapter)
    except AdapterLoadError as exc:
        _emit_line(FAILED_PREFIX, exc.report())
        lifecycle.force_exit(EXIT_ADAPTER_FAILED)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(serve(args, adapter_class))
    except BaseException:  # noqa: BLE001 - a crash of the server loop itself
        logger.exception("worker server crashed")
        code = EXIT_STARTUP_FAILED
    # No loop.close()/executor shutdown: a tool stuck in a thread would block the exit forever.
    lifecycle.force_exit(code)


if __name__ == "__main__":
    main()
