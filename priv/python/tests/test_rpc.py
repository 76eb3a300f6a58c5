"""End-to-end RPCs against real worker processes over a Unix socket."""

from __future__ import annotations

import json
import math
import os
import time

import grpc
import pytest

from conftest import error_of, request, result_value, wait_until
from snakepit_bridge import snakepit_bridge_pb2 as pb2
from snakepit_bridge import snakepit_bridge_pb2_grpc as pb2_grpc


class TestUnary:
    def test_ping(self, showcase):
        response = showcase.stub.Ping(pb2.PingRequest(message="hello"))
        assert response.message == "Pong from Python: hello"
        assert response.server_time.seconds > 0

    def test_showcase_ping_tool(self, showcase):
        value = result_value(showcase.call("ping"))
        assert value["message"] == "pong"
        float(value["timestamp"])

    def test_echo_round_trip(self, showcase):
        payload = {
            "nested": {"list": [1, [2, {"deep": "ünïcödé ✓ 🐍"}]], "empty": {}},
            "big": 2**64 + 1,
            "neg_big": -(2**100),
            "float": 0.1,
            "exp": 1e300,
            "flags": [True, False],
            "nothing": None,
            "nan": math.nan,
            "inf": math.inf,
            "ninf": -math.inf,
        }
        response = showcase.call("echo", **payload)
        assert response.result.type_url == "type.googleapis.com/snakepit.dict"
        echoed = result_value(response)["echoed"]
        assert echoed["nested"] == payload["nested"]
        assert echoed["big"] == 2**64 + 1 and echoed["neg_big"] == -(2**100)
        assert echoed["float"] == 0.1 and echoed["exp"] == 1e300
        assert echoed["flags"] == [True, False] and echoed["nothing"] is None
        assert echoed["nan"] == {"__snakepit_float__": "nan"}
        assert echoed["inf"] == {"__snakepit_float__": "inf"}
        assert echoed["ninf"] == {"__snakepit_float__": "-inf"}

    def test_add_keeps_ints(self, showcase):
        response = showcase.call("add", a=2, b=2)
        assert response.result.type_url == "type.googleapis.com/snakepit.int"
        assert result_value(response) == 4

    def test_worker_info_pid_is_int(self, showcase):
        value = result_value(showcase.call("get_worker_info", call_number=3))
        assert value["worker_pid"] == showcase.proc.pid
        assert value["call_number"] == 3 and value["session_id"] is None

    def test_counters_are_per_session(self, showcase):
        result_value(showcase.call("set_counter", value=10, session_id="s1"))
        result_value(showcase.call("increment_counter", session_id="s1"))
        assert result_value(showcase.call("get_counter", session_id="s1"))["counter"] == 11
        assert result_value(showcase.call("get_counter", session_id="s2"))["counter"] == 0

    def test_unknown_tool_error_payload(self, showcase):
        error = error_of(showcase.call("nonexistent_tool", session_id="sess"))
        assert error["type"] == "AttributeError"
        assert error["message"] == "Tool 'nonexistent_tool' not found in ShowcaseAdapter"
        assert error["context"] == {"tool_name": "nonexistent_tool", "session_id": "sess"}
        assert isinstance(error["stacktrace"], list) and error["stacktrace"]
        assert "Traceback" in error["traceback"]

    def test_raising_tool_keeps_serving(self, showcase):
        assert error_of(showcase.call("error_demo", error_type="value"))["type"] == "ValueError"
        assert error_of(showcase.call("error_demo"))["type"] == "Exception"
        assert error_of(showcase.call("add", a=1))["type"] == "TypeError"
        assert result_value(showcase.call("add", a=1, b=2)) == 3

    def test_error_context_copies_call_fields(self, contract):
        error = error_of(contract.call("fail", kind="key", library="numpy", function="f"))
        assert error["type"] == "TypeError"  # unexpected keyword arguments
        assert error["context"]["library"] == "numpy" and error["context"]["function"] == "f"

    def test_fail_kinds(self, contract):
        for kind, expected in (("value", "ValueError"), ("key", "KeyError"), ("runtime", "RuntimeError")):
            assert error_of(contract.call("fail", kind=kind))["type"] == expected

    def test_bytes_result_goes_to_binary_result(self, contract):
        response = contract.stub.ExecuteTool(
            request("echo_bytes", binary={"data": b"\x00\xffraw"}), timeout=10
        )
        assert response.success
        assert response.binary_result == b"\x00\xffraw"
        assert json.loads(response.result.value) is None

    def test_bytes_with_metadata(self, contract):
        response = contract.stub.ExecuteTool(
            request("bytes_with_meta", binary={"data": b"abc"}), timeout=10
        )
        assert response.binary_result == b"abc"
        assert result_value(response) == {"size": 3}

    def test_nested_bytes_is_a_structured_error(self, contract):
        error = error_of(contract.call("nested_bytes"))
        assert error["type"] == "TypeError"
        assert 'result["a"][1]' in error["message"]

    def test_session_id_reaches_the_context(self, contract):
        assert result_value(contract.call("whoami", session_id="caller-1"))["session_id"] == "caller-1"
        assert result_value(contract.call("whoami"))["session_id"] is None

    def test_objects_are_per_session(self, contract):
        result_value(contract.call("store_object", key="k", value={"v": [1, 2]}, session_id="a"))
        assert result_value(contract.call("fetch_object", key="k", session_id="a")) == {"v": [1, 2]}
        error = error_of(contract.call("fetch_object", key="k", session_id="b"))
        assert error["type"] == "KeyError" and "Unknown reference" in error["message"]

    def test_generator_on_unary_endpoint_is_a_clear_error(self, contract):
        error = error_of(contract.call("count_to", n=3))
        assert error["type"] == "StreamingToolError"
        assert "execute_stream" in error["message"]

    def test_async_tool_and_lifecycle_hooks(self, support):
        result_value(support.call("events"))  # reset
        assert result_value(support.call("double", x=21)) == 42
        # cleanup of the reset call, then the double call's lifecycle, then this call's initialize
        assert result_value(support.call("events")) == [
            "cleanup",
            "initialize",
            "cleanup",
            "initialize",
        ]

    def test_sync_tools_run_off_the_loop_unless_thread_sensitive(self, support):
        assert result_value(support.call("thread_name")).startswith("snakepit-tool")
        inline = support.call("thread_name", metadata={"thread_sensitive": "true"})
        assert result_value(inline) == "MainThread"


class TestExecuteToolAdapter:
    def test_dispatch_through_execute_tool(self, execute_tool_worker):
        assert result_value(execute_tool_worker.call("add", a=1, b=2)) == 3
        echoed = result_value(execute_tool_worker.call("echo", x=[1]))
        assert echoed == {"tool": "echo", "arguments": {"x": [1]}}

    def test_context_argument(self, execute_tool_worker):
        value = result_value(
            execute_tool_worker.call("session", session_id="s-9", metadata={"correlation_id": "c1"})
        )
        assert value == {"session_id": "s-9", "metadata": {"correlation_id": "c1"}}

    def test_errors(self, execute_tool_worker):
        assert error_of(execute_tool_worker.call("missing"))["type"] == "ValueError"

    def test_streaming(self, execute_tool_worker):
        chunks = list(execute_tool_worker.stub.ExecuteStreamingTool(request("count", n=2), timeout=10))
        assert [c.data for c in chunks] == [b'{"i":1}', b'{"i":2}', b""]
        assert [c.is_final for c in chunks] == [False, False, True]


class TestSessionRpcs:
    def test_local_noops_succeed(self, showcase):
        stub = showcase.stub
        init = stub.InitializeSession(pb2.InitializeSessionRequest(session_id="s", metadata={"a": "b"}))
        assert init.success
        got = stub.GetSession(pb2.GetSessionRequest(session_id="s"))
        assert got.session_id == "s" and got.tool_count > 10
        assert stub.Heartbeat(pb2.HeartbeatRequest(session_id="s")).session_valid
        assert stub.CleanupSession(pb2.CleanupSessionRequest(session_id="s")).success

    def test_elixir_side_rpcs_are_unimplemented(self, showcase):
        with pytest.raises(grpc.RpcError) as info:
            showcase.stub.RegisterTools(pb2.RegisterToolsRequest(session_id="s"))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


class TestStreaming:
    def test_progress_chunks(self, showcase):
        chunks = list(
            showcase.stub.ExecuteStreamingTool(request("stream_progress", steps=3, delay_ms=0), timeout=10)
        )
        assert [c.chunk_id for c in chunks] == [f"stream_progress-{i}" for i in (1, 2, 3)]
        assert [json.loads(c.data)["step"] for c in chunks] == [1, 2, 3]
        assert [c.is_final for c in chunks] == [False, False, True]

    def test_final_chunk_appended(self, showcase):
        chunks = list(showcase.stub.ExecuteStreamingTool(request("stream_fibonacci", count=5), timeout=10))
        assert [json.loads(c.data)["value"] for c in chunks[:-1]] == [0, 1, 1, 2, 3]
        assert chunks[-1].is_final and chunks[-1].data == b""
        assert chunks[-1].chunk_id == "stream_fibonacci-6"

    def test_chunk_kinds_and_stop_after_final(self, support):
        chunks = list(support.stub.ExecuteStreamingTool(request("mixed"), timeout=10))
        assert [c.data for c in chunks] == [b"\x00raw", b"", b'"text"', b'{"last":true}']
        assert chunks[-1].is_final and dict(chunks[-1].metadata) == {"k": "1"}

    def test_non_iterable_result_is_one_final_chunk(self, support):
        chunks = list(support.stub.ExecuteStreamingTool(request("plain"), timeout=10))
        assert len(chunks) == 1 and chunks[0].is_final
        assert json.loads(chunks[0].data) == {"plain": True}

    def test_async_generator(self, support):
        chunks = list(support.stub.ExecuteStreamingTool(request("async_count", n=3), timeout=10))
        assert [c.data for c in chunks] == [b"1", b"2", b"3", b""]

    def test_error_aborts_with_internal_and_payload(self, support):
        call = support.stub.ExecuteStreamingTool(request("broken_stream"), timeout=10)
        first = next(call)
        assert json.loads(first.data) == {"ok": 1}
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        payload = json.loads(info.value.details())
        assert payload["type"] == "RuntimeError" and payload["message"] == "stream broke"
        assert payload["context"]["tool_name"] == "broken_stream"

    def test_unknown_streaming_tool(self, support):
        with pytest.raises(grpc.RpcError) as info:
            list(support.stub.ExecuteStreamingTool(request("nope"), timeout=10))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert json.loads(info.value.details())["type"] == "AttributeError"

    def test_cancel_closes_the_generator(self, contract, marker_dir):
        call = contract.stub.ExecuteStreamingTool(request("count_to", n=100000, delay_ms=5))
        assert json.loads(next(call).data) == {"count": 1}
        assert json.loads(next(call).data) == {"count": 2}
        call.cancel()
        marker = os.path.join(marker_dir, f"gen_closed_{contract.proc.pid}_100000")
        assert wait_until(lambda: os.path.exists(marker), timeout=5), contract.stderr()
        assert 100000 in result_value(contract.call("closed_early"))

    def test_cancel_closes_async_generator_and_runs_cleanup(self, support):
        result_value(support.call("events"))  # reset
        call = support.stub.ExecuteStreamingTool(request("async_count", n=100000))
        next(call)
        call.cancel()

        def closed() -> bool:
            events = result_value(support.call("events"))
            closed.seen.extend(events)
            return "async_count closed at 100000" in closed.seen and "cleanup" in closed.seen

        closed.seen = []
        assert wait_until(closed, timeout=5), closed.seen

    def test_backpressure_does_not_drain_the_generator(self, support):
        # A client with a fixed 64 KiB HTTP/2 window (like tonic's default), so the only
        # buffering left is the transport's: the worker itself must not read ahead.
        channel = grpc.insecure_channel(
            support.ready["endpoint"], options=[("grpc.http2.bdp_probe", 0)]
        )
        stub = pb2_grpc.BridgeServiceStub(channel)
        call = stub.ExecuteStreamingTool(request("firehose", size=65536))
        for _ in range(3):
            next(call)
        # The client stops reading: the producer must stall once the window is full.
        time.sleep(0.8)
        stalled_at = result_value(support.call("produced"))
        time.sleep(0.3)
        assert result_value(support.call("produced")) == stalled_at
        assert stalled_at <= 12, stalled_at
        call.cancel()
        channel.close()
