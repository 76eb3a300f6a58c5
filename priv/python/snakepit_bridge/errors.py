"""Structured error payloads sent back to Elixir (contract §6.3).

Every exception raised while serving a tool call becomes ``success=false`` with
``error_message`` = JSON ``{type, message, stacktrace, traceback, context}``. The Elixir side maps
``type`` onto its exception structs, so the class name is sent verbatim.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from typing import Any

# Argument keys copied into the error context when present (upstream convention for
# generated bindings that call into a named library/function).
_CONTEXT_ARGUMENT_KEYS = ("library", "python_module", "function", "call_type", "payload_version")


class StreamingToolError(RuntimeError):
    """A streaming tool (its result is a generator/iterator) was called through ``ExecuteTool``."""


def _clean_text(text: str) -> str:
    # Lone surrogates would make the JSON invalid UTF-8 (protobuf strings and serde_json both
    # reject them); show them as escapes instead.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not hide the original error
        return repr(exc)


def error_payload(
    exc: BaseException,
    *,
    tool_name: str,
    session_id: str | None,
    arguments: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the error payload dict for ``exc`` raised while running ``tool_name``."""
    formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    context: dict[str, Any] = {"tool_name": tool_name, "session_id": session_id}
    for key in _CONTEXT_ARGUMENT_KEYS:
        value = (arguments or {}).get(key)
        if isinstance(value, (str, int, float, bool)):
            context[key] = _clean_text(value) if isinstance(value, str) else value
    cleaned = _clean_text(formatted)
    return {
        "type": type(exc).__name__,
        "message": _clean_text(_safe_str(exc)),
        "stacktrace": cleaned.splitlines(),
        "traceback": cleaned,
        "context": context,
    }


def error_json(
    exc: BaseException,
    *,
    tool_name: str,
    session_id: str | None,
    arguments: Mapping[str, Any] | None = None,
) -> str:
    """``error_payload`` serialized as a JSON string (always valid UTF-8)."""
    payload = error_payload(exc, tool_name=tool_name, session_id=session_id, arguments=arguments)
    return json.dumps(payload, ensure_ascii=False, default=str)
