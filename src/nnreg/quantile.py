"""Quantile scaling: each numeric column mapped through its training quantiles to a normal.

``scaling="quantile"`` does what TabM and RealMLP users do with scikit-learn's
``QuantileTransformer(output_distribution="normal")``: every numeric column becomes about
standard normal on the training rows, whatever its shape (skew, long tails and outliers go,
the order of the values stays).

Fit, per column: the quantiles at ``K = min(1000, max(2, rows // 2))`` evenly spaced levels
``q_j = j / (K - 1)`` (at most 1000 knots, and at most one per two rows), weighted like the
other statistics (numpy's ``inverted_cdf``, so that an integer sample weight acts exactly
like repeated rows; rows of weight 0 are left out). A value that fills several levels (a
low-cardinality column) becomes one knot at the middle of its levels, so the knots ``x_j``
strictly increase. (scikit-learn's transform gives a repeated interior quantile that middle
level too, but maps the lowest and highest values to -5.2 and 5.2 even when they fill half
the levels, a binary column among them.) Each level becomes the normal score
``z_j = Phi^-1(q_j)``, with ``q`` clipped to ``[1e-7, 1 - 1e-7]`` (``|z| <= 5.2``, as
scikit-learn). A column with one distinct value has one knot, at ``z = 0``, so it maps to 0.

Transform: piecewise-linear interpolation between the knots ``(x_j, z_j)``, directly in
``z``-space, constant beyond the end knots. scikit-learn interpolates the levels and then
applies ``Phi^-1``; interpolating ``z`` instead keeps the map monotone and continuous, agrees
with scikit-learn closely between the interior knots (by the interpolation error of
``Phi^-1``: with 1000 knots at most 2e-5 between the 5% and 95% levels and 0.034 next to the
end segments; in the end segments, where ``Phi^-1`` bends most, up to about 1.3), and needs
only basic operators: :func:`onnx_transform`
builds the very same arithmetic as :func:`transform` (find the segment, then
``z_j + (x - x_j) / (x_{j+1} - x_j) * (z_{j+1} - z_j)``, capped at ``z_{j+1}``), so an
exported graph reproduces it in float64. The arithmetic runs on half the values, so that the
difference of two knots never overflows.

State, plain JSON: ``{"x": [knots of each numeric column], "z": [their normal scores]}``.
Every column keeps its own number of knots (no padding to check on load); the ONNX graph pads
them to one table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import ndtri

__all__ = [
    "MAX_KNOTS",
    "checked_knots",
    "fit_knots",
    "knots_from_quantiles",
    "onnx_transform",
    "transform",
]

MAX_KNOTS = 1000
BOUND = 1e-7  # quantile levels are clipped to [BOUND, 1 - BOUND] before Phi^-1
Z_MAX = float(-ndtri(BOUND))  # 5.1993..., the largest |z| a knot can have

Knots = dict[str, list[list[float]]]


def n_knots(rows: int) -> int:
    """Quantile levels for a column of ``rows`` values: one per two rows, 2 to 1000."""
    return min(MAX_KNOTS, max(2, rows // 2))


def fit_knots(num: np.ndarray, w: np.ndarray | None = None) -> Knots:
    """The knots of every column of ``num`` (rows, columns), which holds no NaN."""
    if w is not None:  # a row of weight 0 does not count, not even as an end knot
        num, w = num[w > 0], w[w > 0]
    d = num.shape[1]
    if len(num) == 0:
        return {"x": [[0.0]] * d, "z": [[0.0]] * d}
    levels = np.linspace(0.0, 1.0, n_knots(len(num)))
    # (levels, columns); "inverted_cdf" as nnreg.preprocess's medians and quartiles
    x = np.quantile(num, levels, axis=0, weights=w, method="inverted_cdf")
    pairs = [knots_from_quantiles(x[:, j]) for j in range(d)]
    return {"x": [p[0] for p in pairs], "z": [p[1] for p in pairs]}


def knots_from_quantiles(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Distinct knots and their normal scores from non-decreasing quantiles ``x`` at the
    levels ``j / (len(x) - 1)`` (at least two): a run of equal quantiles is one knot at the
    middle of its levels."""
    first = np.flatnonzero(np.r_[True, x[1:] > x[:-1]])  # each run's first level
    last = np.r_[first[1:] - 1, len(x) - 1]
    # The middle level is (first + last) / den; the upper half is scored as the mirror of the
    # lower, so that the scores are exactly symmetric (the middle level scores 0 exactly).
    num, den = first + last, 2 * (len(x) - 1)
    low = np.minimum(num, den - num) / den
    z = ndtri(np.maximum(low, BOUND)) * np.where(num > den - num, -1.0, 1.0)
    return x[first].astype(np.float64).tolist(), z.tolist()


def _segments(x: list[float], z: list[float]) -> tuple[np.ndarray, ...]:
    """Per knot j of one column: (x_j / 2, the segment's width in halves, z_j, its rise,
    z_{j+1}); the last knot's segment is flat, of width 1."""
    h, zz = 0.5 * np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
    width = np.append(np.diff(h), 1.0)
    width[width <= 0] = 1.0  # halves of two subnormal knots may coincide: never selected
    return h, width, zz, np.append(np.diff(zz), 0.0), np.append(zz[1:], zz[-1])


def transform(knots: Knots, a: np.ndarray) -> np.ndarray:
    """(rows, columns) raw -> (rows, columns) normal scores; NaN stays NaN."""
    out = np.empty_like(a, dtype=np.float64)
    for j, (x, z) in enumerate(zip(knots["x"], knots["z"], strict=True)):
        h, width, z0, rise, z1 = _segments(x, z)
        xc = np.minimum(np.maximum(0.5 * a[:, j], h[0]), h[-1])  # (rows,)
        i = np.searchsorted(h, xc, side="right") - 1  # the last knot <= xc
        # The same operations, in the same order, as onnx_transform.
        out[:, j] = np.minimum(z0[i] + (xc - h[i]) / width[i] * rise[i], z1[i])
    return out


def checked_knots(v: Any, columns: int, used: bool) -> Knots:
    """Saved knots for ``columns`` numeric columns (none unless ``used``), or ValueError
    naming the problem: they may come from a file nnreg did not write."""
    if not used:
        if v != {}:
            raise ValueError("the input preprocessing has quantile knots but another scaling")
        return {}
    if not (
        isinstance(v, dict)
        and set(v) == {"x", "z"}
        and all(isinstance(v[k], list) and len(v[k]) == columns for k in ("x", "z"))
    ):
        raise ValueError(
            "the input preprocessing's quantile knots are not a list of knots and one of normal "
            "scores per numeric column"
        )
    for j, (x, z) in enumerate(zip(v["x"], v["z"], strict=True)):
        if not (_numbers(x) and _numbers(z) and 1 <= len(x) == len(z) <= MAX_KNOTS):
            raise ValueError(
                f"the quantile knots of numeric column {j} are not 1 to {MAX_KNOTS} finite "
                "numbers with a normal score each"
            )
        xs, zs = np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
        if not (np.all(np.diff(xs) > 0) and np.all(np.diff(zs) >= 0)):
            raise ValueError(f"the quantile knots of numeric column {j} do not increase")
        if np.abs(zs).max() > Z_MAX:
            raise ValueError(
                f"the quantile knots of numeric column {j} have a normal score beyond +-{Z_MAX:.2f}"
            )
    return {k: [[float(e) for e in col] for col in v[k]] for k in ("x", "z")}


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) for e in v
    )


def onnx_transform(g: Any, knots: Knots, x: str) -> str:
    """ONNX nodes computing :func:`transform` on ``x`` (batch, columns) float64.

    ``g`` is an :class:`nnreg.onnx_graph.Graph`. The knots of all columns are padded to one
    power-of-two width P and flattened; a branchless binary search (log2 P steps of Gather,
    LessOrEqual and Where) finds each value's segment, so memory grows with the batch times
    the columns, not times the knots.
    """
    segs = [_segments(a, b) for a, b in zip(knots["x"], knots["z"], strict=True)]
    size = 1 << (max(len(s[0]) for s in segs) - 1).bit_length()  # P >= every column's knots

    def table(hint: str, k: int, pad: float) -> str:  # (columns * P,) float64
        parts = [np.pad(s[k], (0, size - len(s[k])), constant_values=pad) for s in segs]
        return g.const(hint, np.concatenate(parts), np.float64)

    half = g.op("Mul", [x, g.const("half", 0.5, np.float64)])
    low = g.const("knot_low", [s[0][0] for s in segs], np.float64)
    high = g.const("knot_high", [s[0][-1] for s in segs], np.float64)
    xc = g.op("Min", [g.op("Max", [half, low]), high], "knot_clipped")  # (batch, columns)
    h = table("knots", 0, math.inf)  # +inf padding: never <= a value
    idx = g.const("knot_first", np.arange(len(segs)) * size, np.int64)  # (columns,)
    step = size // 2
    while step:  # idx: the last knot <= xc, as (batch, columns) positions in the tables
        cand = g.op("Add", [idx, g.const("step", step, np.int64)])
        below = g.op("LessOrEqual", [g.op("Gather", [h, cand], axis=0), xc])
        idx = g.op("Where", [below, cand, idx], "knot_index")
        step //= 2

    def at(hint: str, k: int, pad: float) -> str:
        return g.op("Gather", [table(hint, k, pad), idx], axis=0)

    t = g.op("Div", [g.op("Sub", [xc, g.op("Gather", [h, idx], axis=0)]), at("width", 1, 1.0)])
    z = g.op("Add", [at("z", 2, 0.0), g.op("Mul", [t, at("rise", 3, 0.0)])])
    return g.op("Min", [z, at("z_next", 4, 0.0)], "quantile_scaled")
