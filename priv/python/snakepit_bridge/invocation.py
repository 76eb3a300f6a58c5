"""Per-request adapter lifecycle and tool dispatch (contract §7.2).

For each call, as upstream: a new adapter instance, ``set_session_context(ctx)``,
``initialize()`` if present, the tool, then ``cleanup()`` if present. Dispatch: an adapter
method ``execute_tool(tool_name=..., arguments=..., context=...)`` wins; otherwise the
``@tool``-decorated method named like the tool is called with the arguments as keywords.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from .base_adapter import BaseAdapter, _tool_methods
from .offload import Offloader

logger = logging.getLogger(__name__)

THREAD_SENSITIVE_ENV = "SNAKEPIT_THREAD_SENSITIVE"
_TRUTHY = {"1", "true", "yes", "on"}


def is_thread_sensitive(
    adapter_class: type, tool_name: str, metadata: Mapping[str, str]
) -> bool:
    """Whether sync code of this call must run on the event-loop thread.

    True when request metadata ``thread_sensitive`` is truthy, or when ``SNAKEPIT_THREAD_SENSITIVE``
    (comma list) names the adapter's module, ``module.tool`` or ``module.Class.tool``.
    """
    if metadata.get("thread_sensitive", "").strip().lower() in _TRUTHY:
        return True
    configured = {
        entry.strip() for entry in os.environ.get(THREAD_SENSITIVE_ENV, "").split(",") if entry
    }
    if not configured:
        return False
    module = adapter_class.__module__
    candidates = {module, f"{module}.{tool_name}", f"{module}.{adapter_class.__name__}.{tool_name}"}
    return bool(configured & candidates)


def _find_tool(adapter: Any, tool_name: str) -> Any:
    if isinstance(adapter, BaseAdapter):
        return adapter.get_tool_method(tool_name)
    # Adapters not derived from BaseAdapter may still use @tool.
    if tool_name in _tool_methods(type(adapter)):
        return getattr(adapter, tool_name)
    raise AttributeError(f"Tool '{tool_name}' not found in {type(adapter).__name__}")


class ToolCall:
    """One tool call on a fresh adapter instance.

    Use ``await open()``, ``await invoke()``, then always ``await close()``.
    """

    def __init__(
        self,
        adapter_class: type,
        tool_name: str,
        arguments: dict[str, Any],
        context: Any,
        *,
        inline: bool = False,
    ) -> None:
        self.adapter_class = adapter_class
        self.tool_name = tool_name
        self.arguments = arguments
        self.context = context
        self.offloader = Offloader(inline=inline)
        self.adapter: Any = None
        self._closed = False

    async def open(self) -> None:
        """Instantiate the adapter, attach the session context and run ``initialize()``.

        The constructor runs on the event loop, as upstream: adapters are built per request,
        so constructors are expected to be cheap (heavy state belongs at module level), and a
        thread hop here would add latency to every call.
        """
        self.adapter = self.adapter_class()
        set_context = getattr(self.adapter, "set_session_context", None)
        if callable(set_context):
            set_context(self.context)
        initialize = getattr(self.adapter, "initialize", None)
        if callable(initialize):
            await self.offloader.call(initialize)

    async def invoke(self) -> Any:
        """Run the tool and return its (awaited) result."""
        execute_tool = getattr(self.adapter, "execute_tool", None)
        if callable(execute_tool):
            return await self.offloader.call(
                execute_tool,
                tool_name=self.tool_name,
                arguments=self.arguments,
                context=self.context,
            )
        method = _find_tool(self.adapter, self.tool_name)
        return await self.offloader.call(method, **self.arguments)

    async def close(self) -> None:
        """Run ``cleanup()`` once, after any still-running thread call of this request.

        Cleanup failures are logged, never raised: the tool's outcome is already decided.
        """
        if self._closed:
            return
        self._closed = True
        await self.offloader.wait_idle()
        cleanup = getattr(self.adapter, "cleanup", None) if self.adapter is not None else None
        if not callable(cleanup):
            return
        try:
            await self.offloader.call(cleanup)
        except Exception:
            logger.exception("cleanup() of %s failed", self.adapter_class.__name__)
