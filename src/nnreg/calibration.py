"""Prediction intervals: split-conformal calibration on held-out rows
(:class:`ConformalCalibrator`), and the helpers that score those rows for a fit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .exceptions import ConfigError
from .metrics import regression_metrics
from .model import MLP, Predicts, predict_moments
from .preprocess import Standardizer
from .train import Validation

__all__ = [
    "ConformalCalibrator",
    "OutOfFold",
    "calibrate",
    "cross_conformal",
    "held_out_metrics",
    "out_of_fold",
    "prediction_interval",
    "rows_for",
]


def out_of_fold(X_cal: torch.Tensor, folds: np.ndarray, helpers: list[MLP]) -> np.ndarray:
    """Standardised predictions (rows, targets) of the calibration rows, each by the helper
    member that did not train on it. Their residuals are the conformity scores, unscaled:
    one network's out-of-sample residuals are no smaller than the mean of members trained
    on every row, so the intervals keep (slightly more than) their coverage, and the
    members' spread on rows they fitted is not the spread a new row gets. The same
    predictions give the held-out metrics: those of one network, so no flattery."""
    out = torch.stack([h.predict_float64(X_cal) for h in helpers]).cpu().numpy()
    return out[folds, np.arange(out.shape[1])]  # (rows, targets)


def calibrate(model: Predicts, validation: Validation | None) -> ConformalCalibrator | None:
    """The held-out rows' conformity scores, for prediction intervals; None without rows."""
    if validation is None:
        return None
    X_val, y_val, _ = validation
    mean, std = predict_moments(model, X_val)
    return ConformalCalibrator.fit(y_val.cpu().double().numpy(), mean, std)


# Each row's prediction by a model that did not train on it: mean and spread (rows,
# targets) in the target's units (:attr:`nnreg.epochs.EpochChoice.out_of_fold`).
OutOfFold = tuple[np.ndarray, np.ndarray]


def cross_conformal(
    y_scaler: Standardizer, y: np.ndarray, out_of_fold: OutOfFold
) -> tuple[ConformalCalibrator, np.ndarray]:
    """Conformity scores of every row from its out-of-fold prediction, in ``y_scaler``'s
    standardised units, and those standardised predictions (rows, targets): cross-conformal
    with the epoch search's three folds. Their models trained on two thirds of the rows, so
    their residuals are if anything larger than the fit's; but the scores divide them by
    those models' spread, and the fit's members agree more or less than the trials' did
    (median spread 0.8 to 1.2 times theirs on four small tables), so coverage is not
    guaranteed either way: over ten splits of each of eight tables, 0.850 (economics) to
    0.939 for 90% intervals."""
    mean, spread = out_of_fold
    scaled = y_scaler.transform(mean)
    target = y_scaler.transform(np.asarray(y, dtype=np.float64))
    # a fitted scaler holds its scale also when disabled (ones), as the trials' unscaling did
    return ConformalCalibrator.fit(target, scaled, spread / np.asarray(y_scaler.scale)), scaled


def held_out_metrics(y_scaler: Standardizer, y: np.ndarray, scaled: np.ndarray) -> dict[str, float]:
    """``rows`` and the metrics of :func:`~nnreg.metrics.regression_metrics` of standardised
    predictions ``scaled`` of held-out rows, in the target's units."""
    pred = y_scaler.inverse_transform(np.asarray(scaled, dtype=np.float64))
    return {"rows": float(len(y)), **regression_metrics(y, pred)}


def prediction_interval(
    calibrator: ConformalCalibrator,
    y_scaler: Standardizer,
    mean: np.ndarray,
    std: np.ndarray,
    coverage: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) in the target's units from standardised mean and spread."""
    half = calibrator.halfwidth(std, coverage)
    return y_scaler.inverse_transform(mean - half), y_scaler.inverse_transform(mean + half)


def rows_for(coverage: float) -> int:
    """The fewest held-out rows ``n`` whose ``ceil((n + 1) coverage)``-th score exists."""
    n = max(1, math.floor(coverage / (1 - coverage)) - 1)  # below (n + 1) c <= n's bound
    while math.ceil((n + 1) * coverage) > n:
        n += 1
    return n


@dataclass
class ConformalCalibrator:
    """Split-conformal intervals from held-out rows, optionally scaled by the ensemble's spread.

    Scaled (``std`` given to :meth:`fit`): the score of a held-out row is
    ``|y - mean| / (std + floor)``, ``floor`` the median spread on those rows, and an interval
    of coverage ``c`` is ``mean +- q * (std + floor)``. Unscaled: the score is ``|y - mean|``
    and the interval ``mean +- q``. ``q`` is the ``ceil((n + 1) c) / n`` empirical quantile of
    the scores, which covers a new exchangeable row with probability >= c, provided the
    scores of the held-out rows and of new rows are computed alike. Everything is per target
    and in the model's (standardised) target units.
    """

    scores: list[list[float]] = field(default_factory=list)  # (targets, rows), sorted
    floor: list[float] = field(default_factory=list)  # per target
    scaled: bool = True

    @classmethod
    def fit(
        cls, y: np.ndarray, mean: np.ndarray, std: np.ndarray | None = None
    ) -> ConformalCalibrator:
        # y, mean, std: (rows, targets)
        if std is None:
            scores = np.sort(np.abs(y - mean), axis=0)
            return cls(scores=scores.T.tolist(), floor=[0.0] * y.shape[1], scaled=False)
        # The members' spread measures the model's uncertainty, not the noise; adding its
        # median keeps the scaling from blowing up rows where the members happen to agree.
        floor = np.maximum(np.median(std, axis=0), 1e-12)
        scores = np.sort(np.abs(y - mean) / (std + floor), axis=0)
        return cls(scores=scores.T.tolist(), floor=floor.tolist())

    def halfwidth(self, std: np.ndarray, coverage: float) -> np.ndarray:
        """(rows, targets) half-widths of intervals with the given coverage."""
        scores = np.asarray(self.scores)  # (targets, n)
        n = scores.shape[1]
        rank = math.ceil((n + 1) * coverage)
        if rank > n:
            raise ConfigError(
                f"coverage {coverage} needs at least {rows_for(coverage)} "
                f"held-out rows, but only {n} were kept; lower the coverage or raise "
                "validation_fraction."
            )
        q = scores[:, rank - 1]  # (targets,)
        if not self.scaled:
            return np.broadcast_to(q, std.shape).copy()
        return q * (std + np.asarray(self.floor))

    def covers(self, coverage: float) -> bool:
        """Whether there are enough held-out rows for intervals of this coverage."""
        return len(self.scores[0]) >= rows_for(coverage) if self.scores else False

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "floor": self.floor, "scaled": self.scaled}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalCalibrator:
        return cls(
            scores=[list(map(float, s)) for s in d["scores"]],
            floor=list(d["floor"]),
            scaled=bool(d.get("scaled", True)),
        )
