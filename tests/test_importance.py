"""Permutation importance: ``Regressor.feature_importances`` and ``nnreg importance``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import root_mean_squared_error

import nnreg
from cli_helpers import run


def two_of_five(n: int, seed: int) -> pd.DataFrame:
    """y depends on a and b only; c, d and e are noise columns."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    frame = pd.DataFrame(X, columns=list("abcde"))
    frame["y"] = 2 * frame["a"] + frame["b"] ** 2 + rng.normal(0, 0.1, n)
    return frame


def with_city(n: int, seed: int) -> pd.DataFrame:
    """y depends mostly on a categorical column of five cities, and a little on x."""
    rng = np.random.default_rng(seed)
    city = rng.choice(["Oslo", "Bergen", "Tromsø", "Bodø", "Molde"], n)
    effect = pd.Series(city).map({"Oslo": 3, "Bergen": 1, "Tromsø": -1, "Bodø": -2, "Molde": 0})
    x = rng.normal(size=n)
    y = effect.to_numpy(float) + 0.3 * x + rng.normal(0, 0.1, n)
    return pd.DataFrame({"city": city, "x": x, "y": y})


@pytest.fixture(scope="module")
def fitted() -> nnreg.Regressor:
    train = two_of_five(600, seed=0)
    reg = nnreg.Regressor(hidden_layer_sizes=(32, 32), max_iter=150, random_state=0)
    return reg.fit(train[list("abcde")], train["y"])


def test_the_two_columns_the_target_depends_on_rank_first(fitted: nnreg.Regressor) -> None:
    test = two_of_five(400, seed=1)
    found = fitted.feature_importances(test[list("abcde")], test["y"], n_repeats=5)
    ranked = found.to_frame()
    assert set(ranked["feature"][:2]) == {"a", "b"}
    noise = ranked.set_index("feature").loc[list("cde"), "importance"]
    assert (noise < 0.1 * ranked["importance"].iloc[1]).all()
    assert found.scores.shape == (5, 5)
    np.testing.assert_allclose(
        found.baseline_rmse,
        root_mean_squared_error(test["y"], fitted.predict(test[list("abcde")])),
        rtol=1e-12,
    )


def test_a_categorical_column_is_permuted_as_one(tmp_path: Path) -> None:
    """Its importance is reported under its own name (not one per category), and equals
    shuffling the raw column by hand (the means of 40 shuffles each agree)."""
    train, test = with_city(800, seed=0), with_city(400, seed=1)
    reg = nnreg.Regressor(hidden_layer_sizes=(32,), max_iter=100, random_state=0)
    reg.fit(train[["city", "x"]], train["y"])
    X, y = test[["city", "x"]], test["y"].to_numpy()
    found = reg.feature_importances(X, y, n_repeats=40, random_state=0)
    assert found.features == ["city", "x"]
    base = root_mean_squared_error(y, reg.predict(X))
    rng = np.random.default_rng(7)
    by_hand = []
    for _ in range(40):
        shuffled = X.assign(city=X["city"].to_numpy()[rng.permutation(len(X))])
        by_hand.append(root_mean_squared_error(y, reg.predict(shuffled)) - base)
    city = found.to_frame().set_index("feature").loc["city", "importance"]
    assert city > 1.0
    np.testing.assert_allclose(city, np.mean(by_hand), rtol=0.1)


def test_n_repeats_is_checked(fitted: nnreg.Regressor) -> None:
    test = two_of_five(50, seed=2)
    for bad in (0, 1.5, True):
        with pytest.raises(nnreg.ConfigError, match="n_repeats"):
            fitted.feature_importances(test[list("abcde")], test["y"], n_repeats=bad)  # type: ignore[arg-type]


def test_the_command_prints_a_table_json_and_a_chart(
    fitted: nnreg.Regressor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = fitted.save(tmp_path / "model")
    data = tmp_path / "test.csv"
    two_of_five(300, seed=3).to_csv(data, index=False)
    chart = tmp_path / "importance.png"
    code, out, err = run(["importance", str(model), str(data), "-o", str(chart)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("baseline RMSE") and "300 rows" in lines[0]
    assert {lines[3].split()[2], lines[4].split()[2]} == {"a", "b"}  # ranks 1 and 2
    from PIL import Image

    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size[0] >= 400
        assert image.info.get("Software") == "nnreg"
        colours = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(colours, axis=0)) > 10  # bars, labels: not blank
    code, out, _ = run(["importance", str(model), str(data), "--json", "--repeats", "2"], capsys)
    answer = json.loads(out)
    assert code == 0 and answer["repeats"] == 2
    assert {f["feature"] for f in answer["features"][:2]} == {"a", "b"}
    user_file = tmp_path / "mine.png"
    user_file.write_bytes(b"not nnreg's")
    code, _, err = run(["importance", str(model), str(data), "-o", str(user_file)], capsys)
    assert code != 0 and user_file.read_bytes() == b"not nnreg's"
    code, _, err = run(["importance", str(model), str(tmp_path / "none.csv")], capsys)
    assert code == 1 and "none.csv" in err
