"""Reading a table the way its owner meant: ids left out, dates as dates, the dialect sniffed,
rows held out and scored, and every choice printed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nnreg
from cli_helpers import run
from nnreg.columns import id_reason, read_roles
from nnreg.preprocess import TablePreprocessor
from nnreg.recipe import split_rows

QUICK = ["--epochs", "8", "--hidden", "16"]


def dated(n: int, seed: int) -> pd.DataFrame:
    """A monthly series with a trend, a season and a numeric feature."""
    rng = np.random.default_rng(seed)
    when = pd.date_range("2001-01-31", periods=n, freq="ME")
    t = np.arange(n) / n
    x = rng.normal(size=n)
    y = 3 * t + np.sin(2 * np.pi * when.month.to_numpy() / 12) + x + rng.normal(0, 0.1, n)
    return pd.DataFrame({"date": when.strftime("%Y-%m-%d"), "x": x, "y": y})


def row_scores(out: str, name: str) -> tuple[int, float, float, float]:
    """(rows, RMSE, MAE, R²) of one row of the summary's scores table."""
    found = re.search(rf"{re.escape(name)}\s+│\s+(\d+) │\s+(\S+) │\s+(\S+) │\s+(\S+)", out)
    assert found is not None, out
    return int(found.group(1)), *(float(found.group(k)) for k in (2, 3, 4))


def test_an_r_row_name_column_is_left_out_and_a_date_column_read_as_dates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = dated(120, seed=0)
    frame.index = range(1, 121)
    frame.to_csv(tmp_path / "t.csv")  # as R's write.csv: an unnamed first column 1..n
    code, out, err = run(
        ["train", str(tmp_path / "t.csv"), "-t", "y", *QUICK, "-o", str(tmp_path / "m")], capsys
    )
    assert code == 0, err
    assert re.search(r"Unnamed: 0\s+│ id\s+│ row numbers, unnamed: left out", out)
    assert re.search(r"date\s+│ date\s+│ as days since the first", out)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert [f["name"] for f in meta["features"]] == ["date", "x"]
    parts = meta["preprocessing"]["inputs"]["dates"]["date"]
    assert parts == {
        "origin": "2001-01-31T00:00:00",
        "parts": ["days", "year", "dayofyear", "dayofweek"],
        "dayfirst": None,  # year-first dates: nothing to decide
    }
    # predict reads the dates from the file as written, and agrees with the estimator
    code, _, err = run(
        ["predict", str(tmp_path / "m"), str(tmp_path / "t.csv"), "-o", str(tmp_path / "p.csv")],
        capsys,
    )
    assert code == 0, err
    reg = nnreg.load(tmp_path / "m")
    expected = reg.predict(frame[["date", "x"]].assign(date=pd.to_datetime(frame["date"])))
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")["y_pred"], expected, rtol=1e-10)
    code, out, _ = run(["info", str(tmp_path / "m")], capsys)
    assert code == 0 and re.search(r"date\s+│ date\s+│ as days, year, dayofyear, dayofweek", out)


def test_date_parts_are_the_calendar_values_in_the_estimator_too() -> None:
    when = pd.to_datetime(["2020-02-28", "2020-03-01", "2021-01-01 06:30", None], format="mixed")
    frame = pd.DataFrame({"d": when, "x": [1.0, 2.0, 3.0, 4.0]})
    pre = TablePreprocessor(scaling="none", missing="impute").fit(frame)
    z = pd.DataFrame(pre.transform(frame), columns=pre.output_names)
    np.testing.assert_allclose(z["d:days"][:3], [0.0, 2.0, 308.2708333333], rtol=1e-9)
    np.testing.assert_array_equal(z["d:year"][:3], [2020, 2020, 2021])
    np.testing.assert_array_equal(z["d:dayofyear"][:3], [59, 61, 1])
    np.testing.assert_array_equal(z["d:dayofweek"][:3], [4, 6, 4])  # Friday, Sunday, Friday
    np.testing.assert_allclose(z["d:hour"][:3], [0, 0, 6.5])
    assert z["d:days__missing"].tolist() == [0, 0, 0, 1]  # a missing date is imputed
    again = TablePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    text = frame.assign(d=["2020-02-28", "2020-03-01", "2021-01-01T06:30", None])
    np.testing.assert_allclose(again.transform(text), pre.transform(frame))
    with pytest.raises(nnreg.DataError, match=r"column 'd' holds dates, but 'soon' at row 1"):
        pre.transform(frame.assign(d=["2020-01-01", "soon", None, None]))


@pytest.mark.parametrize(
    ("fitted", "one", "day_of_year"),
    [
        (["01.03.2021", "15.04.2021"], "02.03.2021", 61),  # dots: day first
        (["3/1/2021", "3/15/2021"], "3/2/2021", 61),  # slashes: month first
        (["01/03/2021", "25/12/2021"], "02/03/2021", 61),  # a day above 12 decides
        (["2021-03-01", "2021-12-25"], "2021-03-02", 61),
    ],
)
def test_day_or_month_first_is_decided_in_fit_and_kept(
    fitted: list[str], one: str, day_of_year: int
) -> None:
    """A single row at prediction is read the way the column was read in fit."""
    pre = TablePreprocessor(scaling="none").fit(pd.DataFrame({"d": fitted}))
    again = TablePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    z = pd.DataFrame(again.transform(pd.DataFrame({"d": [one]})), columns=pre.output_names)
    assert z["d:dayofyear"].item() == day_of_year and z["d:year"].item() == 2021


def test_a_regressor_fits_a_datetime_column() -> None:
    frame = dated(150, seed=1)
    X = frame[["date", "x"]].assign(date=pd.to_datetime(frame["date"]))
    reg = nnreg.Regressor(max_iter=30, random_state=0).fit(X, frame["y"])
    as_numbers = X.assign(date=(X["date"] - X["date"].min()).dt.days)
    other = nnreg.Regressor(max_iter=30, random_state=0).fit(as_numbers, frame["y"])
    assert reg.score(X, frame["y"]) > 0.8 and other.score(as_numbers, frame["y"]) > 0.5


def test_ids_are_unique_per_row_and_real_features_are_not() -> None:
    n = 50
    assert id_reason(pd.Series(range(n), name="Unnamed: 0")) is not None
    assert id_reason(pd.Series([f"person {i}" for i in range(n)])) == "text unique per row"
    assert id_reason(pd.Series(np.random.default_rng(0).normal(size=n))) is None  # floats
    assert id_reason(pd.Series(range(1967, 1967 + n), name="year")) is None  # a yearly series
    assert id_reason(pd.Series([str(i) for i in range(n)])) is None  # numbers stored as text
    assert id_reason(pd.Series(range(5))) is None  # too few rows to tell
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "y": np.arange(n) * 1.0})
    with pytest.raises(nnreg.DataError, match="looks like an id"):
        read_roles(frame, ["y"], None)
    feats, roles = read_roles(frame, ["y"], ["id"])  # named by the user: used
    assert feats == ["id"] and roles[0].role == "categorical"


def test_a_capped_categorical_column_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)
    model = rng.choice([f"model {k}" for k in range(40)], 200)
    frame = pd.DataFrame({"model": model, "x": rng.normal(size=200), "y": rng.normal(size=200)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    code, out, err = run(
        ["train", str(tmp_path / "t.csv"), "-t", "y", *QUICK, "-o", str(tmp_path / "m")], capsys
    )
    assert code == 0, err
    assert re.search(r"model\s+│ categorical │ 40 values; the 32 commonest kept, the other 8", out)


def test_drop_spaces_na_values_and_a_semicolon_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    n = 60
    bags = rng.choice(["None", "Driver", "Both"], n)
    frame = pd.DataFrame({"nr": rng.integers(0, 9, n), "bags": bags, "w": rng.normal(size=n)})
    frame["y"] = frame["w"] + (frame["bags"] == "None")
    frame.to_csv(tmp_path / "t.csv", index=False, sep=";")
    base = ["train", str(tmp_path / "t.csv"), "-t", "y", *QUICK]
    code, out, err = run(
        [*base, "--features", "bags, w", "--na-values", "NA", "-o", str(tmp_path / "a")], capsys
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    assert [f["name"] for f in meta["features"]] == ["bags", "w"]
    assert "None" in meta["preprocessing"]["inputs"]["categories"]["bags"]  # a category
    code, out, err = run(
        [*base, "--drop", "nr", "--na-values", "NA", "-o", str(tmp_path / "b")], capsys
    )
    assert code == 0 and re.search(r"nr\s+│ dropped\s+│ --drop", out)
    code, _, err = run([*base, "--drop", "nr", "-o", str(tmp_path / "c")], capsys)
    assert code == 1 and "bags" in err and "missing" in err  # "None" read as missing, by default
    code, _, err = run([*base, "--drop", "nope", "-o", str(tmp_path / "d")], capsys)
    assert code == 1 and "--drop column 'nope' not found" in err
    code, _, err = run([*base, "--sep", ",", "-o", str(tmp_path / "e")], capsys)
    assert code == 1 and "target column 'y' not found" in err  # the file is not comma-separated


def test_a_file_trained_on_holds_rows_out_and_scores_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = dated(100, seed=4)[["x", "y"]]
    frame.to_csv(tmp_path / "t.csv", index=False)
    base = ["train", str(tmp_path / "t.csv"), "-t", "y", *QUICK]
    code, out, err = run([*base, "-o", str(tmp_path / "m")], capsys)
    assert code == 0, err
    assert "rows    80 to train on, 20 held out to score the model" in out
    assert "the weights are epoch 7's (the last)" in out and "on cpu" in out
    rows, rmse, mae, r2 = row_scores(out, "held-out rows")
    held, _ = split_rows(100, 0.2, 0, min_rows=1, min_train=1)
    reg = nnreg.load(tmp_path / "m")
    pred = reg.predict(frame[["x"]].iloc[held])
    err_ = pred - frame["y"].to_numpy()[held]
    assert rows == 20 and rmse == pytest.approx(np.sqrt(np.mean(err_**2)), rel=1e-4)
    assert mae == pytest.approx(np.mean(np.abs(err_)), rel=1e-4)
    assert reg.model_info_["metrics"]["train_rows"] == 80
    code, out, _ = run([*base, "--holdout", "0", "-o", str(tmp_path / "all")], capsys)
    assert code == 0 and "held-out rows" not in out and "training rows only" in out
    assert nnreg.load(tmp_path / "all").model_info_["metrics"]["train_rows"] == 100


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_test_file_is_scored_as_evaluate_scores_it(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = dated(160, seed=5)
    frame.iloc[:120].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[120:].to_csv(tmp_path / "test.csv", index=False)
    args = [
        command,
        str(tmp_path / "train.csv"),
        "-t",
        "y",
        *QUICK,
        "--test",
        str(tmp_path / "test.csv"),
    ]
    code, out, err = run([*args, "-o", str(tmp_path / "m")], capsys)
    assert code == 0, err
    rows, rmse, mae, r2 = row_scores(out, "test.csv")
    code, got, _ = run(
        ["evaluate", str(tmp_path / "m"), str(tmp_path / "test.csv"), "--json"], capsys
    )
    metrics = json.loads(got)
    assert rows == metrics["rows"] == 40
    assert rmse == pytest.approx(metrics["rmse"], rel=1e-4)
    assert mae == pytest.approx(metrics["mae"], rel=1e-4)
    assert r2 == pytest.approx(metrics["r2"], abs=1e-4)
    saved = nnreg.load(tmp_path / "m").model_info_["metrics"]
    assert saved["test_rmse"] == pytest.approx(metrics["rmse"], rel=1e-9)
    if command == "train":  # with a test file, every row of DATA trains
        assert saved["train_rows"] == 120 and "held-out rows" not in out


def test_a_model_with_a_date_column_serves_dates_sent_as_text(tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from nnreg.serving.app import Limits, Served
    from nnreg.serving.schema import RequestError

    frame = dated(80, seed=6)
    X = frame[["date", "x"]].assign(date=pd.to_datetime(frame["date"]))
    nnreg.Regressor(max_iter=5, random_state=0).fit(X, frame["y"]).save(tmp_path / "m")
    served = Served(tmp_path / "m", Limits())
    rows = frame[["date", "x"]].head(5).to_dict(orient="records")
    answer = served.answer(json.dumps(rows).encode(), {})
    np.testing.assert_allclose(answer["predictions"], served.reg.predict(X.head(5)), rtol=1e-12)
    with pytest.raises(RequestError, match="'someday' at row 0 is not one"):
        served.answer(json.dumps([{**rows[0], "date": "someday"}]).encode(), {})


def test_year_first_text_is_never_read_day_first() -> None:
    """A column read day first (01.03.2021) still reads 2021-02-05 as the 5th of February,
    and a year-first column reads a dotted date day first at prediction."""
    dots = pd.DataFrame({"d": ["13.01.2021", "05.02.2021"]})
    pre = TablePreprocessor(scaling="none").fit(dots)
    z = pre.transform(pd.DataFrame({"d": ["05.02.2021", "2021-02-05"]}))
    np.testing.assert_array_equal(z[0], z[1])
    iso = TablePreprocessor(scaling="none").fit(pd.DataFrame({"d": ["2021-01-01", "2021-06-01"]}))
    z = pd.DataFrame(iso.transform(pd.DataFrame({"d": ["03.04.2021"]})), columns=iso.output_names)
    assert z["d:dayofyear"].item() == 93  # the 3rd of April


def test_numbers_given_for_a_date_column_are_refused() -> None:
    pre = TablePreprocessor().fit(pd.DataFrame({"d": ["2021-01-01", "2021-06-01"]}))
    with pytest.raises(nnreg.DataError, match="held dates when the model was fitted but now"):
        pre.transform(pd.DataFrame({"d": [20210301]}))


def test_a_date_column_with_a_few_bad_values_is_a_typo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = dated(30, seed=7)
    frame.loc[5, "date"] = "not a date"
    frame.to_csv(tmp_path / "t.csv", index=False)
    code, _, err = run(["train", str(tmp_path / "t.csv"), "-t", "y", *QUICK], capsys)
    assert code == 1 and "holds dates but also 'not a date' at row 6" in err
    frame.loc[5, "date"] = None  # a missing date names the column, not its derived ones
    frame.to_csv(tmp_path / "t.csv", index=False)
    code, _, err = run(["train", str(tmp_path / "t.csv"), "-t", "y", *QUICK], capsys)
    assert code == 1 and "column 'date' has 1 missing values (first at row 6)" in err


def test_conflicting_column_flags_and_a_short_header_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dated(30, seed=8).to_csv(tmp_path / "t.csv", index=False)
    base = ["train", str(tmp_path / "t.csv"), "-t", "y", *QUICK, "-o", str(tmp_path / "m")]
    for extra, says in (
        (["--features", "x, nope"], "feature column 'nope' not found"),
        (["--categorical", "y"], "--categorical names the target, 'y'"),
        (["--features", "x", "--drop", "x"], "--drop names a feature --features names, 'x'"),
        (["--drop", "y"], "--drop names the target, 'y'"),
    ):
        code, _, err = run([*base, *extra], capsys)
        assert code == 1 and says in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "s.csv").write_text("x,y\n" + "".join(f"{i},{i / 10},{i}\n" for i in range(20)))
    code, _, err = run(["train", str(tmp_path / "s.csv"), "-t", "y", *QUICK], capsys)
    assert code == 1 and "header names 2 columns, but its first row has 3 fields" in err
    assert not (tmp_path / "m").exists()


def test_predict_and_evaluate_read_a_file_as_the_model_was_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model's --sep and --na-values apply to the files it predicts, so the --test line
    equals nnreg evaluate on the same file."""
    rng = np.random.default_rng(9)
    frame = pd.DataFrame({"x": rng.normal(size=60).round(3), "c": rng.choice(["None", "a"], 60)})
    frame["y"] = frame["x"] + (frame["c"] == "None")
    frame.loc[3, "x"] = -999
    frame.to_csv(tmp_path / "t.csv", index=False, sep="|")
    args = ["train", str(tmp_path / "t.csv"), "-t", "y", *QUICK, "--impute", "--sep", "|"]
    args += ["--na-values", "-999", "--test", str(tmp_path / "t.csv"), "-o", str(tmp_path / "m")]
    code, out, err = run(args, capsys)
    assert code == 0, err
    _, rmse, _, _ = row_scores(out, "t.csv")
    code, got, err = run(
        ["evaluate", str(tmp_path / "m"), str(tmp_path / "t.csv"), "--json"], capsys
    )
    assert code == 0 and json.loads(got)["rmse"] == pytest.approx(rmse, rel=1e-4)


def test_a_whole_number_is_one_category_as_an_integer_or_a_float(tmp_path: Path) -> None:
    # A number-coded category column read as integers in fit and as floats at prediction,
    # as a CSV column with one empty cell is: 4 and 4.0 must be the same category.
    rng = np.random.default_rng(0)
    cyl = rng.choice([4, 6, 8], size=120)
    X = pd.DataFrame({"cyl": pd.Series(cyl, dtype=object), "w": rng.normal(size=120)})
    y = cyl + X["w"]
    reg = nnreg.Regressor(max_iter=5, missing="impute", random_state=0).fit(X, y)
    assert sorted(reg.preprocessor_.categories["cyl"]) == ["4", "6", "8"]
    as_floats = X.assign(cyl=pd.Series(cyl.astype(float), dtype=object))
    as_text = X.assign(cyl=[f"{v}.0" for v in cyl])
    np.testing.assert_allclose(reg.predict(as_floats), reg.predict(X), rtol=1e-12)
    np.testing.assert_allclose(reg.predict(as_text), reg.predict(X), rtol=1e-12)
    # A folder saved when "4.0" was its own category reads it as "4", and one saved with
    # both "4" and "4.0" keeps the two (each a column of its network); a folder naming one
    # category twice is refused.
    pre = reg.preprocessor_.to_dict()
    old = TablePreprocessor.from_dict({**pre, "categories": {"cyl": ["4.0", "6.0", "8.0"]}})
    assert old.categories["cyl"] == ["4", "6", "8"]
    both = TablePreprocessor.from_dict({**pre, "categories": {"cyl": ["4", "4.0", "8"]}})
    assert both.categories["cyl"] == ["4", "4.0", "8"]
    with pytest.raises(ValueError, match="'categories'"):
        TablePreprocessor.from_dict({**pre, "categories": {"cyl": ["4", "6", "4"]}})
    # Codes of 1e16 and more, which str() writes as '1e+16' for a float
    big = pd.DataFrame({"code": pd.Series([10**16, 4, 10**16], dtype=object)})
    as_float = pd.DataFrame({"code": pd.Series([1e16, 4.0, np.nan], dtype=object)})
    coder = TablePreprocessor(missing="impute").fit(big)
    np.testing.assert_array_equal(coder.transform(as_float)[:2], coder.transform(big)[:2])
