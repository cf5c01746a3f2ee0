from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nnreg
from nnreg.artifact import FORMAT_VERSION, atomic_folder
from nnreg.exceptions import ModelFileError


@pytest.fixture
def fitted(table_frame: pd.DataFrame) -> nnreg.Regressor:
    return nnreg.Regressor(hidden_layer_sizes=(16, 8), max_iter=10, random_state=0).fit(
        table_frame[["a", "b", "c"]], table_frame["y"]
    )


def test_save_load_predict_is_identical(tmp_path: Path, fitted, table_frame: pd.DataFrame) -> None:
    X = table_frame[["a", "b", "c"]]
    path = fitted.save(tmp_path / "model")
    loaded = nnreg.load(path)
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert loaded.get_params() == {**fitted.get_params(), "random_state": 0}
    assert loaded.loss_curve_ == pytest.approx(fitted.loss_curve_, rel=1e-15)
    assert list(loaded.feature_names_in_) == ["a", "b", "c"]


def test_folder_contents(tmp_path: Path, fitted) -> None:
    path = fitted.save(tmp_path / "model", metrics={"train_mse": 0.5}, target_names=["y"])
    assert sorted(p.name for p in path.iterdir()) == [
        "config.toml",
        "history.csv",
        "loss.png",
        "model.json",
        "weights.safetensors",
    ]
    doc = json.loads((path / "model.json").read_text())
    assert doc["format_version"] == FORMAT_VERSION
    # Three numeric columns, each embedded as 16 numbers (a linear term and n_bins bins).
    bins = fitted.model_.config.n_bins
    embedding = 3 * (16 + 16 + bins * 16)
    assert doc["n_parameters"] == embedding + 3 * 16 * 16 + 16 + 16 * 8 + 8 + 8 + 1
    assert doc["architecture"]["hidden_sizes"] == [16, 8]
    assert doc["metrics"]["train_mse"] == 0.5
    assert [f["name"] for f in doc["features"]] == ["a", "b", "c"]
    assert len(doc["weights"]["sha256"]) == 64
    assert (path / "history.csv").read_text().splitlines()[0] == "epoch,train_loss,val_loss,lr"
    assert len((path / "history.csv").read_text().splitlines()) == 11
    assert (path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_tampered_weights_are_refused(tmp_path: Path, fitted) -> None:
    path = fitted.save(tmp_path / "model")
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        nnreg.load(path)


def test_newer_format_version_is_refused(tmp_path: Path, fitted) -> None:
    path = fitted.save(tmp_path / "model")
    doc = json.loads((path / "model.json").read_text())
    doc["format_version"] = FORMAT_VERSION + 1
    (path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="upgrade nnreg"):
        nnreg.load(path)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "model folder not found"),
        (lambda p: p.mkdir(), "no model.json"),
        (lambda p: (p.mkdir(), (p / "model.json").write_text("{oops")), "not valid JSON"),
        (
            lambda p: (p.mkdir(), (p / "model.json").write_text('{"format": "x"}')),
            "not an nnreg model",
        ),
    ],
)
def test_wrong_folders_are_refused(tmp_path: Path, setup, message: str) -> None:
    path = tmp_path / "m"
    setup(path)
    with pytest.raises(ModelFileError, match=message):
        nnreg.load(path)


def test_saving_replaces_an_old_model_but_not_other_folders(tmp_path: Path, fitted) -> None:
    path = fitted.save(tmp_path / "model")
    fitted.save(path)  # replaces the model folder in place
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(ModelFileError, match="not an nnreg model folder"):
        fitted.save(other)
    assert (other / "keep.txt").read_text() == "precious"


def test_a_crash_while_writing_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_folder(dest) as tmp:
        (tmp / "model.json").write_text("{}")
        raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []


def test_save_before_fit() -> None:
    with pytest.raises(nnreg.NotFittedError):
        nnreg.Regressor().save("nowhere")
