"""The command line, invoked as a user would: exit codes, stdout and stderr, files written."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nnreg
from cli_helpers import run


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def model_dir(tmp_path: Path, table_csv: Path, capsys) -> Path:
    code, _, err = run(
        [
            "train",
            str(table_csv),
            "--target",
            "y",
            "--epochs",
            "30",
            "--out",
            str(tmp_path / "model"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    return tmp_path / "model"


@pytest.mark.slow
def test_train_without_arguments_is_the_seed_experiment(capsys, tmp_path: Path) -> None:
    code, out, err = run(["train", "--log-every", "1"], capsys)
    assert code == 0, err
    assert "seed_dataset(n=100, random_state=0)" in out
    assert "501" in out and "460" in out and "41" in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 500
    assert "final training MSE" in out and "first observation: predicted" in out
    assert "model folder: runs/seed" in out
    # The printed losses are the history of a plain seed fit.
    df = nnreg.seed_dataset()
    reg = nnreg.Regressor.from_preset("seed", random_state=0).fit(df[["x1", "x2"]], df["y"])
    printed = [float(line.split("loss ")[1]) for line in epoch_lines]
    np.testing.assert_allclose(printed, reg.loss_curve_, rtol=1e-5)
    folder = tmp_path / "runs" / "seed"
    assert (folder / "model.json").is_file()
    assert json.loads((folder / "model.json").read_text())["n_parameters"] == 501
    # A second run gets a new folder instead of overwriting the first.
    code, out, _ = run(["train", "--epochs", "2", "--quiet"], capsys)
    assert code == 0 and out.strip() == os.path.join("runs", "seed-2")


def test_train_options_and_json_summary(capsys, tmp_path: Path) -> None:
    code, out, err = run(
        [
            "train",
            "--epochs",
            "20",
            "--lr",
            "0.01",
            "--hidden",
            "8,4",
            "--seed",
            "3",
            "--out",
            "m",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["epochs"] == 20 and summary["model_dir"] == "m"
    assert summary["n_parameters"] == 2 * 8 + 8 + 8 * 4 + 4 + 4 + 1
    assert set(summary["train_metrics"]) == {"mse", "rmse", "mae", "r2"}
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["training"]["params"]["learning_rate_init"] == 0.01
    assert doc["training"]["params"]["random_state"] == 3


def test_train_on_a_file_then_predict_evaluate_info_plot(
    capsys, tmp_path: Path, table_csv: Path, table_frame: pd.DataFrame
) -> None:
    code, out, err = run(
        [
            "train",
            str(table_csv),
            "--target",
            "y",
            "--features",
            "a,b,c",
            "--epochs",
            "40",
            "--out",
            "model",
            "--log-every",
            "10",
        ],
        capsys,
    )
    assert code == 0, err
    assert "preset  recommended" in out and "epoch 10/40" in out

    # Extra columns are ignored and column order does not matter at prediction.
    shuffled = table_frame[["c", "y", "b", "a"]].assign(extra="text")
    shuffled.to_parquet(tmp_path / "new.parquet")
    code, _, err = run(["predict", "model", "new.parquet", "-o", "preds.csv"], capsys)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert list(preds.columns) == ["y_pred"] and len(preds) == 300
    expected = nnreg.load("model").predict(table_frame[["a", "b", "c"]])
    np.testing.assert_allclose(preds["y_pred"], expected, rtol=1e-12)

    code, out, _ = run(["predict", "model", str(table_csv)], capsys)
    assert code == 0 and out.splitlines()[0] == "y_pred" and len(out.splitlines()) == 301

    code, out, _ = run(["evaluate", "model", str(table_csv), "--json"], capsys)
    metrics = json.loads(out)
    assert code == 0 and metrics["rows"] == 300
    assert metrics["rmse"] == pytest.approx(np.sqrt(metrics["mse"]))
    assert metrics["r2"] > 0.9
    code, out, _ = run(["evaluate", "model", str(table_csv)], capsys)
    assert code == 0 and "RMSE" in out and "R²" in out

    code, out, _ = run(["info", "model"], capsys)
    assert code == 0 and "total" in out
    assert re.search(r"a\s+│ numeric │ float64", out) and re.search(r"y\s+│ target", out)
    code, out, _ = run(["info", "model", "--json"], capsys)
    assert code == 0 and json.loads(out)["format"] == "nnreg-model"

    code, out, _ = run(["plot", "model", str(table_csv), "--out-dir", "figs"], capsys)
    assert code == 0
    for name in ("loss.png", "pred_vs_actual.png"):
        assert (tmp_path / "figs" / name).read_bytes()[:4] == b"\x89PNG"
    code, out, _ = run(["plot", "model"], capsys)
    assert code == 0 and "loss.png" in out


def test_config_toml_repeats_a_run(capsys, tmp_path: Path, table_csv: Path) -> None:
    code, _, err = run(
        [
            "train",
            str(table_csv),
            "--target",
            "y",
            "--epochs",
            "15",
            "--batch-size",
            "50",
            "--seed",
            "7",
            "--out",
            "first",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(["train", "--config", "first/config.toml", "--out", "second", "-q"], capsys)
    assert code == 0, err
    from safetensors.numpy import load_file

    a = load_file(str(tmp_path / "first" / "weights.safetensors"))
    b = load_file(str(tmp_path / "second" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # Flags override the file.
    code, out, _ = run(
        ["train", "--config", "first/config.toml", "--epochs", "3", "--out", "third", "--json"],
        capsys,
    )
    assert code == 0 and json.loads(out)["epochs"] == 3


def test_seed_config_repeats_the_seed_experiment(capsys, tmp_path: Path) -> None:
    assert run(["train", "--epochs", "5", "--out", "s1", "-q"], capsys)[0] == 0
    assert run(["train", "--config", "s1/config.toml", "--out", "s2", "-q"], capsys)[0] == 0
    h1 = (tmp_path / "s1" / "history.csv").read_text()
    assert h1 == (tmp_path / "s2" / "history.csv").read_text()


def _write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return name


@pytest.mark.parametrize(
    ("files", "args", "code", "message"),
    [
        ({}, ["train", "missing.csv", "--target", "y"], 1, "data file not found: missing.csv"),
        (
            {"t.csv": "a,y\n1,2\n"},
            ["train", "t.csv", "--target", "price"],
            1,
            "target column 'price' not found",
        ),
        ({"t.csv": "a,y\n1,2\n"}, ["train", "t.csv"], 2, "needs --target"),
        ({"t.csv": "a,y\n1,x\n2,3\n"}, ["train", "t.csv", "--target", "y"], 1, "holds text"),
        (
            {"t.csv": "a,y\n" + "".join(f"{i},{i}\n" for i in range(20)) + "oops,3\n"},
            ["train", "t.csv", "--target", "y"],
            1,
            "holds numbers but also text",
        ),
        ({"t.csv": "a,y\n1,2\n,3\n"}, ["train", "t.csv", "--target", "y"], 1, "missing values"),
        ({"t.csv": "a,y\n1,2\ninf,3\n"}, ["train", "t.csv", "--target", "y"], 1, "infinite"),
        ({"t.csv": ""}, ["train", "t.csv", "--target", "y"], 1, "is empty"),
        ({"t.csv": "a,y\n"}, ["train", "t.csv", "--target", "y"], 1, "no rows"),
        ({"t.txt": "a,y\n1,2\n"}, ["train", "t.txt", "--target", "y"], 1, "unknown file type"),
        ({}, ["train", "--epochs", "0"], 2, "--epochs"),
        ({}, ["train", "--lr", "-1"], 2, "--lr"),
        ({}, ["train", "--hidden", "20,x"], 2, "comma-separated integers"),
        ({}, ["train", "--config", "nope.toml"], 2, "config file not found"),
        (
            {"c.toml": "[model]\nspeed = 3\n"},
            ["train", "--config", "c.toml"],
            2,
            "unknown setting 'speed'",
        ),
        (
            {"c.toml": "[model]\nmax_iter = -3\n"},
            ["train", "--config", "c.toml"],
            2,
            "max_iter must be a positive integer",
        ),
        ({}, ["predict", "nomodel", "x.csv"], 1, "model folder not found"),
        ({}, ["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_input_is_one_clear_line(
    capsys, tmp_path: Path, files: dict[str, str], args: list[str], code: int, message: str
) -> None:
    for name, text in files.items():
        _write(tmp_path, name, text)
    got, out, err = run(args, capsys)
    assert got == code
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_predict_with_a_missing_feature_writes_nothing(
    capsys, tmp_path: Path, model_dir: Path
) -> None:
    pd.DataFrame({"a": [1.0], "b": [2.0]}).to_csv(tmp_path / "partial.csv", index=False)
    code, _, err = run(["predict", str(model_dir), "partial.csv", "-o", "out.csv"], capsys)
    assert code == 1 and "feature column 'c' not found" in err
    assert not (tmp_path / "out.csv").exists()


def test_evaluate_needs_the_target(capsys, tmp_path: Path, model_dir: Path) -> None:
    pd.DataFrame({"a": [1.0], "b": [2.0], "c": [0.0]}).to_csv(tmp_path / "x.csv", index=False)
    code, _, err = run(["evaluate", str(model_dir), "x.csv"], capsys)
    assert code == 1 and "target column 'y' not found" in err


def test_tampered_model_is_refused_by_the_cli(capsys, model_dir: Path, table_csv: Path) -> None:
    weights = model_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    code, _, err = run(["predict", str(model_dir), str(table_csv)], capsys)
    assert code == 1 and "SHA-256" in err


def test_debug_shows_the_traceback(capsys) -> None:
    code, _, err = run(["--debug", "train", "missing.csv", "--target", "y"], capsys)
    assert code == 1 and "Traceback" in err and "error: data file not found" in err


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from nnreg.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code in (0, None)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'sklearn' not in sys.modules, 'sklearn was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "predict" in result.stdout


def test_python_dash_m_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nnreg", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and nnreg.__version__ in result.stdout


def test_categorical_columns_and_impute_through_the_cli(capsys, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    frame = pd.DataFrame(
        {
            "city": rng.choice(["Paris", "Oslo", "Rome"], size=n),
            "rooms": rng.integers(1, 6, size=n).astype(float),
            "zone": rng.integers(1, 4, size=n),
        }
    )
    frame["price"] = frame["rooms"] * 2 + frame["city"].map({"Paris": 3, "Oslo": 2, "Rome": 1})
    frame.loc[::9, "rooms"] = np.nan
    frame.to_csv(tmp_path / "houses.csv", index=False)
    code, _, err = run(["train", "houses.csv", "--target", "price", "--epochs", "5"], capsys)
    assert code == 1 and "--impute" in err
    code, out, err = run(
        [
            "train",
            "houses.csv",
            "--target",
            "price",
            "--epochs",
            "30",
            "--impute",
            "--categorical",
            "zone",
            "--out",
            "m",
        ],
        capsys,
    )
    assert code == 0, err
    pre = json.loads((tmp_path / "m" / "model.json").read_text())["preprocessing"]["inputs"]
    assert pre["categorical"] == ["city", "zone"] and pre["indicators"] == ["rooms"]
    frame.assign(city=["Tokyo"] * n).to_csv(tmp_path / "new.csv", index=False)
    code, out, err = run(["predict", "m", "new.csv"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == n + 1
    # The config file keeps --impute and --categorical: the rerun is identical.
    code, _, err = run(["train", "--config", "m/config.toml", "--out", "m2", "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "m" / "history.csv").read_text() == (
        tmp_path / "m2" / "history.csv"
    ).read_text()


def test_ensemble_training_and_prediction_intervals(
    capsys, tmp_path: Path, table_csv: Path
) -> None:
    code, out, err = run(
        [
            "train",
            str(table_csv),
            "--target",
            "y",
            "--epochs",
            "10",
            "--n-models",
            "4",
            "--out",
            "ens",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "ens" / "model.json").read_text())
    assert doc["n_models"] == 4 and "calibration" in doc
    code, out, err = run(["predict", "ens", str(table_csv), "--interval", "0.9"], capsys)
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == ["y_pred", "y_lower", "y_upper"]
    assert (frame["y_lower"] <= frame["y_pred"]).all() and (
        frame["y_pred"] <= frame["y_upper"]
    ).all()
    code, _, err = run(
        ["predict", str(tmp_path / "ens"), str(table_csv), "--interval", "2"], capsys
    )
    assert code == 2 and "--interval" in err


def test_export_writes_an_onnx_file_that_predicts_the_same(
    capsys, tmp_path: Path, model_dir: Path, table_csv: Path, table_frame: pd.DataFrame
) -> None:
    import onnxruntime as ort

    from nnreg.export import onnx_inputs

    code, out, err = run(["export", str(model_dir), "m.onnx"], capsys)
    assert code == 0, err
    assert "m.onnx" in out
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (got,) = session.run(None, onnx_inputs(tmp_path / "m.onnx", table_frame))
    expected = nnreg.load(model_dir).predict(table_frame[["a", "b", "c"]])
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-5, atol=1e-5)
    code, _, err = run(["export", "nowhere", "m2.onnx"], capsys)
    assert code == 1 and "model folder not found" in err
    assert not (tmp_path / "m2.onnx").exists()


def test_progress_lines_say_when_an_ensembles_validation_was_scored(
    capsys, table_csv: Path
) -> None:
    """200 epochs without early stopping score the helpers' held-out rows every other epoch:
    a line on an epoch between shows the latest score and its epoch."""
    args = ["train", str(table_csv), "--target", "y", "--n-models", "2", "--hidden", "8"]
    code, out, err = run([*args, "--epochs", "200", "--log-every", "25", "--out", "m"], capsys)
    assert code == 0, err
    val = np.asarray(nnreg.load("m").history_.val_loss)
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 9
    for line in lines:
        epoch = int(line.split()[1].split("/")[0])
        scored = [j for j in range(epoch + 1) if np.isfinite(val[j])]
        if not scored:
            assert " val " not in line
            continue
        shown = f"  val {val[scored[-1]]:.6g}"
        assert shown + (f" (epoch {scored[-1]})" if scored[-1] != epoch else "  (") in line
