"""Resolving ``--adapter module.Class`` to a class (contract §7.2)."""

from __future__ import annotations

import importlib
import traceback
from typing import Any


class AdapterLoadError(Exception):
    """The adapter could not be imported or is not a class.

    Attributes:
        spec: the ``module.Class`` string.
        cause: the original exception (its type is what ``SNAKEPIT_FAILED`` reports).
    """

    def __init__(self, spec: str, cause: BaseException) -> None:
        super().__init__(f"cannot load adapter {spec!r}: {cause}")
        self.spec = spec
        self.cause = cause

    def report(self) -> dict[str, Any]:
        """``{"type", "message", "traceback"}`` describing the original failure."""
        cause = self.cause
        return {
            "type": type(cause).__name__,
            "message": f"cannot load adapter {self.spec!r}: {cause}",
            "traceback": "".join(
                traceback.format_exception(type(cause), cause, cause.__traceback__)
            ),
        }


def load_adapter(spec: str) -> type:
    """Import ``module.path.ClassName`` and return the class.

    Raises:
        AdapterLoadError: malformed spec, import failure (any exception raised while importing,
            including ``SystemExit``), missing attribute, or an attribute that is not a class.
    """
    module_name, _, class_name = spec.rpartition(".")
    try:
        if not module_name or not class_name:
            raise ValueError("expected 'module.ClassName'")
        module = importlib.import_module(module_name)
        adapter = getattr(module, class_name)
        if not isinstance(adapter, type):
            raise TypeError(f"{spec} is a {type(adapter).__name__}, not a class")
    except (Exception, SystemExit) as exc:
        raise AdapterLoadError(spec, exc) from exc
    return adapter
