"""Permutation importance of a fitted model's input columns, as the user knows them.

Built on :func:`sklearn.inspection.permutation_importance`: each column of ``X`` is shuffled
``n_repeats`` times and the model's held-out RMSE measured again; a column's importance is
how much the RMSE grows, in the target's units. The estimator reads the raw columns (it
one-hot encodes categorical ones itself), so a categorical column is permuted as one, never
category by category.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .estimator import Regressor

__all__ = ["Importance", "permutation_importance"]


@dataclass(frozen=True)
class Importance:
    """Per column: the growth of the RMSE when it is shuffled, over ``n_repeats`` shuffles."""

    features: list[str]
    scores: np.ndarray  # (features, repeats): RMSE growth of each shuffle
    baseline_rmse: float  # the RMSE with nothing shuffled

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.scores.mean(axis=1))

    @property
    def std(self) -> np.ndarray:
        return np.asarray(self.scores.std(axis=1))

    def to_frame(self) -> pd.DataFrame:
        """One row per column, the most important first: ``importance`` (mean RMSE growth),
        ``std`` over the shuffles, and ``share`` of the baseline RMSE."""
        frame = pd.DataFrame(
            {
                "feature": self.features,
                "importance": self.mean,
                "std": self.std,
                "share": self.mean / self.baseline_rmse if self.baseline_rmse > 0 else np.nan,
            }
        )
        order = np.lexsort((frame["feature"].to_numpy(), -frame["importance"].to_numpy()))
        return frame.iloc[order].reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        rows = self.to_frame().to_dict(orient="records")
        return {
            "baseline_rmse": self.baseline_rmse,
            "repeats": int(self.scores.shape[1]),
            "features": [
                {k: (float(v) if k != "feature" else str(v)) for k, v in r.items()} for r in rows
            ],
        }


def permutation_importance(
    reg: Regressor, X: Any, y: Any, *, n_repeats: int = 5, random_state: int | None = 0
) -> Importance:
    """The permutation importance of each column of ``X`` for the fitted ``reg`` on rows
    ``(X, y)`` (use rows the model did not train on)."""
    from sklearn.inspection import permutation_importance as shuffled
    from sklearn.metrics import root_mean_squared_error

    from .exceptions import ConfigError

    if not (isinstance(n_repeats, int) and not isinstance(n_repeats, bool) and n_repeats >= 1):
        raise ConfigError(f"n_repeats must be an integer >= 1, got {n_repeats!r}.")
    result = shuffled(
        reg,
        X,
        y,
        scoring="neg_root_mean_squared_error",
        n_repeats=n_repeats,
        random_state=random_state,
    )
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
    else:
        names = [f"x{j}" for j in range(np.shape(X)[1])]
    baseline = float(root_mean_squared_error(np.asarray(y, dtype=float), reg.predict(X)))
    return Importance(names, np.asarray(result.importances, dtype=float), baseline)
