"""Numeric embeddings: hand-worked encodings, the reference package, finite differences, and
every way a fitted embedding network leaves the estimator (folder, ONNX, warm start)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import nnreg
from nnreg.embeddings import (
    UNBOUNDED,
    PeriodicEmbedding,
    PiecewiseLinearEmbedding,
    adapted_bins,
    quantile_bins,
)
from nnreg.exceptions import ConfigError
from nnreg.model import MLP, MLPConfig, count_parameters, state_shapes, summary


def test_quantile_bins_by_hand() -> None:
    X = np.array([[0.0, 5.0, 1.0], [1.0, 5.0, 0.0], [2.0, 5.0, 1.0], [3.0, 5.0, 0.0], [4, 5, 1]])
    edges = quantile_bins(X, 4)
    assert edges[0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # the quartiles
    assert edges[1].tolist() == [4.0, 6.0]  # a constant column: one bin around it
    assert edges[2].tolist() == [0.0, 1.0]  # a binary column: one bin, however many asked
    assert [adapted_bins(48, n) for n in (10, 200, 3071, 3072, 10**6)] == [2, 3, 47, 48, 48]
    with pytest.raises(ValueError, match="finite"):
        quantile_bins(np.array([[np.nan]]), 4)


def test_weighted_bins_are_the_repeated_rows_bins() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    X[:, 2] = rng.integers(0, 3, size=80)  # ties
    w = rng.integers(1, 5, size=80)
    repeated = quantile_bins(np.repeat(X, w, axis=0), 6)
    for a, b in zip(quantile_bins(X, 6, w.astype(float)), repeated, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    for a, b in zip(quantile_bins(X, 6, np.ones(80)), quantile_bins(X, 6), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_piecewise_encoding_by_hand() -> None:
    # Feature 0: bins [0, 1) and [1, 3]; feature 1: one bin [2, 4]; three slots each.
    emb = PiecewiseLinearEmbedding(2, 3, 1).double()
    emb.set_bins([np.array([0.0, 1.0, 3.0]), np.array([2.0, 4.0])])
    x = torch.tensor([[-1.0, 0.0], [0.5, 3.0], [2.0, 5.0], [5.0, 2.0]], dtype=torch.float64)
    code = emb.encode(x)
    # [first bin, padding, last bin]: the first slot is unbounded below, the last above; a
    # feature's only bin is its last slot, not clamped at all (min-max scaling).
    expected0 = [[-1.0, 0, 0], [0.5, 0, 0], [1, 0, 0.5], [1, 0, 2]]
    expected1 = [[0, 0, -1.0], [0, 0, 0.5], [0, 0, 1.5], [0, 0, 0]]
    assert code[:, 0].tolist() == expected0 and code[:, 1].tolist() == expected1
    # Untrained (piecewise weights zero) the embedding is linear: x * w + b.
    out = emb(x)
    assert torch.allclose(out, emb.linear_bias + emb.linear_weight * x[..., None])
    with pytest.raises(ValueError, match="increasing"):
        emb.set_bins([np.array([0.0, 0.0]), np.array([1.0, 2.0])])
    with pytest.raises(ValueError, match="2 to 4"):
        emb.set_bins([np.arange(6.0), np.array([1.0, 2.0])])


def test_one_slot_is_never_clamped() -> None:
    emb = PiecewiseLinearEmbedding(1, 1, 2).double()
    emb.set_bins([np.array([1.0, 2.0])])
    assert emb.lower.item() == -UNBOUNDED and emb.upper.item() == UNBOUNDED
    code = emb.encode(torch.tensor([[-3.0], [7.0]], dtype=torch.float64))
    assert code.ravel().tolist() == [-4.0, 6.0]


rtdl = pytest.importorskip  # the reference package, where the environment has it


def _mixed_bins(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    X = rng.normal(size=(500, 4))
    X[:, 1] = rng.integers(0, 3, size=500)  # three values: two bins
    X[:, 2] = rng.integers(0, 2, size=500)  # two values: one bin
    return X, quantile_bins(X, 10)


def test_piecewise_matches_rtdl_num_embeddings() -> None:
    ref = rtdl("rtdl_num_embeddings")
    rng = np.random.default_rng(0)
    X, edges = _mixed_bins(rng)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its encoding is computed in the default dtype
    try:
        with pytest.warns(UserWarning):  # it warns of the one-bin feature
            theirs = ref.compute_bins(torch.as_tensor(X), n_bins=10)
            other = ref.PiecewiseLinearEmbeddings(theirs, 8, activation=False, version="B")
    finally:
        torch.set_default_dtype(default)
    assert all(np.allclose(a, b.numpy()) for a, b in zip(edges, theirs, strict=True))
    other = other.double()
    mine = PiecewiseLinearEmbedding(4, max(len(e) - 1 for e in edges), 8).double()
    mine.set_bins(edges)
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
        mine.linear_weight.copy_(other.linear0.weight)
        mine.linear_bias.copy_(other.linear0.bias)
        mine.weight.copy_(other.linear.weight)
    x = torch.as_tensor(rng.normal(size=(64, 4)) * 2)
    x[:, 1:3] = torch.as_tensor(rng.integers(-1, 4, size=(64, 2)), dtype=torch.float64)
    assert torch.allclose(mine(x), other(x), rtol=1e-12, atol=1e-12)


def test_periodic_matches_rtdl_num_embeddings() -> None:
    ref = rtdl("rtdl_num_embeddings")
    other = ref.PeriodicEmbeddings(3, 8, n_frequencies=5, lite=False).double()
    mine = PeriodicEmbedding(3, 5, 8).double()
    with torch.no_grad():
        mine.frequencies.copy_(other.periodic.weight)
        mine.weight.copy_(other.linear.weight)
        mine.bias.copy_(other.linear.bias)
    x = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mine(x), other(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["piecewise", "periodic"])
def test_gradients_match_finite_differences(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "piecewise":
        emb: torch.nn.Module = PiecewiseLinearEmbedding(2, 3, 2).double()
        emb.set_bins([np.array([-1.0, 0.0, 1.0, 2.0]), np.array([0.0, 1.0])])
        with torch.no_grad():
            emb.weight.normal_()
    else:
        emb = PeriodicEmbedding(2, 3, 2, sigma=0.5).double()
    # Points away from the bin edges, where the encoding is differentiable.
    x = torch.tensor([[-1.7, 0.3], [0.4, -0.6], [1.3, 1.6], [2.6, 0.9]], dtype=torch.float64)
    x.requires_grad_(True)
    inputs = (x, *emb.parameters())

    def f(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            emb, dict(zip([n for n, _ in emb.named_parameters()], params, strict=True)), (x,)
        )

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("kind", ["piecewise", "periodic"])
def test_network_with_embedding(kind: str) -> None:
    config = MLPConfig(n_inputs=5, hidden_sizes=(7,), embedding=kind, n_embedded=3, n_bins=4)
    torch.manual_seed(0)
    net = MLP(config)
    assert config.first_width == 3 * 16 + 2
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == state_shapes(config)
    assert sum(r["params"] for r in summary(config)) == count_parameters(net)
    x = torch.randn(9, 5)
    assert torch.allclose(net(x).double(), net.predict_float64(x), atol=1e-5)
    assert MLPConfig.from_dict(config.to_dict()) == config
    assert "embedding" not in MLPConfig(n_inputs=5).to_dict()  # plain networks as before
    with pytest.raises(ValueError, match="n_embedded"):
        MLPConfig.from_dict({**config.to_dict(), "n_embedded": 6})
    with pytest.raises(ValueError, match="embedding"):
        MLPConfig.from_dict({**config.to_dict(), "embedding": "fourier"})


@pytest.fixture(scope="module")
def penguins() -> tuple[pd.DataFrame, pd.Series]:
    plotnine = pytest.importorskip("plotnine")
    df = pd.read_csv(Path(plotnine.__path__[0]) / "data" / "penguins.csv").dropna()
    return df.drop(columns=["body_mass_g", "year"]), df["body_mass_g"]


@pytest.mark.parametrize("kind", ["piecewise", "periodic"])
def test_estimator_saves_loads_and_exports(
    tmp_path: Path, penguins: tuple[pd.DataFrame, pd.Series], kind: str
) -> None:
    X, y = penguins
    reg = nnreg.Regressor(embedding=kind, max_iter=15, random_state=0).fit(X, y)
    config = reg.model_.config
    assert config.embedding == kind and config.n_embedded == 3  # the numeric columns
    if kind == "piecewise":  # 333 rows: at most 5 bins per column
        assert config.n_bins == adapted_bins(48, len(X)) == 5
    loaded = nnreg.load(reg.save(tmp_path / "m"))
    assert np.array_equal(loaded.predict(X), reg.predict(X))
    ort = pytest.importorskip("onnxruntime")
    from nnreg.export import export_onnx, onnx_inputs

    path = export_onnx(reg, tmp_path / "m.onnx")
    out = ort.InferenceSession(str(path)).run(None, onnx_inputs(path, X))[0].ravel()
    assert np.allclose(out, reg.predict(X), rtol=1e-5, atol=1e-3)


def test_embedding_fits_better_than_chance_and_continues(
    penguins: tuple[pd.DataFrame, pd.Series],
) -> None:
    X, y = penguins
    reg = nnreg.Regressor(embedding="piecewise", max_iter=30, random_state=0).fit(X, y)
    assert reg.score(X, y) > 0.8
    bins = reg.model_.embedding.scale.clone()
    reg.set_params(warm_start=True, max_iter=2).fit(X, y)
    assert reg.n_iter_ == 32 and torch.equal(reg.model_.embedding.scale, bins)  # kept
    with pytest.raises(ConfigError, match="embedding"):
        reg.set_params(embedding="periodic").fit(X, y)


def test_settings_that_cannot_embed_are_refused(tmp_path: Path) -> None:
    X, y = np.random.default_rng(0).normal(size=(40, 2)), np.arange(40.0)
    with pytest.raises(ConfigError, match="n_models=1"):
        nnreg.Regressor(embedding="periodic", n_models=3).fit(X, y)
    with pytest.raises(ConfigError, match="n_bins"):
        nnreg.Regressor(embedding="piecewise", n_bins=0).fit(X, y)
    from nnreg.sweep import Sweep

    with pytest.raises(ConfigError, match="embedding"):
        Sweep(nnreg.Regressor(embedding="periodic"), {"max_iter": [1, 2]}).fit(X, y)
    from nnreg.stream import check_streamable

    with pytest.raises(ConfigError, match="embeddings"):
        check_streamable(nnreg.Regressor(embedding="piecewise"))


@pytest.mark.parametrize("embedding", ["auto", "piecewise"])
def test_independent_members_embed_and_save_load_and_export(embedding: str, tmp_path: Path) -> None:
    """Each member and helper has its own embedding over one set of bins; the folder and the
    ONNX graph give the fitted ensemble's predictions."""
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"a": rng.normal(size=400), "b": rng.uniform(size=400)})
    X["c"] = pd.Categorical(rng.choice(list("xyz"), size=400))
    y = np.sin(3 * X["a"].to_numpy()) + (X["c"] == "y") + 0.1 * rng.normal(size=400)
    reg = nnreg.Regressor(embedding=embedding, n_models=3, max_iter=20, random_state=0)
    reg.fit(X, y)
    members = list(reg.model_.members)
    assert all(m.embedding is not None for m in members)
    for m in members[1:]:
        assert torch.equal(m.embedding.scale, members[0].embedding.scale)  # one set of bins
        assert not torch.equal(m.embedding.linear_weight, members[0].embedding.linear_weight)
    assert float(members[0].embedding.weight.detach().abs().sum()) > 0  # trained
    pred, std = reg.predict(X, return_std=True)
    assert float(std.mean()) > 0
    loaded = nnreg.load(reg.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict(X), pred, rtol=1e-12)
    np.testing.assert_allclose(
        np.stack(loaded.predict_interval(X)), np.stack(reg.predict_interval(X))
    )
    ort = pytest.importorskip("onnxruntime")
    from nnreg.export import export_onnx, onnx_inputs

    path = export_onnx(reg, tmp_path / "m.onnx")
    out = ort.InferenceSession(str(path)).run(None, onnx_inputs(path, X))[0].ravel()
    np.testing.assert_allclose(out, pred, rtol=1e-5, atol=1e-5)


def test_categorical_only_table_has_nothing_to_embed() -> None:
    X = pd.DataFrame({"c": pd.Categorical(list("abcab") * 8)})
    reg = nnreg.Regressor(embedding="piecewise", max_iter=2, random_state=0)
    assert reg.fit(X, np.arange(40.0)).model_.embedding is None
