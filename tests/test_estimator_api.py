"""The estimator's scikit-learn surface: continuing a fit (partial_fit, warm_start),
``verbose``, polars and sparse inputs, and the feature-name mismatch message.

The references: a continued fit is compared with one uninterrupted fit of as many epochs
(with a constant learning rate, so the schedule does not depend on where training ends), a
polars frame with the pandas frame it stands for, a sparse matrix with its dense array.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import nnreg
from nnreg import validation
from nnreg.exceptions import ConfigError, DataError
from nnreg.settings import load_settings

# Small and quick, with minibatches (300 rows: two of 150) and dropout, so that continuing
# must carry the optimiser's state and the random stream (batch order, dropout masks) too.
QUICK: dict[str, Any] = {
    "hidden_layer_sizes": (32, 32),
    "learning_rate": "constant",
    "random_state": 0,
}


def _xy(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return table[["a", "b", "c"]].to_numpy(), table["y"].to_numpy()


@pytest.mark.parametrize(
    "optimizer", [{"optimizer": "adamw"}, {"optimizer": "sgd", "learning_rate_init": 0.05}]
)
def test_partial_fit_after_fit_continues_the_fitted_network(
    table_frame: pd.DataFrame, optimizer: dict[str, Any]
) -> None:
    X, y = _xy(table_frame)
    params = {**QUICK, **optimizer, "embedding": "none"}  # converges enough in 8 epochs
    reg = nnreg.Regressor(max_iter=8, **params).fit(X, y)
    last, r2 = reg.loss_curve_[-1], reg.score(X, y)
    for n_iter in (9, 10, 11):
        assert reg.partial_fit(X, y) is reg
        assert reg.n_iter_ == n_iter and len(reg.loss_curve_) == n_iter
    fresh = nnreg.Regressor(**params).partial_fit(X, y).loss_curve_[0]
    assert reg.loss_curve_[8] == pytest.approx(last, rel=0.5)  # not a fresh network's
    assert reg.loss_curve_[8] < 0.2 * fresh
    assert reg.score(X, y) > r2 - 0.1  # noise of three epochs, no collapse
    # The reference: one fit of 11 epochs, same seed, same batches.
    uninterrupted = nnreg.Regressor(max_iter=11, **params).fit(X, y)
    np.testing.assert_allclose(reg.loss_curve_, uninterrupted.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(reg.predict(X), uninterrupted.predict(X), rtol=1e-5, atol=1e-6)


def test_warm_start_refit_equals_continued_training(table_frame: pd.DataFrame) -> None:
    X, y = _xy(table_frame)
    reg = nnreg.Regressor(max_iter=5, warm_start=True, **QUICK).fit(X, y)
    assert reg.fit(X, y) is reg and reg.n_iter_ == 10 and len(reg.history_) == 10
    uninterrupted = nnreg.Regressor(max_iter=10, **QUICK).fit(X, y)
    np.testing.assert_allclose(reg.loss_curve_, uninterrupted.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(reg.predict(X), uninterrupted.predict(X), rtol=1e-5, atol=1e-6)
    # Without warm_start a second fit starts over, and gives the first fit again.
    cold = nnreg.Regressor(max_iter=5, **QUICK).fit(X, y)
    before = cold.predict(X)
    np.testing.assert_array_equal(cold.fit(X, y).predict(X), before)
    assert cold.n_iter_ == 5


def test_a_loaded_model_continues_from_its_weights(
    table_frame: pd.DataFrame, tmp_path: Path
) -> None:
    """A model folder holds no optimiser state: with plain SGD (no state to lose), full
    batches and no dropout (no random stream), the loaded model continues exactly as the one
    in memory does."""
    X, y = _xy(table_frame)
    params = {**QUICK, "optimizer": "sgd", "momentum": 0.0, "learning_rate_init": 0.01}
    params |= {"batch_size": "full", "dropout": 0.0}
    reg = nnreg.Regressor(max_iter=20, **params).fit(X, y)
    reg.save(tmp_path / "model")
    loaded = nnreg.load(tmp_path / "model")
    loaded.partial_fit(X, y)
    reg.partial_fit(X, y)
    assert loaded.n_iter_ == reg.n_iter_ == 21
    np.testing.assert_allclose(loaded.loss_curve_, reg.loss_curve_, rtol=1e-6)
    np.testing.assert_allclose(loaded.predict(X), reg.predict(X), rtol=1e-5, atol=1e-6)


def test_a_loaded_adam_model_continues_with_a_fresh_optimiser(
    table_frame: pd.DataFrame, tmp_path: Path
) -> None:
    X, y = _xy(table_frame)
    reg = nnreg.Regressor(max_iter=10, **QUICK).fit(X, y)
    reg.save(tmp_path / "model")
    loaded = nnreg.load(tmp_path / "model", history=False)
    loaded.partial_fit(X, y)
    assert loaded.n_iter_ == 1  # the history was not read
    fresh = nnreg.Regressor(**QUICK).partial_fit(X, y).loss_curve_[0]
    assert loaded.loss_curve_[0] < 0.2 * fresh
    assert loaded.score(X, y) > reg.score(X, y) - 0.05


def test_continuing_refuses_a_changed_network_or_an_ensemble(table_frame: pd.DataFrame) -> None:
    X, y = _xy(table_frame)
    reg = nnreg.Regressor(max_iter=2, warm_start=True, **QUICK).fit(X, y)
    reg.set_params(hidden_layer_sizes=(8,))
    with pytest.raises(ConfigError, match=r"hidden_layer_sizes \(\(32, 32\) -> \(8,\)\)"):
        reg.fit(X, y)
    with pytest.raises(ConfigError, match="hidden_layer_sizes"):
        reg.partial_fit(X, y)
    ensemble = nnreg.Regressor(max_iter=2, n_models=2, **QUICK).fit(X, y)
    assert not hasattr(ensemble, "partial_fit")  # scikit-learn's checks ask hasattr
    with pytest.raises(AttributeError) as info:
        ensemble.partial_fit(X, y)
    assert "use n_models=1" in str(info.value.__cause__)
    ensemble.set_params(n_models=1)
    with pytest.raises(ConfigError, match="fitted as an ensemble"):
        ensemble.partial_fit(X, y)


def test_partial_fit_drops_the_calibration_of_the_old_weights(table_frame: pd.DataFrame) -> None:
    X, y = _xy(table_frame)
    reg = nnreg.Regressor(max_iter=3, early_stopping=True, **QUICK).fit(X, y)
    reg.predict_interval(X)
    assert "rows" in reg.validation_metrics_
    reg.partial_fit(X, y)
    assert not hasattr(reg, "validation_metrics_")
    with pytest.raises(ConfigError, match="needs rows held out"):
        reg.predict_interval(X)


# -- verbose ------------------------------------------------------------------------------


def test_verbose_prints_progress_and_changes_nothing(
    table_frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    X, y = _xy(table_frame)
    quiet = nnreg.Regressor(max_iter=20, **QUICK).fit(X, y)
    assert capsys.readouterr().out == ""
    loud = nnreg.Regressor(max_iter=20, verbose=1, **QUICK).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/20: train ") and lines[-1].startswith("epoch 20/20: ")
    assert 3 <= len(lines) <= 12
    assert all("(mean squared error, standardised target)" in line for line in lines)
    np.testing.assert_array_equal(loud.predict(X), quiet.predict(X))
    assert loud.get_params()["verbose"] == 1 and "verbose" in nnreg.Regressor.__doc__

    loud.partial_fit(X, y)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("epoch 21: train ")
    every = nnreg.Regressor(max_iter=4, verbose=2, early_stopping=True, scale_target=False, **QUICK)
    every.fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(", validation " in line for line in lines)
    assert "(mean squared error, target's units squared)" in lines[0]


def test_verbose_is_a_checked_parameter_a_config_file_may_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="verbose must be an integer >= 0"):
        nnreg.Regressor(verbose=-1).fit(np.zeros((4, 2)), np.zeros(4))
    config = tmp_path / "config.toml"
    config.write_text("[model]\nverbose = 1\n")
    assert load_settings(config=config).params["verbose"] == 1


# -- polars and sparse input --------------------------------------------------------------


def _mixed_table(n: int = 120) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(2)
    a = rng.normal(size=n)
    a[3] = np.nan
    city, kind = rng.choice(["paris", "oslo", "rome"], n), rng.choice(["x", "y"], n)
    size = rng.choice(["s", "m", "l"], n)
    y = np.nan_to_num(a) + (city == "oslo") + 0.5 * (kind == "x") - (size == "l")
    frame = pd.DataFrame(
        {
            "a": a,
            "city": city,
            "kind": pd.Categorical(kind),
            "size": pd.Categorical(size, categories=["s", "m", "l"]),
        }
    )
    return frame, y


def test_polars_frames_give_what_their_pandas_frames_give() -> None:
    pl = pytest.importorskip("polars")
    frame, y = _mixed_table()
    polars_frame = pl.DataFrame(
        {
            "a": pl.Series(frame["a"].to_numpy()).fill_nan(None),  # a null, as polars has them
            "city": frame["city"].tolist(),
            "kind": pl.Series(frame["kind"].astype(str).tolist(), dtype=pl.Categorical),
            "size": pl.Series(frame["size"].astype(str).tolist(), dtype=pl.Enum(["s", "m", "l"])),
        }
    )
    assert polars_frame["a"].null_count() == 1
    params = {**QUICK, "max_iter": 5, "missing": "impute", "batch_size": 40}
    from_pandas = nnreg.Regressor(**params).fit(frame, y)
    from_polars = nnreg.Regressor(**params).fit(polars_frame, pl.Series(y))
    assert list(from_polars.feature_names_in_) == ["a", "city", "kind", "size"]
    np.testing.assert_allclose(from_polars.predict(polars_frame), from_pandas.predict(frame))
    np.testing.assert_allclose(from_pandas.predict(polars_frame), from_pandas.predict(frame))
    assert from_polars.score(polars_frame, pl.Series(y)) == pytest.approx(
        from_pandas.score(frame, y)
    )
    from_pandas.partial_fit(frame, y)
    from_polars.partial_fit(polars_frame, pl.Series(y))
    np.testing.assert_allclose(from_polars.predict(polars_frame), from_pandas.predict(frame))
    with pytest.raises(Exception, match="LazyFrame"):
        from_polars.predict(polars_frame.lazy())


@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array])
def test_sparse_input_gives_what_the_dense_array_gives(kind: Any) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 6))
    X[X < 0.5] = 0.0  # mostly zeros
    y = X @ np.arange(6.0)
    params = {**QUICK, "max_iter": 5}
    dense = nnreg.Regressor(**params).fit(X, y)
    sparse = nnreg.Regressor(**params).fit(kind(X), y)
    np.testing.assert_allclose(sparse.predict(kind(X)), dense.predict(X), rtol=1e-12)
    np.testing.assert_allclose(dense.predict(kind(X)), dense.predict(X), rtol=1e-12)
    assert sparse.score(kind(X), y) == pytest.approx(dense.score(X, y))
    sparse.partial_fit(kind(X), y)
    dense.partial_fit(X, y)
    np.testing.assert_allclose(sparse.predict(kind(X)), dense.predict(X), rtol=1e-12)


def test_sparse_input_over_the_dense_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_DENSE_VALUES", 100)
    X = sp.random(20, 6, density=0.1, random_state=0, format="csr")
    with pytest.raises(DataError, match=r"sparse 20 x 6 matrix.*120 values.*fewer rows"):
        nnreg.Regressor(max_iter=1).fit(X, np.zeros(20))


# -- feature names ------------------------------------------------------------------------


def test_a_column_mismatch_names_every_missing_and_unexpected_column() -> None:
    rng = np.random.default_rng(4)
    names = [f"c{i}" for i in range(8)]
    frame = pd.DataFrame(rng.normal(size=(40, 8)), columns=names)
    reg = nnreg.Regressor(max_iter=1, **QUICK).fit(frame, frame["c0"])
    renamed = frame.rename(columns={f"c{i}": f"z{i}" for i in range(1, 8)})
    with pytest.raises(DataError) as caught:
        reg.predict(renamed.assign(extra=1.0))
    message = str(caught.value)
    assert "\n" not in message
    assert all(repr(f"c{i}") in message for i in range(1, 8))
    assert all(repr(f"z{i}") in message for i in range(1, 8)) and "'extra'" in message
    assert "'c0'" not in message  # it is there
    assert "missing 7 fitted column(s)" in message and "8 column(s) not seen at fit" in message
    with pytest.raises(DataError, match="same order"):
        reg.predict(frame[names[::-1]])


def test_an_array_predicts_like_the_frame_a_model_was_fitted_on_and_back(
    table_frame: pd.DataFrame,
) -> None:
    frame, y = table_frame[["a", "b", "c"]], table_frame["y"]
    on_frame = nnreg.Regressor(max_iter=3, **QUICK).fit(frame, y)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        by_position = on_frame.predict(frame.to_numpy())
    np.testing.assert_allclose(by_position, on_frame.predict(frame), rtol=1e-12)
    on_array = nnreg.Regressor(max_iter=3, **QUICK).fit(frame.to_numpy(), y)
    renamed = frame.set_axis(["p", "q", "r"], axis=1)
    with pytest.warns(UserWarning, match="fitted without feature names"):
        by_name = on_array.predict(renamed)
    np.testing.assert_allclose(by_name, on_array.predict(frame.to_numpy()), rtol=1e-12)
    numbered_frame = frame.set_axis([0, 1, 2], axis=1)
    numbered = nnreg.Regressor(max_iter=3, **QUICK).fit(numbered_frame, y)
    np.testing.assert_allclose(
        numbered.predict(frame.to_numpy()), on_array.predict(frame.to_numpy()), rtol=1e-12
    )
    # Names that are the fitted ones, in another order, are matched by name, not position.
    np.testing.assert_allclose(
        numbered.predict(numbered_frame[[2, 0, 1]]), numbered.predict(numbered_frame), rtol=1e-12
    )
    # A continued fit takes the other form too.
    on_frame.set_params(warm_start=True, max_iter=1)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        on_frame.fit(frame.to_numpy(), y).partial_fit(frame.to_numpy(), y)
    on_array.set_params(warm_start=True, max_iter=1)
    with pytest.warns(UserWarning, match="fitted without feature names"):
        on_array.fit(renamed, y).partial_fit(renamed, y)


def test_a_loaded_model_fitted_again_drops_the_folder_description(
    table_frame: pd.DataFrame, tmp_path: Path
) -> None:
    X, y = _xy(table_frame)
    nnreg.Regressor(max_iter=2, **QUICK).fit(X, y).save(tmp_path / "m")
    loaded = nnreg.load(tmp_path / "m")
    assert loaded.model_info_["targets"] == ["y"]
    loaded.fit(X, np.column_stack([y, -y]))  # two targets now: the folder's no longer holds
    assert not hasattr(loaded, "model_info_")


@pytest.mark.parametrize(
    "params",
    [
        {"n_models": 3, "ensemble": "tabm", "max_iter": 2},
        {"early_stopping": True, "max_iter": 2},
        {},
    ],
    ids=["calibration-rows", "validation-rows", "epoch-trials"],
)
def test_missing_values_are_counted_and_placed_in_the_whole_table(params: dict) -> None:
    # Held-out rows and the epoch trials' folds fit on part of the rows; the error must still
    # say where in the table given to fit the missing values are, and how many there are.
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    X.loc[[151, 200, 250], "a"] = np.nan
    with pytest.raises(DataError, match=r"'a' has 3 missing values \(first at row 151\)"):
        nnreg.Regressor(random_state=0, **params).fit(X, X["b"])
