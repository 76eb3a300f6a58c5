"""Heartbeat API kept for adapters written against upstream Snakepit (contract §5.6, §7.4).

Upstream workers pinged an Elixir callback server. Here liveness is tied to the owner process
instead (stdin EOF and PR_SET_PDEATHSIG, see :mod:`snakepit_bridge.lifecycle`), so the client is
inert: ``start()``/``stop()`` only flip a flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class HeartbeatConfig:
    """Heartbeat settings (accepted for compatibility, not acted upon)."""

    enabled: bool = False
    interval_ms: int = 2000
    timeout_ms: int = 10000
    max_missed_heartbeats: int = 3
    initial_delay_ms: int = 0
    jitter_ms: int = 0
    dependent: bool = True


class HeartbeatClient:
    """Inert heartbeat client: owner liveness is handled by the worker lifecycle."""

    def __init__(self, stub: Any = None, session_id: str | None = None,
                 config: HeartbeatConfig | None = None, **_: Any) -> None:
        self.stub = stub
        self.session_id = session_id
        self.config = config or HeartbeatConfig()
        self.running = False

    def start(self) -> bool:
        """Mark the client started; returns True."""
        self.running = True
        return True

    async def stop(self) -> None:
        """Mark the client stopped."""
        self.running = False
