"""Adapter base class and the ``@tool`` decorator (contract §7.3).

An adapter is a class named on the command line (``--adapter module.Class``). The worker makes a
new instance per request, hands it a :class:`~snakepit_bridge.session_context.SessionContext`,
and calls one tool. Tools are either methods decorated with :func:`tool` (called with the
request's arguments as keyword arguments) or, upstream style, a single
``execute_tool(tool_name, arguments, context)`` method.

State kept on the instance does not survive the request; keep long-lived state at module level.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import snakepit_bridge_pb2 as _pb2

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class ToolMetadata:
    """What :func:`tool` records on a method (``method._tool_metadata``)."""

    description: str
    supports_streaming: bool = False
    parameters: list[dict[str, Any]] = field(default_factory=list)
    required_variables: list[str] = field(default_factory=list)


def _parameter_specs(func: Callable[..., Any]) -> list[dict[str, Any]]:
    """Describe ``func``'s keyword-callable parameters (``self`` and ``**kwargs`` skipped)."""
    specs: list[dict[str, Any]] = []
    for index, param in enumerate(inspect.signature(func).parameters.values()):
        if index == 0 and param.name in ("self", "cls"):
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation
        if annotation is param.empty:
            type_name = "any"
        elif isinstance(annotation, str):
            type_name = annotation.lower()
        else:
            type_name = getattr(annotation, "__name__", str(annotation)).lower()
        spec: dict[str, Any] = {
            "name": param.name,
            "type": type_name,
            "required": param.default is param.empty,
        }
        if param.default is not param.empty:
            spec["default"] = param.default
        specs.append(spec)
    return specs


def tool(
    description: str | Callable[..., Any] = "",
    supports_streaming: bool = False,
    required_variables: list[str] | None = None,
) -> Any:
    """Mark an adapter method as a tool callable from Elixir.

    Usable as ``@tool``, ``@tool()`` or ``@tool(description=..., supports_streaming=True)``.

    Args:
        description: human description; defaults to the method's docstring.
        supports_streaming: the method returns a generator/iterator to be streamed as chunks.
        required_variables: names recorded in the tool's registration metadata.
    """

    def decorate(func: F) -> F:
        text = description if isinstance(description, str) else ""
        func._tool_metadata = ToolMetadata(  # type: ignore[attr-defined]
            description=text or inspect.getdoc(func) or "",
            supports_streaming=supports_streaming,
            parameters=_parameter_specs(func),
            required_variables=list(required_variables or []),
        )
        return func

    if callable(description):  # bare @tool
        return decorate(description)  # type: ignore[arg-type]
    return decorate


@functools.lru_cache(maxsize=256)
def _tool_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """Decorated tool functions of ``cls`` (including inherited ones), by attribute name.

    Cached per class: dispatch looks tools up on every request. Callers must not mutate it.
    """
    found: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        try:
            attr = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        func = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        if callable(func) and hasattr(func, "_tool_metadata"):
            found[name] = func
    return found


def _default_json(value: Any) -> str | None:
    try:
        return json.dumps({"default": value})
    except (TypeError, ValueError):
        return None


class BaseAdapter:
    """Base class for adapters.

    Subclasses define tools with :func:`tool`, or override ``execute_tool``. Optional hooks,
    each sync or async: ``initialize()`` before the tool runs, ``cleanup()`` after it finished
    (for streams: after the stream ended or was cancelled).
    """

    session_context: Any = None

    # ---- session -------------------------------------------------------------------------

    def set_session_context(self, session_context: Any) -> None:
        """Attach the request's :class:`SessionContext` (called by the worker per request)."""
        self._session_context = session_context
        self.session_context = session_context

    @property
    def session_id(self) -> str | None:
        """The caller's session id (the worker's id for session-less calls), or ``None``."""
        ctx = self.session_context
        return getattr(ctx, "session_id", None) if ctx is not None else None

    # ---- tool discovery ------------------------------------------------------------------

    @classmethod
    def tool_names(cls) -> list[str]:
        """Names of the ``@tool`` methods of this adapter class."""
        return sorted(_tool_methods(cls))

    def get_tool_method(self, name: str) -> Callable[..., Any]:
        """Bound ``@tool`` method called ``name``.

        Raises:
            AttributeError: ``Tool '<name>' not found in <Class>``.
        """
        if name in _tool_methods(type(self)):
            return getattr(self, name)
        raise AttributeError(f"Tool '{name}' not found in {type(self).__name__}")

    def get_tools(self) -> list[Any]:
        """Describe this adapter's tools as ``ToolRegistration`` messages."""
        cls = type(self)
        registrations = []
        for name, func in sorted(_tool_methods(cls).items()):
            meta: ToolMetadata = func._tool_metadata  # type: ignore[attr-defined]
            metadata = {"adapter_class": cls.__name__, "module": cls.__module__}
            if meta.required_variables:
                metadata["required_variables"] = ",".join(meta.required_variables)
            registrations.append(
                _pb2.ToolRegistration(
                    name=name,
                    description=meta.description,
                    parameters=[self._parameter_spec(p) for p in meta.parameters],
                    metadata=metadata,
                    supports_streaming=meta.supports_streaming,
                )
            )
        execute_tool = getattr(cls, "execute_tool", None)
        if callable(execute_tool) and not hasattr(execute_tool, "_tool_metadata"):
            registrations.append(
                _pb2.ToolRegistration(
                    name="execute_tool",
                    description=inspect.getdoc(execute_tool) or "Adapter-level tool dispatcher",
                    metadata={"adapter_class": cls.__name__, "module": cls.__module__},
                )
            )
        return registrations

    @staticmethod
    def _parameter_spec(spec: dict[str, Any]) -> Any:
        message = _pb2.ParameterSpec(
            name=spec["name"], type=spec["type"], required=spec["required"]
        )
        if "default" in spec:
            validation = _default_json(spec["default"])
            if validation is not None:
                message.validation_json = validation
        return message

    # ---- calling -------------------------------------------------------------------------

    def call_tool(self, tool_name: str, **kwargs: Any) -> Any:
        """Call a public method of this adapter by name (for adapter code, e.g. ``execute_tool``).

        Raises:
            AttributeError: ``Tool '<name>' not found in <Class>``.
            TypeError: the attribute exists but is not callable.
        """
        if tool_name.startswith("_") or not hasattr(self, tool_name):
            raise AttributeError(f"Tool '{tool_name}' not found in {type(self).__name__}")
        target = getattr(self, tool_name)
        if not callable(target):
            raise TypeError(f"'{tool_name}' of {type(self).__name__} is not callable")
        return target(**kwargs)

    # ---- registration (no Elixir tool registry in this runtime) ----------------------------

    def register_with_session(self, session_id: str | None = None, stub: Any = None) -> list[str]:
        """Upstream registered tools with Elixir; here a no-op returning the tool names."""
        return [registration.name for registration in self.get_tools()]

    async def register_with_session_async(
        self, session_id: str | None = None, stub: Any = None
    ) -> list[str]:
        """Async variant of :meth:`register_with_session`."""
        return self.register_with_session(session_id, stub)
