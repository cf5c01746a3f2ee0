"""Property-based tests (hypothesis) of the table reader, the preprocessing and the estimator,
and a bounded fuzz run of the CSV reader.

Every test is derandomised and keeps no example database, so a CI run tests the same examples
every time and writes nothing into the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnreg
from nnreg.data import read_table
from nnreg.exceptions import DataError
from nnreg.preprocess import SCALINGS, SMOOTH_CLIP, TablePreprocessor

# derandomize: the examples depend only on the test's code; database=None: no .hypothesis/.
# Bounded sizes (<= 50 rows, <= 512 bytes) keep the file to seconds; pandas' C parser is linear.
SETTINGS: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow],
}

# What pandas' CSV parser reads as something other than a string (its default NA markers and
# booleans); a categorical cell holding one of these cannot survive a CSV round trip as text.
_CSV_SPECIAL = {
    "",
    "#n/a",
    "#n/a n/a",
    "#na",
    "-1.#ind",
    "-1.#qnan",
    "-nan",
    "1.#ind",
    "1.#qnan",
    "<na>",
    "n/a",
    "na",
    "null",
    "nan",
    "none",
    "true",
    "false",
    "inf",
    "-inf",
    "+inf",
    "infinity",
    "-infinity",
    "+infinity",
}


def _number_like(s: str) -> bool:
    """True when pandas would read ``s`` as a number (so as text it is not categorical)."""
    return not np.isnan(pd.to_numeric(pd.Series([s]), errors="coerce").iloc[0])


def _plain_text(s: str) -> bool:
    """A cell the CSV reader gives back unchanged, as text: not a number, NA marker or bool."""
    return s == s.strip() and s.lower() not in _CSV_SPECIAL and not _number_like(s)


def _plain_words(max_size: int) -> st.SearchStrategy[str]:
    """Printable text (any script, punctuation, inner spaces, CSV quotes and commas) that
    starts with a letter and does not end in a space, so that it rarely needs filtering."""
    inner = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=max_size - 2)
    last = st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"))
    word = st.builds("".join, st.tuples(st.characters(categories=["L"]), inner, last))
    return st.one_of(st.characters(categories=["L"]), word).filter(_plain_text)


# Column names: unique, non-empty, printable. Number-like names are left out here; see
# test_number_like_column_names_are_not_duplicates.
names = _plain_words(12)
# Categorical cells: printable text that is not a number, NA marker or boolean.
words = _plain_words(10)
finite = st.floats(allow_nan=False, allow_infinity=False)
exact_ints = st.integers(-(2**53), 2**53)  # int64 values that float64 also holds exactly
# Realistic magnitudes for the preprocessing and the network: see test_huge_dynamic_range.
moderate = st.one_of(
    st.just(0.0),
    st.floats(1e-6, 1e6),
    st.floats(-1e6, -1e-6),
    st.integers(-1000, 1000).map(float),  # ties, so medians and quartiles coincide
)
small_ints = st.integers(-1000, 1000)


@st.composite
def frames(
    draw: st.DrawFn,
    *,
    values: st.SearchStrategy[float] = finite,
    ints: st.SearchStrategy[int] = exact_ints,
    nan: bool = False,
    like: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """A valid feature table: 1..50 rows, numeric (int or float) and text columns.

    ``like``: the same columns as that (fitted) frame, with text cells drawn from its values
    and new ones; ``nan`` puts missing values (NaN, None) into some cells.
    """
    rows = draw(st.integers(1, 50))
    if like is None:
        kinds = draw(st.lists(st.sampled_from(["float", "int", "text"]), min_size=1, max_size=5))
        labels = draw(st.lists(names, min_size=len(kinds), max_size=len(kinds), unique=True))
        columns = list(zip(labels, kinds, strict=True))
    else:
        kind_of = {"i": "int", "f": "float"}
        columns = [(c, kind_of.get(like[c].dtype.kind, "text")) for c in like.columns]
    data: dict[str, Any] = {}
    for name, kind in columns:
        if kind == "float":
            cells = st.one_of(values, st.just(np.nan)) if nan else values
            data[name] = np.array(draw(st.lists(cells, min_size=rows, max_size=rows)))
        elif kind == "int":
            data[name] = np.array(draw(st.lists(ints, min_size=rows, max_size=rows)), np.int64)
        else:
            seen = [] if like is None else sorted(like[name].dropna().astype(str).unique())
            text = st.one_of(words, st.sampled_from(seen)) if seen else words
            text_cells = st.one_of(text, st.none()) if nan else text
            # object (NumPy's), "str" (pandas' default for text) or "category" dtype
            dtype = draw(st.sampled_from(["object", "str", "category"]))
            data[name] = pd.Series(
                draw(st.lists(text_cells, min_size=rows, max_size=rows)), dtype=dtype
            )
    return pd.DataFrame(data)


_TMP: dict[str, Path] = {}


def _tmp(factory: pytest.TempPathFactory, name: str) -> Path:
    """A file in one folder per session: every example of a test rewrites the same file
    (hypothesis refuses function-scoped fixtures such as tmp_path, shared by all examples)."""
    if "dir" not in _TMP:
        _TMP["dir"] = factory.mktemp("properties")
    return _TMP["dir"] / name


def _moderate_frames(nan: bool, like: pd.DataFrame | None = None) -> st.SearchStrategy[Any]:
    return frames(values=moderate, ints=small_ints, nan=nan, like=like)


def _assert_same_table(back: pd.DataFrame, frame: pd.DataFrame) -> None:
    assert list(back.columns) == list(frame.columns)
    assert back.shape == frame.shape
    for c in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[c]):
            assert back[c].astype(object).tolist() == frame[c].astype(object).tolist(), c
        else:
            assert pd.api.types.is_numeric_dtype(back[c]), c
            # Both writers keep every digit; allow a rounding in the last one.
            got, want = back[c].to_numpy(float), frame[c].to_numpy(float)
            np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)


# -- the table reader ----------------------------------------------------------------------------


@settings(max_examples=60, **SETTINGS)
@given(frame=frames())
def test_csv_round_trip(tmp_path_factory: pytest.TempPathFactory, frame: pd.DataFrame) -> None:
    path = _tmp(tmp_path_factory, "t.csv")
    frame.to_csv(path, index=False)
    _assert_same_table(read_table(path), frame)


@settings(max_examples=60, **SETTINGS)
@given(frame=frames())
def test_parquet_round_trip(tmp_path_factory: pytest.TempPathFactory, frame: pd.DataFrame) -> None:
    path = _tmp(tmp_path_factory, "t.parquet")
    frame.to_parquet(path, index=False)
    _assert_same_table(read_table(path), frame)


@pytest.mark.parametrize("names", [["1", "01"], ["NA", "nan"], ["True", "true"]])
def test_number_like_column_names_are_not_duplicates(tmp_path: Path, names: list[str]) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame([[1.0, 2.0]], columns=names).to_csv(path, index=False)
    assert list(read_table(path).columns) == names


# -- the preprocessing ---------------------------------------------------------------------------


@settings(max_examples=80, **SETTINGS)
@given(
    data=st.data(),
    scaling=st.sampled_from(SCALINGS),
    missing=st.sampled_from(["error", "impute"]),
    max_categories=st.integers(1, 4),
)
def test_preprocessor_is_finite_of_the_right_width_and_round_trips(
    data: st.DataObject, scaling: str, missing: str, max_categories: int
) -> None:
    nan = missing == "impute"
    frame = data.draw(_moderate_frames(nan), label="fit frame")
    pre = TablePreprocessor(scaling=scaling, missing=missing, max_categories=max_categories)
    pre.fit(frame)
    new = data.draw(_moderate_frames(nan, like=frame), label="new frame")
    for table in (frame, new):
        Z = pre.transform(table)  # (rows, encoded)
        width = len(pre.numeric) + len(pre.indicators)
        width += sum(len(pre.categories[c]) for c in pre.categorical)
        assert Z.shape == (len(table), width) == (len(table), len(pre.output_names))
        assert np.isfinite(Z).all()
        if scaling == "robust" and pre.numeric:
            assert (np.abs(Z[:, : len(pre.numeric)]) <= SMOOTH_CLIP).all()
        start = len(pre.numeric) + len(pre.indicators)
        for c in pre.categorical:
            block = Z[:, start : start + len(pre.categories[c])]
            start += len(pre.categories[c])
            assert set(np.unique(block)) <= {0.0, 1.0}
            # Every fitted value has its column (its own or the shared "other" one).
            if table is frame:
                assert (block.sum(axis=1) == 1).all()
            assert (block.sum(axis=1) <= 1).all()
    # Saved as JSON and read back, the state gives bitwise the same transform.
    again = TablePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(again.transform(new), pre.transform(new))
    assert again.to_dict() == pre.to_dict()


@pytest.mark.parametrize(
    ("scaling", "values"),
    [("standard", [0.0, 0.0, 2e154]), ("robust", [0.0, 0.0, 1e-300, 1e-300, 1e10])],
)
def test_huge_dynamic_range(scaling: str, values: list[float]) -> None:
    """Finite values outside the property tests' range (|x| in [1e-6, 1e6]) still work."""
    frame = pd.DataFrame({"x": values})
    with np.errstate(over="raise", invalid="raise"):  # an overflow fails here, not later
        pre = TablePreprocessor(scaling=scaling).fit(frame)
        Z = pre.transform(frame)  # (rows, 1)
    assert np.isfinite(Z).all() and np.ptp(Z) > 0


# -- the estimator -------------------------------------------------------------------------------


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), missing=st.sampled_from(["error", "impute"]), n_targets=st.integers(1, 2))
def test_regressor_predicts_finite_values_of_the_right_shape(
    data: st.DataObject, missing: str, n_targets: int
) -> None:
    nan = missing == "impute"
    frame = data.draw(_moderate_frames(nan), label="fit frame")
    targets = st.lists(moderate, min_size=len(frame) * n_targets, max_size=len(frame) * n_targets)
    y = np.array(data.draw(targets, label="y")).reshape(len(frame), n_targets)
    reg = nnreg.Regressor(max_iter=2, hidden_layer_sizes=(4,), missing=missing, random_state=0)
    reg.fit(frame, y[:, 0] if n_targets == 1 else y)
    # New rows: other values, and categories never seen in fit.
    new = data.draw(_moderate_frames(nan, like=frame), label="new frame")
    pred = reg.predict(new)
    assert pred.shape == ((len(new),) if n_targets == 1 else (len(new), n_targets))
    assert np.isfinite(pred).all()


# -- a bounded fuzz run of the CSV reader --------------------------------------------------------

# Bytes that make CSV structure: separators, quotes, line ends, numbers, text, a UTF-8 BOM and
# an invalid UTF-8 byte, so that the parser's deeper paths are reached, not only the decoder.
_CSV_TOKENS = [
    b",",
    b"\t",
    b'"',
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"a",
    b"b",
    b"1",
    b"2.5",
    b"-",
    b"e9",
    b"nan",
    b"NA",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\x00",
    b"#",
    b"\\",
]


def _read_or_refuse(path: Path) -> None:
    """read_table either returns a non-empty DataFrame or raises DataError (the property)."""
    try:
        frame = read_table(path)
    except DataError as exc:  # DataFileError is a DataError
        assert str(exc) and "\n" not in str(exc).strip(), "errors are one line"
        return
    assert isinstance(frame, pd.DataFrame) and len(frame) >= 1


@settings(max_examples=200, **SETTINGS)
@given(content=st.binary(max_size=512), suffix=st.sampled_from([".csv", ".tsv"]))
def test_fuzz_reader_with_arbitrary_bytes(
    tmp_path_factory: pytest.TempPathFactory, content: bytes, suffix: str
) -> None:
    path = _tmp(tmp_path_factory, f"fuzz{suffix}")
    path.write_bytes(content)
    _read_or_refuse(path)


@settings(max_examples=200, **SETTINGS)
@given(content=st.text(max_size=256))
def test_fuzz_reader_with_arbitrary_text(
    tmp_path_factory: pytest.TempPathFactory, content: str
) -> None:
    path = _tmp(tmp_path_factory, "fuzz_text.csv")
    path.write_text(content, encoding="utf-8")
    _read_or_refuse(path)


@settings(max_examples=200, **SETTINGS)
@given(tokens=st.lists(st.sampled_from(_CSV_TOKENS), max_size=60))
def test_fuzz_reader_with_csv_like_bytes(
    tmp_path_factory: pytest.TempPathFactory, tokens: list[bytes]
) -> None:
    path = _tmp(tmp_path_factory, "fuzz_tokens.csv")
    path.write_bytes(b"".join(tokens))
    _read_or_refuse(path)
