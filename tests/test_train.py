"""The training loop against the seed experiment written as a plain PyTorch loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import nnreg
from nnreg.exceptions import TrainingDivergedError
from nnreg.model import MLP, MLPConfig
from nnreg.train import TrainConfig, fit, loss_function


class OriginalNet(nn.Module):
    """The seed experiment's network, written the way the original was."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 20)
        self.fc2 = nn.Linear(20, 20)
        self.fc3 = nn.Linear(20, 1)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def original_loop(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int = 500
) -> list[float]:
    """The original recipe, with its slips corrected: train mode, loss(prediction, target)."""
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    model.train()
    losses = []
    for _ in range(epochs):
        y_pred = model(X)
        loss = loss_fn(y_pred, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def seed_tensors(df: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.tensor(df[["x1", "x2"]].to_numpy(), dtype=torch.float32)  # (100, 2)
    y = torch.tensor(df[["y"]].to_numpy(), dtype=torch.float32)  # (100, 1)
    return X, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seed_preset_matches_the_original_loop_at_every_epoch(seed: int) -> None:
    df = nnreg.seed_dataset(random_state=seed)
    X, y = seed_tensors(df)
    torch.manual_seed(seed)
    reference = OriginalNet()
    # Same seed -> same initial weights: nnreg builds and initialises layers in the same order.
    reg = nnreg.Regressor.from_preset("seed", random_state=seed)
    reg.fit(df[["x1", "x2"]], df["y"])
    expected = original_loop(reference, X, y)

    assert reg.n_iter_ == 500 and len(reg.loss_curve_) == 500
    np.testing.assert_allclose(reg.loss_curve_, expected, rtol=1e-5)
    for mine, ref in zip(
        reg.model_.layers, (reference.fc1, reference.fc2, reference.fc3), strict=True
    ):
        torch.testing.assert_close(mine.weight, ref.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(reg.predict(df[["x1", "x2"]].head(1)), dtype=torch.float32),
        reference(X[:1]).detach().reshape(1),
        rtol=1e-5,
        atol=1e-6,
    )


def test_seed_preset_matches_the_original_loop_from_copied_weights() -> None:
    """Same initial weights given explicitly, whatever the RNG did."""
    df = nnreg.seed_dataset(random_state=5)
    X, y = seed_tensors(df)
    net = MLP(MLPConfig())
    reference = OriginalNet()
    reference.load_state_dict(
        {
            f"fc{i + 1}.{p}": t.clone()
            for i, layer in enumerate(net.layers)
            for p, t in layer.state_dict().items()
        }
    )
    losses = fit(net, X, y, TrainConfig()).train_loss
    np.testing.assert_allclose(losses, original_loop(reference, X, y), rtol=1e-5)


def test_seed_loss_falls_steadily(seed_frame: pd.DataFrame) -> None:
    reg = nnreg.Regressor.from_preset("seed", random_state=0).fit(
        seed_frame[["x1", "x2"]], seed_frame["y"]
    )
    losses = np.asarray(reg.loss_curve_)
    assert 5 < losses[0] < 40
    assert losses[-1] < 0.2 * losses[0]
    assert np.all(np.diff(losses[::50]) < 0)  # falling over every stretch of 50 epochs


def test_minibatch_adam_fits_a_smooth_function(table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    reg = nnreg.Regressor(hidden_layer_sizes=(32, 32), max_iter=150, batch_size=32, random_state=0)
    reg.fit(X, y)
    assert reg.score(X, y) > 0.98
    assert reg.loss_curve_[-1] < 0.1 * reg.loss_curve_[0]


@pytest.mark.parametrize("name", ["squared_error", "absolute_error", "huber"])
def test_weighted_loss_equals_repeated_rows(name: str) -> None:
    """Integer sample weights act like repeating rows."""
    torch.manual_seed(0)
    pred, target = torch.randn(6, 2), torch.randn(6, 2)
    w = torch.tensor([1.0, 2.0, 0.0, 3.0, 1.0, 1.0])
    repeat = torch.repeat_interleave(torch.arange(6), w.long())
    loss = loss_function(name)
    torch.testing.assert_close(loss(pred, target, w), loss(pred[repeat], target[repeat], None))


def test_divergence_raises_a_clear_error() -> None:
    X = torch.randn(50, 2) * 100
    y = torch.randn(50, 1) * 1000
    net = MLP(MLPConfig())
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        fit(net, X, y, TrainConfig(lr=10.0, epochs=200))


def test_fixed_random_state_gives_bitwise_identical_fits(table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    first = nnreg.Regressor(max_iter=5, batch_size=64, random_state=3).fit(X, y)
    second = nnreg.Regressor(max_iter=5, batch_size=64, random_state=3).fit(X, y)
    np.testing.assert_array_equal(first.predict(X), second.predict(X))
    third = nnreg.Regressor(max_iter=5, batch_size=64, random_state=4).fit(X, y)
    assert not np.array_equal(first.predict(X), third.predict(X))


class SliceSource:
    """A BatchSource over in-memory tensors: fixed minibatches, no shuffling."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        self.X, self.y, self.batch = X, y, batch
        self.steps_per_epoch = -(-X.shape[0] // batch)

    def epoch(self, epoch: int):  # type: ignore[no-untyped-def]
        for lo in range(0, self.X.shape[0], self.batch):
            yield self.X[lo : lo + self.batch], self.y[lo : lo + self.batch], None


class SoloSync:
    """A one-process GradientSync that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def average_(self, tensor: torch.Tensor) -> None:
        self.calls += 1

    def sum_(self, tensor: torch.Tensor) -> None:
        self.calls += 1


@pytest.mark.parametrize("engine", ["fast", "autograd"])
@pytest.mark.parametrize("sync", [False, True])
def test_batch_source_matches_in_memory_training(engine: str, sync: bool) -> None:
    """A source yielding the same minibatches (full batch, so no shuffling) trains the same
    weights, with or without a (one-process) gradient sync in the step."""
    from nnreg.train import Trainer

    frame = nnreg.seed_dataset(64, random_state=3)
    X = torch.tensor(frame[["x1", "x2"]].to_numpy(), dtype=torch.float64)
    y = torch.tensor(frame[["y"]].to_numpy(), dtype=torch.float64)
    config = TrainConfig(epochs=20, lr=0.01, optimizer="adam", engine=engine, schedule="cosine")
    torch.manual_seed(0)
    a = MLP(MLPConfig(2, (8, 8), 1)).double()
    b = MLP(MLPConfig(2, (8, 8), 1)).double()
    b.load_state_dict(a.state_dict())
    ta, tb = Trainer(a, config), Trainer(b, config)
    if sync:
        tb.sync = SoloSync()
    ta.run(X, y)
    tb.run(SliceSource(X, y, 64))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ta.history.train_loss, tb.history.train_loss, rtol=1e-12)
    np.testing.assert_allclose(ta.history.lr, tb.history.lr)
    if sync:
        assert isinstance(tb.sync, SoloSync) and tb.sync.calls >= 20


@pytest.mark.parametrize(
    "recipe",
    [
        {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        {"optimizer": "sgd", "schedule": "plateau", "lr": 0.1, "n_iter_no_change": 2},
        {"optimizer": "adamw", "weight_decay": 0.1, "schedule": "cosine", "loss": "huber"},
        {
            "optimizer": "adam",
            "lr": 0.05,
            "loss": "absolute_error",
            "early_stopping": True,
            "n_iter_no_change": 3,
        },
    ],
)
def test_both_backends_train_the_same_weights_through_one_trainer(recipe: dict) -> None:
    """One loop, two step engines: the fast kernels and autograd agree to float64 rounding
    on minibatches, sample weights, validation, schedules and early stopping."""
    from nnreg.train import Trainer

    g = torch.Generator().manual_seed(0)
    X = torch.randn(70, 3, generator=g, dtype=torch.float64)  # (rows, inputs)
    y = torch.randn(70, 2, generator=g, dtype=torch.float64)  # (rows, outputs)
    w = torch.rand(70, generator=g, dtype=torch.float64) + 0.5  # (rows,)
    validation = (X[:20] * 1.1, y[:20], w[:20])
    config = {"epochs": 12, "lr": 0.01, "batch_size": 16, **recipe}
    trained = {}
    for engine in ("fast", "autograd"):
        torch.manual_seed(4)
        model = MLP(MLPConfig(3, (8, 6), 2, activation="tanh", dropout=0.0)).double()
        trainer = Trainer(
            model, TrainConfig(**config, engine=engine), torch.Generator().manual_seed(1)
        )
        trainer.run(X, y, w, validation=validation)
        assert trainer.fast == (engine == "fast")
        trained[engine] = (model, trainer)
    (fast, a), (ref, b) = trained["fast"], trained["autograd"]
    for p, q in zip(fast.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.history.train_loss, b.history.train_loss, rtol=1e-9)
    np.testing.assert_allclose(a.history.val_loss, b.history.val_loss, rtol=1e-9)
    assert a.history.lr == b.history.lr and a.best_epoch == b.best_epoch
    if config.get("schedule") == "plateau":
        assert min(a.history.lr) < config["lr"]  # the rate was lowered on a stall
    if config.get("early_stopping"):
        assert len(a.history) < config["epochs"]  # it stopped early, on the same epoch


def test_the_shared_schedule_decays_by_cosine_and_lowers_on_a_plateau() -> None:
    from nnreg.schedule import PLATEAU_FACTOR, PLATEAU_MIN_SCALE, Schedule

    cosine = Schedule("cosine", lr=0.2)
    cosine.total_steps = 8
    assert cosine.per_step
    assert [cosine.rate(k) for k in (0, 2, 4, 8)] == pytest.approx(
        [0.2, 0.1 * (1 + 2**-0.5), 0.1, 0.0], abs=1e-15
    )
    constant = Schedule("constant", lr=0.2)
    assert not constant.per_step and constant.rate(5) == 0.2

    plateau = Schedule("plateau", lr=0.5, patience=4, tol=0.0)  # stalls after 2 epochs
    scales = []
    for epoch, loss in enumerate([5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0]):
        plateau.observe(epoch, loss)
        scales.append(plateau.scale)
    f = PLATEAU_FACTOR
    assert scales == [1.0, 1.0, 1.0, f, f, f * f, f * f, f * f]
    assert plateau.rate(0) == 0.5 * f * f and not plateau.per_step
    for epoch in range(8, 40):
        plateau.observe(epoch, 3.0)
    assert plateau.scale == PLATEAU_MIN_SCALE  # never lower
    plateau.restart()  # a new run counts misses again, at the lowered rate
    assert plateau.plateau.misses == 0 and plateau.scale == PLATEAU_MIN_SCALE


def test_the_divergence_check_names_the_epoch_and_the_fix() -> None:
    from nnreg.schedule import check_finite

    check_finite(3, [1.0, 2.0], lr=0.1, what="loss is 1.0")  # finite: nothing happens
    with pytest.raises(TrainingDivergedError) as info:
        check_finite(3, [1.0, float("nan")], lr=0.1, what="loss is 1.0", kept=True)
    assert str(info.value) == (
        "training diverged at epoch 3 (loss is 1.0); lower the learning rate (now 0.1) or "
        "scale the data; the weights of the last finite epoch are kept."
    )
    with pytest.raises(TrainingDivergedError, match=r"scale the data\.$"):
        check_finite(0, [float("inf")], lr=1.0, what="a member's loss is not finite")
