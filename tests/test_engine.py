"""The hand-derived kernels against autograd: gradients in float64, trajectories in float32."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nnreg.engine import DropoutSampler, FastMLP, FlatOptimizer, epoch_batches, supports
from nnreg.engine.kernels import LOSS_KERNELS, loss_and_gradient_
from nnreg.model import MLP, MLPConfig
from nnreg.train import ELEMENTWISE, TrainConfig, fit, loss_function, make_optimizer

ACTIVATIONS = ["relu", "tanh", "gelu", "silu"]
LOSSES = ["squared_error", "absolute_error", "huber"]


def autograd_grads(
    net: MLP, X: torch.Tensor, Y: torch.Tensor, loss: str, w: torch.Tensor | None
) -> tuple[float, list[torch.Tensor]]:
    net.zero_grad()
    value = loss_function(loss)(net(X), Y, w)
    value.backward()
    grads = [torch.cat([m.weight.grad, m.bias.grad[:, None]], dim=1) for m in net.layers]
    return value.item(), grads


@pytest.mark.parametrize(
    ("activation", "loss", "weighted", "hidden", "outputs"),
    [
        (a, lo, wt, h, o)
        for a, lo, wt, h, o in itertools.product(
            ACTIVATIONS, LOSSES, [False, True], [(), (7,), (6, 5)], [1, 3]
        )
        # every activation x loss x weighting; depths and widths spread over them
        if (len(h) + o + ACTIVATIONS.index(a)) % 2 == 0 or h == (6, 5)
    ],
)
def test_gradients_match_autograd_in_float64(
    activation: str, loss: str, weighted: bool, hidden: tuple[int, ...], outputs: int
) -> None:
    torch.manual_seed(0)
    net = MLP(
        MLPConfig(n_inputs=4, hidden_sizes=hidden, n_outputs=outputs, activation=activation)
    ).double()
    X = torch.randn(33, 4, dtype=torch.float64)
    Y = torch.randn(33, outputs, dtype=torch.float64) * 2
    w = torch.rand(33, dtype=torch.float64) if weighted else None
    expected_loss, expected = autograd_grads(net, X, Y, loss, w)

    fast = FastMLP(net, activation, loss)
    X1 = torch.cat([X, torch.ones(33, 1, dtype=torch.float64)], dim=1)
    batch = fast.prepare(X1, Y, w)
    got_loss = fast.loss_and_grad(batch).item() * batch.factor
    assert got_loss == pytest.approx(expected_loss, rel=1e-12)
    for got, want in zip(fast.G, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("shape", [(3, 17), (4, 3, 17)])  # one model; 4 batched members
def test_loss_kernels_match_autograd_with_or_without_a_member_dimension(
    loss: str, shape: tuple[int, ...]
) -> None:
    """The loss kernels both engines share: the weighted sum over (outputs, batch) and its
    gradient, on residuals with and without a leading member dimension."""
    torch.manual_seed(0)
    D = torch.randn(shape, dtype=torch.float64) * 2  # (..., outputs, batch) residuals
    w = torch.rand(*shape[:-2], 1, shape[-1], dtype=torch.float64)  # per-row weights
    kernel = LOSS_KERNELS[loss]
    leaf = D.clone().requires_grad_(True)
    expected = (ELEMENTWISE[loss](leaf, torch.zeros_like(leaf)) * w).sum(dim=(-2, -1))
    expected.sum().backward()

    grad = D.clone()
    got = loss_and_gradient_(kernel, grad, w, w * kernel.slope)  # grad <- dLoss/dD
    assert got.shape == shape[:-2]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-12, atol=0.0)


def test_gradient_matches_finite_differences() -> None:
    """A second, independent reference: central differences on a few parameters."""
    torch.manual_seed(1)
    net = MLP(MLPConfig(n_inputs=3, hidden_sizes=(5, 4), activation="tanh")).double()
    X, Y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 1, dtype=torch.float64)
    X1 = torch.cat([X, torch.ones(20, 1, dtype=torch.float64)], dim=1)
    fast = FastMLP(net, "tanh", "squared_error")
    batch = fast.prepare(X1, Y, None)
    fast.loss_and_grad(batch)
    analytic = fast.grads.clone()
    eps = 1e-6
    for k in range(0, fast.params.numel(), 7):
        saved = fast.params[k].item()
        values = []
        for delta in (eps, -eps):
            fast.params[k] = saved + delta
            values.append(fast.loss_and_grad(batch).item() * batch.factor)
        fast.params[k] = saved
        numeric = (values[0] - values[1]) / (2 * eps)
        assert numeric == pytest.approx(analytic[k].item(), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "sgd"},
        {"optimizer": "sgd", "momentum": 0.9},
        {"optimizer": "sgd", "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
        {"optimizer": "adam"},
        {"optimizer": "adam", "weight_decay": 0.05},
        {"optimizer": "adamw", "weight_decay": 0.05},
        {"optimizer": "adam", "betas": (0.8, 0.95), "eps": 1e-6},
    ],
)
def test_flat_optimizer_matches_torch_optim(options: dict) -> None:
    torch.manual_seed(2)
    config = TrainConfig(lr=0.01, **options)
    ref = [
        torch.randn(5, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(4, dtype=torch.float64, requires_grad=True),
    ]
    flat = torch.cat([p.detach().reshape(-1) for p in ref]).clone()
    grads = torch.zeros_like(flat)
    opt = make_optimizer(iter(ref), config)
    mine = FlatOptimizer(
        flat,
        grads,
        config.optimizer,
        config.lr,
        config.momentum,
        config.nesterov,
        config.weight_decay,
        config.betas,
        config.eps,
    )
    for _ in range(6):
        g = torch.randn(19, dtype=torch.float64)
        ref[0].grad, ref[1].grad = g[:15].view(5, 3).clone(), g[15:].clone()
        opt.step()
        grads.copy_(g)
        mine.step()
        torch.testing.assert_close(flat, torch.cat([p.detach().reshape(-1) for p in ref]))


@pytest.mark.parametrize(
    ("activation", "loss", "optimizer", "batch_size", "weighted"),
    [
        ("relu", "squared_error", "sgd", None, False),
        ("relu", "squared_error", "adam", 16, False),
        ("gelu", "huber", "adamw", 25, True),
        ("tanh", "absolute_error", "sgd", 40, False),
        ("silu", "squared_error", "adam", 32, True),
    ],
)
def test_fast_path_follows_the_autograd_trajectory(
    activation: str, loss: str, optimizer: str, batch_size: int | None, weighted: bool
) -> None:
    """Same seed, same minibatches: float32 losses and weights agree to float32 tolerance."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(100, 3, generator=g)
    Y = torch.sin(X[:, :1]) + X[:, 1:2] ** 2 + 0.1 * torch.randn(100, 1, generator=g)
    w = torch.rand(100, generator=g) + 0.5 if weighted else None
    results = []
    for engine in ("autograd", "fast"):
        torch.manual_seed(4)
        net = MLP(MLPConfig(n_inputs=3, hidden_sizes=(16, 16), activation=activation))
        config = TrainConfig(
            epochs=30,
            lr=0.01,
            optimizer=optimizer,
            momentum=0.0,
            batch_size=batch_size,
            loss=loss,
            engine=engine,
        )
        history = fit(
            net, X, Y, config, sample_weight=w, generator=torch.Generator().manual_seed(5)
        )
        results.append((history.train_loss, net))
    (ref_loss, ref_net), (fast_loss, fast_net) = results
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=2e-4)
    for a, b in zip(fast_net.parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)


def test_supports_and_batches() -> None:
    net = MLP(MLPConfig())
    assert supports(net, "relu", "squared_error", "sgd")
    assert not supports(net, "relu", "quantile", "sgd")
    assert not supports(torch.nn.Sequential(torch.nn.Linear(2, 1)), "relu", "squared_error", "sgd")
    assert epoch_batches(10, None) == [(0, 10)]
    assert epoch_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert epoch_batches(10, 64) == [(0, 10)]


def test_fast_path_leaves_the_thread_count_as_it_found_it() -> None:
    before = torch.get_num_threads()
    fit(MLP(MLPConfig()), torch.randn(10, 2), torch.randn(10, 1), TrainConfig(epochs=2))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dropout_gradients_match_autograd_with_the_same_mask(activation: str) -> None:
    torch.manual_seed(6)
    net = MLP(MLPConfig(n_inputs=3, hidden_sizes=(8, 6), activation=activation, dropout=0.3))
    net = net.double()
    X, Y = torch.randn(17, 3, dtype=torch.float64), torch.randn(17, 1, dtype=torch.float64)
    fast = FastMLP(net, activation, "squared_error", 0.3, torch.Generator().manual_seed(0))
    X1 = torch.cat([X, torch.ones(17, 1, dtype=torch.float64)], dim=1)
    batch = fast.prepare(X1, Y, None)
    loss = fast.loss_and_grad(batch).item() * batch.factor
    masks = [m.t().clone() for m in batch.buf.mask]  # (batch, width), values 0 or ~1/0.7
    factor = fast.sampler.factor
    assert factor == pytest.approx(1 / 0.7, rel=1e-5)
    assert all(set(torch.unique(m).tolist()) <= {0.0, factor} for m in masks)

    act = {
        "relu": torch.relu,
        "tanh": torch.tanh,
        "gelu": torch.nn.functional.gelu,
        "silu": torch.nn.functional.silu,
    }[activation]
    net.zero_grad()
    h = X
    for layer, mask in zip(net.layers[:-1], masks, strict=True):
        h = act(layer(h)) * mask
    ref = torch.nn.functional.mse_loss(net.layers[-1](h), Y)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for got, layer in zip(fast.G, net.layers, strict=True):
        want = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # Evaluation never drops units.
    eval_batch = fast.prepare(X1, Y, None, train=False)
    expected = torch.nn.functional.mse_loss(net.eval()(X), Y).item()
    assert fast.evaluate(eval_batch).item() * eval_batch.factor == pytest.approx(expected)


@pytest.mark.parametrize("p", [0.05, 0.15, 0.5, 0.9])
def test_dropout_masks_drop_each_unit_with_probability_p_and_keep_the_mean(p: float) -> None:
    sampler = DropoutSampler(p, torch.Generator().manual_seed(1))
    mask = torch.empty(64, 1001, dtype=torch.float64)  # an odd size: a partial last draw
    draws = torch.stack([sampler.fill_(mask).clone() for _ in range(30)])  # (30, 64, 1001)
    dropped = (draws == 0).double().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / draws.numel()) ** 0.5 + 1e-5
    assert set(torch.unique(draws).tolist()) == {0.0, sampler.factor}
    assert abs(draws.mean().item() - 1.0) < 4 * (p / (1 - p) / draws.numel()) ** 0.5
    # Units are independent: neighbours (four share a 64-bit draw) are uncorrelated.
    flat = (draws.reshape(-1) > 0).double()
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()
    assert abs(corr) < 4 / draws.numel() ** 0.5
    # The same seed gives the same masks; the generator advances between calls.
    again = DropoutSampler(p, torch.Generator().manual_seed(1))
    assert torch.equal(again.fill_(mask.clone()), draws[0])
    assert not torch.equal(draws[0], draws[1])
