"""The adapter-facing API, in process: import paths, @tool, BaseAdapter, SessionContext, dispatch."""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest

from snakepit_bridge.invocation import ToolCall, is_thread_sensitive
from snakepit_bridge.session_context import SessionContext


def test_upstream_import_paths():
    import snakepit_bridge
    from snakepit_bridge import BaseAdapter, SessionContext
    from snakepit_bridge.adapters.showcase import ShowcaseAdapter
    from snakepit_bridge.adapters.threaded_showcase import ThreadedShowcaseAdapter
    from snakepit_bridge.base_adapter import BaseAdapter as Base
    from snakepit_bridge.base_adapter import tool
    from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method
    from snakepit_bridge.session_context import SessionContext as Context

    exported = ("HeartbeatClient", "HeartbeatConfig", "ZeroCopyRef", "configure_logging", "get_logger")
    assert all(hasattr(snakepit_bridge, name) for name in exported)
    assert snakepit_bridge.tool is tool and callable(thread_safe_method)
    assert Base is BaseAdapter and Context is SessionContext
    assert issubclass(ShowcaseAdapter, BaseAdapter)
    assert issubclass(ThreadedShowcaseAdapter, ThreadSafeAdapter)
    assert ThreadedShowcaseAdapter.__thread_safe__ is True
    telemetry = importlib.import_module("snakepit_bridge.telemetry")
    assert telemetry.is_enabled() is False
    telemetry.emit("x", {"n": 1})
    with telemetry.span(["a", "b"]):
        pass
    assert telemetry.get_correlation_id() is None


class Sample:
    """Built lazily so the decorator runs inside the test."""

    @staticmethod
    def make():
        from snakepit_bridge import BaseAdapter, tool

        class SampleAdapter(BaseAdapter):
            @tool
            def bare(self, x: int, y: str = "d"):
                """Docstring description."""
                return [x, y]

            @tool(description="streams", supports_streaming=True, required_variables=["a", "b"])
            def streamer(self, n):
                yield from range(n)

            def helper(self):
                return "not a tool"

            value = 5

        return SampleAdapter


def test_tool_metadata_and_get_tools():
    adapter = Sample.make()()
    assert adapter.bare._tool_metadata.description == "Docstring description."
    tools = {t.name: t for t in adapter.get_tools()}
    assert set(tools) == {"bare", "streamer"}
    bare = tools["bare"]
    assert [(p.name, p.type, p.required) for p in bare.parameters] == [("x", "int", True), ("y", "str", False)]
    assert json.loads(bare.parameters[1].validation_json) == {"default": "d"}
    assert dict(bare.metadata) == {"adapter_class": "SampleAdapter", "module": __name__}
    streamer = tools["streamer"]
    assert streamer.supports_streaming and streamer.metadata["required_variables"] == "a,b"
    assert adapter.register_with_session("s") == ["bare", "streamer"]


def test_call_tool():
    adapter = Sample.make()()
    assert adapter.call_tool("bare", x=1) == [1, "d"]
    assert adapter.call_tool("helper") == "not a tool"
    with pytest.raises(AttributeError, match="Tool 'missing' not found in SampleAdapter"):
        adapter.call_tool("missing")
    with pytest.raises(TypeError):
        adapter.call_tool("value")


def test_execute_tool_adapter_gets_a_synthetic_registration():
    from snakepit_test_adapters import ExecuteToolAdapter

    assert [t.name for t in ExecuteToolAdapter().get_tools()] == ["execute_tool"]


def test_session_context():
    ctx = SessionContext(None, "", request_metadata={"correlation_id": "c"})
    assert ctx.session_id is None and ctx.correlation_id == "c"
    assert ctx.elixir_tools == {}
    with pytest.raises(NotImplementedError, match="no Elixir callback server"):
        ctx.call_elixir_tool("anything", x=1)
    with SessionContext(None, "s") as scoped:
        assert scoped.session_id == "s"


def _run(adapter_class, tool_name, **arguments):
    async def go():
        call = ToolCall(adapter_class, tool_name, arguments, SessionContext(None, "sid"))
        try:
            await call.open()
            return await call.invoke()
        finally:
            await call.close()

    return asyncio.run(go())


def test_dispatch_only_reaches_decorated_tools():
    adapter_class = Sample.make()
    assert _run(adapter_class, "bare", x=2, y="z") == [2, "z"]
    with pytest.raises(AttributeError, match="Tool 'helper' not found"):
        _run(adapter_class, "helper")


def test_execute_tool_wins_and_gets_keyword_arguments():
    from snakepit_bridge import BaseAdapter, tool

    class Both(BaseAdapter):
        @tool
        def echo(self):
            return "decorated"

        async def execute_tool(self, *, tool_name, arguments, context):
            return [tool_name, arguments, context.session_id]

    assert _run(Both, "echo", a=1) == ["echo", {"a": 1}, "sid"]


def test_thread_sensitivity(monkeypatch):
    from snakepit_test_adapters import ContractAdapter

    assert is_thread_sensitive(ContractAdapter, "greet", {"thread_sensitive": "true"})
    assert not is_thread_sensitive(ContractAdapter, "greet", {})
    monkeypatch.setenv("SNAKEPIT_THREAD_SENSITIVE", "other, snakepit_test_adapters.greet")
    assert is_thread_sensitive(ContractAdapter, "greet", {})
    assert not is_thread_sensitive(ContractAdapter, "pid", {})


def test_cli_validation(capsys):
    from snakepit_bridge.server import parse_args

    args = parse_args(["--adapter", "m.C", "--port", "0"])
    assert args.socket is None and args.port == 0 and args.max_workers == 10
    for argv in (["--adapter", "m.C"], ["--adapter", "m.C", "--socket", "relative.sock"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
