"""max_iter='auto': the epochs chosen by cross-validation (nnreg.epochs)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pandas as pd
import torch

import nnreg
from cli_helpers import run
from nnreg import epochs, fitting
from nnreg.exceptions import TrainingDivergedError
from nnreg.recipe import AUTO_EPOCHS, SHARED_EPOCHS, Recipe

SMALL = {"hidden_layer_sizes": (16,), "random_state": 3}


def _table(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.uniform(-2, 2, size=n)})
    y = np.sin(X["a"].to_numpy()) + X["b"].to_numpy() ** 2 + rng.normal(0, 0.3, size=n)
    return X, y


def test_the_choice_is_recomputed_from_plain_fits_on_the_folds() -> None:
    """Recomputed with the estimator alone: each candidate fit on each fold's complement
    (batches sized for as many steps per epoch as the whole table takes), each held-out row's
    squared error on the standardised target, then the one-standard-error rule against 128
    epochs on the weighted paired differences."""
    X, y = _table(300)
    w = np.random.default_rng(1).uniform(0.5, 2.0, size=len(y))
    reg = nnreg.Regressor(**SMALL).fit(X, y, sample_weight=w)
    cv = reg.epochs_cv_
    assert cv["candidates"] == list(epochs.CANDIDATES) and cv["folds"] == epochs.FOLDS

    order = np.random.default_rng([3, 1]).permutation(len(y))
    per_row = np.zeros((len(epochs.CANDIDATES), len(y)))
    for held in np.array_split(order, epochs.FOLDS):
        rows = np.setdiff1d(np.arange(len(y)), held)
        batch = math.ceil(len(rows) / 2)  # 300 rows take two steps of 150 per epoch
        for j, e in enumerate(epochs.CANDIDATES):
            fold = nnreg.Regressor(**SMALL, max_iter=e, batch_size=batch)
            fold.fit(X.iloc[rows], y[rows], sample_weight=w[rows])
            pred = fold.y_scaler_.transform(fold.predict(X.iloc[held]).reshape(-1, 1))
            target = fold.y_scaler_.transform(y[held].reshape(-1, 1))
            per_row[j, held] = (pred - target).ravel() ** 2
    p = w / w.sum()
    np.testing.assert_allclose(cv["held_out_loss"], per_row @ p, rtol=1e-5)
    default = epochs.CANDIDATES.index(128)
    allowed = [default]
    for j in range(len(epochs.CANDIDATES)):
        d = per_row[j] - per_row[default]
        gain = float(d @ p)
        if gain + float(np.sqrt(((d - gain) ** 2) @ p**2)) < 0:
            allowed.append(j)
    best = min(allowed, key=lambda j: float(per_row[j] @ p))
    assert cv["epochs"] == epochs.CANDIDATES[best] == reg.n_iter_
    assert len(allowed) > 1  # this table does move away from 128 epochs


def test_a_count_must_beat_the_default_by_a_standard_error() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.5, size=(1, 50))
    noisy = base + rng.normal(0, 0.5, size=(4, 50))  # mean gains well inside the noise
    noisy[epochs.CANDIDATES.index(128)] = base
    p = np.full(50, 1 / 50)
    default = epochs.CANDIDATES.index(AUTO_EPOCHS)
    assert epochs.CANDIDATES[epochs._best(noisy, p, default)] == 128
    clear = np.repeat(base, 4, axis=0) - np.array([[0.0], [0.2], [0.0], [0.3]])
    assert epochs.CANDIDATES[epochs._best(clear, p, default)] == 256  # 0.3 better on every row
    clear[2:] = np.inf  # 128 and 256 diverged: the best of the others
    assert epochs.CANDIDATES[epochs._best(clear, p, default)] == 64
    assert epochs.CANDIDATES[epochs._best(np.full((4, 50), np.inf), p, default)] == 128


def test_auto_then_trains_exactly_the_fit_of_the_chosen_count() -> None:
    X, y = _table(120)
    auto = nnreg.Regressor(**SMALL).fit(X, y)
    chosen = nnreg.Regressor(**SMALL, max_iter=auto.epochs_cv_["epochs"]).fit(X, y)
    assert not hasattr(chosen, "epochs_cv_")
    for a, b in zip(auto.model_.parameters(), chosen.model_.parameters(), strict=True):
        assert torch.equal(a, b)  # the same fit, so bitwise the same on the CPU


def test_tables_outside_the_bounds_and_warm_starts_train_the_fallback() -> None:
    for n in (epochs.MIN_ROWS - 1, epochs.MAX_ROWS + 1):
        X, y = _table(n)
        fit = nnreg.Regressor(**SMALL).fit(X, y)
        assert fit.n_iter_ == AUTO_EPOCHS and not hasattr(fit, "epochs_cv_")

    X, y = _table(150)
    warm = nnreg.Regressor(**SMALL, warm_start=True).fit(X, y)
    first = warm.epochs_cv_["epochs"]
    warm.fit(X, y)  # continues for its first fit's count, without choosing again
    assert warm.n_iter_ == 2 * first and warm.epochs_cv_["epochs"] == first


def test_shared_members_are_cross_validated_as_they_are_independent_ones_as_one() -> None:
    """Shared members search SHARED_EPOCHS times the counts, their default among them; one
    network (and so independent members) the counts themselves."""
    X, y = _table(100)
    seen: list[tuple[int, str, int]] = []

    def spy(recipe: Recipe, data: fitting.FitData) -> fitting.FitResult:
        seen.append((recipe.n_models, recipe.params["ensemble"], recipe.params["max_iter"]))
        return fitting._fit_alone(recipe, data)

    shared = [c * SHARED_EPOCHS for c in epochs.CANDIDATES]
    for form, expected, counts in (
        ("tabm-mini", (4, "tabm-mini"), shared),
        ("independent", (1, "independent"), list(epochs.CANDIDATES)),
    ):
        seen.clear()
        params = nnreg.Regressor(**SMALL, n_models=4, ensemble=form).get_params()
        frame = fitting.FitData(X, y.reshape(-1, 1))
        choice = epochs.choose(Recipe.from_params(params), frame, spy)
        assert choice is not None and list(choice.candidates) == counts
        assert {s[:2] for s in seen} == {expected}
        assert sorted(s[2] for s in seen) == sorted(counts * epochs.FOLDS)
    # the rule's default for shared members is theirs: equal losses keep it
    flat = fitting.FitData(X, y.reshape(-1, 1))
    params = nnreg.Regressor(**SMALL, n_models=2, ensemble="tabm").get_params()
    recipe = Recipe.from_params(params)
    assert epochs.resolve(recipe, flat, lambda r, d: _constant(r, d))[0].params["max_iter"] == (
        AUTO_EPOCHS * SHARED_EPOCHS
    )


def test_shared_members_the_search_chose_for_train_on_every_row_and_calibrate_out_of_fold(
    monkeypatch,
) -> None:
    """Where the search chose their epochs, shared members hold out no calibration rows:
    every row trains, and each row's conformity score and held-out metrics come from the
    chosen count's trial that held the row out (cross-conformal). The trials, too, train on
    every row of theirs. Recomputed from the trials' own predictions."""
    X, y = _table(150)
    params = {**SMALL, "hidden_layer_sizes": (8,), "n_models": 4, "ensemble": "tabm"}
    trained: list[int] = []
    train_single = fitting.train_single

    def counted(recipe: Recipe, result: fitting.FitResult, data, *args, **kwargs) -> None:
        trained.append(data[0].shape[0])
        train_single(recipe, result, data, *args, **kwargs)

    monkeypatch.setattr(fitting, "train_single", counted)
    reg = nnreg.Regressor(**params).fit(X, y)
    assert trained[-1] == len(y) and len(trained) == 1 + len(epochs.CANDIDATES) * epochs.FOLDS
    assert all(t == 100 for t in trained[:-1])  # each trial: its fold's complement, whole
    assert np.isnan(reg.history_.val_loss).all()  # nothing held out to score

    trials: list[tuple[int, fitting.FitData, fitting.FitResult]] = []

    def spy(recipe: Recipe, data: fitting.FitData) -> fitting.FitResult:
        result = fitting._fit_alone(recipe, data)
        trials.append((recipe.params["max_iter"], data, result))
        return result

    choice = epochs.choose(Recipe.from_params(reg.get_params()), _frame(X, y), spy)
    assert choice is not None and choice.epochs == reg.n_iter_ == reg.epochs_cv_["epochs"]
    assert all(r.calibrator is None and r.held_out is None for *_, r in trials)
    mean, spread = np.full(len(y), np.nan), np.full(len(y), np.nan)
    for count, part, result in trials:
        if count == choice.epochs:
            held = np.setdiff1d(np.arange(len(y)), part.numbers(np.arange(part.n_rows)))
            trial = nnreg.Regressor(**params).adopt(result)
            mean[held], spread[held] = trial.predict(X.to_numpy()[held], return_std=True)
    scale = reg.y_scaler_.scale[0]
    residual = np.abs(y - mean) / scale
    unit_spread = spread / scale
    scores = np.sort(residual / (unit_spread + np.median(unit_spread)))
    # The trials' rows reached their float32 inputs as a table there, as an array here.
    np.testing.assert_allclose(reg.calibrator_.scores[0], scores, rtol=1e-4, atol=1e-7)
    assert reg.validation_metrics_["rows"] == len(y)
    rmse = float(np.sqrt(np.mean((y - mean) ** 2)))
    np.testing.assert_allclose(reg.validation_metrics_["rmse"], rmse, rtol=1e-5)


def test_shared_members_calibrated_out_of_fold_cover_new_rows() -> None:
    """Their 90% intervals cover about 90% of 4,000 new rows from the same distribution
    (trials trained on two thirds of the rows: if anything a little more)."""
    X, y = _table(300)
    X_new, y_new = _table(4000, seed=1)
    reg = nnreg.Regressor(**SMALL, n_models=4, ensemble="tabm").fit(X, y)
    assert len(reg.calibrator_.scores[0]) == len(y)
    lower, upper = reg.predict_interval(X_new, coverage=0.9)
    assert 0.87 <= float(np.mean((lower <= y_new) & (y_new <= upper))) <= 0.95


def test_shared_members_with_a_set_count_hold_out_their_calibration_rows() -> None:
    X, y = _table(150)
    reg = nnreg.Regressor(**SMALL, n_models=2, ensemble="tabm-mini", max_iter=20).fit(X, y)
    assert len(reg.calibrator_.scores[0]) == fitting.MIN_SHARED_CALIBRATION_ROWS
    assert reg.validation_metrics_["rows"] == fitting.MIN_SHARED_CALIBRATION_ROWS


def _frame(X: pd.DataFrame, y: np.ndarray) -> fitting.FitData:
    return fitting.FitData(X, y.reshape(-1, 1))


def _constant(recipe: Recipe, data: fitting.FitData) -> fitting.FitResult:
    """A trial whose network predicts the same whatever its epochs: every count ties."""
    return fitting._fit_alone(epochs.with_params(recipe, max_iter=1), data)


def test_shared_members_train_their_own_default_where_nothing_is_chosen() -> None:
    X, y = _table(epochs.MAX_ROWS + 1)
    small = {**SMALL, "hidden_layer_sizes": (4,)}
    fit = nnreg.Regressor(**small, n_models=2, ensemble="tabm").fit(X, y)
    assert fit.n_iter_ == AUTO_EPOCHS * SHARED_EPOCHS and not hasattr(fit, "epochs_cv_")
    recipe = Recipe.from_params(nnreg.Regressor(n_models=2, ensemble="tabm-mini").get_params())
    assert recipe.train_config(100).epochs == AUTO_EPOCHS * SHARED_EPOCHS
    assert Recipe.from_params(nnreg.Regressor().get_params()).train_config(100).epochs == (
        AUTO_EPOCHS
    )


def test_a_diverging_count_is_never_chosen() -> None:
    X, y = _table(60)
    recipe = Recipe.from_params(nnreg.Regressor(**SMALL).get_params())

    def train(recipe: Recipe, data: fitting.FitData) -> fitting.FitResult:
        if recipe.params["max_iter"] == 256:
            raise TrainingDivergedError("diverged")
        return fitting._fit_alone(recipe, data)

    choice = epochs.choose(recipe, fitting.FitData(X, y.reshape(-1, 1)), train)
    assert math.isinf(choice.losses[-1]) and choice.epochs != 256
    assert choice.to_dict()["held_out_loss"][-1] is None


def test_the_choice_is_saved_and_shown(tmp_path, capsys) -> None:
    X, y = _table(150)
    reg = nnreg.Regressor(**SMALL).fit(X, y)
    loaded = nnreg.load(reg.save(tmp_path / "m"))
    assert loaded.model_info_["training"]["epochs_cv"] == reg.epochs_cv_ == loaded.epochs_cv_
    again = nnreg.load(loaded.save(tmp_path / "again"))  # a round trip keeps it
    assert again.model_info_["training"]["epochs_cv"] == reg.epochs_cv_
    np.testing.assert_allclose(loaded.predict(X), reg.predict(X), rtol=1e-6)

    data = tmp_path / "t.csv"
    X.assign(y=y).to_csv(data, index=False)
    args = ["train", str(data), "-t", "y", "--hidden", "16", "--out", str(tmp_path / "c")]
    code, out, _ = run([*args, "--epochs", "auto"], capsys)
    assert code == 0 and "epochs auto (32, 64, 128, 256" in out
    assert "chosen by 3-fold cross-validation (held-out loss 32: " in out
    shared = [*args[:-1], str(tmp_path / "s"), "--hidden", "4", "--n-models", "2"]
    code, out, _ = run([*shared, "--ensemble", "tabm", "--epochs", "auto"], capsys)
    assert code == 0 and "epochs auto (64, 128, 256, 512" in out
    code, _, err = run([*args, "--epochs", "many"], capsys)
    assert code == 2 and "'many' is not a whole number or 'auto'" in err


def test_a_stop_ends_the_search_between_two_trials() -> None:
    X, y = _table(150)
    recipe = Recipe.from_params(nnreg.Regressor(**SMALL).get_params())
    stop, calls = threading.Event(), []

    def train(recipe: Recipe, data: fitting.FitData) -> fitting.FitResult:
        calls.append(recipe.params["max_iter"])
        if len(calls) == 2:
            stop.set()  # as a signal handler would, mid-search
        return fitting._fit_alone(recipe, data)

    assert epochs.choose(recipe, fitting.FitData(X, y.reshape(-1, 1)), train, stop) is None
    assert calls == [32, 64]
    reg = nnreg.Regressor(**SMALL).fit(X, y, stop=stop)  # set already: no search, one step
    assert reg.interrupted_ and reg.n_iter_ == 1 and not hasattr(reg, "epochs_cv_")


class _Share:
    """A stand-in for a two-process group: ``gather`` returns this process's matrix beside
    the other process's (recorded from its own run), in rank order."""

    world_size = 2

    def __init__(self, rank: int, other: torch.Tensor | None = None) -> None:
        self.rank, self.other, self.sent = rank, other, torch.empty(0)

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.sent = tensor.clone()
        other = torch.full_like(tensor, math.nan) if self.other is None else self.other
        return [tensor, other] if self.rank == 0 else [other, tensor]


def test_processes_share_the_trials_and_choose_as_one_process_does() -> None:
    """Each of two processes trains its share of the (fold, count) trials, about half of
    the epochs, and with the other's losses chooses what one process choosing alone does;
    a search stopped in either process chooses nothing in both."""
    X, y = _table(150)
    data = fitting.FitData(X, y.reshape(-1, 1))
    recipe = Recipe.from_params(nnreg.Regressor(**SMALL).get_params())
    trained: dict[int, list[int]] = {0: [], 1: []}

    def counted(rank: int) -> epochs.Train:
        def train(recipe: Recipe, data: fitting.FitData) -> fitting.FitResult:
            trained[rank].append(recipe.params["max_iter"])
            return fitting._fit_alone(recipe, data)

        return train

    alone = epochs.choose(recipe, data, fitting._fit_alone)
    second = _Share(1)
    assert epochs.choose(recipe, data, counted(1), group=second) is None  # has half the trials
    first = _Share(0, other=second.sent)
    shared = epochs.choose(recipe, data, counted(0), group=first)
    assert shared is not None and alone is not None
    assert shared.epochs == alone.epochs
    np.testing.assert_allclose(shared.losses, alone.losses, rtol=1e-6)
    assert sorted(trained[0] + trained[1]) == sorted(list(epochs.CANDIDATES) * epochs.FOLDS)
    assert sum(trained[0]) == 736 and sum(trained[1]) == 704  # of 1440 epochs

    stop = threading.Event()
    stop.set()
    stopped = _Share(1)
    assert epochs.choose(recipe, data, counted(1), stop, stopped) is None
    assert epochs.choose(recipe, data, counted(0), group=_Share(0, stopped.sent)) is None
