"""``nnreg train --log tensorboard``: event files that TensorBoard's own reader reads back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import run

pytest.importorskip(
    "tensorboard", reason="the tensorboard extra is not installed: pip install '.[tensorboard]'"
)

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the one run folder under ``logdir``: tag -> [(step, value)]."""
    (run_dir,) = list(logdir.iterdir())
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_one_scalar_per_epoch_equal_to_the_history(
    tmp_path: Path, table_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir, out = tmp_path / "tb", tmp_path / "model"
    args = ["train", str(table_csv), "--target", "y", "--epochs", "12", "--early-stopping"]
    code, _, err = run([*args, "-o", str(out), "--log", f"tensorboard:{logdir}"], capsys)
    assert code == 0, err
    assert "logged the run for TensorBoard in" in err
    found = scalars(logdir)
    history = pd.read_csv(out / "history.csv")
    epochs = list(history["epoch"])
    for tag, column in (
        ("loss/train", "train_loss"),
        ("loss/validation", "val_loss"),
        ("lr", "lr"),
    ):
        steps, values = zip(*found[tag], strict=True)
        assert list(steps) == epochs  # one scalar per epoch, each epoch once
        np.testing.assert_allclose(values, history[column], rtol=1e-6)  # stored as float32
    metrics = json.loads((out / "model.json").read_text())["metrics"]
    np.testing.assert_allclose(found["final/train_rmse"][0][1], metrics["train_rmse"], rtol=1e-6)


def test_a_wrong_kind_or_a_missing_extra_is_one_line_before_training(
    tmp_path: Path,
    table_csv: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "model"
    base = ["train", str(table_csv), "--target", "y", "--epochs", "2", "-o", str(out)]
    code, _, err = run([*base, "--log", "wandb"], capsys)
    assert code == 2 and "--log must be tensorboard, tensorboard:DIR, mlflow" in err
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = run([*base, "--log", "tensorboard"], capsys)
    assert code == 1 and "pip install 'nnreg[tensorboard]'" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_run_that_fails_keeps_the_epochs_it_logged(tmp_path: Path) -> None:
    """The seed experiment at a learning rate that diverges after its first epoch, in a
    process of its own (which, ending, would drop what its writer had not flushed): the
    event file is closed on the way out, so that epoch can be read back."""
    import subprocess

    logdir = tmp_path / "tb"
    args = ["train", "--lr", "1e8", "-o", str(tmp_path / "model"), "--log", f"tensorboard:{logdir}"]
    done = subprocess.run(
        [sys.executable, "-m", "nnreg", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1 and "training diverged" in done.stderr
    assert [step for step, _ in scalars(logdir)["loss/train"]] == [0]
