"""``ZeroCopyRef`` kept importable for adapters written against upstream Snakepit.

Upstream could hand large buffers to Elixir by reference. This runtime sends bytes inline
(``binary_result`` / ``binary_parameters``), so a reference is just a described payload: its
``to_dict()`` is what a tool returns to describe one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ZERO_COPY_MARKER = "__snakepit_zero_copy__"


@dataclass
class ZeroCopyRef:
    """Description of a buffer held elsewhere (kind, location, size, free-form metadata)."""

    kind: str
    location: str
    nbytes: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, tagged with the upstream marker key."""
        return {
            ZERO_COPY_MARKER: True,
            "kind": self.kind,
            "location": self.location,
            "nbytes": self.nbytes,
            "metadata": dict(self.metadata),
        }
