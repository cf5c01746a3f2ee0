from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnreg.model import MLP, MLPConfig, count_parameters, summary


def test_seed_network_has_501_parameters() -> None:
    net = MLP(MLPConfig())
    assert count_parameters(net) == 501
    rows = summary(MLPConfig())
    assert [(r["in"], r["out"]) for r in rows] == [(2, 20), (20, 20), (20, 1)]
    assert sum(r["weights"] for r in rows) == 460
    assert sum(r["biases"] for r in rows) == 41
    assert sum(r["params"] for r in rows) == 501


@pytest.mark.parametrize("hidden", [(), (5,), (7, 3, 4)])
def test_summary_matches_the_module(hidden: tuple[int, ...]) -> None:
    config = MLPConfig(n_inputs=4, hidden_sizes=hidden, n_outputs=2)
    assert sum(r["params"] for r in summary(config)) == count_parameters(MLP(config))


def test_seed_network_structure_and_forward_shape() -> None:
    net = MLP(MLPConfig())
    assert [type(m) for m in net.layers] == [nn.Linear] * 3
    assert isinstance(net.act, nn.ReLU)
    assert net(torch.zeros(7, 2)).shape == (7, 1)


def test_initialisation_is_xavier_hidden_zero_bias_default_output() -> None:
    """Same RNG stream as building the layers by hand and initialising them the same way."""
    torch.manual_seed(42)
    net = MLP(MLPConfig())
    torch.manual_seed(42)
    l1, l2, l3 = nn.Linear(2, 20), nn.Linear(20, 20), nn.Linear(20, 1)
    for layer in (l1, l2):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    for mine, ref in zip(net.layers, (l1, l2, l3), strict=True):
        torch.testing.assert_close(mine.weight, ref.weight, rtol=0, atol=0)
        torch.testing.assert_close(mine.bias, ref.bias, rtol=0, atol=0)
    for layer in net.layers[:2]:
        assert torch.all(layer.bias == 0)
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        assert layer.weight.abs().max() <= bound
    # The output layer keeps PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), nonzero bias.
    out = net.layers[2]
    assert out.weight.abs().max() <= 1 / math.sqrt(20) and out.bias.abs().item() > 0


def test_xavier_uniform_variance_on_a_wide_layer() -> None:
    torch.manual_seed(0)
    net = MLP(MLPConfig(n_inputs=400, hidden_sizes=(600,), n_outputs=1))
    w = net.layers[0].weight
    expected = 2 / (400 + 600)  # Glorot: Var = 2 / (fan_in + fan_out)
    assert abs(w.var().item() - expected) / expected < 0.02


def test_default_init_option_keeps_pytorch_defaults() -> None:
    torch.manual_seed(3)
    net = MLP(MLPConfig(init="default"))
    torch.manual_seed(3)
    ref = nn.Linear(2, 20)
    torch.testing.assert_close(net.layers[0].weight, ref.weight, rtol=0, atol=0)


def test_config_round_trips_through_a_dict() -> None:
    config = MLPConfig(n_inputs=3, hidden_sizes=(8, 4), n_outputs=2, activation="tanh")
    assert MLPConfig.from_dict(config.to_dict()) == config
    assert MLPConfig(hidden_sizes=[3, 2]).hidden_sizes == (3, 2)  # type: ignore[arg-type]
