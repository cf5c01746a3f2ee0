"""Data errors name a row by its number in the table the user gave (from 0), whatever the fit
dropped or split first: rows of weight 0, missing values before the bad one, a fold of the
epoch search, a chunk of a streamed file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nnreg
from nnreg.exceptions import DataError, row_number, rows_from
from nnreg.parquet import ParquetData
from nnreg.stream import fit_parquet


def _table(n: int = 30) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=n), "c": ["u", "v"] * (n // 2)}), rng.normal(size=n)


def _zero_first(n: int, k: int = 5) -> np.ndarray:
    w = np.ones(n)
    w[:k] = 0.0
    return w


def test_row_number_helpers() -> None:
    assert row_number(0, 3) == 3 and row_number(100, 3) == 103
    assert row_number(np.array([5, 9, 12]), 1) == 9
    assert rows_from(0) == "" and rows_from(100) == " in rows from 100"
    assert rows_from(np.array([5, 9])) == ""


@pytest.mark.parametrize("max_iter", [3, "auto"])  # "auto": the epoch search's folds
def test_rows_of_weight_zero_do_not_shift_a_missing_values_row(max_iter: object) -> None:
    X, y = _table(120)
    X.loc[7, "a"] = np.nan
    w = _zero_first(120)
    with pytest.raises(DataError, match=r"column 'a' has 1 missing values \(first at row 7\)"):
        nnreg.Regressor(missing="error", max_iter=max_iter).fit(X, y, sample_weight=w)
    X, y = _table(120)
    X.loc[9, "c"] = None
    with pytest.raises(DataError, match=r"column 'c' has 1 missing values \(first at row 9\)"):
        nnreg.Regressor(missing="error", max_iter=max_iter).fit(X, y, sample_weight=w)


def test_stray_text_is_named_by_its_row_not_its_rank_among_values() -> None:
    X, y = _table()
    X["c"] = [str(i) for i in range(30)]
    X.loc[1, "c"] = None  # a missing value before the typo
    X.loc[12, "c"] = "oops"
    with pytest.raises(DataError, match=r"'oops' at row 12\)"):
        nnreg.Regressor(max_iter=3).fit(X, y)
    with pytest.raises(DataError, match=r"'oops' at row 12\)"):
        nnreg.Regressor(max_iter=3).fit(X, y, sample_weight=_zero_first(30))


def test_a_date_that_cannot_be_is_a_typo_not_a_category() -> None:
    """Every value shaped like a date, one of them impossible: it was read as a categorical
    column of 30 levels without a word."""
    X, y = _table()
    X["d"] = pd.date_range("2020-01-01", periods=30).astype(str)
    X.loc[20, "d"] = "2020-13-45"
    match = r"column 'd' holds dates but also '2020-13-45' at row 20"
    with pytest.raises(DataError, match=match):
        nnreg.Regressor(max_iter=3).fit(X, y)
    with pytest.raises(DataError, match=match):
        nnreg.Regressor(max_iter=3).fit(X, y, sample_weight=_zero_first(30))
    X.loc[20, "d"] = "2020-01-21"  # mended: a date column again
    reg = nnreg.Regressor(max_iter=3).fit(X, y)
    assert "d" in reg.preprocessor_.dates and "d" not in reg.preprocessor_.categorical


def test_a_streamed_files_stray_text_is_named_by_its_row(tmp_path: Path) -> None:
    values: list[str | None] = [str(i % 7) for i in range(40)]
    values[3] = None  # in the first row group, before the typo's
    values[25] = "oops"
    table = pa.table({"a": np.arange(40.0), "c": values, "y": np.ones(40)})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10)
    with pytest.raises(DataError, match=r"'oops' at row 25\)"):
        reg = nnreg.Regressor(max_iter=1, missing="impute")
        fit_parquet(reg, ParquetData(tmp_path / "t.parquet", target="y"))
