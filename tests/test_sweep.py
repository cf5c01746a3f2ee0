"""Sweeps: each batched configuration against a single Regressor fitted the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nnreg
from cli_helpers import run
from nnreg.exceptions import ConfigError, DataError
from nnreg.sweep import Sweep, Trial, grid


def small_base(**overrides: object) -> nnreg.Regressor:
    params = {
        "max_iter": 12,
        "dropout": 0.0,
        "dtype": "float64",
        "batch_size": 64,
        "hidden_layer_sizes": (16, 16),
        "random_state": 5,
        "embedding": "none",  # a sweep's networks do not embed; its single fits must not
    }
    return nnreg.Regressor(**{**params, **overrides})  # type: ignore[arg-type]


def test_every_configuration_equals_a_single_fit_on_the_training_rows(
    table_frame: pd.DataFrame,
) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"].to_numpy()
    trials = grid(hidden=[(16, 16), (8,)], lr=[1e-3, 1e-2], weight_decay=[0.0, 0.05], seeds=[3, 4])
    sweep = Sweep(small_base(), trials).fit(X, y)
    table = sweep.table()
    assert len(table) == len(trials) == 16
    assert table["val_rmse"].is_monotonic_increasing
    assert list(table["rank"]) == list(range(1, 17))
    train, val = sweep.train_rows_, sweep.val_rows_
    assert len(val) == 30 and not set(train) & set(val)
    for row in table.sample(4, random_state=0).itertuples():  # spot checks, every kind
        hidden = tuple(int(h) for h in row.hidden.split(","))
        single = small_base(
            hidden_layer_sizes=hidden,
            learning_rate_init=row.lr,
            weight_decay=row.weight_decay,
            random_state=row.seed,
        )
        single.fit(X.iloc[train], y[train])
        pred = single.predict(X.iloc[val])
        rmse = float(np.sqrt(np.mean((pred - y[val]) ** 2)))
        assert rmse == pytest.approx(row.val_rmse, rel=1e-9)
        assert single.loss_curve_[-1] == pytest.approx(row.train_loss, rel=1e-9)


def test_the_best_model_and_a_top_k_ensemble_are_fitted_regressors(
    table_frame: pd.DataFrame, tmp_path: Path
) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"].to_numpy()
    sweep = Sweep(small_base(), grid([(16, 16)], [1e-3, 3e-3, 1e-2], [0.0], [0])).fit(X, y)
    best_row = sweep.table().iloc[0]
    best = sweep.regressor()
    assert best.learning_rate_init == best_row.lr and best.n_models == 1
    val = sweep.val_rows_
    rmse = float(np.sqrt(np.mean((best.predict(X.iloc[val]) - y[val]) ** 2)))
    assert rmse == pytest.approx(best_row.val_rmse, rel=1e-9)
    ensemble = sweep.regressor(top=3)
    mean, std = ensemble.predict(X, return_std=True)
    assert ensemble.n_models == 3 and (std > 0).all()
    lower, upper = ensemble.predict_interval(X, coverage=0.8)
    assert (lower < mean).all() and (mean < upper).all()
    loaded = nnreg.load(ensemble.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.predict(X), ensemble.predict(X))
    with pytest.raises(ConfigError, match="top=4 needs 4 configurations"):
        sweep.regressor(top=4)


def test_a_top_k_ensemble_is_described_as_the_independent_members_it_is(
    table_frame: pd.DataFrame,
) -> None:
    """A base that names a shared-weight form (unused with n_models=1) does not make the
    kept members, trained apart, claim it: a clone would refit a different model."""
    from sklearn.base import clone

    X, y = table_frame[["a", "b", "c"]], table_frame["y"].to_numpy()
    base = small_base(ensemble="tabm")
    ensemble = Sweep(base, grid([(8,)], [1e-3, 3e-3], [0.0], [0])).fit(X, y).regressor(top=2)
    assert ensemble.get_params()["ensemble"] == "independent"
    assert type(clone(ensemble).fit(X, y).model_) is type(ensemble.model_)


def test_grid_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="lr values repeat"):
        grid([(8,)], [1e-3, 1e-3], [0.0], [0])
    with pytest.raises(
        ConfigError, match=r"lr \(learning_rate_init\) values must each be a finite number > 0"
    ):
        grid([(8,)], [-1.0], [0.0], [0])
    with pytest.raises(ConfigError, match="at least one value of seeds"):
        grid([(8,)], [1e-3], [0.0], [])
    assert grid([(8,)], [1e-3], [0.0, 0.1], [0, 1])[1] == Trial((8,), 1e-3, 0.0, 1)
    with pytest.raises(ConfigError, match="single models"):
        Sweep(small_base(n_models=2), grid([(8,)], [1e-3], [0.0], [0])).fit(
            np.zeros((10, 2)), np.zeros(10)
        )


def test_sweep_command_ranks_writes_csv_and_saves_the_ensemble(
    table_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "best"
    code, stdout, err = run(
        [
            "sweep",
            str(table_csv),
            "--target",
            "y",
            "--lr",
            "1e-3,1e-2",
            "--weight-decay",
            "0,0.05",
            "--hidden",
            "8,8",
            "--hidden",
            "16",
            "--seeds",
            "0,1",
            "--epochs",
            "5",
            "--top",
            "2",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert "16 configurations in 2 batches" in stdout and "model folder" in stdout
    ranking = pd.read_csv(out / "sweep.csv")
    assert len(ranking) == 16 and ranking["val_rmse"].is_monotonic_increasing
    model = nnreg.load(out)
    assert model.n_models == 2
    code, stdout, err = run(["predict", str(out), str(table_csv), "--interval", "0.8"], capsys)
    assert code == 0, err
    assert "lower" in stdout.splitlines()[0]


def test_sweep_command_rejects_bad_lists(
    table_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["sweep", str(table_csv), "-t", "y", "--lr", "fast"], capsys)
    assert code == 2 and "comma-separated numbers" in err
    code, _, err = run(
        [
            "sweep",
            str(table_csv),
            "-t",
            "y",
            "--seeds",
            "1,1",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert code == 2 and "seeds values repeat" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_sweep_resolves_the_device_as_the_estimator_does(table_frame: pd.DataFrame) -> None:
    # 'auto' is a device parameter, not a torch device name: the sweep's members must be
    # placed where Regressor(device='auto') trains (the CPU here, CUDA where there is one).
    X, y = table_frame[["a", "b", "c"]], table_frame["y"].to_numpy()
    trials = grid(hidden=[(8,)], lr=[1e-3, 1e-2], weight_decay=[0.0], seeds=[0])
    reg = Sweep(small_base(device="auto", max_iter=3), trials).fit(X, y).regressor()
    single = small_base(device="auto", max_iter=3, hidden_layer_sizes=(8,), random_state=0)
    assert reg.predict(X).shape == (len(X),)
    assert next(reg.model_.parameters()).device == next(single.fit(X, y).model_.parameters()).device


def test_missing_values_are_placed_in_the_whole_table_not_the_training_rows() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    X.loc[[151, 170, 190], "a"] = np.nan
    trials = grid([(8,)], [1e-3], [0.0], [0])
    with pytest.raises(DataError, match=r"'a' has 3 missing values \(first at row 151\)"):
        Sweep(small_base(), trials).fit(X, X["b"])


def test_a_top_k_beyond_what_a_folder_may_hold_is_refused(table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"].to_numpy()
    sweep = Sweep(small_base(max_iter=1), grid([(8,)], [1e-3], [0.0], [0])).fit(X, y)
    with pytest.raises(ConfigError, match=r"top must be an integer in \[1, 4096\]"):
        sweep.regressor(top=4097)
