"""The seed dataset, and reading CSV/Parquet files into validated tables.

Files and column selections are checked here (the file exists and parses, the columns exist,
the target is finite numbers); feature values are checked by the estimator at fit and predict.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import DataError, DataFileError

__all__ = ["Table", "read_table", "seed_dataset", "table_from_frame"]

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


def read_table(
    path: str | Path, sep: str | None = None, na_values: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet file into a DataFrame, with one clear error on failure.

    A text file's delimiter is ``sep``, or sniffed from its first lines (comma, semicolon,
    tab or bar). ``na_values`` are the only texts read as missing (an empty field always
    is); without it, pandas' usual ones (``NA``, ``null``, ``None``, ...) are.
    """
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
            sep = sep or ("\t" if kind == "tsv" else sniff_delimiter(path))
            missing: dict[str, Any] = {}
            if na_values is not None:
                missing = {"keep_default_na": False, "na_values": [""] + list(na_values)}
            frame = pd.read_csv(path, sep=sep, **missing)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFileError(f"cannot read {path} as {kind.upper()}: {detail}") from exc
    _refuse_duplicate_columns(path, kind, frame, sep)
    if kind != "parquet":
        _refuse_short_header(path, sep or ("\t" if kind == "tsv" else ","))
    if len(frame) == 0:
        raise DataFileError(f"data file {path} has a header but no rows; it needs at least one.")
    return frame


def _refuse_short_header(path: Path, sep: str) -> None:
    """Refuse a header with fewer fields than the first row: pandas would quietly read the
    first field of every row as a row index and shift each column onto the next one's name."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = csv.reader(f, delimiter=sep)
        header, first = next(rows, []), next(rows, [])
    if len(first) > len(header):
        raise DataFileError(
            f"{path}: its header names {len(header)} columns, but its first row has "
            f"{len(first)} fields; give every column a name."
        )


DELIMITERS = ",;\t|"


def sniff_delimiter(path: Path, size: int = 64 << 10) -> str:
    """The delimiter of a text table, from its first ``size`` bytes: the one character of
    DELIMITERS that splits the header and the first rows into equally many fields (the
    most fields wins), else a comma."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        head = f.read(size)
    lines = [line for line in head.splitlines()[:20] if line.strip()]
    if len(head) == size and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    best, fields = ",", 1
    for d in DELIMITERS:
        try:
            counts = {len(r) for r in csv.reader(lines, delimiter=d)}
        except csv.Error:
            continue
        if len(counts) == 1 and (n := counts.pop()) > fields:
            best, fields = d, n
    return best


def _refuse_duplicate_columns(
    path: Path, kind: str, frame: pd.DataFrame, sep: str | None = None
) -> None:
    """Refuse repeated column names (pandas silently renames a repeated CSV header to 'a.1')."""
    if kind == "parquet":
        names = [str(c) for c in frame.columns]
    else:
        sep = sep or ("\t" if kind == "tsv" else ",")
        # Read the header as text: parsed as data, "1" and "01" (or "NA" and "nan") collide.
        header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
        names = [str(v) for v in header.iloc[0]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataFileError(
            f"{path} has duplicate column names ({', '.join(dupes)}); give each column a "
            "unique name."
        )


@dataclass(frozen=True)
class Table:
    """Features as given (numeric and categorical columns) and validated numeric targets."""

    features: pd.DataFrame  # (rows, features)
    y: np.ndarray | None  # (rows, targets), or None when no target was asked for
    feature_names: list[str]
    target_names: list[str]


def table_from_frame(
    frame: pd.DataFrame,
    target: str | Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    source: str = "the data",
) -> Table:
    """Select the feature and target columns of a DataFrame; targets must be finite numbers.

    Without ``features``, every column that is not a target is a feature. Feature values are
    checked by the estimator, which knows numeric from categorical columns.
    """
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    feats, targets = select_columns(columns, target, features, source)
    if len(frame) == 0:
        raise DataError(f"{source} has no rows; it needs at least one.")
    y = _numeric_targets(frame, targets, source) if targets else None
    return Table(features=frame[feats], y=y, feature_names=feats, target_names=targets)


def select_columns(
    columns: list[str],
    target: str | Sequence[str] | None,
    features: Sequence[str] | None,
    source: str,
) -> tuple[list[str], list[str]]:
    """(features, targets) among ``columns``: every non-target column without ``features``.

    Raises :class:`DataError` for a missing column, a column that is both, or no features.
    """
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
                f"column {overlap[0]!r} is both a feature and the target; drop it from the "
                "features."
            )
    if not feats:
        raise DataError(f"{source} has no feature columns besides the target; add at least one.")
    return feats, targets


def _require_columns(wanted: list[str], columns: list[str], source: str, what: str) -> None:
    twice = sorted({c for c in wanted if wanted.count(c) > 1})
    if twice:
        raise DataError(f"{what} column {twice[0]!r} is given twice; name each column once.")
    missing = [c for c in wanted if c not in columns]
    if missing:
        shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
        raise DataError(
            f"{what} column {missing[0]!r} not found in {source}; its columns are: {shown}."
        )


def _numeric_targets(frame: pd.DataFrame, names: list[str], source: str) -> np.ndarray:
    for name in names:
        col = frame[name]
        if not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
            values = col.dropna()
            bad = values[pd.to_numeric(values, errors="coerce").isna()]
            example = bad.iloc[0] if len(bad) else None
            raise DataError(
                f"target column {name!r} in {source} holds text (e.g. {example!r}), but a "
                "regression target must be numbers (nnreg does regression; classification is "
                "out of its scope); convert it or choose another target."
            )
    block = frame[names].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(block)
    if not finite.all():
        row, col = map(int, np.argwhere(~finite)[0])
        kind = "missing values (NaN)" if np.isnan(block[row, col]) else "infinite values"
        count = int((~finite[:, col]).sum())
        raise DataError(
            f"target column {names[col]!r} in {source} has {count} {kind} (first at row "
            f"{row}); drop those rows."
        )
    return block
