"""Running blocking adapter code off the event loop.

Sync tool code runs in the loop's default executor (sized by ``--max-workers``) so one slow tool
does not stall other RPCs. Calls are *shielded*: when the RPC is cancelled the thread keeps
running (threads cannot be interrupted), and the caller keeps the future so it can wait for the
thread before closing generators or running ``cleanup()`` on the same adapter.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable
from typing import Any


def start_in_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future:
    """Start ``func(*args, **kwargs)`` in the default executor, keeping context variables."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return loop.run_in_executor(None, functools.partial(context.run, func, *args, **kwargs))


async def settle(future: asyncio.Future | None) -> None:
    """Wait for ``future`` to finish, ignoring its outcome (used before closing resources)."""
    if future is None or future.done():
        return
    try:
        await asyncio.shield(future)
    except BaseException:  # the outcome belongs to whoever started it; we only wait
        pass


class Offloader:
    """Calls sync-or-async callables for one request and remembers the running thread call.

    Args:
        inline: run sync callables on the event-loop thread (thread-sensitive tools, e.g.
            libraries that insist on the main thread) instead of in the executor.
    """

    def __init__(self, *, inline: bool = False) -> None:
        self.inline = inline
        self.pending: asyncio.Future | None = None

    async def call(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Call ``func``; await coroutines; run sync functions per ``inline``."""
        if self.inline or inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            result = func(*args, **kwargs)
        else:
            future = start_in_thread(func, *args, **kwargs)
            self.pending = future
            result = await asyncio.shield(future)
            self.pending = None
        if inspect.isawaitable(result):
            result = await result
        return result

    async def wait_idle(self) -> None:
        """Wait until no thread call of this offloader is running."""
        await settle(self.pending)
        self.pending = None
