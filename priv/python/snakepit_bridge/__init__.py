"""snakepit_bridge: the Python side of Snakepit.

A worker process (``python -m snakepit_bridge.server``) serves an adapter class over gRPC. Write
adapters against :class:`BaseAdapter` and :func:`tool`; each call gets a :class:`SessionContext`.
"""

from .base_adapter import BaseAdapter, ToolMetadata, tool
from .heartbeat import HeartbeatClient, HeartbeatConfig
from .logging_config import configure_logging, get_logger
from .session_context import SessionContext
from .streaming import StreamChunk
from .zero_copy import ZeroCopyRef

__version__ = "0.1.0"

__all__ = [
    "BaseAdapter",
    "HeartbeatClient",
    "HeartbeatConfig",
    "SessionContext",
    "StreamChunk",
    "ToolMetadata",
    "ZeroCopyRef",
    "configure_logging",
    "get_logger",
    "tool",
    "__version__",
]
