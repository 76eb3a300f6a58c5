"""Process lifecycle of a worker: when to stop, and leaving no processes behind.

A worker must never outlive its owner (the Elixir Port). Three independent triggers stop it:

1. stdin reaches EOF: the Port was closed or the BEAM died (primary signal);
2. SIGTERM/SIGINT: a deliberate graceful stop;
3. PR_SET_PDEATHSIG: the kernel sends SIGTERM when the parent dies (second line of defence).

Each trigger requests a graceful stop (in-flight calls get ``SNAKEPIT_SHUTDOWN_GRACE_MS``); a
timer force-exits if the graceful path does not finish in time, e.g. because a thread-sensitive
tool blocks the event loop. The worker is a child subreaper, so orphaned grandchildren (even
ones that called ``setsid``) are reparented to it and are SIGKILLed when it exits.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
DEFAULT_GRACE_MS = 2000
# Extra time the force-exit timer allows beyond the grace, for stopping the server itself.
_FORCE_EXIT_MARGIN_S = 1.0

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


# ---- environment ------------------------------------------------------------------------------


def cap_native_threads() -> None:
    """Default BLAS/OpenMP thread pools to 1 thread (before numpy & co. are imported).

    A pool runs many workers; each spawning one thread per core oversubscribes the machine.
    Values already set (by the pool's config or the user) are kept.
    """
    for name in THREAD_ENV_VARS:
        os.environ.setdefault(name, "1")


def shutdown_grace_seconds() -> float:
    """``SNAKEPIT_SHUTDOWN_GRACE_MS`` in seconds (default 2 s)."""
    raw = os.environ.get("SNAKEPIT_SHUTDOWN_GRACE_MS", "")
    try:
        millis = int(raw) if raw.strip() else DEFAULT_GRACE_MS
    except ValueError:
        millis = DEFAULT_GRACE_MS
    return max(millis, 0) / 1000.0


# ---- prctl ------------------------------------------------------------------------------------


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        result = libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(value),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
    except (OSError, AttributeError):
        return False
    if result != 0:
        logger.warning("prctl(%d) failed: %s", option, os.strerror(ctypes.get_errno()))
        return False
    return True


def set_parent_death_signal(expected_parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` when the parent exits (Linux only).

    If the parent already died before the call (the worker was reparented), send the signal to
    ourselves straight away, since the kernel will not.
    """
    armed = _prctl(_PR_SET_PDEATHSIG, int(sig))
    if armed and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)
    return armed


def become_child_subreaper() -> bool:
    """Make orphaned descendants reparent to this process instead of init (Linux only)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


# ---- descendants ------------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for all processes, from /proc (empty where /proc is missing)."""
    table: dict[int, tuple[int, str]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue  # exited meanwhile
        # The command name may contain spaces and parentheses: fields follow the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2:
            table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendant_pids(root: int | None = None) -> list[int]:
    """Live (non-zombie) descendants of ``root`` (default: this process), parents first."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    table = _process_table()
    for pid, (ppid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop(0)
        for child in children.get(parent, []):
            if child != root:
                frontier.append(child)
                if table[child][1] != "Z":
                    found.append(child)
    return found


def reap_children(timeout: float = 0.0) -> None:
    """Collect exited children (this process is a subreaper, so orphans are ours to reap)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def kill_descendants(rounds: int = 20) -> int:
    """SIGKILL every descendant process; returns how many were signalled.

    Repeats because a process may fork between the scan and the kill, and because killing a
    parent reparents its children to us (subreaper), where the next scan finds them.
    """
    killed = 0
    for _ in range(rounds):
        pids = descendant_pids()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        reap_children(timeout=0.05)
    reap_children(timeout=0.2 if killed else 0.0)
    return killed


# ---- stopping ---------------------------------------------------------------------------------


def force_exit(code: int) -> None:
    """Exit now: kill descendants, flush stdio, ``os._exit`` (skips joining tool threads)."""
    try:
        kill_descendants()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


class StopController:
    """Collects stop requests from stdin EOF, signals and parent death for the event loop.

    Args:
        loop: the loop running the server; ``wait()`` must be awaited on it.
        grace: seconds in-flight calls get; the force-exit timer fires after grace + margin.
        exit_code: code used by the force-exit timer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, grace: float, exit_code: int = 0) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self._grace = grace
        self._exit_code = exit_code
        self._lock = threading.Lock()
        self.reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Request a graceful stop (thread- and signal-handler-safe; first reason wins)."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        timer = threading.Timer(self._grace + _FORCE_EXIT_MARGIN_S, self._force, args=(reason,))
        timer.daemon = True
        timer.start()
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # loop already closed: nothing left to stop gracefully
            pass

    def _force(self, reason: str) -> None:
        logger.warning("graceful stop (%s) overran the grace period; exiting now", reason)
        force_exit(self._exit_code)

    async def wait(self) -> str:
        """Block until a stop was requested; returns the reason."""
        await self._event.wait()
        return self.reason or "unknown"

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT request a graceful stop; a second one exits immediately.

        Plain ``signal.signal`` handlers (not ``loop.add_signal_handler``) run even while the
        event loop is blocked by a thread-sensitive tool, so the force-exit timer gets armed.
        """

        def handle(signum: int, _frame: object) -> None:
            if self.reason is not None:
                force_exit(self._exit_code)
            self.request_stop(signal.Signals(signum).name)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handle)

    def watch_stdin(self, read: Callable[[], bytes] | None = None) -> threading.Thread:
        """Start a daemon thread that requests a stop when stdin reaches EOF."""
        reader = read or (lambda: os.read(0, 65536))

        def run() -> None:
            try:
                while reader():
                    pass  # input is ignored; only EOF matters
            except OSError as exc:
                # No usable stdin (closed fd): we cannot watch it, so do not treat it as EOF.
                logger.warning("not watching stdin: %s", exc)
                return
            self.request_stop("stdin closed")

        thread = threading.Thread(target=run, name="snakepit-stdin-watch", daemon=True)
        thread.start()
        return thread
