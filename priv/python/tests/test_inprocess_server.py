"""The worker's gRPC server run inside the test process, called over a real grpc channel.

Unlike ``test_rpc.py`` (worker subprocesses), the ``grpc.aio`` server and ``BridgeServicer`` run on
an event loop in a thread of this process, so the tests also see the adapter module's state
(e.g. which generators were closed) directly. The adapters are the fixture adapters written
against the documented API only (``test/fixtures/python``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import snakepit_bridge_adapters
import snakepit_test_adapters
from conftest import error_of, request, result_value, short_tempdir, wait_until
from snakepit_bridge import snakepit_bridge_pb2 as pb2
from snakepit_bridge import snakepit_bridge_pb2_grpc as pb2_grpc
from snakepit_bridge.servicer import BridgeServicer


class InProcessServer:
    """``BridgeServicer(adapter_class)`` on a ``grpc.aio`` server in a background event loop."""

    def __init__(self, adapter_class: type) -> None:
        self.dir = short_tempdir()
        self.endpoint = f"unix:{os.path.join(self.dir, 'w.sock')}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._run(self._start(adapter_class))
        self.channel = grpc.insecure_channel(self.endpoint)
        self.stub = pb2_grpc.BridgeServiceStub(self.channel)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _start(self, adapter_class: type) -> Any:
        # As server.serve does: sync tool code runs in a named executor.
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="snakepit-tool")
        )
        server = grpc.aio.server()
        pb2_grpc.add_BridgeServiceServicer_to_server(
            BridgeServicer(adapter_class, worker_id="in-process"), server
        )
        server.add_insecure_port(self.endpoint)
        await server.start()
        return server

    def call(self, tool: str, **kwargs: Any) -> pb2.ExecuteToolResponse:
        return self.stub.ExecuteTool(request(tool, **kwargs), timeout=10)

    def stream(self, tool: str, **kwargs: Any) -> list[pb2.ToolChunk]:
        return list(self.stub.ExecuteStreamingTool(request(tool, **kwargs), timeout=10))

    def stop(self) -> None:
        self.channel.close()
        self._run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def bridge() -> Iterator[InProcessServer]:
    server = InProcessServer(snakepit_bridge_adapters.BridgeAdapter)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def execute_tool() -> Iterator[InProcessServer]:
    server = InProcessServer(snakepit_test_adapters.ExecuteToolAdapter)
    yield server
    server.stop()


def _chunk_values(chunks: list[pb2.ToolChunk]) -> list[Any]:
    return [json.loads(c.data) for c in chunks if c.data]


class TestDecoratedAdapter:
    def test_decorated_tools_and_caller_session_id(self, bridge):
        assert result_value(bridge.call("greet", name="Ada")) == "Hello, Ada!"
        who = result_value(bridge.call("whoami", session_id="s1"))
        assert who == {"session_id": "s1", "pid": os.getpid()}
        assert result_value(bridge.call("whoami"))["session_id"] is None

    def test_objects_are_kept_per_session(self, bridge):
        result_value(bridge.call("store_object", key="model", value=[1, 2], session_id="a"))
        assert result_value(bridge.call("fetch_object", key="model", session_id="a")) == [1, 2]
        error = error_of(bridge.call("fetch_object", key="model", session_id="b"))
        assert error["type"] == "KeyError" and "Unknown reference" in error["message"]

    def test_values_round_trip(self, bridge):
        value = {"big": 2**70, "neg": -(2**65), "f": 0.5, "nan": math.nan, "u": "ü🐍", "n": None}
        echoed = result_value(bridge.call("echo", value=value))
        assert echoed["big"] == 2**70 and echoed["neg"] == -(2**65)
        assert echoed["nan"] == {"__snakepit_float__": "nan"}
        assert echoed["u"] == "ü🐍" and echoed["n"] is None and echoed["f"] == 0.5

    def test_binary_parameters_arrive_as_bytes_and_bytes_results_travel_raw(self, bridge):
        blob = bytes(range(256))
        response = bridge.stub.ExecuteTool(
            request("describe", binary={"blob": blob}, text="x"), timeout=10
        )
        described = result_value(response)
        assert described["blob"] == {"type": "bytes", "len": 256, "hex": blob[:64].hex()}
        assert described["text"] == {"type": "str"}
        response = bridge.stub.ExecuteTool(request("echo_bytes", binary={"data": blob}), timeout=10)
        assert response.binary_result == blob
        assert response.result.value == b"null"

    def test_value_errors_name_the_field_and_the_server_keeps_serving(self, bridge):
        key = error_of(bridge.call("bad_string", where="key"))
        assert "lone surrogate" in key["message"] and "result" in key["message"]
        value = error_of(bridge.call("bad_string", where="value"))
        assert value["message"].startswith('result["ok"][1]["text"]')
        raised = error_of(bridge.call("bad_string", where="error"))
        assert raised["type"] == "ValueError" and "\\ud800" in raised["message"]
        obj = error_of(bridge.call("unserializable"))
        assert obj["type"] == "TypeError" and obj["message"].startswith('result["obj"][0]')
        # The fast path's internal failure is not chained into the reported traceback.
        assert "During handling" not in obj["traceback"]
        huge = error_of(bridge.call("huge_int"))
        assert huge["message"].startswith('result["n"]: integer with more than')
        assert result_value(bridge.call("greet", name="still here")) == "Hello, still here!"

    def test_exceptions_carry_type_message_and_traceback(self, bridge):
        error = error_of(bridge.call("fail", kind="runtime", session_id="s"))
        assert error["type"] == "RuntimeError"
        assert error["message"] == "runtime failure requested"
        assert error["traceback"].startswith("Traceback (most recent call last):")
        assert "in fail" in error["traceback"]
        assert error["stacktrace"] == error["traceback"].splitlines()
        assert error["context"] == {"tool_name": "fail", "session_id": "s"}

    def test_sync_and_async_generators_stream(self, bridge):
        sync = bridge.stream("count_to", n=3)
        assert _chunk_values(sync) == [{"count": 1}, {"count": 2}, {"count": 3}]
        assert [c.is_final for c in sync] == [False, False, False, True]
        async_chunks = bridge.stream("async_count_to", n=3)
        assert _chunk_values(async_chunks) == [{"count": 1}, {"count": 2}, {"count": 3}]
        assert async_chunks[-1].is_final

    @pytest.mark.parametrize(
        ("tool", "closed"),
        [
            ("count_to", lambda: snakepit_test_adapters.CLOSED_EARLY),
            ("async_count_to", lambda: snakepit_bridge_adapters.ASYNC_CLOSED_EARLY),
        ],
    )
    def test_cancelling_the_call_closes_the_generator(self, bridge, tool, closed):
        n = 1_000_003 if tool == "count_to" else 1_000_004
        call = bridge.stub.ExecuteStreamingTool(request(tool, n=n, delay_ms=5))
        assert json.loads(next(call).data) == {"count": 1}
        call.cancel()
        assert wait_until(lambda: n in closed(), timeout=5)

    def test_an_unencodable_chunk_aborts_the_stream_with_a_payload(self, bridge):
        call = bridge.stub.ExecuteStreamingTool(request("bad_chunks"), timeout=10)
        assert json.loads(next(call).data) == {"ok": 1}
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        payload = json.loads(info.value.details())
        assert payload["type"] == "ValueError" and payload["message"].startswith("chunk[2]")


class TestExecuteToolAdapter:
    def test_execute_tool_gets_name_arguments_and_context(self, execute_tool):
        assert result_value(execute_tool.call("add", a=2, b=3)) == 5
        assert result_value(execute_tool.call("echo", x=[1, {"y": None}])) == {
            "tool": "echo",
            "arguments": {"x": [1, {"y": None}]},
        }
        session = result_value(
            execute_tool.call("session", session_id="s1", metadata={"correlation_id": "c"})
        )
        assert session == {"session_id": "s1", "metadata": {"correlation_id": "c"}}

    def test_generator_result_streams(self, execute_tool):
        assert _chunk_values(execute_tool.stream("count", n=2)) == [{"i": 1}, {"i": 2}]

    def test_raising_keeps_serving(self, execute_tool):
        error = error_of(execute_tool.call("nope"))
        assert (error["type"], error["message"]) == ("ValueError", "Unknown tool: nope")
        assert result_value(execute_tool.call("add", a=1, b=1)) == 2
