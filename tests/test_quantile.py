"""scaling="quantile": a hand-worked example, scikit-learn's QuantileTransformer as the
reference, edge columns, sample weights, the model folder, ONNX and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import QuantileTransformer

import nnreg
from cli_helpers import run
from nnreg.exceptions import DataError, ModelFileError
from nnreg.onnx_graph import Graph
from nnreg.preprocess import TablePreprocessor
from nnreg.quantile import (
    MAX_KNOTS,
    Z_MAX,
    fit_knots,
    knots_from_quantiles,
    onnx_transform,
    transform,
)

PHI_INV = NormalDist().inv_cdf  # an independent Phi^-1 (the module uses scipy's ndtri)


def _phi(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)


# -- the map ---------------------------------------------------------------------------------


def test_hand_worked_example() -> None:
    """Eight rows 1..8: four levels 0, 1/3, 2/3, 1 (one per two rows), whose inverted-CDF
    quantiles are 1, 3, 6 and 8; the end levels are clipped to 1e-7 and 1 - 1e-7."""
    pre = TablePreprocessor(scaling="quantile").fit(pd.DataFrame({"a": np.arange(1.0, 9.0)}))
    z0, z1 = PHI_INV(1e-7), PHI_INV(1 / 3)  # -5.1993..., -0.4307...
    assert pre.knots["x"] == [[1.0, 3.0, 6.0, 8.0]]
    np.testing.assert_allclose(pre.knots["z"], [[z0, z1, -z1, -z0]], rtol=1e-12)
    assert pre.center == [0.0] and pre.scale == [1.0]
    new = pd.DataFrame({"a": [-5.0, 1.0, 2.0, 3.0, 4.5, 5.0, 8.0, 1e9]})
    want = [z0, z0, (z0 + z1) / 2, z1, 0.0, -z1 / 3, -z0, -z0]  # linear between the knots' z
    np.testing.assert_allclose(pre.transform(new)[:, 0], want, rtol=1e-12, atol=1e-15)
    assert pre.transform(new)[4, 0] == 0.0  # symmetric knots: the middle is exactly 0


def _knots_like(qt: QuantileTransformer) -> dict[str, list[list[float]]]:
    """nnreg's map through scikit-learn's own quantiles (its levels are evenly spaced too)."""
    pairs = [knots_from_quantiles(np.maximum.accumulate(col)) for col in qt.quantiles_.T]
    return {"x": [p[0] for p in pairs], "z": [p[1] for p in pairs]}


def _lognormal_and_uniform(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.lognormal(0, 1, n), rng.uniform(-3, 7, n)])  # (n, 2)


def test_same_knots_as_scikit_learn_agree_within_the_interpolation_error() -> None:
    """scikit-learn interpolates the level u linearly and returns Phi^-1(u); nnreg
    interpolates z = Phi^-1(q) linearly between the same knots. Between two knots the gap is
    the linear-interpolation error of Phi^-1 over the levels [q_j, q_j+1]: at most
    dq**2 / 8 * max |Phi^-1''|, where Phi^-1''(q) = z / phi(z)**2 is largest at the end
    nearer the tail. The bound is checked per row on every segment but the two end ones
    (where scikit-learn's u reaches its 1e-7 clip and Phi^-1'' is unbounded).

    Measured on 20,000 fresh rows through 1,000 knots: at most 0.017 in the second and
    second-to-last segments (bound 0.034), 2e-5 between the 5% and 95% levels (bound 2e-5),
    and up to 1.3 in the end segments, which hold 0.1% of the training rows each."""
    X = _lognormal_and_uniform(4000, 0)
    qt = QuantileTransformer(n_quantiles=1000, output_distribution="normal", subsample=None)
    qt.fit(X)
    knots = _knots_like(qt)
    new = _lognormal_and_uniform(20_000, 1)
    ours, theirs = transform(knots, new), qt.transform(new)  # (rows, 2)
    levels = qt.references_
    for j in range(2):
        x, z = np.asarray(knots["x"][j]), np.asarray(knots["z"][j])
        assert len(x) == 1000  # continuous columns: every quantile is a knot
        seg = np.searchsorted(x, new[:, j], side="right") - 1
        inner = (seg >= 1) & (seg <= len(x) - 3)
        curvature = np.maximum(np.abs(z) / _phi(z) ** 2, np.roll(np.abs(z) / _phi(z) ** 2, -1))
        bound = np.diff(levels)[0] ** 2 / 8 * curvature[seg[inner]]
        gap = np.abs(ours[inner, j] - theirs[inner, j])
        assert (gap <= bound + 1e-9).all()
        assert gap.max() < 0.02
        central = (new[:, j] >= x[50]) & (new[:, j] <= x[949])  # levels 5% to 95%
        assert np.abs(ours[central, j] - theirs[central, j]).max() < 2e-5
        # Both monotone on a sorted grid across the whole range and beyond it.
        grid = np.linspace(x[0] - 1, x[-1] + 1, 50_001)[:, None].repeat(2, axis=1)
        assert (np.diff(transform(knots, grid)[:, j]) >= 0).all()
        assert (np.diff(qt.transform(grid)[:, j]) >= 0).all()


def test_fitted_knots_are_close_to_scikit_learns() -> None:
    """nnreg's own fit (inverted-CDF quantiles, which honour weights) against scikit-learn's
    (linear interpolation between order statistics), 1,000 knots on 4,000 rows each. The
    knots differ by up to one order statistic, which can move a value's level by up to one
    knot spacing dq = 1/999, so z by up to dq / phi(z). Measured on the training rows between
    the 0.1% and 99.9% quantiles: at most 0.85 dq / phi(z), and 3.5e-3 in z between the 5% and
    95% quantiles."""
    X = _lognormal_and_uniform(4000, 2)
    qt = QuantileTransformer(n_quantiles=1000, output_distribution="normal", subsample=None)
    ours, theirs = transform(fit_knots(X), X), qt.fit_transform(X)
    gap = np.abs(ours - theirs)  # (rows, 2)
    for j in range(2):
        lo, hi = np.quantile(X[:, j], [0.001, 0.999])
        inner = (X[:, j] >= lo) & (X[:, j] <= hi)
        z = np.maximum(np.abs(ours[inner, j]), np.abs(theirs[inner, j]))
        assert (gap[inner, j] * _phi(z) <= 1 / 999).all()
        lo, hi = np.quantile(X[:, j], [0.05, 0.95])
        assert gap[(X[:, j] >= lo) & (X[:, j] <= hi), j].max() < 5e-3
    assert np.abs(ours.mean(axis=0)).max() < 0.01 and np.abs(ours.std(axis=0) - 1).max() < 0.05


def test_knot_counts_follow_the_rows() -> None:
    rng = np.random.default_rng(3)
    for rows, knots in [(1, 1), (3, 2), (9, 4), (500, 250), (2000, 1000), (10_000, 1000)]:
        assert len(fit_knots(rng.normal(size=(rows, 1)))["x"][0]) == knots


# -- edge columns ----------------------------------------------------------------------------


def test_constant_and_low_cardinality_columns() -> None:
    """A constant column maps to 0; a 0/1 column with 70 zeros in 100 rows to the middle
    levels of its two runs of quantiles, 0.35 and about 0.85."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {"const": np.full(100, 7.5), "binary": np.r_[np.zeros(70), np.ones(30)]}
    ).sample(frac=1.0, random_state=0)
    frame["three"] = rng.choice([-1.0, 0.0, 2.0], size=100)
    pre = TablePreprocessor(scaling="quantile").fit(frame)
    assert pre.knots["x"][:2] == [[7.5], [0.0, 1.0]] and pre.knots["z"][0] == [0.0]
    assert pre.knots["x"][2] == [-1.0, 0.0, 2.0]
    # 50 levels j/49: zeros fill levels 0..34 (inverted CDF: q <= 0.7), ones 35..49.
    np.testing.assert_allclose(pre.knots["z"][1], [PHI_INV(34 / 98), PHI_INV(84 / 98)], rtol=1e-12)
    Z = pre.transform(pd.DataFrame({"const": [0.0, 7.5, 1e6], "binary": [0, 1, 0.5], "three": 0}))
    assert (Z[:, 0] == 0).all()
    assert Z[0, 1] < 0 < Z[1, 1] and Z[0, 1] < Z[2, 1] < Z[1, 1]
    assert np.isfinite(Z).all()


def test_missing_values_and_categories_are_handled_as_with_the_other_scalings() -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {"a": rng.normal(size=200), "zone": rng.choice(["n", "s", "e"], 200), "b": rng.random(200)}
    )
    frame.loc[::7, "a"] = np.nan
    new = frame.iloc[:20].copy()
    new.loc[new.index[3], "zone"] = "unseen"
    new.loc[new.index[4], "b"] = np.nan  # b had no NaN in fit: imputed, no indicator
    q = TablePreprocessor(scaling="quantile", missing="impute").fit(frame)
    s = TablePreprocessor(scaling="standard", missing="impute").fit(frame)
    assert q.output_names == s.output_names and q.fill == s.fill and q.indicators == ["a"]
    Zq, Zs = q.transform(new), s.transform(new)
    np.testing.assert_array_equal(Zq[:, 2:], Zs[:, 2:])  # indicators and one-hot blocks
    # A missing value is scaled as its column's median, as with every scaling.
    median = q.transform(pd.DataFrame({"a": q.fill[:1], "zone": ["n"], "b": q.fill[1:]}))
    np.testing.assert_array_equal(Zq[[0, 7, 14], 0], median[[0, 0, 0], 0])
    assert Zq[4, 1] == median[0, 1]
    # The knots are fitted on the imputed column, as the other scalings' statistics are.
    filled = frame.assign(a=frame["a"].fillna(q.fill[0]))[["a", "b"]].to_numpy()
    assert q.knots == fit_knots(filled)
    with pytest.raises(DataError) as quantile_error:
        TablePreprocessor(scaling="quantile").fit(frame)
    with pytest.raises(DataError) as standard_error:
        TablePreprocessor(scaling="standard").fit(frame)
    assert str(quantile_error.value) == str(standard_error.value)


def test_huge_dynamic_range() -> None:
    """Knots up to float64's limits: no overflow (the map works on halves of the values)."""
    frame = pd.DataFrame({"x": [0.0, 0.0, 1e-300, -1e-300, 1e300, -1.7e308, 1.7e308, 5.0]})
    with np.errstate(over="raise", invalid="raise"):
        pre = TablePreprocessor(scaling="quantile").fit(frame)
        Z = pre.transform(pd.DataFrame({"x": np.r_[frame["x"], -1e308, 1e308, 8.9e307]}))
    assert np.isfinite(Z).all() and np.ptp(Z) > 0
    assert (np.diff(pre.transform(frame.sort_values("x"))[:, 0]) >= 0).all()


def test_integer_sample_weights_equal_repeated_rows() -> None:
    """As for the other statistics; a row of weight 0 is no knot, not even at an end."""
    rng = np.random.default_rng(6)
    X = rng.gamma(2.0, size=(2500, 2))  # 2500 and ~5000 rows: 1000 knots either way
    w = rng.integers(1, 4, size=2500).astype(float)
    weighted = TablePreprocessor(scaling="quantile").fit(pd.DataFrame(X, columns=["a", "b"]), w)
    repeated = pd.DataFrame(np.repeat(X, w.astype(int), axis=0), columns=["a", "b"])
    assert weighted.knots == TablePreprocessor(scaling="quantile").fit(repeated).knots
    outlier = np.r_[X[:, :1], [[1e6]]]
    knots = fit_knots(outlier, np.r_[np.ones(2500), 0.0])
    assert max(knots["x"][0]) == X[:, 0].max()
    assert knots == fit_knots(X[:, :1])


# -- the model folder, ONNX and the command line ---------------------------------------------


@pytest.fixture(scope="module")
def diabetes() -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    return train_test_split(X, y, test_size=0.25, random_state=0)


def test_end_to_end_on_the_diabetes_data(diabetes, tmp_path: Path) -> None:
    """Linear regression scores R^2 = 0.36 on this split; a small network on quantile-scaled
    inputs does as well (0.40 measured). The folder holds the knots, and the loaded model
    predicts exactly what the fitted one does."""
    X_train, X_test, y_train, y_test = diabetes
    reg = nnreg.Regressor(
        scaling="quantile", hidden_layer_sizes=(16,), max_iter=100, random_state=0
    ).fit(X_train, y_train)
    assert reg.score(X_test, y_test) > 0.3
    folder = reg.save(tmp_path / "m")
    saved = json.loads((folder / "model.json").read_text())["preprocessing"]["inputs"]
    assert saved["scaling"] == "quantile" and len(saved["knots"]["x"]) == 10
    knots = saved["knots"]
    assert all(len(x) == len(z) <= MAX_KNOTS for x, z in zip(knots["x"], knots["z"], strict=True))
    loaded = nnreg.load(folder)
    assert loaded.preprocessor_.knots == reg.preprocessor_.knots
    np.testing.assert_array_equal(loaded.predict(X_test), reg.predict(X_test))


def _edit(folder: Path, change) -> None:
    doc = json.loads((folder / "model.json").read_text())
    change(doc["preprocessing"]["inputs"])
    (folder / "model.json").write_text(json.dumps(doc))


def _set(key: str, j: int, value: Any):
    return lambda d: d["knots"][key].__setitem__(j, value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("x", 0, [3.0, 2.0, 1.0]), "numeric column 0 do not increase"),
        (_set("x", 1, [1.0, 1.0]), "numeric column 1 do not increase"),
        (_set("z", 1, [1.0, -1.0]), "numeric column 1 do not increase"),
        (_set("z", 0, [-9.0, 0.0, 9.0]), r"normal score beyond \+-5.20"),
        (_set("x", 0, ["1", 2.0, 3.0]), "not 1 to 1000 finite numbers"),
        (_set("x", 0, [1.0, float("nan"), 3.0]), "not 1 to 1000 finite numbers"),
        (_set("x", 0, [1.0, 2.0]), "not 1 to 1000 finite numbers"),
        (_set("x", 0, list(range(1001))), "not 1 to 1000 finite numbers"),
        (_set("x", 0, []), "not 1 to 1000 finite numbers"),
        (lambda d: d["knots"]["x"].pop(), "one of normal scores per numeric column"),
        (lambda d: d["knots"].pop("z"), "one of normal scores per numeric column"),
        (lambda d: d.pop("knots"), "one of normal scores per numeric column"),
        (lambda d: d.update(scaling="standard"), "quantile knots but another scaling"),
    ],
)
def test_an_edited_folder_is_refused_in_one_line(tmp_path: Path, change, message: str) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "b": [0.0, 1.0] * 3})
    reg = nnreg.Regressor(scaling="quantile", hidden_layer_sizes=(4,), max_iter=1)
    folder = reg.fit(frame, frame["a"]).save(tmp_path / "m")
    _edit(folder, lambda d: d["knots"]["x"].__setitem__(0, [1.0, 3.5, 6.0]))
    _edit(folder, lambda d: d["knots"]["z"].__setitem__(0, [-5.0, 0.0, 5.0]))
    nnreg.load(folder)  # a hand-edited but consistent map is still a model
    _edit(folder, change)
    with pytest.raises(ModelFileError, match=message) as info:
        nnreg.load(folder)
    assert "\n" not in str(info.value)


def _ort_session(proto: Any) -> Any:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def test_the_onnx_graph_is_bitwise_the_numpy_map() -> None:
    """Columns with 1000, 3, 2 and 1 knots (padded to one table), values below, at, between
    and beyond the knots, and NaN (which a model fitted with missing='error' passes on)."""
    onnx = pytest.importorskip("onnx")
    rng = np.random.default_rng(7)
    fit = np.column_stack(
        [rng.lognormal(size=3000), rng.choice([0.0, 1.0, 5.0], 3000), rng.random(3000) < 0.5]
    )
    knots = fit_knots(np.column_stack([fit, np.full(3000, 2.0)]))
    assert [len(x) for x in knots["x"]] == [1000, 3, 2, 1]
    new = np.column_stack([rng.lognormal(size=5000) * 1.2 - 0.1, rng.uniform(-1, 6, 5000)] * 2)
    new[:1000] = (
        np.asarray([x[i % len(x)] for x in knots["x"] for i in range(1000)]).reshape(4, 1000).T
    )  # exactly at the knots
    new[1000, :] = np.nan
    g = Graph(onnx)
    out = onnx_transform(g, knots, "x")
    h = onnx.helper
    tp = onnx.TensorProto
    graph = h.make_graph(
        g.nodes,
        "quantile",
        [h.make_tensor_value_info("x", tp.DOUBLE, ["batch", 4])],
        [h.make_tensor_value_info(out, tp.DOUBLE, ["batch", 4])],
        g.initializers,
    )
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    onnx.checker.check_model(proto, full_check=True)
    got = _ort_session(proto).run([out], {"x": new})[0]
    want = transform(knots, new)
    assert np.isnan(got[1000]).all() and np.isnan(want[1000]).all()
    np.testing.assert_array_equal(got, want)
    assert np.abs(want[np.isfinite(want)]).max() <= Z_MAX


def test_exported_model_predicts_as_nnreg(tmp_path: Path) -> None:
    """A float64 network with missing values imputed and a categorical column: onnxruntime's
    predictions equal predict's to float64 rounding of the network itself."""
    onnx = pytest.importorskip("onnx")
    from nnreg.export import export_onnx, onnx_inputs

    rng = np.random.default_rng(8)
    frame = pd.DataFrame(
        {
            "a": rng.lognormal(size=300),
            "zone": rng.choice(["n", "s"], 300),
            "b": rng.integers(0, 4, 300),
        }
    )
    frame.loc[::11, "a"] = np.nan
    y = np.log1p(frame["a"].fillna(1.0)) + frame["b"] + (frame["zone"] == "n")
    reg = nnreg.Regressor(
        scaling="quantile", missing="impute", dtype="float64", max_iter=3, random_state=0
    ).fit(frame, y)
    path = export_onnx(reg, tmp_path / "model.onnx")
    test = frame.iloc[:80].copy()
    test.loc[test.index[1], "a"] = 1e9  # beyond the last knot
    test.loc[test.index[2], "b"] = -3  # below the first
    session = _ort_session(onnx.load(str(path)))
    out = session.run(["predictions"], onnx_inputs(path, test))[0]
    np.testing.assert_allclose(out[:, 0], reg.predict(test), rtol=1e-12, atol=1e-12)


def test_cli_trains_with_quantile_scaling(
    capsys, tmp_path: Path, table_csv: Path, table_frame: pd.DataFrame, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["train", str(table_csv), "--target", "y", "--scaling", "quantile"]
    code, _, err = run([*args, "--epochs", "3", "--holdout", "0", "--out", "model", "-q"], capsys)
    assert code == 0, err
    reg = nnreg.load("model")
    assert reg.get_params()["scaling"] == "quantile"
    assert [len(x) for x in reg.preprocessor_.knots["x"]] == [150, 150, 150]  # 300 rows
    code, _, err = run(["predict", "model", str(table_csv), "-o", "preds.csv"], capsys)
    assert code == 0, err
    X = table_frame[["a", "b", "c"]]
    np.testing.assert_allclose(pd.read_csv("preds.csv")["y_pred"], reg.predict(X), rtol=1e-12)
    code, _, err = run(["train", *args[1:4], "--scaling", "quantiles"], capsys)
    assert code != 0 and "quantile" in err
