"""Base class for adapters that may serve several calls at once (contract §7.3).

Tools of a worker started with ``--max-workers N`` run concurrently in N threads. Adapter
instances are per request, but module-level state is shared: guard it with
:meth:`ThreadSafeAdapter.acquire_lock` or :func:`thread_safe_method`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .base_adapter import BaseAdapter

F = TypeVar("F", bound=Callable[..., Any])

# One lock per adapter class, shared by all its (per-request) instances.
_CLASS_LOCKS: dict[type, threading.RLock] = {}
_CLASS_LOCKS_GUARD = threading.Lock()
_THREAD_LOCAL = threading.local()


def _class_lock(cls: type) -> threading.RLock:
    with _CLASS_LOCKS_GUARD:
        return _CLASS_LOCKS.setdefault(cls, threading.RLock())


class ThreadSafeAdapter(BaseAdapter):
    """Adapter declared safe for concurrent calls (``__thread_safe__ = True``)."""

    __thread_safe__ = True
    _request_count = 0
    _active_requests = 0

    @contextlib.contextmanager
    def acquire_lock(self) -> Iterator[None]:
        """Hold this adapter class's re-entrant lock for the ``with`` block."""
        with _class_lock(type(self)):
            yield

    def get_thread_local(self, key: str, default: Any = None) -> Any:
        """Value stored by :meth:`set_thread_local` in the current thread."""
        return getattr(_THREAD_LOCAL, "values", {}).get(key, default)

    def set_thread_local(self, key: str, value: Any) -> None:
        """Store a value visible only to the current thread."""
        if not hasattr(_THREAD_LOCAL, "values"):
            _THREAD_LOCAL.values = {}
        _THREAD_LOCAL.values[key] = value

    @contextlib.contextmanager
    def track_request(self) -> Iterator[None]:
        """Count a request as active for the ``with`` block (see :meth:`request_stats`)."""
        cls = type(self)
        with _class_lock(cls):
            cls._request_count += 1
            cls._active_requests += 1
        try:
            yield
        finally:
            with _class_lock(cls):
                cls._active_requests -= 1

    @classmethod
    def request_stats(cls) -> dict[str, int]:
        """``{"total": ..., "active": ...}`` requests tracked for this class."""
        with _class_lock(cls):
            return {"total": cls._request_count, "active": cls._active_requests}


def thread_safe_method(method: F) -> F:
    """Run an adapter method while holding its class lock."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _class_lock(type(self)):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
