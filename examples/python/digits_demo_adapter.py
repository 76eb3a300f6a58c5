"""Demo adapter: stateful scikit-learn models kept in a worker's memory, addressed by reference.

The main demo (``examples/demo.exs``) uses it to show why session affinity matters: ``fit``
trains a small classifier on scikit-learn's bundled *digits* dataset (8x8 images of handwritten
digits, shipped inside the package, no download) and keeps the fitted model in this process only,
returning an opaque reference. ``predict`` must then reach the same worker process: any other
worker answers ``KeyError: Unknown reference``.

Tools (all cheap: a fit takes a few ms, a prediction well under one):

* ``fit(seed, train_size=500)`` -> ``{"ref", "worker_pid", "train_accuracy", "train_size", "model"}``
* ``predict(ref, index)`` -> ``{"prediction", "label", "correct", "worker_pid"}`` for one held-out
  image of the split behind ``ref``
* ``forget(ref)`` -> ``{"removed": bool}``
* ``stats()`` -> how many models this worker holds
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from snakepit_bridge import BaseAdapter, tool

_DIGITS: tuple[np.ndarray, np.ndarray] | None = None
_DIGITS_LOCK = threading.Lock()


@dataclass
class _Fitted:
    model: LogisticRegression
    test_x: np.ndarray
    test_y: np.ndarray


# Module level: survives across requests (the adapter instance is per request), lives and dies
# with this worker process.
_MODELS: dict[str, _Fitted] = {}
_MODELS_LOCK = threading.Lock()


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits images (features scaled to [0, 1]) and labels, loaded once per process."""
    global _DIGITS
    with _DIGITS_LOCK:
        if _DIGITS is None:
            data = load_digits()
            _DIGITS = (data.data / 16.0, data.target)
        return _DIGITS


def _split(seed: int, train_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation: the first ``train_size`` indices train, the rest are held out."""
    x, _ = _digits()
    order = np.random.default_rng(seed).permutation(len(x))
    return order[:train_size], order[train_size:]


class DigitsDemoAdapter(BaseAdapter):
    """Fits and serves small digit classifiers held in this worker's memory."""

    @tool(description="Fit a classifier on a seeded split of the digits dataset; returns a reference")
    def fit(self, seed: int, train_size: int = 500) -> dict[str, Any]:
        x, y = _digits()
        train_size = max(20, min(int(train_size), len(x) - 1))
        train, test = _split(int(seed), train_size)
        model = LogisticRegression(max_iter=200)
        model.fit(x[train], y[train])
        ref = str(uuid.uuid4())
        with _MODELS_LOCK:
            _MODELS[ref] = _Fitted(model, x[test], y[test])
        return {
            "ref": ref,
            "worker_pid": os.getpid(),
            "train_accuracy": float(model.score(x[train], y[train])),
            "train_size": train_size,
            "test_size": int(len(test)),
            "model": "LogisticRegression",
        }

    @tool(description="Predict one held-out image with the model behind ref")
    def predict(self, ref: str, index: int) -> dict[str, Any]:
        with _MODELS_LOCK:
            fitted = _MODELS.get(ref)
        if fitted is None:
            # The model lives in another worker's memory (or was never fitted).
            raise KeyError(f"Unknown reference: {ref}")
        i = int(index) % len(fitted.test_y)
        prediction = int(fitted.model.predict(fitted.test_x[i : i + 1])[0])
        label = int(fitted.test_y[i])
        return {
            "prediction": prediction,
            "label": label,
            "correct": prediction == label,
            "worker_pid": os.getpid(),
        }

    @tool(description="Drop the model behind ref from this worker's memory")
    def forget(self, ref: str) -> dict[str, Any]:
        with _MODELS_LOCK:
            removed = _MODELS.pop(ref, None) is not None
        return {"removed": removed, "worker_pid": os.getpid()}

    @tool(description="How many models this worker holds")
    def stats(self) -> dict[str, Any]:
        with _MODELS_LOCK:
            count = len(_MODELS)
        return {"models": count, "worker_pid": os.getpid()}
