"""Figures: the loss curve and predicted-against-actual values, written as PNG files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["importance_chart", "loss_curve", "predicted_vs_actual"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def loss_curve(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Plot training (and any validation) loss per epoch; log scale when it spans decades."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        values = np.asarray(history.get(key, []), dtype=float)
        if values.size:
            ax.plot(np.arange(values.size), values, label=label)
    losses = np.asarray(history.get("train_loss", []), dtype=float)
    if losses.size and np.all(losses > 0) and losses.max() / max(losses.min(), 1e-300) > 100:
        ax.set_yscale("log")
    return _finish(plt, fig, ax, ("epoch", "loss", "Training loss"), path)


def predicted_vs_actual(
    y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, title: str = "Predicted vs actual"
) -> Path:
    """Scatter of predictions against true values, with the identity line."""
    plt = _pyplot()
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(t, p, s=10, alpha=0.6)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="perfect")
    return _finish(plt, fig, ax, ("actual", "predicted", title), path)


def importance_chart(frame: Any, baseline_rmse: float, path: str | Path, title: str) -> Path:
    """Horizontal bars of permutation importance (RMSE growth), the most important on top,
    with the spread over the shuffles as error bars."""
    plt = _pyplot()
    shown = frame.head(30).iloc[::-1]  # barh draws bottom-up
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.32 * len(shown)), dpi=100)
    ax.barh(shown["feature"], shown["importance"], xerr=shown["std"], color="#4c72b0")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"RMSE growth when shuffled (baseline RMSE {baseline_rmse:.4g})")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": "nnreg"})
    plt.close(fig)
    return Path(path)


def _finish(plt: Any, fig: Any, ax: Any, labels: tuple[str, str, str], path: str | Path) -> Path:
    """Label, grid and legend the axes, then write the figure as PNG and free it."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(
        path, format="png", metadata={"Software": "nnreg"}
    )  # by content, not by the (temporary) file's suffix
    plt.close(fig)
    return Path(path)
