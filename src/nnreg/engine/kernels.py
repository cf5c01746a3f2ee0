"""Kernels both fast engines share: coverage, activations and their derivatives, dropout masks,
minibatch bounds.

Every kernel writes into a buffer it is given (``out=``, in place), so a training step
allocates nothing; the activations work on any shape, with or without a leading member
dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

FAST_ACTIVATIONS = ("relu", "tanh", "gelu", "silu")
FAST_LOSSES = ("squared_error", "absolute_error", "huber")
FAST_OPTIMIZERS = ("sgd", "adam", "adamw")


def supports(model: nn.Module, activation: str, loss: str, optimizer: str) -> bool:
    """True when :class:`FastMLP` computes exactly what autograd would for this recipe."""
    layers = getattr(model, "layers", None)
    return (
        isinstance(layers, nn.ModuleList)
        and all(type(m) is nn.Linear and m.bias is not None for m in layers)
        and activation in FAST_ACTIVATIONS
        and loss in FAST_LOSSES
        and optimizer in FAST_OPTIMIZERS
    )


class DropoutSampler:
    """Inverted-dropout masks (0, or 1/keep) drawn 16 random bits per unit.

    ``bernoulli_`` makes one generator call per unit and dominated a dropout network's step
    on the CPU; here each 64-bit draw decides four units. The keep probability is therefore
    ``round((1 - p) * 2**16) / 2**16`` (within 8e-6 of ``1 - p``) and kept units are scaled
    by its inverse, so every unit's expected factor is exactly 1.
    """

    def __init__(self, p: float, generator: torch.Generator | None) -> None:
        keep = min(2**16 - 1, max(1, round((1.0 - p) * 2**16)))  # units kept, of 2**16
        self.threshold = keep - 2**15  # an int16 draw below it keeps the unit
        self.factor = 2**16 / keep
        self.generator = generator
        self._scratch: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    def fill_(self, mask: torch.Tensor) -> torch.Tensor:
        """Overwrite the contiguous ``mask`` with fresh factors; returns it."""
        n = mask.numel()
        key = (n, mask.dtype, mask.device)
        if key not in self._scratch:
            bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=mask.device)
            flags = torch.empty(n, dtype=torch.bool, device=mask.device)
            factor = torch.tensor(self.factor, dtype=mask.dtype, device=mask.device)
            self._scratch[key] = (bits, flags, factor)
        bits, flags, factor = self._scratch[key]
        bits.random_(-(2**63), None, generator=self.generator)  # every 64-bit value
        torch.lt(bits.view(torch.int16)[:n], self.threshold, out=flags)
        return torch.mul(flags.view(mask.shape), factor, out=mask)


def _relu(z: torch.Tensor, a: torch.Tensor) -> None:
    if z is a:  # the product was written straight into the activation rows
        torch.relu_(a)
    else:
        torch.clamp(z, min=0.0, out=a)


def _relu_backward(g: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> None:
    torch.ops.aten.threshold_backward.grad_input(g, a, 0.0, grad_input=g)


def _tanh(z: torch.Tensor, a: torch.Tensor) -> None:
    if z is a:
        torch.tanh_(a)
    else:
        torch.tanh(z, out=a)


def _tanh_backward(g: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> None:
    torch.ops.aten.tanh_backward.grad_input(g, a, grad_input=g)


def _gelu(z: torch.Tensor, a: torch.Tensor) -> None:
    if a.is_contiguous():
        torch.ops.aten.gelu.out(z, out=a)
    else:  # gelu.out writes a strided output as if it were contiguous (torch 2.13)
        a.copy_(torch.nn.functional.gelu(z))


def _gelu_backward(g: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> None:
    torch.ops.aten.gelu_backward.grad_input(g, z, approximate="none", grad_input=g)


def _silu(z: torch.Tensor, a: torch.Tensor) -> None:
    torch.ops.aten.silu.out(z, out=a)


def _silu_backward(g: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> None:
    torch.ops.aten.silu_backward.grad_input(g, z, grad_input=g)


Act = Callable[[torch.Tensor, torch.Tensor], None]
ActBackward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
_ACTIVATIONS: dict[str, tuple[Act, ActBackward]] = {
    "relu": (_relu, _relu_backward),
    "tanh": (_tanh, _tanh_backward),
    "gelu": (_gelu, _gelu_backward),
    "silu": (_silu, _silu_backward),
}


def epoch_batches(n: int, batch: int | None) -> list[tuple[int, int]]:
    """(start, stop) of each minibatch of an epoch; one full batch when ``batch`` is None."""
    if batch is None or batch >= n:
        return [(0, n)]
    return [(s, min(s + batch, n)) for s in range(0, n, batch)]
