"""``SessionContext``: what a tool call knows about its caller (contract §7.4).

Unlike upstream Snakepit, ``session_id`` is the *caller's* session id (the ``session_id`` the
Elixir caller passed). For a call without a session, Snakepit sends the serving worker's id (what
upstream always sent); ``None`` only when the request's ``session_id`` is empty. There is no Elixir callback
server in this runtime, so Elixir tools cannot be called from Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ElixirToolsUnavailable(NotImplementedError):
    """Raised by :meth:`SessionContext.call_elixir_tool`; kept a ``NotImplementedError``."""


class SessionContext:
    """Per-request context handed to adapters via ``set_session_context``.

    Attributes:
        stub: gRPC stub towards Elixir in upstream Snakepit; always ``None`` here.
        session_id: the caller's session id; the serving worker's id for session-less calls
            from Snakepit; ``None`` when the request carries none.
        request_metadata: the request's string metadata (``correlation_id``, ...).
    """

    def __init__(
        self,
        stub: Any,
        session_id: str | None,
        request_metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.stub = stub
        # The wire uses "" for "no session"; adapters get None so `if ctx.session_id` works.
        self.session_id: str | None = session_id or None
        self.request_metadata: dict[str, str] = dict(request_metadata or {})

    @property
    def correlation_id(self) -> str | None:
        """The request's ``correlation_id`` metadata, if any."""
        return self.request_metadata.get("correlation_id")

    @property
    def elixir_tools(self) -> dict[str, Any]:
        """Elixir tools exposed to Python: always empty (no callback server in this runtime)."""
        return {}

    def call_elixir_tool(self, tool_name: str, **parameters: Any) -> Any:
        """Not supported: this runtime has no Elixir callback server.

        Raises:
            ElixirToolsUnavailable: always (a ``NotImplementedError``).
        """
        raise ElixirToolsUnavailable(
            f"call_elixir_tool({tool_name!r}) is not supported: this Snakepit runtime has no "
            "Elixir callback server; pass the data in the tool's arguments instead"
        )

    def cleanup(self) -> None:
        """Release session resources (nothing to release locally)."""

    def __enter__(self) -> "SessionContext":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"SessionContext(session_id={self.session_id!r})"
