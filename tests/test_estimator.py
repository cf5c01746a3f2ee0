from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import nnreg
from nnreg.exceptions import ConfigError, DataError, NnregError, NotFittedError


def test_from_preset_seed_is_the_seed_recipe() -> None:
    reg = nnreg.Regressor.from_preset("seed")
    assert reg.hidden_layer_sizes == (20, 20)
    assert (reg.optimizer, reg.learning_rate_init, reg.momentum, reg.weight_decay) == (
        "sgd",
        0.001,
        0.0,
        0.0,
    )
    assert (reg.batch_size, reg.max_iter, reg.loss) == ("full", 500, "squared_error")
    assert nnreg.Regressor.from_preset("seed", max_iter=3).max_iter == 3
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        nnreg.Regressor.from_preset("fast")


def test_numpy_input_and_multi_output(table_frame: pd.DataFrame) -> None:
    X = table_frame[["a", "b", "c"]].to_numpy()
    Y = np.column_stack([table_frame["y"], -table_frame["y"]])
    reg = nnreg.Regressor(max_iter=3, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (300, 2)
    assert not hasattr(reg, "feature_names_in_") and reg.n_features_in_ == 3
    reg.fit(X, Y[:, :1])
    assert reg.predict(X).shape == (300, 1)  # a 2-D target stays 2-D


def test_sample_weight_zero_rows_are_ignored(table_frame: pd.DataFrame) -> None:
    """Zero-weight rows are dropped, so the fit is exactly the fit without them."""
    X, y = table_frame[["a", "b", "c"]].to_numpy(), table_frame["y"].to_numpy()
    w = np.ones(len(y))
    w[::2] = 0.0
    y_noisy = y.copy()
    y_noisy[::2] += 1000.0  # zero-weighted rows carry garbage
    weighted = nnreg.Regressor(max_iter=5, random_state=0).fit(X, y_noisy, sample_weight=w)
    clean = nnreg.Regressor(max_iter=5, random_state=0).fit(X[1::2], y[1::2])
    np.testing.assert_array_equal(weighted.predict(X), clean.predict(X))


def test_integer_weights_act_like_repeated_rows_in_float64(table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]].to_numpy()[:60], table_frame["y"].to_numpy()[:60]
    w = np.random.default_rng(0).integers(1, 4, size=60)
    params = {
        "max_iter": 20,
        "batch_size": "full",
        "random_state": 0,
        "dtype": "float64",
        "dropout": 0.0,
    }
    weighted = nnreg.Regressor(**params).fit(X, y, sample_weight=w)
    repeated = nnreg.Regressor(**params).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    np.testing.assert_allclose(weighted.predict(X), repeated.predict(X), rtol=1e-9)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"learning_rate_init": -1.0}, "learning_rate_init must be a finite number > 0, got -1.0"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"hidden_layer_sizes": (20, 0)}, "hidden_layer_sizes must be"),
        ({"activation": "sigmoid"}, "activation must be one of"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"optimizer": "lbfgs", "loss": "l2"}, "optimizer must be .*; loss must be"),
    ],
)
def test_invalid_hyperparameters_are_named_in_one_error(params: dict, message: str) -> None:
    X, y = np.zeros((4, 2)), np.zeros(4)
    with pytest.raises(ConfigError, match=message) as info:
        nnreg.Regressor(**params).fit(X, y)
    assert isinstance(info.value, ValueError)


def test_predict_before_fit() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        nnreg.Regressor().predict(np.zeros((1, 2)))


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros((3, 4)), "X has 4 features, but Regressor is expecting 3"),
        (np.array([[np.nan, 0.0, 0.0]]), "NaN values .*missing='impute'"),
        (np.array([[np.inf, 0.0, 0.0]]), "infinite values"),
        (np.zeros((0, 3)), "0 sample"),
        (np.zeros((2, 3, 1)), "dim 3"),
        (np.zeros(3), "Reshape your data"),
        (np.array([["a", "b", "c"]]), "could not convert string to float.*X must hold numbers"),
    ],
)
def test_bad_arrays_at_predict(table_frame: pd.DataFrame, X, message: str) -> None:
    train = table_frame[["a", "b", "c"]].to_numpy()
    reg = nnreg.Regressor(max_iter=1, random_state=0).fit(train, table_frame["y"])
    with pytest.raises(DataError, match=message) as info:
        reg.predict(X)
    assert isinstance(info.value, NnregError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (pd.DataFrame({"a": [1.0], "b": [2.0]}), "missing 1 fitted column\\(s\\): 'c'"),
        (pd.DataFrame({"c": [1.0], "a": [2.0], "b": [0.0]}), "same order"),
        (pd.DataFrame({"a": [1.0], "b": ["x"], "c": [1.0]}), "'b' was numeric .* holds text"),
        (pd.DataFrame({"a": [np.nan], "b": [1.0], "c": [1.0]}), "'a' has 1 missing values"),
    ],
)
def test_bad_frames_at_predict(table_frame: pd.DataFrame, X, message: str) -> None:
    reg = nnreg.Regressor(max_iter=1, random_state=0)
    reg.fit(table_frame[["a", "b", "c"]], table_frame["y"])
    with pytest.raises(DataError, match=message):
        reg.predict(X)


def test_categorical_and_numeric_columns_in_one_frame() -> None:
    rng = np.random.default_rng(0)
    n = 400
    city = rng.choice(["Paris", "Oslo", "Rome", "Lima"], size=n)
    size = rng.uniform(20, 120, size=n)
    effect = {"Paris": 3.0, "Oslo": 2.0, "Rome": 1.0, "Lima": 0.0}
    y = np.array([effect[c] for c in city]) + size / 40 + rng.normal(0, 0.05, n)
    X = pd.DataFrame({"city": pd.Categorical(city), "size": size})
    reg = nnreg.Regressor(max_iter=150, random_state=0).fit(X, y)
    assert reg.score(X, y) > 0.98
    assert reg.preprocessor_.categorical == ["city"] and reg.preprocessor_.numeric == ["size"]
    # An unseen category predicts without error, like an average city (no one-hot set).
    new = pd.DataFrame({"city": pd.Categorical(["Paris", "Tokyo"]), "size": [50.0, 50.0]})
    pred = reg.predict(new)
    assert pred.shape == (2,) and np.isfinite(pred).all()
    # Strings (object columns) work the same way as pandas categories: the same encoding,
    # so the same fit, up to float32 rounding where the thread count that nnreg gives a fit
    # follows other processes' load between the two fits (3e-8 seen on a busy machine).
    reg2 = nnreg.Regressor(max_iter=150, random_state=0).fit(X.assign(city=city), y)
    np.testing.assert_array_equal(
        reg2.preprocessor_.transform(X.assign(city=city)), reg.preprocessor_.transform(X)
    )
    np.testing.assert_allclose(reg2.predict(X.assign(city=city)), reg.predict(X), rtol=1e-6)


def test_missing_values_error_names_the_option_and_impute_handles_them() -> None:
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.choice(["u", "v"], size=200)})
    y = X["a"].to_numpy() * 2 + (X["b"] == "u")
    X.loc[::7, "a"] = np.nan
    X.loc[::11, "b"] = None
    with pytest.raises(DataError, match="missing='impute'"):
        nnreg.Regressor(max_iter=1).fit(X, y)
    reg = nnreg.Regressor(max_iter=30, missing="impute", random_state=0).fit(X, y)
    pre = reg.preprocessor_
    assert pre.indicators == ["a"] and "__missing__" in pre.categories["b"]
    assert np.isfinite(reg.predict(X)).all()
    assert reg.__sklearn_tags__().input_tags.allow_nan


def test_stray_text_in_a_numeric_column_is_an_error() -> None:
    X = pd.DataFrame({"a": [str(v) for v in range(40)]})
    X.loc[17, "a"] = "n/a?"
    with pytest.raises(DataError, match=r"holds numbers but also text \(e.g. 'n/a\?' at row 17\)"):
        nnreg.Regressor(max_iter=1).fit(X, np.arange(40.0))


def test_early_stopping_keeps_the_best_epoch() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 5))
    y = X[:, 0] + rng.normal(0, 1.0, size=120)  # noisy: a big network overfits
    reg = nnreg.Regressor(
        hidden_layer_sizes=(256, 256),
        learning_rate_init=0.01,
        max_iter=300,
        early_stopping=True,
        validation_fraction=0.25,
        n_iter_no_change=15,
        random_state=0,
    )
    reg.fit(X, y)
    val = np.asarray(reg.validation_scores_)
    assert reg.n_iter_ < 300  # it stopped
    assert reg.best_epoch_ == int(np.argmin(val)) and reg.best_epoch_ < reg.n_iter_ - 1
    assert reg.n_iter_ - 1 - reg.best_epoch_ == 15  # patience ran out
    assert np.isfinite(reg.history_.train_loss).all() and len(val) == reg.n_iter_


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_learning_rate_schedules(schedule: str, table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    reg = nnreg.Regressor(
        max_iter=40,
        learning_rate=schedule,
        learning_rate_init=0.01,
        n_iter_no_change=4,
        tol=0.01,
        random_state=0,
    ).fit(X, y)
    lr = np.asarray(reg.history_.lr)
    assert lr[0] == pytest.approx(0.01)
    if schedule == "cosine":
        assert np.all(np.diff(lr) < 0) and lr[-1] < 0.01 * 0.01
    else:
        assert lr[-1] < 0.01 and np.all(np.diff(lr) <= 0)
        assert set(np.round(lr / 0.01, 6)) <= {1.0, 0.2, 0.04, 0.008, 0.0016, 0.001}


def test_partial_fit_continues_like_fit(table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]].to_numpy(), table_frame["y"].to_numpy()
    params = {"batch_size": "full", "random_state": 0}
    reg = nnreg.Regressor(**params)
    for _ in range(3):
        reg.partial_fit(X, y)
    assert reg.n_iter_ == 3
    full = nnreg.Regressor(max_iter=3, learning_rate="constant", **params).fit(X, y)
    np.testing.assert_array_equal(reg.predict(X), full.predict(X))
    with pytest.raises(DataError, match="X has 2 features"):
        reg.partial_fit(X[:, :2], y)


def test_warm_start_continues_from_the_fitted_weights(table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    reg = nnreg.Regressor(max_iter=10, warm_start=True, random_state=0).fit(X, y)
    first = reg.loss_curve_[-1]
    reg.fit(X, y)
    assert reg.n_iter_ == 20 and len(reg.history_) == 20
    assert reg.loss_curve_[10] < 0.5 * reg.loss_curve_[0] and reg.loss_curve_[-1] < first


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.zeros(5), "X has 4 rows but y has 5"),
        (np.zeros((4, 1, 1)), "dim 3"),
        (np.array([0.0, 1.0, np.inf, 2.0]), "infinite"),
        (np.array([0.0, np.nan, 1.0, 2.0]), "NaN"),
        (None, "requires y to be passed"),
    ],
)
def test_bad_targets(y: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        nnreg.Regressor(max_iter=1).fit(np.zeros((4, 2)), y)


def test_pipeline_grid_search_cross_validation_and_clone(table_frame: pd.DataFrame) -> None:
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    pipe = make_pipeline(StandardScaler(), nnreg.Regressor(max_iter=30, random_state=0))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8
    grid = GridSearchCV(
        nnreg.Regressor(max_iter=30, random_state=0),
        {"learning_rate_init": [1e-3, 1e-2], "hidden_layer_sizes": [(16,), (32, 32)]},
        cv=2,
    ).fit(X, y)
    assert set(grid.best_params_) == {"learning_rate_init", "hidden_layer_sizes"}
    fitted = nnreg.Regressor(max_iter=5, random_state=1).fit(X, y)
    twin = clone(fitted)
    assert not hasattr(twin, "model_") and twin.get_params() == fitted.get_params()
    np.testing.assert_array_equal(twin.fit(X, y).predict(X), fitted.predict(X))


def test_defaults_are_the_recommended_preset() -> None:
    assert nnreg.Regressor().get_params() == nnreg.Regressor.from_preset("recommended").get_params()


def test_impute_fills_columns_that_had_no_missing_values_in_fit() -> None:
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"a": rng.normal(size=100), "b": rng.normal(size=100)})
    reg = nnreg.Regressor(max_iter=3, missing="impute", random_state=0).fit(X, X["a"])
    new = pd.DataFrame({"a": [np.nan, 0.5], "b": [0.1, np.nan]})
    a_fill, b_fill = reg.preprocessor_.fill  # the (weighted, lower) medians from fit
    assert a_fill == pytest.approx(np.median(X["a"]), abs=0.1)
    filled = pd.DataFrame({"a": [a_fill, 0.5], "b": [0.1, b_fill]})
    np.testing.assert_allclose(reg.predict(new), reg.predict(filled), rtol=1e-12)


@pytest.mark.parametrize(
    ("rows", "batch"), [(1, 1), (100, 100), (256, 256), (257, 129), (300, 150), (513, 171)]
)
def test_auto_batches_are_equal_and_at_most_256_rows(rows: int, batch: int) -> None:
    from nnreg.recipe import Recipe, auto_batch_size
    from nnreg.train import epoch_batches

    assert auto_batch_size(rows) == batch
    sizes = [hi - lo for lo, hi in epoch_batches(rows, batch)]
    assert max(sizes) <= 256 and max(sizes) - min(sizes) <= len(sizes)
    recipe = Recipe.from_params(nnreg.Regressor().get_params())
    assert recipe.train_config(rows).batch_size == batch
