"""Files the commands write: only under the extension of a format nnreg writes, with the
permissions the user's umask gives, and ``predict --keep`` copying id columns across."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from cli_helpers import run


def one_line(err: str) -> bool:
    return err.startswith("error: ") and len(err.strip().splitlines()) == 1


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """(a model folder, the CSV it was trained on: an id column, x1, x2 and y)."""
    import nnreg

    frame = nnreg.seed_dataset(n=60)
    frame.insert(0, "id", [f"row-{i:03d}" for i in range(len(frame))])
    data = tmp_path / "data.csv"
    frame.to_csv(data, index=False)
    args = ["train", str(data), "-t", "y", "--epochs", "2", "-q", "--out", str(tmp_path / "m")]
    assert run(args, capsys)[0] == 0
    return tmp_path / "m", data


@pytest.mark.parametrize(
    ("command", "name", "said"),
    [
        (["predict", "{model}", "{data}", "-o"], "x.xlsx", ".csv, .parquet or .pq file, not .xlsx"),
        (["predict", "{model}", "{data}", "-o"], "preds", "and this name has no extension"),
        (["importance", "{model}", "{data}", "-o"], "chart.jpg", ".png file, not .jpg"),
        (["report", "{model}", "-o"], "report.pdf", ".html or .htm file, not .pdf"),
        (["export", "{model}"], "model.xlsx", ".onnx file, not .xlsx"),
    ],
)
def test_a_file_name_of_a_format_nnreg_does_not_write_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], name: str, said: str
) -> None:
    # No model folder at all: the name is refused before anything is read.
    where = {"model": str(tmp_path / "no-model"), "data": str(tmp_path / "no-data.csv")}
    args = [a.format(**where) for a in command] + [str(tmp_path / name)]
    code, out, err = run(args, capsys)
    assert code == 1 and one_line(err) and said in err, err
    assert f"cannot write {tmp_path / name}" in err and out == ""
    assert list(tmp_path.iterdir()) == []


def test_the_extension_check_ignores_case_and_keeps_the_formats_it_writes(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = trained
    for name in ("p.CSV", "p.parquet", "p.pq"):
        assert run(["predict", str(model), str(data), "-o", str(tmp_path / name)], capsys)[0] == 0
    assert len(pd.read_parquet(tmp_path / "p.pq")) == 60


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize(("mask", "file_mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_every_file_written_has_the_permissions_the_umask_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mask: int, file_mode: int
) -> None:
    import nnreg

    data = tmp_path / "data.csv"
    nnreg.seed_dataset(n=60).to_csv(data, index=False)
    with umask(mask):
        model = tmp_path / "m"
        assert (
            run(["train", str(data), "-t", "y", "--epochs", "2", "-q", "-o", str(model)], capsys)[0]
            == 0
        )
        commands = [
            ["predict", str(model), str(data), "-o", str(tmp_path / "p.csv")],
            ["predict", str(model), str(data), "-o", str(tmp_path / "p.parquet")],
            ["plot", str(model), str(data), "--out-dir", str(tmp_path / "figs")],
            ["plot", str(model), str(data)],  # into the model folder itself
            ["importance", str(model), str(data), "--repeats", "1", "-o", str(tmp_path / "i.png")],
            ["report", str(model), "--repeats", "0", "-o", str(tmp_path / "r.html")],
            ["export", str(model), str(tmp_path / "m.onnx")],
        ]
        for args in commands:
            assert run(args, capsys)[0] == 0, args
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != data]
    assert {p.relative_to(tmp_path).as_posix() for p in written} >= {
        "m/model.json",
        "m/weights.safetensors",
        "m/history.csv",
        "m/config.toml",
        "m/loss.png",
        "m/pred_vs_actual.png",
        "p.csv",
        "p.parquet",
        "figs/residuals.png",
        "i.png",
        "r.html",
        "m.onnx",
    }
    modes = {p.relative_to(tmp_path).as_posix(): mode(p) for p in written}
    assert modes == dict.fromkeys(modes, file_mode)
    assert mode(model) == mode(tmp_path / "figs") == 0o777 & ~mask


def test_predict_keep_puts_the_id_columns_before_the_predictions(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = trained
    given = pd.read_csv(data)
    out = tmp_path / "p.csv"
    for _ in range(2):  # its own output, id columns and all, is replaced
        code, _, err = run(
            ["predict", str(model), str(data), "--keep", "id", "-o", str(out)], capsys
        )
        assert code == 0, err
    written = pd.read_csv(out)
    assert list(written.columns) == ["id", "y_pred"]
    assert written["id"].tolist() == given["id"].tolist()
    code, plain, _ = run(["predict", str(model), str(data)], capsys)
    assert written["y_pred"].tolist() == pd.read_csv(io.StringIO(plain))["y_pred"].tolist()

    code, shown, _ = run(
        ["predict", str(model), str(data), "--keep", "x2, id", "--keep", "x1"], capsys
    )
    on_stdout = pd.read_csv(io.StringIO(shown))
    assert code == 0 and list(on_stdout.columns) == ["x2", "id", "x1", "y_pred"]
    pd.testing.assert_frame_equal(on_stdout[["x2", "id", "x1"]], given[["x2", "id", "x1"]])
    parquet = tmp_path / "p.parquet"
    assert (
        run(["predict", str(model), str(data), "--keep", "id", "-o", str(parquet)], capsys)[0] == 0
    )
    assert pd.read_parquet(parquet)["id"].tolist() == given["id"].tolist()


def test_predict_keep_of_a_missing_column_names_it_and_the_columns_before_predicting(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from nnreg.estimator import Regressor

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("predicted")

    monkeypatch.setattr(Regressor, "predict", never)
    model, data = trained
    out = tmp_path / "p.csv"
    code, _, err = run(
        ["predict", str(model), str(data), "--keep", "id,ID2", "-o", str(out)], capsys
    )
    assert code == 1 and one_line(err)
    assert "'ID2' not found" in err and "its columns: id, x1, x2, y" in err
    assert not out.exists()
    clash = tmp_path / "clash.csv"
    pd.read_csv(data).assign(y_pred=0.0).to_csv(clash, index=False)
    code, _, err = run(["predict", str(model), str(clash), "--keep", "y_pred"], capsys)
    assert code == 1 and one_line(err) and "name of a prediction column" in err
    args = ["predict", str(model), str(data), "--stream", "--keep", "id", "-o", str(out)]
    code, _, err = run(args, capsys)
    assert code == 2 and "--keep works without --stream only" in err
