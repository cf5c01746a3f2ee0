"""Batched ensembles against separate fits, per-member settings, intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from nnreg.embeddings import quantile_bins
from nnreg.engine import BatchedMLP
from nnreg.ensemble import ConformalCalibrator, EnsembleTrainer
from nnreg.model import MLP, MLPConfig
from nnreg.recipe import member_seeds
from nnreg.train import TrainConfig, Trainer


def make_members(seeds: list[int], config: MLPConfig) -> list[MLP]:
    members = []
    for s in seeds:
        torch.manual_seed(s)
        members.append(MLP(config))
    return members


def data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    y = torch.sin(X[:, :1]) + X[:, 1:2] ** 2 + 0.1 * torch.randn(n, 1, generator=g)
    return X, y


@pytest.mark.parametrize(
    ("optimizer", "batch_size", "loss", "activation", "weighted"),
    [
        ("sgd", None, "squared_error", "relu", False),
        ("adam", 32, "squared_error", "silu", False),
        ("adamw", 25, "huber", "tanh", True),
        ("sgd", 40, "absolute_error", "gelu", True),
        ("adam", None, "huber", "relu", True),  # full batch: rows shared by every member
    ],
)
def test_batched_ensemble_equals_separate_fits(
    optimizer: str, batch_size: int | None, loss: str, activation: str, weighted: bool
) -> None:
    X, y = data()
    w = torch.rand(120, generator=torch.Generator().manual_seed(9)) + 0.5 if weighted else None
    model_config = MLPConfig(n_inputs=3, hidden_sizes=(16, 8), activation=activation)
    config = TrainConfig(
        epochs=15,
        lr=0.01,
        optimizer=optimizer,
        momentum=0.5,
        batch_size=batch_size,
        loss=loss,
        weight_decay=0.01,
        schedule="cosine",
    )
    seeds = member_seeds(3, 4)
    members = make_members(seeds, model_config)
    EnsembleTrainer(members, config, seeds).run(X, y, w)
    for member, s in zip(members, seeds, strict=True):
        (single,) = make_members([s], model_config)
        Trainer(single, config, torch.Generator().manual_seed(s + 1)).run(X, y, w)
        for a, b in zip(member.parameters(), single.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


EMBEDDED = MLPConfig(
    n_inputs=3,
    hidden_sizes=(12, 8),
    activation="silu",
    embedding="piecewise",
    n_embedded=2,
    d_embedding=4,
    n_bins=5,
)


def embedded_members(seeds: list[int], X: torch.Tensor) -> list[MLP]:
    """Members with piecewise-linear embeddings of X's first two columns, bins from X."""
    members = make_members(seeds, EMBEDDED)
    edges = quantile_bins(X[:, :2].numpy(), 5)
    for m in members:
        m.embedding.set_bins(edges)  # type: ignore[union-attr]
    return members


@pytest.mark.parametrize(("batch_size", "weighted"), [(None, False), (32, True)])
def test_batched_members_with_embeddings_equal_separate_fits(
    batch_size: int | None, weighted: bool
) -> None:
    """The members' embeddings train as each single fit's does (one set of bins, each member
    its own parameters and rows); full batch: the rows shared, not copied."""
    X, y = data()
    w = torch.rand(120, generator=torch.Generator().manual_seed(9)) + 0.5 if weighted else None
    config = TrainConfig(epochs=12, lr=0.01, optimizer="adamw", batch_size=batch_size)
    seeds = member_seeds(5, 3)
    members = embedded_members(seeds, X)
    trainer = EnsembleTrainer(members, config, seeds)
    trainer.run(X, y, w)
    for member, s in zip(members, seeds, strict=True):
        (single,) = embedded_members([s], X)
        Trainer(single, config, torch.Generator().manual_seed(s + 1)).run(X, y, w)
        assert float(single.embedding.weight.detach().abs().sum()) > 0  # type: ignore[union-attr]
        for (name, a), b in zip(member.named_parameters(), single.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(
        trainer.predict(X), torch.stack([m(X) for m in members]).detach(), rtol=1e-5, atol=1e-5
    )


def test_batched_embedding_gradients_match_autograd_in_float64() -> None:
    X, y = data(20)
    X, y = X.double(), y.double()
    seeds = member_seeds(2, 3)
    members = [m.double() for m in embedded_members(seeds, X.float())]
    with torch.no_grad():  # the piecewise weights start at zero: move them
        for m in members:
            m.embedding.weight.normal_()  # type: ignore[union-attr]
    net = BatchedMLP(members, "silu", "huber")
    perm = torch.stack(
        [torch.randperm(20, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    X1 = torch.cat([X, torch.ones(20, 1, dtype=torch.float64)], dim=1)[perm]  # own rows each
    w = torch.rand(3, 20, dtype=torch.float64) + 0.1
    losses = net.loss_and_grad(X1, y[perm], w)
    for k, m in enumerate(members):
        pred, target = m(X[perm[k]]), y[perm[k]]
        loss = (F.huber_loss(pred, target, reduction="none").mean(1) * w[k]).sum() / w[k].sum()
        m.zero_grad()
        loss.backward()
        torch.testing.assert_close(losses[k], loss.detach(), rtol=1e-12, atol=0)
        for i, layer in enumerate(m.layers):  # type: ignore[arg-type]
            torch.testing.assert_close(
                net.G[i][k][:, :-1], layer.weight.grad, rtol=1e-10, atol=1e-12
            )
            torch.testing.assert_close(net.G[i][k][:, -1], layer.bias.grad, rtol=1e-10, atol=1e-12)
        assert net.embedding is not None
        for name, grad in net.embedding.g.items():
            expected = getattr(m.embedding, name).grad
            torch.testing.assert_close(grad[k], expected, rtol=1e-10, atol=1e-12, msg=name)


def test_per_member_learning_rates_and_decay_really_differ() -> None:
    X, y = data()
    model_config = MLPConfig(n_inputs=3, hidden_sizes=(16,))
    config = TrainConfig(epochs=20, optimizer="adam", batch_size=None)
    members = make_members([0, 0, 0], model_config)  # identical starts
    trainer = EnsembleTrainer(
        members, config, [0, 0, 0], lr=[1e-4, 1e-2, 1e-2], weight_decay=[0.0, 0.0, 0.5]
    )
    trainer.run(X, y)
    final = trainer.record.train_loss[-1]
    assert final[1] < final[0]  # a larger learning rate went further
    assert final[1] != final[2]  # weight decay changed the path
    # Each matches a single model trained with its own settings.
    for k, (lr, wd) in enumerate([(1e-4, 0.0), (1e-2, 0.0), (1e-2, 0.5)]):
        (single,) = make_members([0], model_config)
        cfg = TrainConfig(epochs=20, optimizer="adam", batch_size=None, lr=lr, weight_decay=wd)
        Trainer(single, cfg).run(X, y)
        for a, b in zip(members[k].parameters(), single.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_early_stopped_members_stop_changing() -> None:
    X, y = data(200)
    Xv, yv = data(60, seed=1)
    model_config = MLPConfig(n_inputs=3, hidden_sizes=(64, 64))
    config = TrainConfig(
        epochs=150,
        lr=0.02,
        optimizer="adam",
        batch_size=32,
        early_stopping=True,
        n_iter_no_change=5,
    )
    seeds = member_seeds(0, 4)
    members = make_members(seeds, model_config)
    trainer = EnsembleTrainer(members, config, seeds, lr=[0.05, 0.02, 0.001, 0.0005])
    snapshots: list[torch.Tensor] = []
    trainer.run(
        X,
        y,
        validation=(Xv, yv, None),
        callback=lambda e, t, v: snapshots.append(trainer.net.params.clone()),
    )
    stopped = trainer.record.stopped_at
    assert any(s >= 0 for s in stopped)
    for k, epoch in enumerate(stopped):
        if 0 <= epoch < len(snapshots) - 1:  # frozen from the epoch it stalled on
            for later in snapshots[epoch + 1 :]:
                torch.testing.assert_close(later[k], snapshots[epoch][k], rtol=0, atol=0)
    # Each member ends on the weights of its best validation epoch.
    val = trainer.validation_losses((Xv, yv, None))
    best = torch.tensor(trainer.record.val_loss).min(dim=0).values
    torch.testing.assert_close(val, best.to(val.dtype), rtol=1e-5, atol=1e-7)


def test_conformal_intervals_cover_exchangeable_rows() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    mean = rng.normal(size=(n, 1))
    std = rng.uniform(0.5, 2.0, size=(n, 1))
    y = mean + std * rng.normal(size=(n, 1))
    cal = ConformalCalibrator.fit(y[:1000], mean[:1000], std[:1000])
    half = cal.halfwidth(std[1000:], 0.9)
    covered = np.abs(y[1000:] - mean[1000:]) <= half
    assert 0.88 < covered.mean() < 0.92
    assert ConformalCalibrator.from_dict(cal.to_dict()).halfwidth(std[:5], 0.9) == pytest.approx(
        cal.halfwidth(std[:5], 0.9)
    )


def test_regressor_ensemble_mean_spread_and_calibrated_intervals(tmp_path) -> None:
    import nnreg

    rng = np.random.default_rng(0)
    n = 3000
    X = rng.uniform(-2, 2, size=(n, 2))
    noise = 0.1 + 0.4 * (X[:, 0] > 0)  # heteroscedastic: wider on the right
    y = np.sin(2 * X[:, 0]) + X[:, 1] + noise * rng.normal(size=n)
    train, test = slice(0, 2000), slice(2000, n)
    reg = nnreg.Regressor(n_models=6, max_iter=30, validation_fraction=0.2, random_state=0)
    reg.fit(X[train], y[train])
    assert (
        len(reg.model_.members) == 6
        and reg.n_parameters()
        == 6 * nnreg.Regressor(max_iter=1, random_state=0).fit(X[train], y[train]).n_parameters()
    )
    mean, std = reg.predict(X[test], return_std=True)
    np.testing.assert_array_equal(mean, reg.predict(X[test]))
    assert mean.shape == std.shape == (1000,) and (std > 0).all()
    members = np.stack(
        [
            m.predict_float64(
                torch.from_numpy(
                    reg.preprocessor_.transform(pd.DataFrame(X[test], columns=["x0", "x1"]))
                )
            ).numpy()[:, 0]
            for m in reg.model_.members
        ]
    )
    np.testing.assert_allclose(
        mean, reg.y_scaler_.inverse_transform(members.mean(0)[:, None])[:, 0]
    )
    lower, upper = reg.predict_interval(X[test], coverage=0.9)
    covered = np.mean((lower <= y[test]) & (y[test] <= upper))
    assert 0.85 <= covered <= 0.95
    # Not wider than needed: close to the width a constant interval would need on test rows.
    needed = 2 * np.quantile(np.abs(y[test] - mean), 0.9)
    assert (upper - lower).mean() < 1.3 * needed
    # The model folder keeps every member and the calibration.
    loaded = nnreg.load(reg.save(tmp_path / "ens"))
    np.testing.assert_array_equal(loaded.predict(X[test]), mean)
    for a, b in zip(
        loaded.predict_interval(X[test], 0.8), reg.predict_interval(X[test], 0.8), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_single_model_intervals_need_held_out_rows() -> None:
    import nnreg
    from nnreg.exceptions import ConfigError

    X = np.random.default_rng(0).normal(size=(200, 2))
    y = X[:, 0]
    with pytest.raises(ConfigError, match="n_models > 1 or early_stopping"):
        nnreg.Regressor(max_iter=2).fit(X, y).predict_interval(X)
    with pytest.raises(ConfigError, match="return_std=True needs an ensemble"):
        nnreg.Regressor(max_iter=2).fit(X, y).predict(X, return_std=True)
    reg = nnreg.Regressor(max_iter=5, early_stopping=True, random_state=0).fit(X, y)
    lower, upper = reg.predict_interval(X, coverage=0.5)
    assert (upper > lower).all()
    with pytest.raises(ConfigError, match="coverage must be"):
        reg.predict_interval(X, coverage=1.5)


def test_a_stop_request_ends_an_ensemble_after_the_epoch() -> None:
    import threading

    import nnreg

    X = np.random.default_rng(0).normal(size=(100, 2))
    stop = threading.Event()
    reg = nnreg.Regressor(n_models=3, max_iter=50, random_state=0)
    reg.fit(X, X[:, 0], stop=stop, callback=lambda e, *_: stop.set() if e == 2 else None)
    assert reg.interrupted_ and reg.n_iter_ == 3


def test_ensemble_members_train_on_every_row_and_helpers_score_the_calibration_rows() -> None:
    """Without early stopping every member trains on every row (member k equals a single
    model fitted on all of them), and the calibration scores are the residuals of two extra
    networks, each a single model fitted on every row but its fold of the calibration rows."""
    import nnreg
    from nnreg.fitting import CALIBRATION_MEMBERS

    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 2))
    y = np.sin(X[:, 0]) + X[:, 1] ** 2
    params = {
        "embedding": "none",  # independent members do not embed
        "max_iter": 20,
        "batch_size": "full",
        "dropout": 0.0,
        "dtype": "float64",
        "scaling": "none",
        "scale_target": False,
        "hidden_layer_sizes": (8,),
        "learning_rate": "constant",
    }
    reg = nnreg.Regressor(n_models=3, random_state=4, **params).fit(X, y)
    seeds = member_seeds(4, 3 + CALIBRATION_MEMBERS)
    for k, seed in enumerate(seeds[:3]):
        single = nnreg.Regressor(random_state=seed, **params).fit(X, y)
        for a, b in zip(
            reg.model_.members[k].parameters(), single.model_.parameters(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    cal = np.sort(np.random.default_rng(4).permutation(120)[:40])  # a third: at least 100
    folds = np.random.default_rng(4 + 3).permutation(40) % CALIBRATION_MEMBERS
    scores = np.empty(40)
    for c, seed in enumerate(seeds[3:]):
        keep = np.setdiff1d(np.arange(120), cal[folds == c])
        assert len(keep) == 100
        helper = nnreg.Regressor(random_state=seed, **params).fit(X[keep], y[keep])
        scores[folds == c] = np.abs(y - helper.predict(X))[cal[folds == c]]
    np.testing.assert_allclose(reg.calibrator_.scores[0], np.sort(scores), rtol=1e-9)
    assert len(reg.model_.members) == 3 and len(reg.loss_curve_) == 20
    assert reg.best_epoch_ == 19  # no roll-back here, so the final weights are compared
    lower, upper = reg.predict_interval(X, coverage=0.75)
    assert (lower < upper).all()


def test_unscaled_conformal_intervals_have_one_width_and_round_trip() -> None:
    rng = np.random.default_rng(2)
    y, mean = rng.normal(size=(99, 1)), np.zeros((99, 1))
    cal = ConformalCalibrator.fit(y, mean)
    half = cal.halfwidth(rng.uniform(0.1, 5.0, size=(7, 1)), 0.9)
    assert np.all(half == half[0]) and half[0, 0] == np.sort(np.abs(y[:, 0]))[89]
    again = ConformalCalibrator.from_dict(cal.to_dict())
    assert not again.scaled and np.array_equal(again.halfwidth(np.ones((3, 1)), 0.9), half[:3])
    old = {
        k: v
        for k, v in ConformalCalibrator.fit(y, mean, np.ones((99, 1))).to_dict().items()
        if k != "scaled"
    }
    assert ConformalCalibrator.from_dict(old).scaled  # folders written before the flag


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu", "tanh"])
def test_a_forward_pass_of_a_few_members_equals_theirs_in_the_full_pass(activation: str) -> None:
    X, _ = data(30)
    seeds = member_seeds(1, 5)
    members = make_members(seeds, MLPConfig(n_inputs=3, hidden_sizes=(6, 4), activation=activation))
    trainer = EnsembleTrainer(members, TrainConfig(epochs=1), seeds)
    X1 = torch.cat([X, torch.ones(30, 1)], dim=1)
    torch.testing.assert_close(
        trainer.net.predict_members(X1, slice(2, 4)), trainer.net.predict(X1)[2:4]
    )


def overfitting_ensemble(early_stopping: bool) -> tuple[EnsembleTrainer, tuple, torch.Tensor]:
    """Four members on 40 noisy rows, two helpers that each leave out half of 20 held-out
    rows (scored out of fold), trained long enough to overfit."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(60, 3, generator=g)
    y = X[:, :1] + torch.randn(60, 1, generator=g)  # half of the variance is noise
    held = torch.arange(40, 60)
    owner = 4 + torch.arange(20) % 2
    w = torch.ones(6, 60)
    w[owner, held] = 0.0  # helper 4 leaves out even held-out rows, helper 5 odd ones
    config = TrainConfig(
        epochs=300,
        lr=0.01,
        optimizer="adam",
        batch_size=None,
        early_stopping=early_stopping,
        n_iter_no_change=20,
    )
    seeds = member_seeds(0, 6)
    members = make_members(seeds, MLPConfig(n_inputs=3, hidden_sizes=(64, 64)))
    trainer = EnsembleTrainer(members, config, seeds, reported=4)
    validation = (X[held], y[held], None)
    trainer.run(X, y, w, validation=validation, owner=owner)
    return trainer, validation, owner


def out_of_fold_loss(trainer: EnsembleTrainer, validation: tuple, owner: torch.Tensor) -> float:
    X, y, _ = validation
    pred = trainer.predict(X)[:, :, 0]  # (members, rows)
    return float(((pred[owner, torch.arange(len(owner))] - y[:, 0]) ** 2).mean())


def test_out_of_fold_early_stopping_stops_every_member_together_on_the_best_epoch() -> None:
    trainer, validation, owner = overfitting_ensemble(early_stopping=True)
    stopped, best = trainer.record.stopped_at, trainer.record.best_epoch
    assert len(set(stopped)) == 1 and 0 < stopped[0] < 299  # together, before the end
    assert len(set(best)) == 1 and best[0] == stopped[0] - 20
    val = trainer.history.val_loss
    assert val[best[0]] == min(val)
    # Every member (helpers too) holds the best epoch's weights: its out-of-fold loss.
    assert out_of_fold_loss(trainer, validation, owner) == pytest.approx(min(val), rel=1e-5)


def test_a_full_run_rolls_back_only_when_the_held_out_rows_say_so_clearly() -> None:
    trainer, validation, owner = overfitting_ensemble(early_stopping=False)
    # 300 epochs: every third is scored (at most 128 scorings), the last among them.
    val = trainer.history.val_loss
    scored = [e for e, v in enumerate(val) if not np.isnan(v)]
    assert scored == list(range(2, 300, 3))
    lowest = min(val[e] for e in scored)
    assert val[-1] > 1.5 * lowest  # it overfitted, clearly
    (best,) = set(trainer.record.best_epoch)
    assert best in scored and val[best] == lowest
    assert out_of_fold_loss(trainer, validation, owner) == pytest.approx(lowest, rel=1e-5)


def test_the_roll_back_rule_needs_a_gap_of_two_standard_errors() -> None:
    from nnreg.ensemble import _OutOfFold

    members = make_members([0, 1], MLPConfig(n_inputs=3, hidden_sizes=(4,)))
    net = EnsembleTrainer(members, TrainConfig(epochs=1), [0, 1]).net
    X, y = data(100)
    rule = _OutOfFold(net, "squared_error", (X, y, None), torch.arange(100) % 2, tol=0.0)
    rng = np.random.default_rng(0)
    diff = torch.from_numpy(rng.normal(size=100))
    diff = (diff - diff.mean()) / diff.std()  # mean 0, std 1: standard error 0.1
    params = net.params.clone()
    for gap, rolls_back in [(0.19, False), (0.21, True)]:
        rule.best_rows = torch.ones(100, dtype=torch.float64)
        rule.rows = lambda gap=gap: rule.best_rows + diff + gap  # the final weights' losses
        rule.best_epoch, rule.best_params = 7, torch.zeros_like(params)
        net.params.copy_(params)
        kept = rule.finish(net.params, rollback_always=False)
        assert (kept == 7) is rolls_back
        assert bool((net.params == 0).all()) is rolls_back
    net.params.copy_(params)  # early stopping always goes back
    assert rule.finish(net.params, rollback_always=True) == 7 and bool((net.params == 0).all())


def test_the_ensemble_follows_the_shared_cosine_schedule() -> None:
    """Every step scales each member's rate by the cosine factor the single trainer uses; the
    history records the factor of each epoch's last step."""
    from nnreg.schedule import cosine

    X, y = data()
    members = make_members([0, 1], MLPConfig(n_inputs=3, hidden_sizes=(8,)))
    config = TrainConfig(epochs=5, lr=0.01, optimizer="adam", batch_size=40, schedule="cosine")
    trainer = EnsembleTrainer(members, config, [0, 1])
    trainer.run(X, y)
    steps = 3  # 120 rows in batches of 40
    assert trainer.history.lr == [0.01 * cosine(e * steps + 2, 5 * steps) for e in range(5)]


def test_a_diverging_ensemble_raises_the_shared_divergence_error() -> None:
    from nnreg.exceptions import TrainingDivergedError

    X, y = data()
    members = make_members([0, 1], MLPConfig(n_inputs=3, hidden_sizes=(8,)))
    message = (
        r"^training diverged at epoch \d+ \(a member's loss is not finite\); lower the "
        r"learning rate \(now 1000\) or scale the data\.$"
    )
    with pytest.raises(TrainingDivergedError, match=message):
        EnsembleTrainer(members, TrainConfig(epochs=50, lr=1000.0), [0, 1]).run(X * 100, y * 1e4)


@pytest.mark.parametrize("coverage", [0.5, 0.8, 0.9, 0.95, 0.99, 0.7, 0.1])
def test_the_rows_an_interval_needs_are_the_fewest_that_give_it(coverage: float) -> None:
    """rows_for (the error message's count and the report's check) against a search: 0.9
    needs 9 rows (the 10th smallest of 10 scores would be the 9th of 9), not 10."""
    from nnreg.calibration import ConformalCalibrator, rows_for

    def fits(n: int) -> bool:
        return math.ceil((n + 1) * coverage) <= n

    fewest = next(n for n in range(1, 10_000) if fits(n))
    assert rows_for(coverage) == fewest
    for n in (fewest - 1, fewest):
        cal = ConformalCalibrator.fit(np.zeros((n, 1)), np.arange(n, dtype=float)[:, None])
        assert cal.covers(coverage) == (n >= fewest)
        if n >= fewest:
            cal.halfwidth(np.zeros((1, 1)), coverage)


def test_an_ensemble_too_large_for_memory_is_refused_before_its_members_are_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nnreg
    from nnreg import recipe
    from nnreg.exceptions import ConfigError

    X = np.random.default_rng(0).normal(size=(30, 3))
    with pytest.raises(ConfigError, match=r"n_models must be an integer in \[1, 4096\]"):
        nnreg.Regressor(n_models=100_000).fit(X, X[:, 0])
    built: list[int] = []
    member = recipe.Recipe.member
    monkeypatch.setattr(recipe.Recipe, "member", lambda *a: built.append(1) or member(*a))
    monkeypatch.setattr(recipe, "physical_memory", lambda: 2**20)  # 64 members need more
    reg = nnreg.Regressor(n_models=64, hidden_layer_sizes=(64, 64), max_iter=1)
    with pytest.raises(ConfigError, match=r"n_models=64 .* more than this machine's 0\.0 GiB"):
        reg.fit(X, X[:, 0])
    assert len(built) == 1  # member 0, whose size is the estimate's measure
    monkeypatch.setattr(recipe, "physical_memory", lambda: None)  # the system does not say
    assert nnreg.Regressor(n_models=2, max_iter=1).fit(X, X[:, 0]).n_models == 2
