"""Adapters only the Python tests use (lifecycle hooks, async tools, flow control)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from snakepit_bridge import BaseAdapter, StreamChunk, tool

# Module-level, so a later request on the same worker can read what an earlier one did.
EVENTS: list[str] = []
PRODUCED = {"firehose": 0}
_LOCK = threading.Lock()


def _event(name: str) -> None:
    with _LOCK:
        EVENTS.append(name)


class SupportAdapter(BaseAdapter):
    """Records its lifecycle in ``EVENTS``; async and flow-control tools."""

    async def initialize(self) -> None:
        _event("initialize")

    def cleanup(self) -> None:
        _event("cleanup")

    @tool(description="Events recorded so far, then reset")
    def events(self) -> list[str]:
        with _LOCK:
            seen = list(EVENTS)
            EVENTS.clear()
        return seen

    @tool(description="Async tool")
    async def double(self, x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    @tool(description="Thread the tool ran on")
    def thread_name(self) -> str:
        return threading.current_thread().name

    @tool(description="Async generator", supports_streaming=True)
    async def async_count(self, n: int):
        try:
            for i in range(1, n + 1):
                await asyncio.sleep(0.01)
                yield i
        finally:
            _event(f"async_count closed at {n}")

    @tool(description="Mixed chunk kinds", supports_streaming=True)
    def mixed(self):
        yield b"\x00raw"
        yield None
        yield "text"
        yield StreamChunk(data={"last": True}, is_final=True, metadata={"k": 1})
        yield "never sent"

    @tool(description="Big items as fast as possible, forever", supports_streaming=True)
    def firehose(self, size: int = 16384):
        count = 0
        while True:
            count += 1
            PRODUCED["firehose"] = count
            yield {"i": count, "pad": "x" * size}

    @tool(description="How many firehose items were produced")
    def produced(self) -> int:
        return PRODUCED["firehose"]

    @tool(description="A stream that fails after one item", supports_streaming=True)
    def broken_stream(self):
        yield {"ok": 1}
        raise RuntimeError("stream broke")

    @tool(description="An environment variable of the worker process")
    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    @tool(description="Non-iterable result on the streaming endpoint")
    def plain(self) -> dict[str, Any]:
        return {"plain": True}
