"""Demo adapter for workers serving several calls at once (``--max-workers N``).

``ThreadedShowcaseAdapter`` declares ``__thread_safe__ = True`` and keeps its shared state
(call history) behind the class lock.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from ..base_adapter import tool
from ..base_adapter_threaded import ThreadSafeAdapter, thread_safe_method

_history: list[dict[str, Any]] = []
_HISTORY_LIMIT = 100


class ThreadedShowcaseAdapter(ThreadSafeAdapter):
    """A small set of concurrency-friendly demo tools."""

    __thread_safe__ = True

    def _record(self, tool_name: str) -> None:
        with self.acquire_lock():
            _history.append(
                {"tool": tool_name, "thread": threading.current_thread().name, "at": time.time()}
            )
            del _history[:-_HISTORY_LIMIT]

    @tool(description="Liveness check naming the serving thread")
    def ping(self, message: str = "pong") -> dict[str, Any]:
        self._record("ping")
        return {
            "message": message,
            "thread": threading.current_thread().name,
            "worker_pid": os.getpid(),
        }

    @tool(description="Sum of squares below n (CPU work)")
    def compute_intensive(self, n: int = 100_000) -> dict[str, Any]:
        with self.track_request():
            self._record("compute_intensive")
            started = time.monotonic()
            result = sum(i * i for i in range(n))
            return {"n": n, "result": result, "duration_ms": (time.monotonic() - started) * 1000}

    @tool(description="Multiply two matrices given as lists of rows")
    def matrix_multiply(self, a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
        self._record("matrix_multiply")
        columns = list(zip(*b))
        return [[sum(x * y for x, y in zip(row, column)) for column in columns] for row in a]

    @tool(description="Apply an operation to every item")
    def batch_process(self, items: list[Any], operation: str = "double") -> dict[str, Any]:
        self._record("batch_process")
        operations = {"double": lambda v: v * 2, "square": lambda v: v * v, "identity": lambda v: v}
        if operation not in operations:
            raise ValueError(f"Unknown operation: {operation}")
        return {"operation": operation, "results": [operations[operation](v) for v in items]}

    @tool(description="Requests seen by this adapter class in this worker")
    def get_adapter_stats(self) -> dict[str, Any]:
        return {**self.request_stats(), "history_length": len(_history)}

    @tool(description="Recent calls (most recent last)")
    @thread_safe_method
    def get_history(self, limit: int = 10) -> list[dict[str, Any]]:
        return list(_history[-limit:]) if limit > 0 else []

    @tool(description="Forget the call history")
    @thread_safe_method
    def clear_caches(self) -> dict[str, Any]:
        cleared = len(_history)
        _history.clear()
        return {"cleared": cleared}
