"""``python -m snakepit_bridge`` is the same as ``python -m snakepit_bridge.server``."""

from .server import main

main()
