"""The recipe: one validation of the parameters, and what every fit derives from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import nnreg
from nnreg.exceptions import ConfigError
from nnreg.recipe import PRESETS, Recipe, auto_batch_size, check_params, jsonable, member_seeds


def params(**overrides: object) -> dict:
    return {**nnreg.Regressor().get_params(), **overrides}


def test_every_problem_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as info:
        Recipe.from_params(params(learning_rate_init=-1.0, hidden_layer_sizes=(0,), dtype="x"))
    message = str(info.value)
    assert message.count("must be") == 3 and "\n" not in message
    for name in ("learning_rate_init", "hidden_layer_sizes", "dtype"):
        assert f"{name} must be" in message


def test_a_label_names_parameters_in_the_callers_words() -> None:
    with pytest.raises(ConfigError, match=r"learning_rate_init \(--lr\) must be a finite"):
        check_params({"learning_rate_init": 0.0}, label=lambda name: f"{name} (--lr)")


def test_the_estimators_parameters_build_the_configurations() -> None:
    recipe = Recipe.from_params(params(hidden_layer_sizes=[32, 16], random_state=7))
    config = recipe.model_config(n_inputs=5, n_outputs=2)
    assert (config.n_inputs, config.hidden_sizes, config.n_outputs) == (5, (32, 16), 2)
    train = recipe.train_config(n_rows=300)
    assert train.batch_size == auto_batch_size(300) == 150
    assert train.lr == nnreg.Regressor().learning_rate_init  # the one rename: -> lr
    assert train.betas == (0.9, 0.95) and train.schedule == "cosine"
    assert Recipe.from_params(params(batch_size="full")).train_config(300).batch_size is None
    assert recipe.seed == 7 and recipe.device == torch.device("cpu")


def test_members_are_seeded_alone_and_leave_the_global_generator_alone() -> None:
    recipe = Recipe.from_params(params(random_state=3, n_models=3, dtype="float64"))
    config = recipe.model_config(2, 1)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    model = recipe.model(config)
    assert torch.equal(torch.random.get_rng_state(), before)
    seeds = member_seeds(3, 3)
    assert seeds[0] == 3
    for member, seed in zip(model.members, seeds, strict=True):
        again = recipe.member(config, seed)
        for a, b in zip(member.parameters(), again.parameters(), strict=True):
            assert a.dtype == torch.float64 and torch.equal(a, b)


def test_an_unseeded_recipe_draws_its_seed_from_numpys_global_generator() -> None:
    np.random.seed(11)  # noqa: NPY002 - random_state=None draws from the global RNG
    first = Recipe.from_params(params(random_state=None)).seed
    np.random.seed(11)  # noqa: NPY002
    assert Recipe.from_params(params(random_state=None)).seed == first
    rs = np.random.RandomState(4)
    assert Recipe.from_params(params(random_state=rs)).seed == np.random.RandomState(4).randint(
        0, 2**31 - 1
    )


@pytest.mark.parametrize(
    ("overrides", "n", "held_out"),
    [
        ({}, 100, None),  # one model without early stopping holds nothing out
        ({"early_stopping": True}, 100, 10),
        ({"early_stopping": True}, 1, None),
        ({"early_stopping": True, "validation_fraction": 0.99}, 10, 9),  # never every row
        ({"n_models": 3}, 1000, 100),
    ],
)
def test_validation_split(overrides: dict, n: int, held_out: int | None) -> None:
    recipe = Recipe.from_params(params(random_state=0, **overrides))
    val, train = recipe.validation_split(n, min_rows=100 if "n_models" in overrides else 1)
    if held_out is None:
        assert val is None and list(train) == list(range(n))
        return
    assert val is not None and len(val) == held_out
    assert sorted([*val, *train]) == list(range(n))


def test_presets_are_valid_and_jsonable_round_trips_through_the_estimator() -> None:
    for name, preset in PRESETS.items():
        check_params(params(**preset))
        reg = nnreg.Regressor.from_preset(name)
        again = nnreg.Regressor(**{**jsonable(reg.get_params()), "hidden_layer_sizes": (20,)})
        assert again.get_params()["max_iter"] == preset["max_iter"]


def test_every_front_door_starts_from_the_same_network(tmp_path) -> None:
    # The in-memory fit, the streamed fit and a sweep draw the initial weights through the
    # recipe: with no training step (lr ~ 0) they all end where they started.
    from nnreg.stream import ParquetData, fit_parquet
    from nnreg.sweep import Sweep, grid

    df = nnreg.seed_dataset(n=64, random_state=0)
    df.to_parquet(tmp_path / "d.parquet")
    # Streams and sweeps do not embed (embedding="auto" embeds in memory only): compare plain.
    base = dict(max_iter=1, learning_rate_init=1e-300, dropout=0.0, dtype="float64")
    base.update(embedding="none")
    base.update(random_state=5, batch_size=64, hidden_layer_sizes=(8,))
    memory = nnreg.Regressor(**base).fit(df[["x1", "x2"]], df["y"])
    streamed = fit_parquet(nnreg.Regressor(**base), ParquetData(tmp_path / "d.parquet", "y"))
    swept = Sweep(nnreg.Regressor(**base), grid([(8,)], [1e-300], [0.0], [5])).fit(
        df[["x1", "x2"]], df["y"]
    )
    nets = [memory.model_, streamed.model_, swept.regressor().model_]
    for other in nets[1:]:
        for a, b in zip(nets[0].parameters(), other.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert isinstance(memory.predict(pd.DataFrame({"x1": [0.0], "x2": [1.0]})), np.ndarray)
