"""Default demo adapter exercising each feature of the bridge (contract §7.5).

Result shapes follow upstream's showcase, except that values are not mangled on the wire:
``add(2, 2)`` is ``4`` (not ``4.0``) and ``get_worker_info`` returns ``worker_pid`` as an int.
Per-session state (the counter) lives at module level, keyed by the caller's session id, so it
survives across requests that land on this worker process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from ...base_adapter import BaseAdapter, tool
from ...streaming import StreamChunk

ADAPTER_NAME = "ShowcaseAdapter"
ADAPTER_VERSION = "2.0.0"

_counters: dict[str | None, int] = {}
_counters_lock = threading.Lock()


class ShowcaseAdapter(BaseAdapter):
    """Demo tools: basics, errors, sessions, timing, CPU load and streaming."""

    # ---- basics --------------------------------------------------------------------------

    @tool(description="Liveness check returning the message and the worker's clock")
    def ping(self, message: str = "pong") -> dict[str, Any]:
        return {"message": message, "timestamp": str(time.time())}

    @tool(description="Echo all arguments back")
    def echo(self, **kwargs: Any) -> dict[str, Any]:
        return {"echoed": kwargs}

    @tool(description="Add two numbers")
    def add(self, a: Any, b: Any) -> Any:
        return a + b

    @tool(description="Echo a message (adapter-level tool)")
    def basic_echo(self, message: str) -> dict[str, Any]:
        return {"echoed": {"message": message}}

    @tool(description="Add two numbers (adapter-level tool)")
    def basic_add(self, a: Any, b: Any) -> Any:
        return a + b

    @tool(description="Transform text: upper, lower, reverse or length")
    def process_text(self, text: str, operation: str = "upper") -> dict[str, Any]:
        operations = {
            "upper": str.upper,
            "lower": str.lower,
            "reverse": lambda value: value[::-1],
            "length": len,
        }
        if operation not in operations:
            return {
                "original": text,
                "operation": operation,
                "error": f"Unknown operation: {operation}",
                "available_operations": sorted(operations),
                "success": False,
            }
        return {
            "original": text,
            "operation": operation,
            "result": operations[operation](text),
            "success": True,
        }

    @tool(description="Raise an exception of the requested kind")
    def error_demo(self, error_type: str = "generic") -> None:
        errors: dict[str, type[Exception]] = {
            "value": ValueError,
            "runtime": RuntimeError,
            "key": KeyError,
            "type": TypeError,
            "zero_division": ZeroDivisionError,
        }
        raise errors.get(error_type, Exception)(f"This is a demo {error_type} error")

    @tool(description="Describe this adapter")
    def adapter_info(self) -> dict[str, Any]:
        return {
            "adapter_name": ADAPTER_NAME,
            "version": ADAPTER_VERSION,
            "capabilities": ["basic", "errors", "session", "timing", "cpu", "streaming"],
            "tools": self.tool_names(),
        }

    # ---- worker / session ----------------------------------------------------------------

    @tool(description="Which worker process served the call, and in which session")
    def get_worker_info(self, call_number: int = 0) -> dict[str, Any]:
        return {"worker_pid": os.getpid(), "call_number": call_number, "session_id": self.session_id}

    @tool(description="Set this session's counter (per worker process)")
    def set_counter(self, value: int) -> dict[str, Any]:
        with _counters_lock:
            _counters[self.session_id] = value
        return {"counter": value, "session_id": self.session_id}

    @tool(description="Read this session's counter (0 if never set on this worker)")
    def get_counter(self) -> dict[str, Any]:
        with _counters_lock:
            value = _counters.get(self.session_id, 0)
        return {"counter": value, "session_id": self.session_id}

    @tool(description="Increment this session's counter and return the new value")
    def increment_counter(self) -> dict[str, Any]:
        with _counters_lock:
            value = _counters.get(self.session_id, 0) + 1
            _counters[self.session_id] = value
        return {"counter": value, "session_id": self.session_id}

    # ---- timing / load -------------------------------------------------------------------

    @tool(description="Sleep for duration_ms, then report")
    def sleep_task(self, duration_ms: int, task_number: int = 0) -> dict[str, Any]:
        time.sleep(duration_ms / 1000.0)
        return {"task_number": task_number, "slept_ms": duration_ms}

    @tool(description="Cheap task for throughput tests")
    def lightweight_task(self, iteration: int) -> dict[str, Any]:
        return {"iteration": iteration, "result": iteration * 2}

    @tool(description="Busy-loop for duration_ms (holds the GIL)")
    def cpu_bound_task(self, task_id: Any = 0, duration_ms: int = 100) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + duration_ms / 1000.0
        total = 0
        while time.monotonic() < deadline:
            total += sum(i * i for i in range(1000))
        return {
            "task_id": task_id,
            "result": total,
            "actual_duration_ms": round((time.monotonic() - started) * 1000, 3),
        }

    # ---- streaming -----------------------------------------------------------------------

    @tool(description="Report progress in steps", supports_streaming=True)
    def stream_progress(self, steps: int = 10, delay_ms: int = 500) -> Iterator[StreamChunk]:
        started = time.monotonic()
        for step in range(1, steps + 1):
            if step > 1 and delay_ms > 0:
                time.sleep(delay_ms / 1000.0)
            yield StreamChunk(
                data={
                    "step": step,
                    "total": steps,
                    "progress": round(step / steps * 100, 2),
                    "message": f"Step {step}/{steps}",
                    "elapsed_ms": int((time.monotonic() - started) * 1000),
                },
                is_final=step == steps,
            )

    @tool(description="Stream count items, delay seconds apart", supports_streaming=True)
    def stream_data(self, count: int = 5, delay: float = 1.0) -> Iterator[StreamChunk]:
        for index in range(1, count + 1):
            if index > 1 and delay > 0:
                time.sleep(delay)
            yield StreamChunk(
                data={"index": index, "total": count, "message": f"Item {index} of {count}"},
                is_final=index == count,
            )

    @tool(description="Stream the first count Fibonacci numbers", supports_streaming=True)
    def stream_fibonacci(self, count: int = 20) -> Iterator[dict[str, Any]]:
        current, following = 0, 1
        for index in range(1, count + 1):
            yield {"index": index, "value": current}
            current, following = following, current + following

    @tool(description="Stream forever (never final); for cancellation tests", supports_streaming=True)
    def infinite_stream(self, delay_ms: int = 500) -> Iterator[dict[str, Any]]:
        index = 0
        while True:
            index += 1
            yield {"index": index, "timestamp": time.time()}
            if delay_ms > 0:
                time.sleep(delay_ms / 1000.0)
