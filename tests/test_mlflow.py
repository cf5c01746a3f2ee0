"""``nnreg train --log mlflow``: a run that MLflow's own client reads back, and a model that
``mlflow.pyfunc`` loads and predicts with as ``nnreg predict`` does."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import run

pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install '.[mlflow]'")

from nnreg.tracking import _mlflow  # noqa: E402

mlflow = _mlflow()  # imported without MLflow's warnings about its own type hints
# MLflow's tracking store calls SQLAlchemy in ways SQLAlchemy deprecates: not nnreg's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tracking store of the test's own (the artifacts under ./mlruns of the test folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    mlflow.set_tracking_uri(None)  # what the environment says, for whatever runs next


def cities(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    city = rng.choice(["Oslo", "Bergen", "Tromsø"], n)
    x = rng.normal(size=n)
    bonus = pd.Series(city).map({"Oslo": 2.0, "Bergen": 0.5, "Tromsø": -1.0}).to_numpy()
    return pd.DataFrame({"city": city, "x": x, "y": bonus + x**2 + rng.normal(0, 0.1, n)})


def only_run(experiment: str) -> mlflow.entities.Run:
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (one,) = client.search_runs([found.experiment_id])
    return one


@pytest.mark.slow
def test_a_run_holds_the_parameters_the_metric_history_and_the_model(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cities(300, seed=0).to_csv(store / "train.csv", index=False)
    test = cities(50, seed=1)
    test.to_csv(store / "test.csv", index=False)
    out = store / "model"
    args = ["train", "train.csv", "--target", "y", "--epochs", "15", "--early-stopping"]
    code, _, err = run(
        [*args, "--hidden", "16,16", "-o", str(out), "--log", "mlflow:trial"], capsys
    )
    assert code == 0, err
    assert "logged the run to MLflow" in err and "runs:/" in err
    found = only_run("trial")
    assert found.info.status == "FINISHED" and found.info.run_name == "model"
    assert found.data.params["max_iter"] == "15" and found.data.params["hidden_layer_sizes"]
    client, run_id = mlflow.MlflowClient(), found.info.run_id
    history = pd.read_csv(out / "history.csv")
    for key, column in (
        ("train_loss", "train_loss"),
        ("validation_loss", "val_loss"),
        ("lr", "lr"),
    ):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [s for s, _ in logged] == list(history["epoch"])  # each epoch once
        np.testing.assert_allclose([v for _, v in logged], history[column], rtol=1e-12)
    metrics = json.loads((out / "model.json").read_text())["metrics"]
    for key in ("train_rmse", "validation_rmse", "validation_r2"):
        assert found.data.metrics[key] == pytest.approx(metrics[key], rel=1e-12)
    # The model folder is the logged model's artifact, byte for byte.
    logged = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path="dl"))
    for name in ("model.json", "weights.safetensors", "config.toml"):
        copy = next(logged.rglob(name))
        assert copy.read_bytes() == (out / name).read_bytes()
    # And MLflow's pyfunc predicts what nnreg predict writes.
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    code, written, _ = run(["predict", str(out), "test.csv"], capsys)
    assert code == 0
    expected = pd.read_csv(io.StringIO(written))
    got = model.predict(test.drop(columns="y"))
    assert list(got.columns) == ["y_pred"]
    np.testing.assert_allclose(got["y_pred"], expected["y_pred"], rtol=1e-9)


def test_a_run_that_fails_is_marked_failed_with_the_epochs_it_logged(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed experiment at a learning rate that diverges after its first epoch."""
    args = ["train", "--lr", "1e8", "-o", str(store / "model"), "--log", "mlflow:diverged"]
    code, _, err = run(args, capsys)
    assert code == 1 and "training diverged" in err
    found = only_run("diverged")
    assert found.info.status == "FAILED"
    losses = mlflow.MlflowClient().get_metric_history(found.info.run_id, "train_loss")
    assert [m.step for m in losses] == [0]


def test_a_missing_extra_is_one_line_before_training(
    tmp_path: Path,
    table_csv: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "model"
    monkeypatch.setitem(sys.modules, "mlflow", None)
    base = ["train", str(table_csv), "--target", "y", "--epochs", "2", "-o", str(out)]
    code, _, err = run([*base, "--log", "mlflow"], capsys)
    assert code == 1 and "pip install 'nnreg[mlflow]'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_a_run_a_signal_stops_is_killed_with_its_model(store: Path) -> None:
    """SIGINT mid-training: the folder keeps the best weights so far (exit 130), and the
    MLflow run says KILLED, with its epochs and the model logged."""
    import signal
    import subprocess
    import time

    cities(200, seed=2).to_csv(store / "t.csv", index=False)
    args = ["train", "t.csv", "--target", "y", "--epochs", "1000000", "--hidden", "8"]
    args += ["-o", "model", "--log", "mlflow:stopped", "-q"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnreg", *args],
        cwd=store,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client, deadline = mlflow.MlflowClient(), time.monotonic() + 120
    while time.monotonic() < deadline:  # until the first batch of epochs is in the store
        found = client.get_experiment_by_name("stopped")
        runs = client.search_runs([found.experiment_id]) if found is not None else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train_loss"):
            break
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    found = only_run("stopped")
    assert found.info.status == "KILLED"
    losses = client.get_metric_history(found.info.run_id, "train_loss")
    assert len(losses) == len(pd.read_csv(store / "model" / "history.csv")) > 0
    assert mlflow.pyfunc.load_model(f"runs:/{found.info.run_id}/model") is not None
