"""The fast engine's shared-weight members (:class:`nnreg.engine.FastTabM`) against autograd:
gradients in float64 for every form, loss, activation, weighting, dropout and embedding; whole
seeded trajectories; and the engine an estimator fit picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnreg.backends import AutogradBackend, loss_function
from nnreg.embeddings import quantile_bins
from nnreg.engine import FastMLP, FastTabM, supports
from nnreg.model import MLP, MLPConfig, SeededDropout
from nnreg.tabm import TabM
from nnreg.train import TrainConfig, fit, make_backend


def _net(form: str, k: int, embedded: int = 0, outputs: int = 2, **kw: object) -> TabM:
    config = MLPConfig(
        n_inputs=4,
        hidden_sizes=(6, 5, 7),
        n_outputs=outputs,
        ensemble=form,
        k=k,
        embedding="piecewise" if embedded else "none",
        n_embedded=embedded,
        d_embedding=3,
        n_bins=5,
        **kw,  # type: ignore[arg-type]
    )
    net = TabM(config).double()
    with torch.no_grad():  # move every adapter and bias off its initial value
        for name, p in net.named_parameters():
            if not name.startswith("weights"):
                p.add_(0.3 * torch.randn_like(p))
    if embedded:
        x = np.random.default_rng(0).normal(size=(200, embedded))
        net.embedding.set_bins(quantile_bins(x, 5))  # type: ignore[union-attr]
    return net


def _assert_same_trajectory(results: list[tuple[list[float], torch.nn.Module]]) -> None:
    """Autograd's run, then the fast engine's: float32 losses and weights agree."""
    (ref_loss, ref_net), (fast_loss, fast_net) = results
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=2e-4)
    for a, b in zip(fast_net.parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)


CASES = [
    ("tabm", "relu", "squared_error", False, 0),
    ("tabm", "silu", "huber", True, 0),
    ("tabm-mini", "gelu", "absolute_error", False, 0),
    ("tabm-mini", "tanh", "squared_error", True, 0),
    ("tabm", "silu", "squared_error", False, 3),
    ("tabm-mini", "relu", "huber", True, 2),
]


@pytest.mark.parametrize(("form", "activation", "loss", "weighted", "embedded"), CASES)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("outputs", [1, 2])  # one output: the head as elementwise products
def test_gradients_match_autograd_in_float64(
    form: str,
    activation: str,
    loss: str,
    weighted: bool,
    embedded: int,
    dropout: float,
    outputs: int,
) -> None:
    torch.manual_seed(0)
    net = _net(form, 3, embedded, outputs, activation=activation, dropout=dropout)
    x = torch.randn(11, 4, dtype=torch.float64)
    y = torch.randn(11, outputs, dtype=torch.float64)
    w = torch.rand(11, dtype=torch.float64) + 0.2 if weighted else None
    # Autograd with the masks drawn from one stream; the fast engine from a copy of it.
    for module in net.modules():
        if isinstance(module, SeededDropout):
            module.generator = torch.Generator().manual_seed(7)
    backend = AutogradBackend(net, torch.optim.SGD(net.parameters(), lr=0.0), loss)
    fast = FastTabM(net, activation, loss, dropout, torch.Generator().manual_seed(7))
    expected, _ = backend.step(x, y, w, None)
    batch = fast.prepare(fast.inputs(x), y, w)
    got = fast.loss_and_grad(batch) * batch.factor
    assert torch.allclose(got, expected, rtol=1e-12)
    for name, p in net.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(fast.grad[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("weighted", [False, True])
def test_validation_scores_the_members_mean(weighted: bool) -> None:
    torch.manual_seed(1)
    net = _net("tabm", 4, 2, outputs=1, dropout=0.5)
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, 1, dtype=torch.float64)
    w = torch.rand(9, dtype=torch.float64) if weighted else None
    net.eval()
    expected = loss_function("squared_error")(net(x).mean(0), y, w)
    fast = FastTabM(net, "relu", "squared_error", 0.5, torch.Generator())
    batch = fast.prepare(x, y, w, train=False)
    assert torch.allclose(fast.evaluate(batch) * batch.factor, expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("form", "embedded", "optimizer", "batch_size", "dropout"),
    [
        ("tabm", 0, "sgd", None, 0.0),
        ("tabm", 2, "adamw", 16, 0.2),
        ("tabm-mini", 0, "adam", 25, 0.1),
    ],
)
def test_fast_trajectory_follows_autograd(
    form: str, embedded: int, optimizer: str, batch_size: int | None, dropout: float
) -> None:
    """Same seed, minibatches and dropout masks: float32 losses and weights agree."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(100, 4, generator=g)
    Y = torch.sin(X[:, :2]) + X[:, 1:3] ** 2 + 0.1 * torch.randn(100, 2, generator=g)
    results = []
    for engine in ("autograd", "fast"):
        torch.manual_seed(4)
        net = _net(form, 4, embedded, dropout=dropout).float()
        config = TrainConfig(
            epochs=20, lr=0.01, optimizer=optimizer, batch_size=batch_size, engine=engine
        )
        history = fit(net, X, Y, config, generator=torch.Generator().manual_seed(5))
        results.append((history.train_loss, net))
    _assert_same_trajectory(results)


def test_coverage_and_the_engine_a_fit_picks() -> None:
    assert supports(_net("tabm", 2, 2), "silu", "squared_error", "adamw")
    periodic = TabM(
        MLPConfig(
            n_inputs=3,
            hidden_sizes=(4,),
            ensemble="tabm",
            k=2,
            embedding="periodic",
            n_embedded=2,
            d_embedding=2,
        )
    )
    assert not supports(periodic, "silu", "squared_error", "adamw")
    assert not supports(_net("tabm", 2), "silu", "quantile", "adamw")
    backend = make_backend(_net("tabm-mini", 2), TrainConfig(optimizer="adamw"), None)
    assert backend.fast and isinstance(backend.net, FastTabM)  # type: ignore[attr-defined]
    assert not make_backend(periodic, TrainConfig(optimizer="adamw"), None).fast


@pytest.mark.parametrize(
    ("activation", "loss", "weighted"), [("relu", "squared_error", False), ("silu", "huber", True)]
)
def test_one_network_with_piecewise_embeddings_matches_autograd(
    activation: str, loss: str, weighted: bool
) -> None:
    # One network's dropout masks are drawn transposed (test_engine checks them apart).
    dropout = 0.0
    torch.manual_seed(0)
    config = MLPConfig(
        n_inputs=4,
        hidden_sizes=(6, 5),
        n_outputs=2,
        activation=activation,
        dropout=dropout,
        embedding="piecewise",
        n_embedded=3,
        d_embedding=2,
        n_bins=4,
    )
    net = MLP(config).double()
    net.embedding.set_bins(quantile_bins(np.random.default_rng(1).normal(size=(100, 3)), 4))  # type: ignore[union-attr]
    with torch.no_grad():
        net.embedding.weight.normal_()  # type: ignore[union-attr]
    x = torch.randn(13, 4, dtype=torch.float64)
    y = torch.randn(13, 2, dtype=torch.float64)
    w = torch.rand(13, dtype=torch.float64) + 0.2 if weighted else None
    net.drop.generator = torch.Generator().manual_seed(7)
    backend = AutogradBackend(net, torch.optim.SGD(net.parameters(), lr=0.0), loss)
    fast = FastMLP(net, activation, loss, dropout, torch.Generator().manual_seed(7))
    expected, _ = backend.step(x, y, w, None)
    batch = fast.prepare(fast.inputs(x), y, w)
    assert torch.allclose(fast.loss_and_grad(batch) * batch.factor, expected, rtol=1e-12)
    copy = MLP(config).double()
    fast.grads, fast.params = fast.params, fast.grads  # write the gradients out as weights
    fast.W, fast.G = fast.G, fast.W
    fast.embedding.p, fast.embedding.g = fast.embedding.g, fast.embedding.p  # type: ignore[union-attr]
    fast.copy_to(copy)
    for (name, p), q in zip(net.named_parameters(), copy.parameters(), strict=True):
        assert p.grad is not None
        torch.testing.assert_close(q, p.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert supports(net, activation, loss, "adamw")


def test_one_embedded_network_follows_the_autograd_trajectory() -> None:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(120, 3, generator=g)
    Y = torch.sin(2 * X[:, :1]) + X[:, 1:2].abs() + 0.1 * torch.randn(120, 1, generator=g)
    bins = quantile_bins(X[:, :2].double().numpy(), 6)
    results = []
    for engine in ("autograd", "fast"):
        torch.manual_seed(4)
        config = MLPConfig(
            n_inputs=3,
            hidden_sizes=(8, 8),
            activation="silu",
            embedding="piecewise",
            n_embedded=2,
            d_embedding=4,
            n_bins=6,
        )
        net = MLP(config)
        net.embedding.set_bins(bins)  # type: ignore[union-attr]
        config_t = TrainConfig(epochs=15, lr=0.01, optimizer="adamw", batch_size=32, engine=engine)
        history = fit(net, X, Y, config_t, generator=torch.Generator().manual_seed(5))
        results.append((history.train_loss, net))
    _assert_same_trajectory(results)
