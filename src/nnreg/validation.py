"""Checks of the data given to the estimator's public methods, made once at the door.

Each check converts its input once (X to a DataFrame with string column names, y to a
(rows, targets) float64 array, sample weights to a (rows,) array) and raises an
:class:`~nnreg.exceptions.NnregError` subclass with one line that names the problem and the
fix; scikit-learn's own validation (``validate_data``, which also records
``n_features_in_`` and ``feature_names_in_`` on the estimator) does the shape and type checks.

Besides pandas DataFrames and arrays, X may be a polars DataFrame, read as the pandas frame
its ``to_pandas()`` gives (text, ``pl.Categorical`` and ``pl.Enum`` columns become
categorical features, nulls missing values; polars is imported by nobody here, only used
when given), or a SciPy sparse matrix or array (CSR, CSC, COO, ...). A tabular network
takes dense inputs, and standardising the columns would fill them in anyway, so a sparse X
is densified once per call: at most :data:`MAX_DENSE_VALUES` values, which keeps the copy
to 2 GiB (float64); a larger one is refused with a message saying to pass fewer rows (for
prediction, in chunks) or fewer columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, validate_data

from .exceptions import DataError, DataTypeError

__all__ = ["MAX_DENSE_VALUES", "check_X", "check_sample_weight", "check_y", "drop_zero_weights"]

MAX_DENSE_VALUES = 2**28  # the most values a sparse X is densified to (2 GiB in float64)


def check_X(
    estimator: BaseEstimator,
    X: Any,
    *,
    reset: bool,
    allow_nan: bool,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """``X`` as a DataFrame with string column names; ``reset`` records its features on
    ``estimator`` (fit), else checks them against the recorded ones (predict). A polars
    DataFrame or a sparse matrix is converted first (see the module's docstring).

    ``columns`` (at prediction: the names the fitted columns were given) name X's columns
    by position once the checks pass, unless X's own names are those, so that an array can
    be given to a model fitted on a DataFrame and the other way round (scikit-learn warns
    that the names are not checked).
    """
    X = _densified(from_polars(X, "X"))
    if not reset and isinstance(X, pd.DataFrame):
        if _known_columns(estimator, X):
            return X  # what validate_data would find: the fitted names, in order, and rows
        _check_names(estimator, X)
    with _as_data_errors():
        if isinstance(X, pd.DataFrame):
            validate_data(estimator, X, reset=reset, skip_check_array=True)
            if X.shape[0] == 0:
                raise DataError(
                    f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 "
                    "is required: X has no rows."
                )
            return X.set_axis(_names(X, columns), axis=1)
        arr = validate_data(estimator, X, reset=reset, dtype=np.float64, ensure_all_finite=False)
    _require_finite(arr, "X", allow_nan=allow_nan)
    names = columns or [f"x{j}" for j in range(arr.shape[1])]
    return pd.DataFrame(arr, columns=names, copy=False)


def _names(X: pd.DataFrame, columns: list[str] | None) -> list[str]:
    """X's column names as strings; given the fitted ``columns``, those by position unless
    X's names are the fitted ones (in any order: then they are matched by name)."""
    names = [str(c) for c in X.columns]
    if columns is None or (len(set(names)) == len(names) and set(names) == set(columns)):
        return names
    return list(columns)


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


def from_polars(a: Any, name: str) -> Any:
    """A polars DataFrame as a pandas one and a polars Series as a NumPy array; anything
    else as it is. polars is not imported: the object's own methods convert it."""
    kind = type(a)
    if not kind.__module__.startswith("polars."):
        return a
    if kind.__name__ == "DataFrame":
        return a.to_pandas()
    if kind.__name__ == "Series":
        return a.to_numpy()
    raise DataTypeError(
        f"{name} is a polars {kind.__name__}; pass a polars DataFrame or Series (collect a "
        "LazyFrame first)."
    )


def _densified(X: Any) -> Any:
    """A SciPy sparse ``X`` as a dense array (at most MAX_DENSE_VALUES values); anything else
    as it is."""
    if not sp.issparse(X):
        return X
    rows, cols = X.shape
    if rows * cols > MAX_DENSE_VALUES:
        raise DataError(
            f"X is a sparse {rows} x {cols} matrix, which nnreg would densify to "
            f"{rows * cols:,} values, over its limit of {MAX_DENSE_VALUES:,} (2 GiB); pass "
            "fewer rows at a time (predict in chunks) or fewer columns (e.g. reduced by "
            "TruncatedSVD)."
        )
    return X.toarray()


def _check_names(estimator: BaseEstimator, X: pd.DataFrame) -> None:
    """Refuse, in one line naming each of them, the columns of ``X`` that were not seen at
    fit and the fitted ones it lacks (only when both sides have string names: otherwise
    scikit-learn's own check warns or refuses)."""
    names = getattr(estimator, "feature_names_in_", None)
    columns = X.columns.tolist()
    if names is None or not all(isinstance(c, str) for c in columns):
        return
    fitted = [str(n) for n in names]
    missing = [n for n in fitted if n not in set(columns)]
    unexpected = [c for c in columns if c not in set(fitted)]
    if not (missing or unexpected):
        return  # the same names in another order, or repeated: scikit-learn says which
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} fitted column(s): {', '.join(map(repr, missing))}")
    if unexpected:
        listed = ", ".join(map(repr, unexpected))
        parts.append(f"{len(unexpected)} column(s) not seen at fit: {listed}")
    raise DataError(
        "X's columns are not those the Regressor was fitted on: "
        + "; ".join(parts)
        + "; pass the fitted columns, e.g. X[reg.feature_names_in_]."
    )


def check_y(y: Any, n_rows: int, n_outputs: int | None = None) -> tuple[np.ndarray, bool]:
    """``y`` as (rows, targets) float64, and whether it was 1-D; ``n_outputs`` (when
    continuing a fit) is the number of targets it must have."""
    y = from_polars(y, "y")
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
    sample_weight = from_polars(sample_weight, "sample_weight")
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
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Rows of weight 0 cannot change the fit: drop them, so that weighting is exactly like
    repeating and removing rows; equal weights then change nothing and are dropped too. The
    last item is the kept rows' numbers in the table (None when every row is kept), which
    data errors name."""
    if w is None:
        return frame, y, None, None
    keep = w > 0
    rows = None
    if not keep.all():
        rows = np.flatnonzero(keep)
        frame, y, w = frame.iloc[rows], y[rows], w[rows]
    return frame, y, (None if np.all(w == w[0]) else w), rows


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
        text += (
            "; X must hold numbers (pass a pandas or polars DataFrame to use text columns as "
            "categories)"
        )
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
