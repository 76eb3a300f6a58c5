"""Adapters shipped with snakepit_bridge (``showcase`` is the default one)."""
