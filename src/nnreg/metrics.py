"""Regression metrics reported by ``nnreg train`` and ``nnreg evaluate``."""

from __future__ import annotations

import numpy as np

__all__ = ["regression_metrics"]


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE and R² of predictions, averaged over targets when there are several.

    >>> regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))["mae"]
    0.3333333333333333
    """
    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)  # (rows, targets)
    p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    err = p - t
    mse = float(np.mean(err**2))
    ss_res = np.sum(err**2, axis=0)
    ss_tot = np.sum((t - t.mean(axis=0)) ** 2, axis=0)
    # R² is undefined for a constant target: 1 for a perfect fit, else 0, as in scikit-learn.
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(np.mean(r2)),
    }
