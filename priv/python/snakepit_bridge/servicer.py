"""The worker's ``BridgeService`` implementation (grpc.aio).

Only the worker-side RPCs do anything: ``Ping``, ``ExecuteTool``, ``ExecuteStreamingTool``, and
the session RPCs as local no-ops that succeed (this runtime has no Elixir callback server).
The Elixir-side RPCs answer ``UNIMPLEMENTED``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

import grpc
from google.protobuf import any_pb2, timestamp_pb2

from . import snakepit_bridge_pb2 as _pb2
from . import snakepit_bridge_pb2_grpc as _pb2_grpc
from .codec import RESULT_TYPE_URL_PREFIX, decode_parameters, encode_result
from .errors import StreamingToolError, error_json, error_payload
from .invocation import ToolCall, is_thread_sensitive
from .session_context import SessionContext
from .streaming import ChunkSource, close_stream_result, is_stream_result, pump
from .telemetry import bind_correlation_id

logger = logging.getLogger(__name__)

# gRPC status details travel in a header; keep them well below the default 8 KiB metadata limit.
_MAX_STATUS_DETAILS = 6000


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _status_details(payload: dict[str, Any]) -> str:
    """Error payload JSON for a gRPC status message, trimming the traceback to fit a header."""
    text = json.dumps(payload, ensure_ascii=False, default=str)
    lines = list(payload["stacktrace"])
    while len(text.encode("utf-8")) > _MAX_STATUS_DETAILS and len(lines) > 4:
        # Keep the end of the traceback: it names the failing frame and the exception.
        lines = lines[: 1] + lines[len(lines) // 2 + 1 :]
        payload = {**payload, "stacktrace": lines, "traceback": "\n".join(lines)}
        text = json.dumps(payload, ensure_ascii=False, default=str)
    return text


class _ClientGone(Exception):
    """Writing a chunk failed because the client cancelled or disconnected."""


class BridgeServicer(_pb2_grpc.BridgeServiceServicer):
    """Serves tool calls on ``adapter_class`` for one worker process.

    Args:
        adapter_class: the adapter class; instantiated per request.
        worker_id: the ``--worker-id``; reported in response metadata.
    """

    def __init__(self, adapter_class: type, worker_id: str = "") -> None:
        self.adapter_class = adapter_class
        self.worker_id = worker_id
        self._background: set[asyncio.Task] = set()

    # ---- helpers -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` detached from the RPC (cleanup after a cancelled call)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for detached cleanups (used at shutdown)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=max(timeout, 0.0))

    @staticmethod
    def _session(request: Any) -> SessionContext:
        bind_correlation_id(request.metadata.get("correlation_id"))
        return SessionContext(
            None, request.session_id or None, request_metadata=dict(request.metadata)
        )

    def _new_call(self, request: Any, session: SessionContext) -> ToolCall:
        arguments = decode_parameters(request.parameters, request.binary_parameters)
        inline = is_thread_sensitive(self.adapter_class, request.tool_name, request.metadata)
        return ToolCall(self.adapter_class, request.tool_name, arguments, session, inline=inline)

    # ---- worker RPCs ---------------------------------------------------------------------

    async def Ping(self, request: Any, context: Any) -> Any:
        message = f"Pong from Python: {request.message}"
        return _pb2.PingResponse(message=message, server_time=_now())

    async def ExecuteTool(self, request: Any, context: Any) -> Any:
        started = time.monotonic()
        session = self._session(request)
        call: ToolCall | None = None
        try:
            call = self._new_call(request, session)
            await call.open()
            result = await call.invoke()
            if is_stream_result(result):
                await close_stream_result(result)
                raise StreamingToolError(
                    f"Tool '{request.tool_name}' returns a stream; call it with execute_stream "
                    "(ExecuteStreamingTool) instead of execute"
                )
            encoded = encode_result(result)
        except asyncio.CancelledError:
            if call is not None:
                self._spawn(call.close())
            raise
        except BaseException as exc:  # noqa: BLE001 - every tool failure becomes a payload
            if call is not None:
                await call.close()
            return _pb2.ExecuteToolResponse(
                success=False,
                error_message=error_json(
                    exc,
                    tool_name=request.tool_name,
                    session_id=session.session_id,
                    arguments=call.arguments if call is not None else None,
                ),
                metadata={"worker_id": self.worker_id},
                execution_time_ms=int((time.monotonic() - started) * 1000),
            )
        await call.close()
        return _pb2.ExecuteToolResponse(
            success=True,
            result=any_pb2.Any(
                type_url=RESULT_TYPE_URL_PREFIX + encoded.type_name, value=encoded.json_bytes
            ),
            binary_result=encoded.binary,
            metadata={"worker_id": self.worker_id},
            execution_time_ms=int((time.monotonic() - started) * 1000),
        )

    async def ExecuteStreamingTool(self, request: Any, context: Any) -> None:
        session = self._session(request)
        call: ToolCall | None = None
        source: ChunkSource | None = None

        async def write(chunk: Any) -> None:
            try:
                await context.write(chunk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise _ClientGone(str(exc)) from exc

        failure: BaseException | None = None
        try:
            call = self._new_call(request, session)
            await call.open()
            result = await call.invoke()
            source = ChunkSource(result, call.offloader)
            await pump(request.tool_name, source, write)
        except asyncio.CancelledError:
            # Client cancelled or disconnected (or the server is stopping): stop pulling, close
            # the generator and clean up without holding the RPC open, since a pull may still
            # be running in a thread.
            self._spawn(self._finish_stream(source, call))
            raise
        except _ClientGone:
            self._spawn(self._finish_stream(source, call))
            return
        except BaseException as exc:  # noqa: BLE001 - reported as INTERNAL with the payload
            failure = exc
        await self._finish_stream(source, call)
        if failure is not None:
            payload = error_payload(
                failure,
                tool_name=request.tool_name,
                session_id=session.session_id,
                arguments=call.arguments if call is not None else None,
            )
            await context.abort(grpc.StatusCode.INTERNAL, _status_details(payload))

    async def _finish_stream(self, source: ChunkSource | None, call: ToolCall | None) -> None:
        try:
            if source is not None:
                await source.aclose()
        except Exception:
            logger.exception("closing the stream of %s failed", getattr(call, "tool_name", "?"))
        if call is not None:
            await call.close()

    # ---- session RPCs: local no-ops (no Elixir callback server) ----------------------------

    async def InitializeSession(self, request: Any, context: Any) -> Any:
        return _pb2.InitializeSessionResponse(success=True)

    async def CleanupSession(self, request: Any, context: Any) -> Any:
        return _pb2.CleanupSessionResponse(success=True, resources_cleaned=0)

    async def GetSession(self, request: Any, context: Any) -> Any:
        return _pb2.GetSessionResponse(
            session_id=request.session_id,
            created_at=_now(),
            tool_count=len(getattr(self.adapter_class, "tool_names", lambda: [])()),
        )

    async def Heartbeat(self, request: Any, context: Any) -> Any:
        return _pb2.HeartbeatResponse(server_time=_now(), session_valid=True)

    # ---- Elixir-side RPCs ------------------------------------------------------------------

    async def _unimplemented(self, context: Any, name: str) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{name} is not served by the Python worker"
        )

    async def RegisterTools(self, request: Any, context: Any) -> Any:
        await self._unimplemented(context, "RegisterTools")

    async def GetExposedElixirTools(self, request: Any, context: Any) -> Any:
        await self._unimplemented(context, "GetExposedElixirTools")

    async def ExecuteElixirTool(self, request: Any, context: Any) -> Any:
        await self._unimplemented(context, "ExecuteElixirTool")

    async def StreamTelemetry(self, request_iterator: Any, context: Any) -> None:
        await self._unimplemented(context, "StreamTelemetry")
