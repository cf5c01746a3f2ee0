"""TabM's shared-weight members: against the plain MLP, finite differences, a plain loop over
the members' losses, and every way a fitted ensemble leaves the estimator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import nnreg
from nnreg import schedule, train
from nnreg.backends import AutogradBackend
from nnreg.exceptions import ConfigError
from nnreg.model import MLP, MLPConfig, count_parameters, state_shapes, summary
from nnreg.tabm import TabM


def _config(form: str, k: int, **kw: object) -> MLPConfig:
    base = {"n_inputs": 3, "hidden_sizes": (6, 5), "n_outputs": 2, "activation": "silu"}
    return MLPConfig(**{**base, **kw, "ensemble": form, "k": k})  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["tabm", "tabm-mini"])
def test_one_member_with_unit_adapters_is_the_plain_mlp(form: str) -> None:
    torch.manual_seed(0)
    config = _config(form, 1)
    mlp = MLP(MLPConfig(3, (6, 5), 2, "silu")).double()
    net = TabM(config).double()
    with torch.no_grad():
        for i, layer in enumerate(mlp.layers[:-1]):
            net.weights[i].copy_(layer.weight)
            net.biases[i].copy_(layer.bias if form == "tabm-mini" else layer.bias[None])
        for p in [*net.r, *net.s]:
            p.fill_(1.0)
        net.head_weight.copy_(mlp.layers[-1].weight.T[None])
        net.head_bias.copy_(mlp.layers[-1].bias[None])
    x = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(net(x)[0], mlp(x), rtol=1e-12, atol=1e-12)
    assert torch.allclose(net.predict_float64(x)[0], mlp.predict_float64(x), atol=1e-12)


@pytest.mark.parametrize("form", ["tabm", "tabm-mini"])
def test_layout_initialisation_and_summary(form: str) -> None:
    torch.manual_seed(0)
    config = _config(form, 4)
    net = TabM(config)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == state_shapes(config)
    assert sum(r["params"] for r in summary(config)) == count_parameters(net)
    assert set(net.r[0].unique().tolist()) == {-1.0, 1.0}  # random signs
    if form == "tabm":
        assert len(net.r) == len(net.s) == 2 and (net.r[1] == 1).all() and (net.s[0] == 1).all()
        assert (net.biases[0] == net.biases[0][0]).all()  # every member starts from one bias
    else:
        assert len(net.r) == 1 and len(net.s) == 0 and net.biases[0].dim() == 1
    assert MLPConfig.from_dict(config.to_dict()) == config
    torch.manual_seed(0)
    embedded = TabM(_config(form, 4, embedding="periodic", n_embedded=2, d_embedding=3))
    r0 = embedded.r[0]  # one normal draw per embedded feature, shared by its 3 columns
    assert (r0[:, :3] == r0[:, :1]).all() and (r0[:, 3:6] == r0[:, 3:4]).all()
    assert not (r0[:, 0] == r0[:, 3]).all()


def test_gradients_match_finite_differences() -> None:
    torch.manual_seed(0)
    net = TabM(_config("tabm", 3, embedding="periodic", n_embedded=2, d_embedding=2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    names = [n for n, _ in net.named_parameters()]

    def f(*params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in net.parameters()))


@pytest.mark.parametrize("weighted", [False, True])
def test_training_loss_is_the_mean_of_the_members_losses(weighted: bool) -> None:
    torch.manual_seed(0)
    net = TabM(_config("tabm", 5)).double()
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    w = torch.rand(9, dtype=torch.float64) if weighted else None
    reference = []
    for m in range(5):  # a plain loop: each member's own (weighted) mean squared error
        per_row = (net(x)[m] - y).square().mean(dim=1)
        reference.append(per_row.mean() if w is None else (per_row * w).sum() / w.sum())
    expected = torch.stack(reference).mean()
    expected.backward()
    grads = [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]
    net.zero_grad()
    backend = AutogradBackend(net, torch.optim.SGD(net.parameters(), lr=0.0), "squared_error")
    loss, _ = backend.step(x, y, w, None)
    assert torch.allclose(loss, expected.detach(), rtol=1e-12)
    for p, g in zip(net.parameters(), grads, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-10, atol=1e-12)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def friedman() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_friedman1

    return make_friedman1(n_samples=600, noise=1.0, random_state=0)


@pytest.mark.parametrize("form", ["tabm", "tabm-mini"])
def test_estimator_predicts_spreads_intervals_saves_and_exports(
    tmp_path: Path, friedman: tuple[np.ndarray, np.ndarray], form: str
) -> None:
    X, y = friedman
    reg = nnreg.Regressor(n_models=4, ensemble=form, max_iter=20, random_state=0)
    reg.fit(X[:500], y[:500])
    assert isinstance(reg.model_, TabM) and reg.model_.config.k == 4
    assert reg.validation_metrics_["rows"] == 50  # validation_fraction of the rows held out
    mean, std = reg.predict(X[500:], return_std=True)
    assert mean.shape == std.shape == (100,) and (std > 0).all()
    lower, upper = reg.predict_interval(X[500:])
    assert (lower < mean).all() and (mean < upper).all()
    assert reg.score(X[500:], y[500:]) > 0.5
    loaded = nnreg.load(reg.save(tmp_path / "m"))
    assert isinstance(loaded.model_, TabM)
    assert np.array_equal(loaded.predict(X[500:]), mean)
    assert np.array_equal(loaded.predict_interval(X[500:])[0], lower)
    ort = pytest.importorskip("onnxruntime")
    from nnreg.export import export_onnx, onnx_inputs

    path = export_onnx(reg, tmp_path / "m.onnx")
    out = ort.InferenceSession(str(path)).run(None, onnx_inputs(path, X[500:]))[0].ravel()
    assert np.allclose(out, mean, rtol=1e-5, atol=1e-5)
    props = {p.key: p.value for p in pytest.importorskip("onnx").load(path).metadata_props}
    assert props["n_models"] == "4"  # the members, though one network holds them


def test_settings_that_cannot_share_are_refused(friedman: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = friedman
    with pytest.raises(ConfigError, match="hidden layer"):
        nnreg.Regressor(n_models=2, ensemble="tabm", hidden_layer_sizes=()).fit(X, y)
    with pytest.raises(ConfigError, match="ensemble"):
        nnreg.Regressor(n_models=2, ensemble="batch").fit(X, y)
    with pytest.raises(ConfigError, match="tabm"):
        nnreg.Regressor(n_models=2, embedding="periodic").fit(X, y)
    with pytest.raises(ConfigError, match="warm_start"):
        nnreg.Regressor(n_models=2, ensemble="tabm", warm_start=True).fit(X, y)
    single = nnreg.Regressor(n_models=1, ensemble="tabm", max_iter=1, random_state=0).fit(X, y)
    assert isinstance(single.model_, MLP)  # one member is the plain network


def test_seeded_fits_repeat_with_dropout(friedman: tuple[np.ndarray, np.ndarray]) -> None:
    # Autograd's dropout draws from the fit's own stream, not torch's global generator.
    X, y = friedman
    params = {"n_models": 3, "ensemble": "tabm", "max_iter": 3, "dropout": 0.3}
    a = nnreg.Regressor(random_state=0, **params).fit(X, y).predict(X)
    torch.manual_seed(123)
    b = nnreg.Regressor(random_state=0, **params).fit(X, y).predict(X)
    c = nnreg.Regressor(random_state=1, **params).fit(X, y).predict(X)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_long_run_scores_its_calibration_rows_on_spaced_epochs(
    friedman: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without early stopping, 300 epochs score the held-out rows on 100 of them (every
    3rd, the last among them), as independent members' helpers do; the weights are bitwise
    those of a run that scores every epoch (scoring changes nothing). Early stopping, which
    needs every epoch, still scores every one."""
    X, y = friedman[0][:150], friedman[1][:150]
    params = {"n_models": 3, "ensemble": "tabm", "hidden_layer_sizes": (8,), "max_iter": 300}
    spaced = nnreg.Regressor(random_state=0, **params).fit(X, y)
    val = np.asarray(spaced.history_.val_loss)
    assert np.flatnonzero(np.isfinite(val)).tolist() == list(range(2, 300, 3))
    monkeypatch.setattr(schedule, "MAX_SCORED_EPOCHS", 1000)
    every = nnreg.Regressor(random_state=0, **params).fit(X, y)
    assert np.isfinite(every.history_.val_loss).all()
    np.testing.assert_array_equal(np.asarray(every.history_.val_loss)[2::3], val[2::3])
    for key, value in every.model_.state_dict().items():
        assert torch.equal(value, spaced.model_.state_dict()[key]), key
    monkeypatch.undo()
    stopping = nnreg.Regressor(random_state=0, **params, early_stopping=True, n_iter_no_change=5)
    assert np.isfinite(stopping.fit(X, y).history_.val_loss).all()


def test_threads_are_sized_by_the_members_batch(
    friedman: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared members' products are (k * batch, width): 32 members of width 64 on batches
    of 64 rows do 8.4M multiply-adds a layer, past one thread's share, where the batch
    alone (0.26M) was not; one network keeps its own rows and widest layer."""
    import nnreg.device

    seen: list[tuple[int, int]] = []
    policy = train.thread_policy

    def recorded(batch: int, widest: int, threads: int | None = None, *args: Any) -> Any:
        seen.append((batch, widest))
        return policy(batch, widest, threads, *args)

    monkeypatch.setattr(train, "thread_policy", recorded)
    X, y = friedman
    common = {"hidden_layer_sizes": (64, 64), "batch_size": 64, "max_iter": 1, "random_state": 0}
    nnreg.Regressor(n_models=32, ensemble="tabm", **common).fit(X, y)
    assert seen[-1] == (32 * 64, 64) and nnreg.device.ONE_THREAD_MAX_WORK < 32 * 64 * 64**2
    nnreg.Regressor(**common, embedding="none").fit(X, y)
    assert seen[-1] == (64, 64)
