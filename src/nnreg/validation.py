"""Checks of the data given to the estimator's public methods, made once at the door.

Each check converts its input once (X to a DataFrame with string column names, y to a
(rows, targets) float64 array, sample weights to a (rows,) array) and raises an
:class:`~nnreg.exceptions.NnregError` subclass with one line that names the problem and the
fix; scikit-learn's own validation (``validate_data``, which also records
``n_features_in_`` and ``feature_names_in_`` on the estimator) does the shape and type checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, validate_data

from .exceptions import DataError, DataTypeError

__all__ = ["check_X", "check_sample_weight", "check_y", "drop_zero_weights"]


def check_X(estimator: BaseEstimator, X: Any, *, reset: bool, allow_nan: bool) -> pd.DataFrame:
    """``X`` as a DataFrame with string column names; ``reset`` records its features on
    ``estimator`` (fit), else checks them against the recorded ones (predict)."""
    if not reset and isinstance(X, pd.DataFrame) and _known_columns(estimator, X):
        return X  # what validate_data would find: the fitted names, in order, and some rows
    with _as_data_errors():
        if isinstance(X, pd.DataFrame):
            validate_data(estimator, X, reset=reset, skip_check_array=True)
            if X.shape[0] == 0:
                raise DataError(
                    f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 "
                    "is required: X has no rows."
                )
            return X.set_axis([str(c) for c in X.columns], axis=1)
        arr = validate_data(estimator, X, reset=reset, dtype=np.float64, ensure_all_finite=False)
    _require_finite(arr, "X", allow_nan=allow_nan)
    return pd.DataFrame(arr, columns=[f"x{j}" for j in range(arr.shape[1])], copy=False)


def _known_columns(estimator: BaseEstimator, X: pd.DataFrame) -> bool:
    """True when ``X`` has rows and exactly the string columns ``estimator`` was fitted on,
    in order (the common case at prediction, checked in microseconds)."""
    names = getattr(estimator, "feature_names_in_", None)
    columns = X.columns.tolist()
    return (
        names is not None
        and X.shape[0] > 0
        and len(columns) == len(names)
        and all(type(c) is str for c in columns)
        and all(c == n for c, n in zip(columns, names, strict=True))
    )


def check_y(y: Any, n_rows: int, n_outputs: int | None = None) -> tuple[np.ndarray, bool]:
    """``y`` as (rows, targets) float64, and whether it was 1-D; ``n_outputs`` (when
    continuing a fit) is the number of targets it must have."""
    with _as_data_errors():
        if y is None:
            raise DataError(
                "Regressor requires y to be passed, but the target y is None; give the "
                "target values to fit."
            )
        arr = check_array(
            y, ensure_2d=False, dtype=np.float64, input_name="y", ensure_all_finite=False
        )
    _require_finite(arr, "y", allow_nan=False)
    if arr.shape[0] != n_rows:
        raise DataError(f"X has {n_rows} rows but y has {arr.shape[0]}; they must match.")
    y_1d = arr.ndim == 1
    arr = arr.reshape(n_rows, -1)
    if n_outputs is not None and arr.shape[1] != n_outputs:
        raise DataError(
            f"y has {arr.shape[1]} targets, but this Regressor was fitted on {n_outputs}."
        )
    return arr, y_1d


def check_sample_weight(sample_weight: Any, n_rows: int) -> np.ndarray | None:
    """(rows,) finite, non-negative weights that are not all zero, or None."""
    if sample_weight is None:
        return None
    with _as_data_errors():
        w = check_array(
            sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight"
        )
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise DataError(
            f"sample_weight.shape == {w.shape}, expected ({n_rows},): one weight per row."
        )
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise DataError("sample_weight must be finite, non-negative and not all zero.")
    return w


def drop_zero_weights(
    frame: pd.DataFrame, y: np.ndarray, w: np.ndarray | None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    """Rows of weight 0 cannot change the fit: drop them, so that weighting is exactly like
    repeating and removing rows; equal weights then change nothing and are dropped too."""
    if w is None:
        return frame, y, None
    keep = w > 0
    if not keep.all():
        rows = np.flatnonzero(keep)
        frame, y, w = frame.iloc[rows], y[rows], w[rows]
    return frame, y, (None if np.all(w == w[0]) else w)


@contextlib.contextmanager
def _as_data_errors() -> Iterator[None]:
    """Re-raise scikit-learn's validation errors as nnreg's, as one line each."""
    try:
        yield
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(_one_line(exc)) from exc
    except TypeError as exc:
        raise DataTypeError(_one_line(exc)) from exc


def _one_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith("array="))
    if "could not convert" in text or "argument must be" in text:
        text += "; X must hold numbers (pass a DataFrame to use text columns as categories)"
    return text


def _require_finite(a: np.ndarray, name: str, allow_nan: bool) -> None:
    bad = np.isinf(a) if allow_nan else ~np.isfinite(a)
    if not bad.any():
        return
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    if np.isnan(a[where]):
        raise DataError(
            f"{name} contains {int(np.isnan(a).sum())} NaN values (first at index {where}); "
            "fill or drop them, or use missing='impute' to fill them with the median."
            if name == "X"
            else f"{name} contains NaN (first at index {where}); drop those rows."
        )
    raise DataError(
        f"{name} contains infinite values (inf, first at index {where}); replace or drop them."
    )
