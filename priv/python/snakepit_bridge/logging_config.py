"""Logging setup for worker processes.

Logs go to stderr: stdout carries the ``SNAKEPIT_READY`` / ``SNAKEPIT_FAILED`` protocol lines.
The level comes from the argument, else ``SNAKEPIT_LOG_LEVEL``, else WARNING.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s [snakepit worker %(process)d] %(name)s: %(message)s"


def configure_logging(level: str | int | None = None) -> None:
    """Configure the root logger to write to stderr (idempotent)."""
    chosen = level if level is not None else os.environ.get("SNAKEPIT_LOG_LEVEL", "WARNING")
    if isinstance(chosen, str):
        chosen = logging.getLevelName(chosen.strip().upper())
        if not isinstance(chosen, int):
            chosen = logging.WARNING
    root = logging.getLogger()
    if not any(getattr(h, "_snakepit", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._snakepit = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(chosen)


def get_logger(name: str) -> logging.Logger:
    """A named logger (configure once with :func:`configure_logging`)."""
    return logging.getLogger(name)
