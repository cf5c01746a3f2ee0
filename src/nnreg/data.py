"""The seed dataset, and reading CSV/Parquet files and DataFrames into validated arrays.

Data is checked here, once, at the public entry points (2-D, numeric, finite, non-empty, the
right columns) and trusted everywhere after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import DataError, DataFileError

__all__ = ["Table", "read_table", "seed_dataset", "table_from_frame", "to_matrix"]

READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def seed_dataset(n: int = 100, random_state: int = 0) -> pd.DataFrame:
    """The seed experiment's data: ``x1 ~ N(0, 0.1)``, ``x2 ~ N(1, 1.2)``, ``y = sin(x1) + x2**2``.

    Parameters
    ----------
    n : int, default=100
        Number of observations.
    random_state : int, default=0
        Seed of the NumPy generator; the same seed always gives the same table.

    Returns
    -------
    pandas.DataFrame
        Columns ``x1``, ``x2`` and ``y`` (float64), ``n`` rows.

    Examples
    --------
    >>> import nnreg
    >>> df = nnreg.seed_dataset()
    >>> df.shape
    (100, 3)
    """
    if n < 1:
        raise DataError(f"seed_dataset needs n >= 1 observations, got n={n}.")
    rng = np.random.default_rng(random_state)
    x1 = rng.normal(0.0, 0.1, size=n)
    x2 = rng.normal(1.0, 1.2, size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "y": np.sin(x1) + x2**2})


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet file into a DataFrame, with one clear error on failure."""
    path = Path(path)
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(READERS))
        raise DataFileError(
            f"cannot read {path}: unknown file type '{path.suffix}'; use one of {known}."
        )
    if not path.exists():
        raise DataFileError(f"data file not found: {path}; check the path.")
    if path.is_dir():
        raise DataFileError(f"{path} is a folder, not a data file; give the path of one file.")
    if path.stat().st_size == 0:
        raise DataFileError(f"data file {path} is empty; it needs a header and at least one row.")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if kind == "tsv" else ",")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFileError(f"cannot read {path} as {kind.upper()}: {detail}") from exc
    _refuse_duplicate_columns(path, kind, frame)
    if len(frame) == 0:
        raise DataFileError(f"data file {path} has a header but no rows; it needs at least one.")
    return frame


def _refuse_duplicate_columns(path: Path, kind: str, frame: pd.DataFrame) -> None:
    """Refuse repeated column names (pandas silently renames a repeated CSV header to 'a.1')."""
    if kind == "parquet":
        names = [str(c) for c in frame.columns]
    else:
        sep = "\t" if kind == "tsv" else ","
        names = [str(v) for v in pd.read_csv(path, sep=sep, header=None, nrows=1).iloc[0]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataFileError(
            f"{path} has duplicate column names ({', '.join(dupes)}); give each column a "
            "unique name."
        )


@dataclass(frozen=True)
class Table:
    """Validated model inputs: float64 matrices with their column names."""

    X: np.ndarray  # (rows, features)
    y: np.ndarray | None  # (rows, targets), or None when no target was asked for
    feature_names: list[str]
    target_names: list[str]
    feature_dtypes: list[str]


def table_from_frame(
    frame: pd.DataFrame,
    target: str | Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    source: str = "the data",
) -> Table:
    """Select and validate the feature and target columns of a DataFrame.

    Without ``features``, every column that is not a target is a feature.
    """
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    targets = [target] if isinstance(target, str) else list(target or [])
    _require_columns(targets, columns, source, what="target")
    if features is None:
        feats = [c for c in columns if c not in targets]
    else:
        feats = list(features)
        _require_columns(feats, columns, source, what="feature")
        overlap = sorted(set(feats) & set(targets))
        if overlap:
            raise DataError(
                f"column {overlap[0]!r} is both a feature and the target; drop it "
                "from the features."
            )
    if not feats:
        raise DataError(f"{source} has no feature columns besides the target; add at least one.")
    if len(frame) == 0:
        raise DataError(f"{source} has no rows; it needs at least one.")
    X = _numeric_block(frame, feats, source, role="feature")
    y = _numeric_block(frame, targets, source, role="target") if targets else None
    dtypes = [str(frame[c].dtype) for c in feats]
    return Table(X=X, y=y, feature_names=feats, target_names=targets, feature_dtypes=dtypes)


def _require_columns(wanted: list[str], columns: list[str], source: str, what: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
        raise DataError(
            f"{what} column {missing[0]!r} not found in {source}; its columns are: {shown}."
        )


def _numeric_block(frame: pd.DataFrame, names: list[str], source: str, role: str) -> np.ndarray:
    for name in names:
        col = frame[name]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            bad = _first_non_numeric(col)
            raise DataError(
                f"{role} column {name!r} in {source} holds text (e.g. {bad!r}), but nnreg needs "
                f"numbers there; convert it or leave it out of the {role}s."
            )
    block = frame[names].to_numpy(dtype=np.float64, na_value=np.nan)
    _require_finite(block, names, source)
    return block


def _first_non_numeric(col: pd.Series) -> Any:
    values = pd.to_numeric(col, errors="coerce")
    bad = col[values.isna() & col.notna()]
    return bad.iloc[0] if len(bad) else col.iloc[0]


def _require_finite(block: np.ndarray, names: Sequence[str], source: str) -> None:
    finite = np.isfinite(block)
    if finite.all():
        return
    row, col = map(int, np.argwhere(~finite)[0])
    kind = "missing values (NaN)" if np.isnan(block[row, col]) else "infinite values"
    count = int((~finite[:, col]).sum())
    raise DataError(
        f"column {names[col]!r} in {source} has {count} {kind} (first at row {row}); "
        "fill or drop them before training."
    )


def to_matrix(X: Any, name: str = "X") -> np.ndarray:
    """Convert array-like input to a finite 2-D float64 array, or raise a DataError."""
    if isinstance(X, pd.DataFrame):
        return table_from_frame(X, source=f"the DataFrame {name}").X
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{name} must hold numbers only; converting it to floats failed ({exc})."
        ) from exc
    if arr.ndim == 1:
        raise DataError(
            f"{name} must be 2-D (rows, features) but is 1-D with {arr.shape[0]} values; "
            "use X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single row."
        )
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D (rows, features) but has {arr.ndim} dimensions.")
    if arr.shape[0] == 0:
        raise DataError(f"{name} has 0 rows; at least one is needed.")
    if arr.shape[1] == 0:
        raise DataError(f"{name} has 0 features; at least one is needed.")
    names = [f"{name}[:, {j}]" for j in range(arr.shape[1])]
    _require_finite(arr, names, name)
    return arr
