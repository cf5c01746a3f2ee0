"""Figures, written as PNG files: the loss curve, predicted against actual values, residuals
against predictions, and permutation importance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import regression_metrics

__all__ = ["importance_chart", "loss_curve", "predicted_vs_actual", "residuals"]


class _Agg:
    """The two calls of pyplot the figures make, without pyplot: each figure is drawn on an
    Agg canvas of its own (files only, never a display), which skips importing pyplot and
    its backend machinery (a tenth of a second and more of every ``nnreg train``) and keeps
    no global list of open figures, so drawing is safe from any thread."""

    @staticmethod
    def subplots(figsize: tuple[float, float], dpi: int) -> tuple[Any, Any]:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)  # attaches itself to the figure: savefig renders with Agg
        return fig, fig.subplots()

    @staticmethod
    def close(fig: Any) -> None:
        """Nothing to do: no figure manager holds the figure; it goes with its last use."""


def _pyplot() -> _Agg:
    return _Agg()


def loss_curve(
    history: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    best_epoch: int | None = None,
    ylabel: str = "loss",
) -> Path:
    """Training (and validation, when there was any) loss per epoch, the epoch the weights
    come from marked; log scale when the loss spans decades."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        values = np.asarray(history.get(key, []), dtype=float)
        scored = np.flatnonzero(np.isfinite(values))  # an ensemble scores some epochs only
        if scored.size:  # no legend entry for a line not drawn
            ax.plot(scored, values[scored], label=label, marker="." if scored.size == 1 else "")
    losses = np.asarray(history.get("train_loss", []), dtype=float)
    if losses.size and np.all(losses > 0) and losses.max() / max(losses.min(), 1e-300) > 100:
        ax.set_yscale("log")
    if best_epoch is not None and 0 <= best_epoch < losses.size - 1:  # not simply the last
        ax.axvline(best_epoch, color="gray", linestyle=":", label=f"weights: epoch {best_epoch}")
    return _finish(plt, fig, ax, ("epoch", ylabel, "Training loss"), path)


def predicted_vs_actual(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | Path,
    title: str = "Predicted vs actual",
    *,
    target: str = "y",
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    coverage: float | None = None,
) -> Path:
    """Predictions against true values with the identity line, the RMSE and R² in a corner,
    and each prediction's interval when ``bounds`` (lower, upper) are given."""
    plt = _pyplot()
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    if bounds is not None:
        lower, upper = np.ravel(bounds[0]), np.ravel(bounds[1])
        _bars(ax, t, lower, upper, _inside(t, lower, upper), coverage)
    ax.scatter(t, p, s=10, alpha=0.6, zorder=3)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="perfect")
    _scores(ax, t, p)
    return _finish(plt, fig, ax, (f"actual {target}", f"predicted {target}", title), path)


def residuals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | Path,
    title: str = "Residuals",
    *,
    target: str = "y",
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    coverage: float | None = None,
) -> Path:
    """Residuals (actual - predicted) against the predictions, with the zero line, and each
    prediction's interval around it when ``bounds`` are given: a point outside its bar is
    a row the interval missed."""
    plt = _pyplot()
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if bounds is not None:
        lower, upper = np.ravel(bounds[0]), np.ravel(bounds[1])
        _bars(ax, p, lower - p, upper - p, _inside(t, lower, upper), coverage)
    ax.scatter(p, t - p, s=10, alpha=0.6, zorder=3)
    ax.axhline(0, color="black", linewidth=1, linestyle="--", label="zero")
    _scores(ax, t, p)
    labels = (f"predicted {target}", f"actual - predicted {target}", title)
    return _finish(plt, fig, ax, labels, path)


def _inside(t: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    return float(np.mean((t >= lower) & (t <= upper)))


def _bars(
    ax: Any, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, share: float, coverage: float | None
) -> None:
    """Each row's interval as a faint vertical bar, labelled with the share of rows inside."""
    asked = f"{coverage:.0%} interval, " if coverage is not None else "interval, "
    label = f"{asked}{share:.0%} of these rows inside"
    ax.vlines(x, lo, hi, color="#dd8452", alpha=0.35, linewidth=1.5, zorder=2, label=label)


def _scores(ax: Any, t: np.ndarray, p: np.ndarray) -> None:
    """RMSE and R² of these rows in the upper-left corner."""
    scores = regression_metrics(t, p)
    text = f"RMSE {scores['rmse']:.4g}\nR² {scores['r2']:.3f}\n{t.size} rows"
    box = {"boxstyle": "round", "facecolor": "white", "alpha": 0.8}
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=9, bbox=box)


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
