"""Numeric feature embeddings: each numeric input becomes a small vector before the MLP.

Two kinds, after Gorishniy et al., "On Embeddings for Numerical Features in Tabular Deep
Learning" (NeurIPS 2022) and the TabM paper (ICLR 2025), written to match the reference
package ``rtdl_num_embeddings`` (its ``PiecewiseLinearEmbeddings(version="B",
activation=False)`` and ``PeriodicEmbeddings(lite=False)``):

* ``"piecewise"``: quantile bins per feature (:func:`quantile_bins`), each value encoded as
  ``[1, ..., 1, (x - left) / width, 0, ..., 0]`` over its bins, then a per-feature linear
  map to ``d`` numbers, plus a per-feature linear embedding ``x * w + b``. The piecewise
  weights start at zero, so an untrained embedding is linear in ``x``.
* ``"periodic"`` (PLR): ``cos`` and ``sin`` of ``2 pi c x`` for ``k`` trainable frequencies
  ``c`` per feature (initialised from a normal distribution of scale ``sigma``), a
  per-feature linear map to ``d`` numbers, then ReLU.

A feature with ``m`` bins occupies the first ``m - 1`` and the last of ``max_bins`` encoding
slots (the slots between stay zero), as in the reference package, so that every feature's
clamp is one elementwise ``min(max(z, lower), upper)`` with fixed bounds: the first slot is
unbounded below, the last unbounded above, a feature's only bin is not clamped at all.

The bins are state, not parameters: they are buffers of the module, saved in the model folder
with the weights and written into the ONNX graph as constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = [
    "EMBEDDINGS",
    "MIN_ROWS_PER_BIN",
    "PeriodicEmbedding",
    "PiecewiseLinearEmbedding",
    "BIN_BUFFERS",
    "adapted_bins",
    "quantile_bins",
    "share_bins",
]

EMBEDDINGS = ("none", "piecewise", "periodic")
# A piecewise-linear embedding's fitted bins: buffers saved with it, not trained parameters.
BIN_BUFFERS = ("scale", "offset", "lower", "upper")
MIN_ROWS_PER_BIN = 64  # a table of n rows gets at most n // 64 bins per feature
# "No bound" in a clamp: the largest float32, finite so that saved weights stay checkable.
UNBOUNDED = float(np.finfo(np.float32).max)
QUANTILE_ROWS = 200_000  # bins are computed from at most this many rows (a seeded sample)

Cast = Callable[[torch.Tensor], torch.Tensor]


def adapted_bins(n_bins: int, n_rows: int) -> int:
    """Bins per feature for a table of ``n_rows`` training rows: ``n_bins``, but fewer on
    small tables (at least MIN_ROWS_PER_BIN rows per bin on average, and at least 2 bins).

    >>> adapted_bins(48, 100_000), adapted_bins(48, 1_000), adapted_bins(48, 100)
    (48, 15, 2)
    """
    return max(2, min(n_bins, n_rows // MIN_ROWS_PER_BIN))


def quantile_bins(
    X: np.ndarray, n_bins: int, weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """Each column's bin edges: its ``0, 1/n_bins, ..., 1`` quantiles (linear interpolation,
    float64), duplicates removed, so a column with few distinct values gets fewer bins. A
    constant column ``c`` gets the single bin ``[c - 1, c + 1]`` (its encoding is then
    constant). Row ``weights`` count as that many repeats of the row (:func:`_quantiles`).
    Tables over QUANTILE_ROWS rows are sampled (seeded, so bins are reproducible).

    >>> [e.tolist() for e in quantile_bins(np.array([[0.0, 1], [1, 1], [2, 1], [3, 1]]), 2)]
    [[0.0, 1.5, 3.0], [0.0, 2.0]]
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or not np.isfinite(X).all():
        raise ValueError("quantile bins need a finite (rows, features) array with rows")
    if X.shape[0] > QUANTILE_ROWS:
        rows = np.random.default_rng(0).choice(X.shape[0], QUANTILE_ROWS, replace=False)
        X, weights = X[rows], None if weights is None else weights[rows]
    qs = np.linspace(0.0, 1.0, n_bins + 1)
    edges = []
    for column in _quantiles(X, qs, weights).T:
        e = np.unique(column)
        edges.append(e if len(e) >= 2 else np.array([e[0] - 1.0, e[0] + 1.0]))
    return edges


def _quantiles(X: np.ndarray, qs: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """``np.quantile(X, qs, axis=0)`` (linear), where a row of weight w counts as w rows: at
    position ``q * (W - 1)`` of the rows sorted and repeated (W the weights' sum), so integer
    weights give exactly the quantiles of the repeated rows."""
    if weights is None:
        return np.quantile(X, qs, axis=0)
    w = np.asarray(weights, dtype=np.float64)
    out = np.empty((len(qs), X.shape[1]))
    position = qs * (w.sum() - 1.0)
    below = np.floor(position)
    last = X.shape[0] - 1
    for j in range(X.shape[1]):
        order = np.argsort(X[:, j], kind="stable")
        values, ends = X[order, j], np.cumsum(w[order])  # row i fills [ends[i-1], ends[i])
        lo = values[np.minimum(np.searchsorted(ends, below, side="right"), last)]
        hi = values[np.minimum(np.searchsorted(ends, below + 1, side="right"), last)]
        out[:, j] = lo + (position - below) * (hi - lo)
    return out


def _nlinear_init(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Uniform in +-1/sqrt(fan in), as the reference package initialises its layers."""
    bound = weight.shape[-2] ** -0.5
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


class PiecewiseLinearEmbedding(nn.Module):
    """Piecewise-linear embeddings of ``n_features`` numeric inputs, ``max_bins`` slots each,
    ``d`` numbers out: ``(batch, n_features) -> (batch, n_features, d)``.

    Built empty (every feature one bin of ``[0, 1]``); :meth:`set_bins` installs fitted
    edges. A saved model restores them from its state dict.
    """

    scale: torch.Tensor
    offset: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor

    def __init__(self, n_features: int, max_bins: int, d: int) -> None:
        super().__init__()
        self.n_features, self.max_bins, self.d = n_features, max_bins, d
        # The linear embedding x * w + b (its initial values drawn first, as the reference).
        self.linear_weight = nn.Parameter(torch.empty(n_features, d))
        self.linear_bias = nn.Parameter(torch.empty(n_features, d))
        bound = d**-0.5
        nn.init.uniform_(self.linear_weight, -bound, bound)
        nn.init.uniform_(self.linear_bias, -bound, bound)
        # The piecewise part: (features, slots, d), zero at the start.
        self.weight = nn.Parameter(torch.zeros(n_features, max_bins, d))
        # Encoding z = x * scale + offset per slot, clamped to [lower, upper].
        for name in BIN_BUFFERS:
            self.register_buffer(name, torch.zeros(n_features, max_bins))
        self.set_bins([np.array([0.0, 1.0])] * n_features)

    def set_bins(self, edges: list[np.ndarray]) -> None:
        """Install each feature's sorted bin edges (at most ``max_bins + 1`` each)."""
        if len(edges) != self.n_features:
            raise ValueError(f"{len(edges)} features' bins for {self.n_features} features")
        B = self.max_bins
        scale, offset = np.zeros((self.n_features, B)), np.zeros((self.n_features, B))
        lower, upper = np.zeros((self.n_features, B)), np.ones((self.n_features, B))
        lower[:, 0], upper[:, -1] = -UNBOUNDED, UNBOUNDED
        for i, e in enumerate(edges):
            m = len(e) - 1  # bins of this feature
            if not 1 <= m <= B or not (np.diff(e) > 0).all():
                raise ValueError(f"feature {i}: bin edges must be 2 to {B + 1} increasing values")
            width = np.diff(e)
            slots = [*range(m - 1), B - 1]  # the first m - 1 slots and the last
            scale[i, slots], offset[i, slots] = 1.0 / width, -e[:-1] / width
            if m == 1:
                lower[i, -1] = -UNBOUNDED  # one bin: x scaled to its range, not clamped
        if B == 1:
            upper[:, 0] = UNBOUNDED
        for name, a in zip(BIN_BUFFERS, (scale, offset, lower, upper), strict=True):
            buffer: torch.Tensor = getattr(self, name)
            buffer.copy_(torch.as_tensor(a, dtype=buffer.dtype))

    def encode(self, x: torch.Tensor, cast: Cast = lambda t: t) -> torch.Tensor:
        """``(batch, features) -> (batch, features, max_bins)``, the piecewise-linear code."""
        z = torch.addcmul(cast(self.offset), cast(self.scale), x[..., None])
        return torch.minimum(torch.maximum(z, cast(self.lower)), cast(self.upper))

    def forward(self, x: torch.Tensor, cast: Cast = lambda t: t) -> torch.Tensor:
        code = self.encode(x, cast)  # (batch, features, slots)
        piecewise = torch.einsum("bfk,fkd->bfd", code, cast(self.weight))
        linear = torch.addcmul(cast(self.linear_bias), cast(self.linear_weight), x[..., None])
        return linear + piecewise


class PeriodicEmbedding(nn.Module):
    """Periodic embeddings (PLR) of ``n_features`` numeric inputs with ``k`` frequencies
    each, ``d`` numbers out: ``(batch, n_features) -> (batch, n_features, d)``."""

    def __init__(self, n_features: int, k: int, d: int, sigma: float = 0.01) -> None:
        super().__init__()
        self.n_features, self.k, self.d = n_features, k, d
        self.frequencies = nn.Parameter(torch.empty(n_features, k))
        nn.init.trunc_normal_(self.frequencies, 0.0, sigma, a=-3 * sigma, b=3 * sigma)
        self.weight = nn.Parameter(torch.empty(n_features, 2 * k, d))
        self.bias = nn.Parameter(torch.empty(n_features, d))
        _nlinear_init(self.weight, self.bias)

    def forward(self, x: torch.Tensor, cast: Cast = lambda t: t) -> torch.Tensor:
        angle = (2 * math.pi) * cast(self.frequencies) * x[..., None]  # (batch, features, k)
        periodic = torch.cat([torch.cos(angle), torch.sin(angle)], -1)
        out = torch.einsum("bfk,fkd->bfd", periodic, cast(self.weight)) + cast(self.bias)
        return torch.relu(out)


def share_bins(network: nn.Module, source: nn.Module) -> None:
    """Give ``network``'s piecewise-linear embedding the bins of ``source``'s (a network of
    the same configuration), keeping its own parameters; nothing without one."""
    mine, theirs = getattr(network, "embedding", None), getattr(source, "embedding", None)
    if isinstance(mine, PiecewiseLinearEmbedding) and isinstance(theirs, PiecewiseLinearEmbedding):
        with torch.no_grad():
            for name in BIN_BUFFERS:
                getattr(mine, name).copy_(getattr(theirs, name))
