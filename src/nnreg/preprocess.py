"""Fitted input and target transforms, kept as plain JSON-able state.

A :class:`Standardizer` either centres and scales each column (``enabled=True``) or passes
data through unchanged (the seed experiment trains on raw values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Standardizer"]


@dataclass
class Standardizer:
    """Per-column ``(x - mean) / scale``; a constant column gets scale 1."""

    enabled: bool = True
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)

    def fit(self, a: np.ndarray, sample_weight: np.ndarray | None = None) -> Standardizer:
        # a: (rows, columns)
        if not self.enabled:
            self.mean, self.scale = [0.0] * a.shape[1], [1.0] * a.shape[1]
            return self
        mean = np.average(a, axis=0, weights=sample_weight)
        std = np.sqrt(np.average((a - mean) ** 2, axis=0, weights=sample_weight))
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        self.mean, self.scale = mean.tolist(), std.tolist()
        return self

    def transform(self, a: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return a
        return (a - np.asarray(self.mean)) / np.asarray(self.scale)

    def inverse_transform(self, a: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return a
        return a * np.asarray(self.scale) + np.asarray(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        return cls(enabled=bool(d["enabled"]), mean=list(d["mean"]), scale=list(d["scale"]))
