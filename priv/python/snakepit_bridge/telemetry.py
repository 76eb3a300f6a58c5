"""Telemetry API kept for adapters written against upstream Snakepit (contract §7.4).

Upstream streamed Python telemetry events to Elixir over ``StreamTelemetry``. This runtime has
no such stream, so events are only logged at DEBUG level; the functions exist so adapter code
that calls them keeps working. ``get_correlation_id()`` does return the current request's
``correlation_id`` metadata.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)

# Correlation id of the request being served; set by the servicer per RPC (each RPC runs in
# its own asyncio task, and worker threads inherit it, so the value is request-scoped).
_current_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "snakepit_correlation_id", default=None
)


def bind_correlation_id(value: str | None) -> None:
    """Set the correlation id of the request being served (called by the servicer)."""
    _current_correlation_id.set(value or None)


def is_enabled() -> bool:
    """Whether events reach Elixir: never in this runtime."""
    return False


def get_correlation_id() -> str | None:
    """The ``correlation_id`` of the request being served, if any."""
    return _current_correlation_id.get()


def emit(
    name: str | list[str] | tuple[str, ...],
    measurements: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
) -> None:
    """Record a telemetry event (logged at DEBUG level only)."""
    logger.debug(
        "telemetry %s measurements=%s metadata=%s correlation_id=%s",
        name,
        dict(measurements or {}),
        dict(metadata or {}),
        correlation_id or get_correlation_id(),
    )


@contextlib.contextmanager
def span(
    name: str | list[str] | tuple[str, ...],
    metadata: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Time a block and emit ``<name>.stop`` (or ``.exception``) with ``duration_ms``."""
    parts = [name] if isinstance(name, str) else list(name)
    started = time.monotonic()
    extra: dict[str, Any] = {}
    outcome = "stop"
    try:
        yield extra
    except BaseException:
        outcome = "exception"
        raise
    finally:
        emit(
            [*parts, outcome],
            {"duration_ms": (time.monotonic() - started) * 1000},
            {**dict(metadata or {}), **extra},
            correlation_id,
        )
