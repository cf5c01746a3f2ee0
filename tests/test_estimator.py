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
    X, y = table_frame[["a", "b", "c"]].to_numpy(), table_frame["y"].to_numpy()
    w = np.ones(len(y))
    w[::2] = 0.0
    y_noisy = y.copy()
    y_noisy[::2] += 1000.0  # zero-weighted rows carry garbage
    params = {
        "max_iter": 5,
        "batch_size": "full",
        "scale_target": False,
        "scale_inputs": False,
        "random_state": 0,
    }
    weighted = nnreg.Regressor(**params).fit(X, y_noisy, sample_weight=w)
    clean = nnreg.Regressor(**params).fit(X[1::2], y[1::2])
    np.testing.assert_allclose(weighted.predict(X), clean.predict(X), rtol=1e-5, atol=1e-5)


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
        (np.array([[np.nan, 0.0, 0.0]]), "missing values"),
        (np.zeros((0, 3)), "0 rows"),
        (np.zeros((2, 3, 1)), "3 dimensions"),
        (np.array([["a", "b", "c"]]), "numbers only"),
        (pd.DataFrame({"a": [1.0], "b": [2.0]}), "missing the feature 'c'"),
        (pd.DataFrame({"a": [1.0], "b": [2.0], "c": [1.0], "d": [0.0]}), "'d' that was not seen"),
    ],
)
def test_bad_input_at_predict(table_frame: pd.DataFrame, X, message: str) -> None:
    reg = nnreg.Regressor(max_iter=1, random_state=0).fit(
        table_frame[["a", "b", "c"]], table_frame["y"]
    )
    with pytest.raises(DataError, match=message) as info:
        reg.predict(X)
    assert isinstance(info.value, NnregError) and isinstance(info.value, ValueError)


def test_dataframe_columns_are_matched_by_name(table_frame: pd.DataFrame) -> None:
    X = table_frame[["a", "b", "c"]]
    reg = nnreg.Regressor(max_iter=2, random_state=0).fit(X, table_frame["y"])
    np.testing.assert_array_equal(reg.predict(X[["c", "a", "b"]]), reg.predict(X))
    assert list(reg.feature_names_in_) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.zeros(5), "X has 4 rows but y has 5"),
        (np.zeros((4, 1, 1)), "1-D or 2-D"),
        (np.array([0.0, 1.0, np.inf, 2.0]), "infinite"),
    ],
)
def test_bad_targets(y: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        nnreg.Regressor(max_iter=1).fit(np.zeros((4, 2)), y)
