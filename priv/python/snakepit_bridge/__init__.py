"""snakepit_bridge: the Python side of Snakepit.

A worker process (``python -m snakepit_bridge.server``) serves an adapter class over gRPC. Write
adapters against :class:`BaseAdapter` and :func:`tool`; each call gets a :class:`SessionContext`.
"""

# The worker's own runtime; without it the first import below fails with "No module named
# 'google'", which does not say what to do.
try:
    import google.protobuf  # noqa: F401
    import grpc  # noqa: F401
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised from a bare interpreter
    raise ModuleNotFoundError(
        f"{_missing} (snakepit_bridge needs grpcio and protobuf in this Python: install "
        "snakepit's priv/python/requirements.txt into it, or point python_executable / "
        "SNAKEPIT_PYTHON at an interpreter that has them)",
        name=_missing.name,
    ) from None

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
