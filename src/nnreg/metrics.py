"""Regression metrics reported by ``nnreg train`` and ``nnreg evaluate``."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["RunningMetrics", "regression_metrics"]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE and R² of predictions, averaged over targets when there are several.

    >>> regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))["mae"]
    0.3333333333333333
    """
    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)  # (rows, targets)
    p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    # Errors too large to square are infinite (and reported as such): no warning for them.
    with np.errstate(over="ignore", invalid="ignore"):
        err = p - t
        mse = float(np.mean(err**2))
        ss_res = np.sum(err**2, axis=0)
        ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(err))),
        "r2": _r2(ss_res, ss_tot, len(t)),
    }


def _r2(ss_res: np.ndarray, ss_tot: np.ndarray, rows: int) -> float:
    """R² averaged over targets. As in scikit-learn: undefined (NaN) for fewer than two
    rows, and for a constant target 1 for a perfect fit, else 0."""
    if rows < 2:
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(np.mean(r2))


class RunningMetrics:
    """The metrics of :func:`regression_metrics`, accumulated chunk by chunk in float64.

    Squared and absolute errors are summed; each target's spread (for R²) is merged as a
    count, mean and sum of squared deviations, so no chunk is kept.

    >>> m = RunningMetrics()
    >>> m.update(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    >>> m.update(np.array([3.0]), np.array([4.0]))
    >>> m.result()["mae"]
    0.3333333333333333
    """

    def __init__(self) -> None:
        self.rows = 0
        self.sse = self.sae = self.mean = self.m2 = np.zeros(0)

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)  # (rows, targets)
        p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
        if len(t) == 0:
            return
        if self.rows == 0:
            zeros = np.zeros(t.shape[1])
            self.sse, self.sae, self.mean, self.m2 = zeros, zeros.copy(), zeros.copy(), zeros.copy()
        err = p - t
        self.sse = self.sse + np.sum(err**2, axis=0)
        self.sae = self.sae + np.sum(np.abs(err), axis=0)
        n_a, n_b = self.rows, len(t)
        mean_b = t.mean(axis=0)
        delta = mean_b - self.mean
        self.m2 = self.m2 + np.sum((t - mean_b) ** 2, axis=0) + delta**2 * n_a * n_b / (n_a + n_b)
        self.mean = self.mean + delta * n_b / (n_a + n_b)
        self.rows = n_a + n_b

    def result(self) -> dict[str, float]:
        cells = self.rows * len(self.sse)
        mse = float(np.sum(self.sse) / cells)
        return {
            "mse": mse,
            "rmse": float(np.sqrt(mse)),
            "mae": float(np.sum(self.sae) / cells),
            "r2": _r2(self.sse, self.m2, self.rows),
        }
