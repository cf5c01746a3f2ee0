"""What both fast engines share: coverage, packed layers, step buffers, activations, losses,
dropout masks, minibatch bounds.

Every tensor here is shape-generic over an optional leading member dimension: one model's
activations are ``(width, batch)``, K batched members' ``(K, width, batch)``; one model's
parameters are a flat ``(P,)`` buffer, K members' a ``(K, P)`` one. The kernels write into
buffers they are given (``out=``, in place), so a training step allocates (almost) nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn

FAST_ACTIVATIONS = ("relu", "tanh", "gelu", "silu")
FAST_LOSSES = ("squared_error", "absolute_error", "huber")
FAST_OPTIMIZERS = ("sgd", "adam", "adamw")


def supports(model: nn.Module, activation: str, loss: str, optimizer: str) -> bool:
    """True when :class:`FastMLP` (or, for shared members, :class:`FastTabM`) computes exactly
    what autograd would for this recipe: no embedding, or a piecewise-linear one."""
    layers = getattr(model, "layers", None)
    plain = (
        _covered_embedding(model)
        and isinstance(layers, nn.ModuleList)
        and all(type(m) is nn.Linear and m.bias is not None for m in layers)
    )
    return (
        (plain or shared_members(model))
        and activation in FAST_ACTIVATIONS
        and loss in FAST_LOSSES
        and optimizer in FAST_OPTIMIZERS
    )


def shared_members(model: nn.Module) -> bool:
    """True for shared-weight members (:class:`nnreg.tabm.TabM`) that :class:`FastTabM`
    covers: no embedding, or a piecewise-linear one."""
    config = getattr(model, "config", None)
    return getattr(config, "ensemble", "none") in ("tabm", "tabm-mini") and _covered_embedding(
        model
    )


def _covered_embedding(model: nn.Module) -> bool:
    """No numeric embedding, or a piecewise-linear one (:mod:`.embedded`)."""
    embedding = getattr(model, "embedding", None)
    return embedding is None or type(embedding).__name__ == "PiecewiseLinearEmbedding"


class DropoutSampler:
    """Inverted-dropout masks (0, or 1/keep) drawn 16 random bits per unit.

    ``bernoulli_`` makes one generator call per unit and dominated a dropout network's step
    on the CPU; here each 64-bit draw decides four units. The keep probability is therefore
    ``round((1 - p) * 2**16) / 2**16`` (within 8e-6 of ``1 - p``) and kept units are scaled
    by its inverse, so every unit's expected factor is exactly 1.

    ``share`` = (first, total) says that a batched mask of K members is members ``first`` to
    ``first + K`` of ``total``: the draws of all ``total`` are made and this share's kept, so
    that those members get the masks they would get batched with all the others (a sweep's
    configurations split across processes train as in one).
    """

    def __init__(
        self, p: float, generator: torch.Generator | None, share: tuple[int, int] | None = None
    ) -> None:
        keep = min(2**16 - 1, max(1, round((1.0 - p) * 2**16)))  # units kept, of 2**16
        self.threshold = keep - 2**15  # an int16 draw below it keeps the unit
        self.factor = 2**16 / keep
        self.generator = generator
        self.share = share
        self._scratch: dict[tuple[int, torch.device], torch.Tensor] = {}

    def fill_(self, mask: torch.Tensor) -> torch.Tensor:
        """Overwrite the contiguous ``mask`` ((members, ...) with a ``share``) with fresh
        factors; returns it."""
        n = mask.numel()
        first, drawn = 0, n
        if self.share is not None:
            per_member = n // mask.shape[0]
            first, drawn = self.share[0] * per_member, self.share[1] * per_member
        key = (n, mask.device)
        if key not in self._scratch:
            self._scratch[key] = torch.empty(
                (drawn + 3) // 4, dtype=torch.int64, device=mask.device
            )
        bits = self._scratch[key]
        bits.random_(-(2**63), None, generator=self.generator)  # every 64-bit value
        # The comparison writes 1.0 or 0.0 straight into the mask (no boolean tensor, no
        # type-promoting product: a third of the time of lt -> bool -> mul), then one scaling.
        torch.lt(bits.view(torch.int16)[first : first + n], self.threshold, out=mask.view(-1))
        return mask.mul_(self.factor)


class CounterDropout(DropoutSampler):
    """Inverted-dropout masks that are a function of a key and each unit's index: one 64-bit
    key is drawn from the generator per mask, and unit ``u`` of the mask has the 16 bits
    ``16 (u % 4)`` to ``16 (u % 4) + 15`` of SplitMix64's output for the counter ``u // 4``
    (``csrc/shared.cpp`` spells it out), kept below the same threshold as
    :class:`DropoutSampler`'s.

    A compiled pass (:mod:`.native`) makes such a mask where it applies it, in the forward
    and again in the backward pass, so shared-weight members (:class:`~nnreg.engine.FastTabM`)
    neither draw their units one by one from the generator (a third of a dropout step's time)
    nor store, write and read a mask. :meth:`fill_` makes the same mask with PyTorch
    operations: for the autograd engine, and where nothing is compiled."""

    def __init__(self, p: float, generator: torch.Generator | None) -> None:
        super().__init__(p, generator)
        self._counters: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def key(self) -> int:
        """A fresh mask's key, as an unsigned 64-bit number."""
        return int(self._draw().item()) % 2**64

    def keys(self, n: int) -> list[int]:
        """The keys that ``n`` calls of :meth:`key` give: on the CPU's generator, drawn in
        one call (its draws are made one after another)."""
        if self.generator is not None and self.generator.device.type != "cpu":
            return [self.key() for _ in range(n)]
        return [value % 2**64 for value in self._draw(n).tolist()]

    def _draw(self, n: int = 1) -> torch.Tensor:
        """``n`` fresh keys as an int64 tensor on the generator's device."""
        device = None if self.generator is None else self.generator.device
        drawn = torch.empty(n, dtype=torch.int64, device=device)
        return drawn.random_(-(2**63), None, generator=self.generator)

    def fill_(self, mask: torch.Tensor, key: int | None = None, first: int = 0) -> torch.Tensor:
        """Overwrite the contiguous ``mask`` with the factors of ``key`` (a fresh one, left
        on the generator's device, when None), its units numbered from ``first``; returns
        it."""
        offset = self._draw().to(mask.device) if key is None else _signed(key)
        n = mask.numel()
        low, high = first // 4, (first + n - 1) // 4
        counters = self._counters.get((low, high, mask.device))
        if counters is None:  # (w + 1) * golden ratio, kept per size: the step's masks reuse it
            counters = torch.arange(low + 1, high + 2, dtype=torch.int64, device=mask.device)
            counters = self._counters[(low, high, mask.device)] = counters.mul_(_signed(_GOLDEN))
        z = counters + offset  # int64 arithmetic wraps around as uint64's does
        shifted = torch.empty_like(z)
        for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, 0)):
            # z ^= z >> shift, a logical shift (PyTorch's >> keeps the sign); z *= factor
            torch.bitwise_right_shift(z, shift, out=shifted)
            z.bitwise_xor_(shifted.bitwise_and_((1 << (64 - shift)) - 1))
            if factor:
                z.mul_(_signed(factor))
        start = first - 4 * low
        bits = z.view(torch.int16)[start : start + n]  # little-endian: unit u % 4 = 0 is low
        torch.lt(bits, self.threshold, out=mask.view(-1))
        return mask.mul_(self.factor)


_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment


def _signed(value: int) -> int:
    """An unsigned 64-bit number as the int64 with the same bits."""
    return value - 2**64 if value >= 2**63 else value


def layer_shapes(widths: list[int]) -> list[tuple[int, int]]:
    """``(out, in + 1)`` of each layer's packed ``[weight | bias]`` matrix."""
    return [(b, a + 1) for a, b in pairwise(widths)]


def layer_views(flat: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Views of a ``(..., P)`` buffer as each layer's ``(..., out, in + 1)`` matrix."""
    lead, views, start = flat.shape[:-1], [], 0
    for r, c in shapes:
        views.append(flat[..., start : start + r * c].view(*lead, r, c))
        start += r * c
    return views


def named_views(
    flat: torch.Tensor, named: Iterable[tuple[str, torch.Tensor]], start: int = 0
) -> dict[str, torch.Tensor]:
    """Views of the flat ``(P,)`` buffer shaped as the named tensors, laid out one after
    another from ``start``."""
    views = {}
    for name, p in named:
        views[name] = flat[start : start + p.numel()].view(p.shape)
        start += p.numel()
    return views


def loss_scales(
    slope: float,
    like: torch.Tensor,
    Y: torch.Tensor,
    w: torch.Tensor | None,
    total: torch.Tensor | None = None,
    members: int = 1,
) -> tuple[torch.Tensor | None, float, torch.Tensor]:
    """How a batch with targets ``Y`` (rows, outputs) scores: (row weights, factor, gradient
    scale). The loss is the mean over ``members`` copies of the batch, rows and outputs;
    row weights ``w`` are normalised by their sum, or by ``total`` (a distributed step's
    share of the global batch's sum). Without weights the loss kernels return a sum that
    ``factor`` turns into that mean; with them, the weighted mean itself (factor 1)."""
    rows, n_out = Y.shape
    if w is None:
        factor = 1.0 / (members * rows * n_out)
        return None, factor, like.new_full((), slope * factor)
    weights = w / ((w.sum() if total is None else total.reshape(())) * (members * n_out))
    return weights, 1.0, weights * slope


def load_layers(W: list[torch.Tensor], layers: Iterable[nn.Linear]) -> None:
    """Copy ``nn.Linear`` weights and biases into one model's packed ``(out, in + 1)`` views."""
    with torch.no_grad():
        for w, layer in zip(W, layers, strict=True):
            w[:, :-1].copy_(layer.weight)
            w[:, -1].copy_(layer.bias)


def store_layers(W: list[torch.Tensor], layers: Iterable[nn.Linear]) -> None:
    """Write one model's packed ``(out, in + 1)`` views back into its ``nn.Linear`` layers."""
    with torch.no_grad():
        for w, layer in zip(W, layers, strict=True):
            layer.weight.copy_(w[:, :-1])
            layer.bias.copy_(w[:, -1])


class Buffers:
    """Preallocated activations and their gradients for one batch size (and member count).

    Per hidden layer: ``Z`` the pre-activation, ``H`` the activation, ``act`` what the next
    layer reads (``H`` after dropout), stored as the first rows of ``A`` whose last row is
    ones. Buffers are shared where no information is lost: without dropout ``H`` is ``act``,
    and for ReLU and tanh (whose derivatives need only the output) ``Z`` is ``H`` too.
    ``members`` adds the leading member dimension.
    """

    def __init__(
        self,
        widths: list[int],
        batch: int,
        keep_z: bool,
        dropout: bool,
        like: torch.Tensor,
        members: int | None = None,
    ) -> None:
        hidden = widths[1:-1]
        lead = () if members is None else (members,)

        def new(rows: int) -> torch.Tensor:
            return like.new_empty(*lead, rows, batch)

        # A[l]: (..., width_l + 1, batch), last row ones; act[l] is its first width_l rows.
        self.A = [new(h + 1) for h in hidden]
        for a in self.A:
            a[..., -1, :].fill_(1.0)
        self.act = [a[..., :-1, :] for a in self.A]
        self.AT = [a.transpose(-2, -1) for a in self.A]  # (..., batch, width_l + 1)
        self.H = [new(h) for h in hidden] if dropout else self.act
        self.mask = [new(h) for h in hidden] if dropout else []
        self.Z = [new(h) for h in hidden] if keep_z else self.H
        self.dZ = [new(h) for h in hidden]
        self.out = new(widths[-1])  # (..., outputs, batch)
        self.D = new(widths[-1])  # residual, then dLoss/dout
        self.D_flat = self.D.view(-1)
        self.G = new(widths[-1])  # scratch of the same shape


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
ACTIVATION_KERNELS: dict[str, tuple[Act, ActBackward]] = {
    "relu": (_relu, _relu_backward),
    "tanh": (_tanh, _tanh_backward),
    "gelu": (_gelu, _gelu_backward),
    "silu": (_silu, _silu_backward),
}


class LossKernel(NamedTuple):
    """One loss as elementwise kernels of the residual ``D = prediction - target``.

    ``value(D)`` is the elementwise loss (a new tensor); ``gradient(D, scale, out)`` writes
    ``scale`` times the derivative's shape (``D``, ``sign(D)``, ``clamp(D, -1, 1)``) into
    ``out`` (which may be ``D``) and returns it. ``slope`` is the derivative's constant
    factor, which callers fold into ``scale``: 2 for squared error (d(r**2)/dr = 2r), else 1.
    """

    slope: float
    value: Callable[[torch.Tensor], torch.Tensor]
    gradient: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _squared_gradient(D: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.mul(D, scale, out=out)


def _absolute_gradient(D: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.sign(D, out=out).mul_(scale)


def _huber_value(D: torch.Tensor) -> torch.Tensor:
    r = D.abs()
    return torch.where(r < 1.0, 0.5 * D.square(), r - 0.5)  # delta = 1


def _huber_gradient(D: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.clamp(D, -1.0, 1.0, out=out).mul_(scale)


LOSS_KERNELS: dict[str, LossKernel] = {
    "squared_error": LossKernel(2.0, torch.square, _squared_gradient),
    "absolute_error": LossKernel(1.0, torch.abs, _absolute_gradient),
    "huber": LossKernel(1.0, _huber_value, _huber_gradient),
}


def loss_and_gradient_(
    kernel: LossKernel, D: torch.Tensor, weights: torch.Tensor | None, scale: torch.Tensor
) -> torch.Tensor:
    """Residuals ``D`` (..., outputs, batch) -> the (...) losses; ``D`` becomes the gradient.

    The loss sums the elementwise loss over the last two dimensions, times ``weights`` (which
    broadcast against ``D``) when given; the gradient is ``kernel.gradient(D, scale)``.
    """
    elementwise = kernel.value(D)
    if weights is not None:
        elementwise = elementwise * weights
    kernel.gradient(D, scale, D)
    return elementwise.sum(dim=(-2, -1))


def epoch_batches(n: int, batch: int | None) -> list[tuple[int, int]]:
    """(start, stop) of each minibatch of an epoch; one full batch when ``batch`` is None."""
    if batch is None or batch >= n:
        return [(0, n)]
    return [(s, min(s + batch, n)) for s in range(0, n, batch)]
