from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nnreg
from nnreg.data import read_table, table_from_frame
from nnreg.exceptions import DataError, DataFileError


def test_seed_dataset_shape_columns_and_label_formula(seed_frame: pd.DataFrame) -> None:
    assert list(seed_frame.columns) == ["x1", "x2", "y"]
    assert seed_frame.shape == (100, 3)
    expected = np.sin(seed_frame["x1"].to_numpy()) + seed_frame["x2"].to_numpy() ** 2
    np.testing.assert_array_equal(seed_frame["y"].to_numpy(), expected)


def test_seed_dataset_statistics_on_a_large_draw() -> None:
    n = 200_000
    df = nnreg.seed_dataset(n=n, random_state=123)
    # Five standard errors: the mean's is std/sqrt(n), the std's about std/sqrt(2n).
    for col, mean, std in (("x1", 0.0, 0.1), ("x2", 1.0, 1.2)):
        assert abs(df[col].mean() - mean) < 5 * std / np.sqrt(n)
        assert abs(df[col].std() - std) < 5 * std / np.sqrt(2 * n)
    assert abs(np.corrcoef(df["x1"], df["x2"])[0, 1]) < 5 / np.sqrt(n)  # drawn independently


def test_seed_dataset_is_reproducible_per_random_state() -> None:
    pd.testing.assert_frame_equal(
        nnreg.seed_dataset(random_state=7), nnreg.seed_dataset(random_state=7)
    )
    assert not nnreg.seed_dataset(random_state=7).equals(nnreg.seed_dataset(random_state=8))


def test_seed_dataset_rejects_no_rows() -> None:
    with pytest.raises(DataError, match="n >= 1"):
        nnreg.seed_dataset(n=0)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_read_table_round_trips(tmp_path: Path, table_frame: pd.DataFrame, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    if suffix == ".parquet":
        table_frame.to_parquet(path, index=False)
    else:
        table_frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    back = read_table(path)
    np.testing.assert_allclose(back.to_numpy(), table_frame.to_numpy(), rtol=1e-15)
    assert list(back.columns) == list(table_frame.columns)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "not found"),
        ("empty.csv", "", "is empty"),
        ("header.csv", "a,b,y\n", "no rows"),
        ("data.xlsx", "a,b\n1,2\n", "unknown file type"),
        ("dupes.csv", "a,a,y\n1,2,3\n", "duplicate column names"),
        ("broken.parquet", "not parquet at all", "cannot read"),
    ],
)
def test_read_table_errors(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataFileError, match=message) as info:
        read_table(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)


def test_table_from_frame_selects_and_orders_columns(table_frame: pd.DataFrame) -> None:
    table = table_from_frame(table_frame, target="y", features=["c", "a"])
    assert table.feature_names == ["c", "a"]
    pd.testing.assert_frame_equal(table.features, table_frame[["c", "a"]])
    assert table.y is not None and table.y.shape == (300, 1)
    np.testing.assert_array_equal(table.y[:, 0], table_frame["y"].to_numpy())
    assert table_from_frame(table_frame, target="y").feature_names == ["a", "b", "c"]


def test_text_features_are_kept_for_the_estimator(table_frame: pd.DataFrame) -> None:
    frame = table_frame.assign(city=["Paris", "Oslo", "Rome"] * 100)
    table = table_from_frame(frame, target="y")
    assert table.feature_names == ["a", "b", "c", "city"]
    assert table.features["city"].iloc[1] == "Oslo"


@pytest.mark.parametrize(
    ("mutate", "kwargs", "message"),
    [
        (lambda f: f, {"target": "price"}, "target column 'price' not found"),
        (lambda f: f, {"target": "y", "features": ["a", "zz"]}, "feature column 'zz' not found"),
        (lambda f: f.assign(y=["x"] * len(f)), {"target": "y"}, "target column 'y'.*holds text"),
        (
            lambda f: f.assign(y=np.where(np.arange(len(f)) == 5, np.nan, f["y"])),
            {"target": "y"},
            r"1 missing values \(NaN\) \(first at row 5\)",
        ),
        (lambda f: f.assign(y=np.inf), {"target": "y"}, "infinite values"),
        (lambda f: f.iloc[:0], {"target": "y"}, "no rows"),
        (lambda f: f[["y"]], {"target": "y"}, "no feature columns"),
        (lambda f: f, {"target": "y", "features": ["a", "y"]}, "both a feature and the target"),
    ],
)
def test_table_from_frame_errors(table_frame: pd.DataFrame, mutate, kwargs, message) -> None:
    with pytest.raises(DataError, match=message):
        table_from_frame(mutate(table_frame), **kwargs)
