"""Streaming tool results as ``ToolChunk`` messages (contract §6.4).

A streaming tool returns a generator/iterator (sync or async). Items are pulled one at a time,
only after the previous chunk was handed to gRPC, so a slow consumer stalls the generator
through HTTP/2 flow control instead of the worker draining it into memory. Each item becomes one
chunk: ``bytes`` are sent raw, ``None`` as empty data, anything else as JSON via the codec.
Items with ``data``/``is_final``/``metadata`` attributes (e.g. :class:`StreamChunk`) set the
chunk fields. When the tool never marked a chunk final, an empty final chunk closes the stream.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import snakepit_bridge_pb2 as _pb2
from .codec import encode_chunk_data
from .offload import Offloader

_END = object()
_NOT_STREAMS = (str, bytes, bytearray, memoryview, Mapping)


@dataclass
class StreamChunk:
    """An item a streaming tool can yield to control the chunk it becomes.

    Attributes:
        data: the payload (bytes raw, ``None`` empty, else JSON-encoded).
        is_final: marks the last chunk; the stream ends after it.
        metadata: string map sent as ``ToolChunk.metadata`` (values are ``str()``-ed).
    """

    data: Any = None
    is_final: bool = False
    metadata: Mapping[str, Any] | None = None


def is_stream_result(value: Any) -> bool:
    """True for lazy streams: generators, iterators and async iterables (not str/bytes/dict)."""
    if isinstance(value, _NOT_STREAMS):
        return False
    if inspect.isgenerator(value) or inspect.isasyncgen(value):
        return True
    if hasattr(value, "__aiter__"):
        return True
    return hasattr(value, "__next__") and hasattr(value, "__iter__")


def _is_chunk_like(item: Any) -> bool:
    if isinstance(item, StreamChunk):
        return True
    return (
        not isinstance(item, (Mapping, str, bytes, bytearray, memoryview))
        and hasattr(item, "data")
        and hasattr(item, "is_final")
    )


async def close_stream_result(value: Any) -> None:
    """Close a stream result that will not be consumed (runs its ``finally`` blocks)."""
    if inspect.isasyncgen(value) or callable(getattr(value, "aclose", None)):
        await value.aclose()
    elif callable(getattr(value, "close", None)):
        value.close()


class ChunkSource:
    """Pull-based view over a tool result for ``ExecuteStreamingTool``.

    Lists and tuples stream item by item (as upstream); a non-iterable result (including
    ``dict``/``str``/``bytes``) is one final chunk.

    Args:
        result: the tool's return value.
        offloader: runs sync ``next()`` calls (in a thread unless the call is thread-sensitive)
            and remembers a still-running pull so :meth:`aclose` can wait for it.
    """

    def __init__(self, result: Any, offloader: Offloader) -> None:
        self._offloader = offloader
        self._closed = False
        self.single = False
        self._aiter: Any = None
        self._iter: Any = None
        self._threaded = False
        if hasattr(result, "__aiter__") and not isinstance(result, _NOT_STREAMS):
            self._aiter = result.__aiter__()
        elif is_stream_result(result):
            self._iter = iter(result)
            # Generator bodies may block: pull through the offloader (a worker thread unless
            # the call is thread-sensitive).
            self._threaded = True
        elif isinstance(result, (list, tuple)):
            self._iter = iter(result)
        else:
            self._iter = iter([result])
            self.single = True

    async def next(self) -> Any:
        """Next item, or the module's ``_END`` sentinel when exhausted."""
        if self._aiter is not None:
            try:
                return await self._aiter.__anext__()
            except StopAsyncIteration:
                return _END
        if self._threaded:
            return await self._offloader.call(next, self._iter, _END)
        return next(self._iter, _END)

    async def aclose(self) -> None:
        """Stop the producer: wait for a running pull, then ``close()``/``aclose()`` it."""
        if self._closed:
            return
        self._closed = True
        await self._offloader.wait_idle()
        if self._aiter is not None:
            aclose = getattr(self._aiter, "aclose", None)
            if callable(aclose):
                await aclose()
            return
        close = getattr(self._iter, "close", None)
        if callable(close):
            await self._offloader.call(close)


def build_chunk(tool_name: str, index: int, item: Any, *, force_final: bool = False) -> Any:
    """``ToolChunk`` number ``index`` (from 1) for ``item``."""
    if _is_chunk_like(item):
        data = item.data
        is_final = bool(item.is_final)
        metadata = getattr(item, "metadata", None) or {}
    else:
        data, is_final, metadata = item, False, {}
    return _pb2.ToolChunk(
        chunk_id=f"{tool_name}-{index}",
        data=encode_chunk_data(data, f"chunk[{index}]"),
        is_final=is_final or force_final,
        metadata={str(k): str(v) for k, v in dict(metadata).items()},
    )


async def pump(
    tool_name: str, source: ChunkSource, write: Callable[[Any], Awaitable[None]]
) -> int:
    """Write ``source`` as chunks through ``write``; returns the number of chunks written.

    Stops after the first final chunk; appends an empty final chunk if none was marked.
    """
    index = 0
    while True:
        item = await source.next()
        if item is _END:
            break
        index += 1
        chunk = build_chunk(tool_name, index, item, force_final=source.single)
        await write(chunk)
        if chunk.is_final:
            return index
    index += 1
    await write(_pb2.ToolChunk(chunk_id=f"{tool_name}-{index}", data=b"", is_final=True))
    return index
