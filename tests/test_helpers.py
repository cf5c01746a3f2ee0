"""Shared members whose epochs nnreg chose without a search train on every row; two helper
networks trained afterwards calibrate them (nnreg.helpers), as the helpers that train beside
independent members do."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import nnreg
from nnreg import fitting, helpers
from nnreg.recipe import AUTO_EPOCHS, SHARED_EPOCHS, Recipe

# No dropout: helpers trained alone draw other masks than helpers batched with members.
SMALL = {"hidden_layer_sizes": (16,), "dropout": 0.0, "random_state": 3}


def _table(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.uniform(-2, 2, size=n)})
    y = np.sin(X["a"].to_numpy()) + X["b"].to_numpy() ** 2 + rng.normal(0, 0.3, size=n)
    return X, y


@pytest.fixture
def trained(monkeypatch) -> list[int]:
    """The rows of each single-network (or shared-member) training run in the test."""
    rows: list[int] = []
    train_single = fitting.train_single

    def counted(recipe, result, data, *args, **kwargs) -> None:
        rows.append(data[0].shape[0])
        train_single(recipe, result, data, *args, **kwargs)

    monkeypatch.setattr(fitting, "train_single", counted)
    return rows


@pytest.mark.parametrize("form", ["tabm", "tabm-mini"])
def test_shared_members_train_on_every_row_and_helpers_calibrate_them(trained, form) -> None:
    """Under the search's table sizes nnreg trains its default count without a search:
    the members train on every row, for that count, with nothing held out; the conformity
    scores and held-out metrics are those of the two helpers that independent members of
    the same seed train beside them (each leaves out its fold of the calibration rows)."""
    X, y = _table(60)
    reg = nnreg.Regressor(**SMALL, n_models=4, ensemble=form).fit(X, y)
    assert trained == [len(y)]
    assert reg.n_iter_ == AUTO_EPOCHS * SHARED_EPOCHS and "epochs_cv_" not in vars(reg)
    assert np.isnan(reg.history_.val_loss).all()  # nothing held out to score

    reference = nnreg.Regressor(**SMALL, n_models=4, max_iter=AUTO_EPOCHS).fit(X, y)
    assert reference.best_epoch_ == reference.n_iter_ - 1  # no roll-back: they train on
    rows = min(helpers.MIN_CALIBRATION_ROWS, len(y) // 3)
    assert len(reg.calibrator_.scores[0]) == rows == reg.validation_metrics_["rows"]
    assert not reg.calibrator_.scaled
    np.testing.assert_allclose(
        reg.calibrator_.scores, reference.calibrator_.scores, rtol=1e-4, atol=1e-6
    )
    for name, value in reference.validation_metrics_.items():
        np.testing.assert_allclose(reg.validation_metrics_[name], value, rtol=1e-4)


def test_helpers_calibrate_shared_members_to_cover_new_rows() -> None:
    """Above the search's sizes: 90% intervals cover about 90% of 4,000 new rows (one
    network's out-of-sample residuals: if anything a little more)."""
    X, y = _table(1200)
    X_new, y_new = _table(4000, seed=1)
    reg = nnreg.Regressor(**SMALL, n_models=4, ensemble="tabm-mini").fit(X, y)
    assert len(reg.calibrator_.scores[0]) == round(0.1 * len(y))
    lower, upper = reg.predict_interval(X_new, coverage=0.9)
    assert 0.87 <= float(np.mean((lower <= y_new) & (y_new <= upper))) <= 0.95


@pytest.mark.parametrize(
    "change",
    [
        {"max_iter": 30},  # a set count: the holdout also keeps the best epoch
        {"early_stopping": True},  # stopping needs held-out rows
        {"embedding": "periodic"},  # one such network has no batched engine
    ],
)
def test_shared_members_hold_out_their_calibration_rows_where_helpers_cannot_serve(
    trained, change
) -> None:
    X, y = _table(60)
    params = {**SMALL, "n_models": 2, "ensemble": "tabm", **change}
    reg = nnreg.Regressor(**params).fit(X, y)
    held = fitting.MIN_SHARED_CALIBRATION_ROWS
    assert trained == [len(y) - held] and reg.validation_metrics_["rows"] == held
    assert reg.calibrator_.scaled  # the members' own spread scales the scores


def test_a_stopped_fit_trains_no_helpers() -> None:
    """A fit stopped by its stop event keeps its members and has no intervals, rather
    than intervals from helpers that never trained."""
    X, y = _table(60)
    recipe = Recipe.from_params(nnreg.Regressor(**SMALL, n_models=2, ensemble="tabm").get_params())
    stop = threading.Event()

    def stop_at_five(epoch: int, *_: object) -> None:
        if epoch >= 5:
            stop.set()

    data = fitting.FitData(X, y.reshape(-1, 1))
    result = fitting.fit(recipe, data, callback=stop_at_five, stop=stop)
    assert result.interrupted and result.calibrator is None and result.held_out is None


def test_a_resumed_fit_trains_the_same_helpers(tmp_path, table_frame: pd.DataFrame) -> None:
    """Helpers train after the members, outside their checkpoints: a fit resumed from a
    checkpoint trains them again from their seeds, to the uninterrupted fit's calibration."""
    X, y = table_frame[["a", "b", "c"]].iloc[:80], table_frame["y"].iloc[:80]
    params = {**SMALL, "n_models": 3, "ensemble": "tabm"}
    full = nnreg.Regressor(**params).fit(X, y)
    ckpt = tmp_path / "checkpoint.safetensors"
    stop = threading.Event()

    def stop_at_six(epoch: int, *_: object) -> None:
        if epoch == 6:
            stop.set()

    first = nnreg.Regressor(**params).fit(
        X, y, checkpoint=ckpt, checkpoint_every=4, stop=stop, callback=stop_at_six
    )
    assert first.interrupted_ and not hasattr(first, "calibrator_")
    resumed = nnreg.Regressor(**params).fit(X, y, resume=ckpt)
    assert resumed.loss_curve_ == full.loss_curve_
    assert resumed.calibrator_.scores == full.calibrator_.scores
    assert resumed.validation_metrics_ == full.validation_metrics_


def test_a_stop_while_the_helpers_train_leaves_no_intervals(monkeypatch) -> None:
    """A stop that lands while the helpers train ends them early; their residuals would
    be those of half-trained networks, so the fit keeps its members and has no intervals."""
    X, y = _table(60)
    recipe = Recipe.from_params(nnreg.Regressor(**SMALL, n_models=2, ensemble="tabm").get_params())
    stop = threading.Event()
    run = helpers.EnsembleTrainer.run

    def stopped_at_start(trainer, *args, **kwargs):
        stop.set()  # as a signal handler would, once the helpers have started
        return run(trainer, *args, **kwargs)

    monkeypatch.setattr(helpers.EnsembleTrainer, "run", stopped_at_start)
    result = fitting.fit(recipe, fitting.FitData(X, y.reshape(-1, 1)), stop=stop)
    assert result.interrupted and len(result.history.train_loss) == AUTO_EPOCHS * SHARED_EPOCHS
    assert result.calibrator is None and result.held_out is None
