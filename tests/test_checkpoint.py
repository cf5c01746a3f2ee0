"""Checkpoints, resuming, interrupts and divergence: nothing lost, nothing half-done."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import nnreg
from nnreg.exceptions import TrainingDivergedError

PARAMS = [
    {"max_iter": 12, "random_state": 0},  # recommended: adamw, cosine, dropout, minibatches
    {"max_iter": 12, "random_state": 1, "early_stopping": True, "n_iter_no_change": 30},
    {
        "max_iter": 12,
        "random_state": 2,
        "optimizer": "sgd",
        "momentum": 0.9,
        "learning_rate": "plateau",
        "learning_rate_init": 0.01,
    },
    # shared members (autograd), with a piecewise embedding and held-out calibration rows
    {
        "max_iter": 12,
        "random_state": 3,
        "n_models": 3,
        "ensemble": "tabm",
        "embedding": "piecewise",
    },
]


def weights(reg: nnreg.Regressor) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in reg.model_.state_dict().items()}


class StopAfter:
    """A callback that sets the stop event after a given epoch, as a signal handler would."""

    def __init__(self, epoch: int, stop: threading.Event) -> None:
        self.epoch, self.stop = epoch, stop

    def __call__(self, epoch: int, loss: float, val: float | None) -> None:
        if epoch == self.epoch:
            self.stop.set()


@pytest.mark.parametrize("params", PARAMS)
def test_resume_from_a_checkpoint_is_bitwise_identical(
    params: dict, tmp_path: Path, table_frame: pd.DataFrame
) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    full = nnreg.Regressor(**params).fit(X, y)
    ckpt = tmp_path / "checkpoint.safetensors"
    stop = threading.Event()
    first = nnreg.Regressor(**params).fit(
        X, y, checkpoint=ckpt, checkpoint_every=4, stop=stop, callback=StopAfter(6, stop)
    )
    assert first.interrupted_ and first.n_iter_ == 7  # stopped mid-run, checkpoint at epoch 4
    resumed = nnreg.Regressor(**params).fit(X, y, resume=ckpt)
    assert resumed.n_iter_ == full.n_iter_ and resumed.loss_curve_ == full.loss_curve_
    for name, value in weights(full).items():
        assert torch.equal(weights(resumed)[name], value), name


def test_a_stop_request_keeps_the_best_weights_so_far(table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    stop = threading.Event()
    reg = nnreg.Regressor(max_iter=50, random_state=0)
    reg.fit(X, y, stop=stop, callback=StopAfter(3, stop))
    assert reg.interrupted_ and reg.n_iter_ == 4
    assert np.isfinite(reg.predict(X)).all()


def test_divergence_keeps_the_last_finite_weights(table_frame: pd.DataFrame) -> None:
    X = table_frame[["a", "b", "c"]].to_numpy() * 1e3
    y = table_frame["y"].to_numpy() * 1e6
    reg = nnreg.Regressor.from_preset("seed", learning_rate_init=0.5, random_state=0)
    with pytest.raises(TrainingDivergedError, match="lower the learning rate .* last finite"):
        reg.fit(X, y)
    assert all(torch.isfinite(p).all() for p in reg.model_.parameters())
    assert len(reg.loss_curve_) >= 1 and np.isfinite(reg.loss_curve_).all()


@pytest.mark.parametrize("engine", ["fast", "autograd"])
def test_trainer_state_round_trip_on_both_engines(engine: str) -> None:
    from nnreg.model import MLP, MLPConfig
    from nnreg.train import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(90, 3, generator=g), torch.randn(90, 1, generator=g)
    config = TrainConfig(
        epochs=10, lr=0.01, optimizer="adam", batch_size=16, engine=engine, schedule="cosine"
    )

    def fresh() -> tuple[MLP, Trainer]:
        torch.manual_seed(1)
        model = MLP(MLPConfig(n_inputs=3, hidden_sizes=(8,), dropout=0.0))
        return model, Trainer(model, config, torch.Generator().manual_seed(2))

    full_model, full = fresh()
    full.run(X, y)
    states: list = []
    part_model, part = fresh()
    stop = threading.Event()
    part.stop = stop
    part.run(
        X,
        y,
        checkpoint=lambda t: states.append(t.state_dict()),
        checkpoint_every=3,
        callback=lambda e, *_: stop.set() if e == 4 else None,
    )
    model, resumed = fresh()
    resumed.load_state_dict(*states[-1])  # the state after epoch 3
    resumed.run(X, y)
    assert resumed.history.train_loss == full.history.train_loss
    for a, b in zip(model.parameters(), full_model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("engine", ["fast", "autograd"])
def test_checkpoints_keep_their_tensor_names_and_meta_keys(engine: str) -> None:
    """Checkpoints written before the trainer had backends must still load: same names."""
    from nnreg.model import MLP, MLPConfig
    from nnreg.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = MLP(MLPConfig(n_inputs=2, hidden_sizes=(3,), dropout=0.0))
    config = TrainConfig(epochs=3, optimizer="adam", engine=engine, early_stopping=True)
    trainer = Trainer(model, config, torch.Generator().manual_seed(0))
    X, y = torch.randn(20, 2), torch.randn(20, 1)
    trainer.run(X, y, validation=(X, y, None))
    tensors, meta = trainer.state_dict()
    assert list(meta) == [
        "run_epoch",
        "history",
        "lr_scale",
        "best_epoch",
        "stopper",
        "plateau",
        "fast",
        "optimizer",
    ]
    assert meta["fast"] is (engine == "fast")
    assert (
        sorted(meta["stopper"])
        == sorted(meta["plateau"])
        == [
            "best",
            "best_epoch",
            "misses",
            "patience",
            "tol",
        ]
    )
    layers = [f"layers.{i}.{p}" for i in range(2) for p in ("weight", "bias")]
    if engine == "fast":
        state = ["optimizer.exp_avg", "optimizer.exp_avg_sq", "optimizer.step_t"]
        assert list(tensors) == ["params", *state, "generator", "best"] and meta["optimizer"] == {}
    else:
        state = [f"optimizer.{i}.{k}" for i in range(4) for k in ("step", "exp_avg", "exp_avg_sq")]
        names = (
            [f"model.{k}" for k in layers] + state + ["generator"] + [f"best.{k}" for k in layers]
        )
        assert list(tensors) == names and list(meta["optimizer"]) == ["param_groups"]


def test_edited_checkpoint_metadata_is_refused(tmp_path: Path, table_frame: pd.DataFrame) -> None:
    """The SHA-256 covers the JSON metadata (epoch, history, processes), not only tensors."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from nnreg.exceptions import ModelFileError

    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    ckpt = tmp_path / "checkpoint.safetensors"
    nnreg.Regressor(max_iter=4, random_state=0).fit(X, y, checkpoint=ckpt, checkpoint_every=2)
    with safe_open(str(ckpt), "pt") as f:
        document = json.loads(f.metadata()["nnreg"])
    assert document["format_version"] == 3 and document["processes"] == 1
    for key, value in (("processes", 2), ("trainer", {**document["trainer"], "run_epoch": 0})):
        edited = tmp_path / f"{key}.safetensors"
        save_file(load_file(ckpt), str(edited), {"nnreg": json.dumps({**document, key: value})})
        with pytest.raises(ModelFileError, match="changed or damaged"):
            nnreg.Regressor(max_iter=4, random_state=0).fit(X, y, resume=edited)
    resumed = nnreg.Regressor(max_iter=4, random_state=0).fit(X, y, resume=ckpt)
    assert resumed.n_iter_ == 4
