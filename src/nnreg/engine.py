"""The fast training kernel: hand-derived gradients of an MLP, no autograd, no allocations.

Tiny networks on a CPU are bound by per-operation overhead, so every step here is a short,
fixed list of PyTorch kernels writing into preallocated buffers:

* Each layer's weight and bias live together as one ``(out, in + 1)`` matrix ``[W | b]``, a
  view into one flat parameter buffer; gradients mirror that in one flat gradient buffer. The
  whole optimiser update is then a couple of operations on two flat tensors.
* Activations are kept transposed, ``(width + 1, batch)``, with a last row of ones, so that
  ``W_aug @ A`` applies weight and bias in one matrix product, ``dZ @ A.T`` yields the weight
  *and* bias gradients in one product, and each layer writes into a contiguous row block.
* Losses are accumulated as tensors and read once per epoch (one host sync per epoch).
* No autograd graph is ever built: the buffers are plain tensors, and the trainers run the
  whole loop under one ``torch.no_grad()`` (decorating every step would cost microseconds).

:func:`supports` says whether a model and recipe are covered; :mod:`nnreg.train` falls back to
autograd otherwise. The tests check every covered combination against autograd in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "Batch",
    "FastMLP",
    "FlatOptimizer",
    "epoch_batches",
    "supports",
]

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


class _Buffers:
    """Preallocated activations and their gradients for one batch size.

    Per hidden layer: ``Z`` the pre-activation, ``H`` the activation, ``act`` what the next
    layer reads (``H`` after dropout), stored as the first rows of ``A`` whose last row is
    ones. Buffers are shared where no information is lost: without dropout ``H`` is ``act``,
    and for ReLU and tanh (whose derivatives need only the output) ``Z`` is ``H`` too.
    """

    def __init__(
        self, widths: list[int], batch: int, keep_z: bool, dropout: bool, like: torch.Tensor
    ) -> None:
        hidden = widths[1:-1]
        # A[l]: (width_l + 1, batch), last row ones; act[l] is its first width_l rows.
        self.A = [like.new_empty(h + 1, batch) for h in hidden]
        for a in self.A:
            a[-1].fill_(1.0)
        self.act = [a[:-1] for a in self.A]
        self.AT = [a.t() for a in self.A]  # (batch, width_l + 1)
        self.H = [like.new_empty(h, batch) for h in hidden] if dropout else self.act
        self.mask = [like.new_empty(h, batch) for h in hidden] if dropout else []
        self.Z = [like.new_empty(h, batch) for h in hidden] if keep_z else self.H
        self.dZ = [like.new_empty(h, batch) for h in hidden]
        self.out = like.new_empty(widths[-1], batch)  # (outputs, batch)
        self.D = like.new_empty(widths[-1], batch)  # residual, then dLoss/dout
        self.D_flat = self.D.view(-1)


class Batch(NamedTuple):
    """One minibatch, as views prepared once so that a step creates no tensors."""

    X: torch.Tensor  # (batch, inputs + 1), last column ones
    XT: torch.Tensor  # (inputs + 1, batch)
    YT: torch.Tensor  # (outputs, batch)
    weights: torch.Tensor | None  # (batch,) per-row loss weights, summing to 1/outputs
    grad_scale: torch.Tensor  # d(loss)/d(elementwise loss), 0-d or (batch,)
    factor: float  # the returned loss times this is the batch's mean loss
    buf: _Buffers


class FastMLP:
    """An MLP's parameters packed for hand-derived training; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        An :class:`nnreg.model.MLP` (``layers`` of ``nn.Linear``); its weights are copied in.
    activation, loss : str
        As in :class:`nnreg.model.MLPConfig` and :class:`nnreg.train.TrainConfig`.
    """

    def __init__(
        self,
        model: nn.Module,
        activation: str,
        loss: str,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        layers = list(model.layers)  # type: ignore[arg-type]
        first = layers[0].weight
        self.widths = [layers[0].in_features] + [m.out_features for m in layers]
        self.activation, self.loss = activation, loss
        self.dropout = dropout
        self.sampler = DropoutSampler(dropout, generator)  # draws from ``generator``
        shapes = [(b, a + 1) for a, b in pairwise(self.widths)]
        total = sum(r * c for r, c in shapes)
        self.params = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grads = torch.zeros_like(self.params)
        self.W: list[torch.Tensor] = []  # (out, in + 1) views of params: [weight | bias]
        self.G: list[torch.Tensor] = []  # matching views of grads
        start = 0
        for r, c in shapes:
            self.W.append(self.params[start : start + r * c].view(r, c))
            self.G.append(self.grads[start : start + r * c].view(r, c))
            start += r * c
        self.WT = [w[:, :-1].t() for w in self.W]  # (in, out): weights only, for backprop
        with torch.no_grad():
            for w, layer in zip(self.W, layers, strict=True):
                w[:, :-1].copy_(layer.weight)
                w[:, -1].copy_(layer.bias)
        self._buffers: dict[int, _Buffers] = {}
        self._act, self._act_backward = _ACTIVATIONS[activation]
        self._loss = _LOSSES[loss]

    def copy_to(self, model: nn.Module) -> None:
        """Write the trained parameters back into ``model``'s ``nn.Linear`` layers."""
        with torch.no_grad():
            for w, layer in zip(self.W, model.layers, strict=True):  # type: ignore[arg-type]
                layer.weight.copy_(w[:, :-1])
                layer.bias.copy_(w[:, -1])

    def buffers(self, batch: int, train: bool = True) -> _Buffers:
        key = batch if train else -batch  # evaluation buffers never apply dropout
        if key not in self._buffers:
            dropout = train and self.dropout > 0
            # GELU and SiLU need their input to differentiate; so does anything after dropout.
            keep_z = self.activation in ("gelu", "silu") or dropout
            self._buffers[key] = _Buffers(self.widths, batch, keep_z, dropout, self.params)
        return self._buffers[key]

    def prepare(
        self, X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None, train: bool = True
    ) -> Batch:
        """Views and scales for a batch: ``X`` (batch, inputs + 1), ``Y`` (batch, outputs)."""
        rows, n_out = Y.shape
        factor = 2.0 if self.loss == "squared_error" else 1.0  # d(r**2)/dr = 2r
        if w is None:
            weights, factor_out = None, 1.0 / (rows * n_out)
            grad_scale = X.new_full((), factor * factor_out)
        else:
            weights, factor_out = w / (w.sum() * n_out), 1.0
            grad_scale = weights * factor
        buf = self.buffers(rows, train)
        return Batch(X, X.t(), Y.t(), weights, grad_scale, factor_out, buf)

    def loss_and_grad(self, batch: Batch) -> torch.Tensor:
        """Forward and backward on one batch; gradients land in ``self.grads``.

        Returns the batch loss as a 0-d tensor (not synchronised); times ``batch.factor`` it
        is the batch's mean loss.
        """
        buf = batch.buf
        self._forward(batch)
        loss = self._loss(buf.out, batch)  # buf.D <- dLoss/dout
        # Backward: layer i's gradient is dZ @ input.T; its input's gradient is W.T @ dZ.
        dZ = buf.D
        for i in range(len(buf.A), 0, -1):
            torch.mm(dZ, buf.AT[i - 1], out=self.G[i])
            g = buf.dZ[i - 1]
            torch.mm(self.WT[i], dZ, out=g)  # gradient of the next layer's input
            if buf.mask:
                g.mul_(buf.mask[i - 1])
            self._act_backward(g, buf.Z[i - 1], buf.H[i - 1])
            dZ = g
        torch.mm(dZ, batch.X, out=self.G[0])
        return loss

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> torch.Tensor:
        """The loss on a batch prepared with ``train=False``: no dropout, no gradients."""
        self._forward(batch)
        return self._loss(batch.buf.out, batch)

    def _forward(self, batch: Batch) -> None:
        buf = batch.buf
        inputs = batch.XT
        for i in range(len(buf.A)):
            torch.mm(self.W[i], inputs, out=buf.Z[i])  # (width, batch)
            self._act(buf.Z[i], buf.H[i])
            if buf.mask:  # inverted dropout: zero with probability p, scale the rest by 1/(1-p)
                self.sampler.fill_(buf.mask[i])
                torch.mul(buf.H[i], buf.mask[i], out=buf.act[i])
            inputs = buf.A[i]  # (width + 1, batch)
        torch.mm(self.W[-1], inputs, out=buf.out)  # (outputs, batch)


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


def _squared(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    D = batch.buf.D
    torch.sub(out, batch.YT, out=D)  # (outputs, batch)
    if batch.weights is None:
        loss = torch.dot(batch.buf.D_flat, batch.buf.D_flat)  # unscaled: times batch.factor
    else:
        loss = (D.square() * batch.weights).sum()
    D.mul_(batch.grad_scale)
    return loss


def _absolute(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    D = batch.buf.D
    torch.sub(out, batch.YT, out=D)
    loss = D.abs().sum() if batch.weights is None else (D.abs() * batch.weights).sum()
    D.sign_().mul_(batch.grad_scale)
    return loss


def _huber(out: torch.Tensor, batch: Batch) -> torch.Tensor:
    D = batch.buf.D
    torch.sub(out, batch.YT, out=D)
    r = D.abs()
    elementwise = torch.where(r < 1.0, 0.5 * D.square(), r - 0.5)  # delta = 1
    loss = elementwise.sum() if batch.weights is None else (elementwise * batch.weights).sum()
    D.clamp_(-1.0, 1.0).mul_(batch.grad_scale)
    return loss


LossKernel = Callable[[torch.Tensor, "Batch"], torch.Tensor]
_LOSSES: dict[str, LossKernel] = {
    "squared_error": _squared,
    "absolute_error": _absolute,
    "huber": _huber,
}


class FlatOptimizer:
    """SGD (momentum, Nesterov), Adam and AdamW on one flat parameter buffer.

    Matches ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` step for step (weight decay as those
    classes apply it, to every parameter).
    """

    def __init__(
        self,
        params: torch.Tensor,
        grads: torch.Tensor,
        kind: str,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params, self.grads, self.kind = params, grads, kind
        self.betas, self.eps = betas, eps
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = weight_decay
        if kind == "sgd":
            self.buf = torch.zeros_like(params) if momentum else None
        else:
            self.exp_avg = torch.zeros_like(params)
            self.exp_avg_sq = torch.zeros_like(params)
            self.step_t = torch.zeros((), dtype=torch.float32, device=params.device)
            self._fused = torch._fused_adam_ if kind == "adam" else torch._fused_adamw_

    def step(self) -> None:
        p, g = self.params, self.grads
        if self.kind != "sgd":
            self.step_t.add_(1.0)
            self._fused(
                [p],
                [g],
                [self.exp_avg],
                [self.exp_avg_sq],
                [],
                [self.step_t],
                lr=self.lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=self.weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        if self.weight_decay:
            g.add_(p, alpha=self.weight_decay)
        if self.buf is not None:
            self.buf.mul_(self.momentum).add_(g)
            if self.nesterov:
                g.add_(self.buf, alpha=self.momentum)
            else:
                g = self.buf
        p.add_(g, alpha=-self.lr)


def epoch_batches(n: int, batch: int | None) -> list[tuple[int, int]]:
    """(start, stop) of each minibatch of an epoch; one full batch when ``batch`` is None."""
    if batch is None or batch >= n:
        return [(0, n)]
    return [(s, min(s + batch, n)) for s in range(0, n, batch)]


class BatchedMLP:
    """K MLPs of one architecture trained as one computation: the batched twin of FastMLP.

    Parameters live in one ``(K, P)`` buffer, one row per member, so each member's weights are
    contiguous (its optimiser state, learning rate and weight decay are rows too); layer ``l``
    of all members is a ``(K, out, in + 1)`` view and each step is a handful of batched
    matrix products (``torch.bmm``) instead of K Python-level training loops.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        activation: str,
        loss: str,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        first = list(members[0].layers)  # type: ignore[arg-type]
        like = first[0].weight
        self.K = len(members)
        self.widths = [first[0].in_features] + [m.out_features for m in first]
        self.activation, self.loss = activation, loss
        self.dropout = dropout
        self.sampler = DropoutSampler(dropout, generator)  # draws from ``generator``
        shapes = [(b, a + 1) for a, b in pairwise(self.widths)]
        total = sum(r * c for r, c in shapes)
        self.params = like.new_empty(self.K, total)  # (K, P)
        self.grads = torch.zeros_like(self.params)
        self.W: list[torch.Tensor] = []  # (K, out, in + 1) views: [weight | bias]
        self.G: list[torch.Tensor] = []
        start = 0
        for r, c in shapes:
            self.W.append(self.params[:, start : start + r * c].view(self.K, r, c))
            self.G.append(self.grads[:, start : start + r * c].view(self.K, r, c))
            start += r * c
        self.WT = [w[:, :, :-1].transpose(1, 2) for w in self.W]  # (K, in, out)
        # bmm writes a strided output (member rows P apart) through a slow per-matrix loop, so
        # gradients land in contiguous blocks first and are copied into ``grads``.
        self.G_blocks = [torch.empty_like(g, memory_format=torch.contiguous_format) for g in self.G]
        with torch.no_grad():
            for k, member in enumerate(members):
                for w, layer in zip(self.W, member.layers, strict=True):  # type: ignore[arg-type]
                    w[k, :, :-1].copy_(layer.weight)
                    w[k, :, -1].copy_(layer.bias)
        self._act, self._act_backward = _ACTIVATIONS[activation]
        self._buffers: dict[tuple[int, bool], _BatchedBuffers] = {}
        # The last row weights and target shape, and their loss scales: full-batch training
        # passes the same weights tensor every step (not to be changed in place meanwhile).
        self._scale_key: tuple[torch.Tensor | None, torch.Size | None] = (None, None)
        self._scales = (torch.empty(0), torch.empty(0))

    def copy_to(self, members: Sequence[nn.Module]) -> None:
        with torch.no_grad():
            for k, member in enumerate(members):
                for w, layer in zip(self.W, member.layers, strict=True):  # type: ignore[arg-type]
                    layer.weight.copy_(w[k, :, :-1])
                    layer.bias.copy_(w[k, :, -1])

    def buffers(self, batch: int, train: bool = True) -> _BatchedBuffers:
        key = (batch, train)
        if key not in self._buffers:
            dropout = train and self.dropout > 0
            # Products always land in their own contiguous buffer: bmm into the strided
            # activation rows (member blocks width + 1 rows apart) takes a slow per-matrix path.
            self._buffers[key] = _BatchedBuffers(
                self.widths, self.K, batch, True, dropout, self.params
            )
        return self._buffers[key]

    def loss_and_grad(
        self, X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor | None
    ) -> torch.Tensor:
        """One step's forward and backward for every member; returns the (K,) batch losses.

        ``X`` is (K, batch, inputs + 1) with a last column of ones, ``Y`` (K, batch, outputs)
        and ``w`` (K, batch) per-member row weights, or None. Gradients land in ``grads``.
        When every member sees the same rows (full-batch training), ``X`` may be the shared
        (batch, inputs + 1) and ``Y`` (batch, outputs): the first layer's products then run
        as one matrix product over all members' stacked weights.
        """
        buf = self.buffers(X.shape[-2])
        self._forward(X, buf)
        key = (w, Y.shape)
        if key[0] is not self._scale_key[0] or key[1] != self._scale_key[1]:
            scale = self._scale(Y, w)  # the same weights and shape (full batch): reused
            self._scale_key, self._scales = key, (scale, scale * 2.0)
        losses = self._loss(buf, Y.transpose(-2, -1), *self._scales)
        dZ = buf.D
        for i in range(len(buf.A), 0, -1):
            torch.bmm(dZ, buf.AT[i - 1], out=self.G_blocks[i])
            g = buf.dZ[i - 1]
            if self.widths[i + 1] == 1:  # a one-row weight: an outer product, no bmm needed
                torch.mul(self.WT[i], dZ, out=g)
            else:
                torch.bmm(self.WT[i], dZ, out=g)
            if buf.mask:
                g.mul_(buf.mask[i - 1])
            self._act_backward(g, buf.Z[i - 1], buf.H[i - 1])
            dZ = g
        if X.dim() == 2:  # shared rows: (K * width, batch) @ (batch, inputs + 1), one product
            block = self.G_blocks[0]
            torch.mm(dZ.view(-1, X.shape[0]), X, out=block.view(-1, block.shape[-1]))
        else:
            torch.bmm(dZ, X, out=self.G_blocks[0])
        for block, view in zip(self.G_blocks, self.G, strict=True):
            view.copy_(block)
        return losses

    @torch.no_grad()
    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """(K, rows, inputs + 1) or shared (rows, inputs + 1) -> (K, outputs, rows), without
        dropout."""
        buf = self.buffers(X.shape[-2], train=False)
        self._forward(X, buf)
        return buf.out

    @torch.no_grad()
    def predict_members(self, X: torch.Tensor, members: slice) -> torch.Tensor:
        """Shared (rows, inputs + 1) -> (members, outputs, rows) for a range of ``members``,
        without dropout: a forward pass that skips the other members."""
        W = [w[members] for w in self.W]  # views
        k, rows = W[0].shape[0], X.shape[0]
        z = torch.mm(W[0].reshape(-1, X.shape[1]), X.t()).view(k, -1, rows)
        for w in W[1:]:
            self._act(z, z)
            h = torch.cat([z, z.new_ones(k, 1, rows)], dim=1)  # (members, width + 1, rows)
            z = torch.bmm(w, h)
        return z

    def _forward(self, X: torch.Tensor, buf: _BatchedBuffers) -> None:
        inputs = X.transpose(-2, -1)  # (K, inputs + 1, batch), or shared (inputs + 1, batch)
        for i in range(len(buf.A)):
            if inputs.dim() == 2:  # shared rows: all members' first layers as one product
                z = buf.Z[i]
                torch.mm(
                    self.W[i].reshape(-1, inputs.shape[0]), inputs, out=z.view(-1, z.shape[-1])
                )
            else:
                torch.bmm(self.W[i], inputs, out=buf.Z[i])  # (K, width, batch)
            self._act(buf.Z[i], buf.H[i])
            if buf.mask:
                self.sampler.fill_(buf.mask[i])
                torch.mul(buf.H[i], buf.mask[i], out=buf.act[i])
            inputs = buf.A[i]
        torch.bmm(self.W[-1], inputs, out=buf.out)  # (K, outputs, batch)

    def _scale(self, Y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """Per-element loss weight, (K, 1, batch): 1/(batch*outputs), or w / (sum w * outputs)."""
        rows, n_out = Y.shape[-2], Y.shape[-1]
        if w is None:
            return Y.new_full((1, 1, 1), 1.0 / (rows * n_out))
        total = w.sum(dim=1, keepdim=True).clamp_(min=1e-12)  # (K, 1); all-zero: no gradient
        return (w / (total * n_out)).unsqueeze(1)

    def _loss(
        self, buf: _BatchedBuffers, YT: torch.Tensor, scale: torch.Tensor, scale2: torch.Tensor
    ) -> torch.Tensor:
        """(K,) losses; the loss's gradient is left in ``buf.D``. ``scale2`` is 2 * scale."""
        D = buf.D
        torch.sub(buf.out, YT, out=D)  # (K, outputs, batch)
        if self.loss == "squared_error":  # sum(scale * D**2) = sum(D * G) / 2, G = 2 scale D
            G = buf.G
            torch.mul(D, scale2, out=G)
            losses = torch.bmm(D.view(self.K, 1, -1), G.view(self.K, -1, 1)).view(-1)
            buf.D, buf.G = G, D  # swap: D is the gradient now, and the residual is scratch
            return losses.mul_(0.5)
        elif self.loss == "absolute_error":
            elementwise = D.abs()
            D.sign_().mul_(scale)
        else:  # huber, delta = 1
            r = D.abs()
            elementwise = torch.where(r < 1.0, 0.5 * D.square(), r - 0.5)
            D.clamp_(-1.0, 1.0).mul_(scale)
        return (elementwise * scale).sum(dim=(1, 2))  # (K,)


class _BatchedBuffers:
    """_Buffers with a leading member dimension: activations are (K, width + 1, batch)."""

    def __init__(
        self,
        widths: list[int],
        K: int,
        batch: int,
        keep_z: bool,
        dropout: bool,
        like: torch.Tensor,
    ) -> None:
        hidden = widths[1:-1]
        self.A = [like.new_empty(K, h + 1, batch) for h in hidden]
        for a in self.A:
            a[:, -1].fill_(1.0)
        self.act = [a[:, :-1] for a in self.A]
        self.AT = [a.transpose(1, 2) for a in self.A]  # (K, batch, width + 1)
        self.H = [like.new_empty(K, h, batch) for h in hidden] if dropout else self.act
        self.mask = [like.new_empty(K, h, batch) for h in hidden] if dropout else []
        self.Z = [like.new_empty(K, h, batch) for h in hidden] if keep_z else self.H
        self.dZ = [like.new_empty(K, h, batch) for h in hidden]
        self.out = like.new_empty(K, widths[-1], batch)
        self.D = like.new_empty(K, widths[-1], batch)  # the loss's gradient
        self.G = like.new_empty(K, widths[-1], batch)  # scratch of the same shape


class BatchedOptimizer:
    """SGD, Adam and AdamW over a (K, P) parameter buffer, with per-member learning rates and
    weight decays; a member whose learning rate is zero stops changing.

    The update for each row is the one ``torch.optim`` makes (checked in the tests).
    """

    def __init__(
        self,
        params: torch.Tensor,
        grads: torch.Tensor,
        kind: str,
        lr: torch.Tensor,
        weight_decay: torch.Tensor,
        momentum: float = 0.0,
        nesterov: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params, self.grads, self.kind = params, grads, kind
        self.lr = lr.reshape(-1, 1).to(params)  # (K, 1)
        self.weight_decay = weight_decay.reshape(-1, 1).to(params)  # (K, 1)
        self.momentum, self.nesterov, self.betas, self.eps = momentum, nesterov, betas, eps
        self.scale = 1.0  # the schedule's factor, applied to every member
        self.active = torch.ones_like(self.lr)  # 0 freezes a member (see freeze)
        self._lr = self.lr.clone()  # lr * active, kept between steps
        self._decay = bool(self.weight_decay.any())  # checked once, not every step
        self.t = 0
        if kind == "sgd":
            self.buf = torch.zeros_like(params) if momentum else None
        else:
            self.exp_avg = torch.zeros_like(params)
            self.exp_avg_sq = torch.zeros_like(params)

    def freeze(self, rows: torch.Tensor) -> None:
        """Stop the members ``rows`` (a boolean mask or indices) from changing."""
        self.active[rows] = 0.0
        torch.mul(self.lr, self.active, out=self._lr)

    def step(self) -> None:
        p, g = self.params, self.grads
        lr = self._lr  # (K, 1)
        self.t += 1
        if self.kind == "sgd":
            if self._decay:
                g.addcmul_(p, self.weight_decay)
            if self.buf is not None:
                self.buf.mul_(self.momentum).add_(g)
                g = g.add(self.buf, alpha=self.momentum) if self.nesterov else self.buf
            p.addcmul_(g, lr, value=-self.scale)
            return
        b1, b2 = self.betas
        if self.kind == "adam" and self._decay:
            g = g.addcmul(p, self.weight_decay)  # L2 penalty folded into the gradient
        elif self.kind == "adamw":
            p.mul_(1.0 - self.scale * lr * self.weight_decay)  # decoupled decay
        self.exp_avg.lerp_(g, 1.0 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        bias1, bias2 = 1.0 - b1**self.t, 1.0 - b2**self.t
        denom = self.exp_avg_sq.sqrt().div_(math.sqrt(bias2)).add_(self.eps)
        p.addcmul_(self.exp_avg / denom, lr, value=-self.scale / bias1)
