"""The catalogue of bad inputs, through the command line and the library, and safe loading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nnreg
from cli_helpers import run
from nnreg.exceptions import ConfigError, DataError, ModelFileError


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def model(tmp_path: Path, table_csv: Path, capsys) -> Path:
    assert (
        run(
            ["train", str(table_csv), "--target", "y", "--epochs", "3", "--out", "m", "-q"], capsys
        )[0]
        == 0
    )
    return tmp_path / "m"


@pytest.mark.parametrize(
    ("csv", "args", "code", "message"),
    [
        ("a,y\n1,2\n", ["--epochs", "2"], 0, ""),  # a single row trains (nothing to divide)
        ("a,y\n1,5\n2,5\n3,5\n", ["--epochs", "2"], 0, ""),  # a constant target trains
        ("a,a,y\n1,2,3\n", [], 1, "duplicate column names (a)"),
        ("a,y\n1,2\n", ["--hidden", "20,0"], 2, "every hidden size must be at least 1"),
        ("a,y\n1,2\n", ["--epochs", "0"], 2, "--epochs"),
        ("a,y\n1,2\n", ["--lr", "-0.1"], 2, "--lr"),
        ("a,y\n1,2\n", ["--batch-size", "0"], 2, "--batch-size"),
    ],
)
def test_training_catalogue(
    capsys, tmp_path: Path, csv: str, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "t.csv").write_text(csv)
    got, _, err = run(["train", "t.csv", "--target", "y", "--out", "o", "-q", *args], capsys)
    assert got == code, err
    if code:
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "o").exists()
    else:
        assert np.isfinite(nnreg.load(tmp_path / "o").predict(pd.DataFrame({"a": [1.5]}))).all()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"a": [1.0], "b": [2.0]}), "feature column 'c' not found"),
        (pd.DataFrame({"a": [1.0], "b": ["two"], "c": [3.0]}), "'b' was numeric"),
    ],
)
def test_prediction_catalogue(capsys, tmp_path: Path, model: Path, frame, message: str) -> None:
    frame.to_csv(tmp_path / "new.csv", index=False)
    code, _, err = run(["predict", str(model), "new.csv", "-o", "p.csv"], capsys)
    assert code == 1 and message in err and not (tmp_path / "p.csv").exists()


def test_newer_format_through_the_cli(capsys, model: Path, table_csv: Path) -> None:
    doc = json.loads((model / "model.json").read_text())
    doc["format_version"] = 99
    (model / "model.json").write_text(json.dumps(doc))
    code, _, err = run(["evaluate", str(model), str(table_csv)], capsys)
    assert code == 1 and "upgrade nnreg" in err


def test_library_catalogue() -> None:
    with pytest.raises(ConfigError, match="learning_rate_init must be"):
        nnreg.Regressor(learning_rate_init=-1.0).fit(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ConfigError, match="max_iter must be"):
        nnreg.Regressor(max_iter=0).fit(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(DataError, match="0 sample"):
        nnreg.Regressor().fit(np.zeros((0, 1)), np.zeros(0))
    reg = nnreg.Regressor(max_iter=2, random_state=0).fit(np.ones((1, 2)), np.ones(1))
    assert reg.predict(np.ones((1, 2))).shape == (1,)


class Boom:
    """Unpickling this runs code: it is what a malicious model file would contain."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path("PWNED"), "pickle code ran"))


def test_a_malicious_pickle_in_a_model_folder_is_never_executed(
    tmp_path: Path, model: Path, table_csv: Path, capsys
) -> None:
    import hashlib

    for name in ("model.pkl", "weights.pt", "model.joblib"):
        (model / name).write_bytes(pickle.dumps(Boom()))
    assert np.isfinite(nnreg.load(model).predict(pd.read_csv(table_csv)[["a", "b", "c"]])).all()
    # A weights file replaced by a pickle, with model.json's hash updated to match: the hash
    # check passes, and the safetensors reader refuses it without unpickling anything.
    payload = pickle.dumps(Boom())
    (model / "weights.safetensors").write_bytes(payload)
    doc = json.loads((model / "model.json").read_text())
    doc["weights"]["sha256"] = hashlib.sha256(payload).hexdigest()
    (model / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="corrupt"):
        nnreg.load(model)
    code, _, err = run(["predict", str(model), str(table_csv)], capsys)
    assert code == 1 and "corrupt" in err
    assert not (tmp_path / "PWNED").exists()
