"""Shared-weight members (TabM) trained on hand-derived gradients: :class:`FastTabM`.

The ``k`` members of :class:`nnreg.tabm.TabM` share each hidden layer's weight ``W``. Their
activations are kept as one ``(k, batch, width)`` block, so that a layer is one
``(k * batch, in) @ (in, out)`` product and the members' adapters are elementwise products
that broadcast over the batch; no step loops over members. Forward, for layer ``i``::

    U = H * r            (k, batch, in)    "tabm": every layer; "tabm-mini": the first only
    P = U @ W.T          (k, batch, out)   one product
    Z = P * s + b        "tabm"; "tabm-mini" adds its shared bias to P
    H' = dropout(act(Z))

and the output layers are one batched product per member, ``H @ head_weight[m] + head_bias[m]``.
Backward, from ``dZ``: ``db = sum_batch dZ``, ``ds = sum_batch dZ * P``, ``dP = dZ * s``,
``dW = dP.T @ U`` (one product over all members' rows), ``dU = dP @ W``, ``dr = sum_batch dU *
H``, ``dH = dU * r``. Piecewise-linear embeddings (:class:`nnreg.embeddings.
PiecewiseLinearEmbedding`) are linear in their parameters once a batch's bin encoding is known,
so it is computed once per batch and their gradients are three reductions.

The members' loss is the mean of their losses (each member's prediction against the same
targets); the validation loss is that of their mean prediction, as in the autograd engine.
Every parameter lives in one flat buffer, in the module's parameter order, so that
:class:`~nnreg.engine.FlatOptimizer` updates them all in one operation and a data-parallel run
all-reduces one gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .embedded import PiecewiseInput
from .kernels import (
    ACTIVATION_KERNELS,
    LOSS_KERNELS,
    DropoutSampler,
    loss_and_gradient_,
    loss_scales,
    named_views,
)

__all__ = ["FastTabM", "SharedBatch"]


class _Buffers:
    """One batch size's activations, adapters' inputs and gradients, ``(k, batch, width)``."""

    def __init__(self, net: FastTabM, batch: int, dropout: bool) -> None:
        k, like, sizes = net.k, net.params, net.sizes

        def new(*shape: int) -> torch.Tensor:
            return like.new_empty(*shape)

        layers = range(len(sizes) - 1)
        self.X0 = new(batch, sizes[0])  # the first layer's input, embedded
        self.x0 = self.X0  # the current batch's first-layer input (X0, or the batch itself)
        self.U = [new(k, batch, sizes[i]) if net.has_r[i] else None for i in layers]
        self.P = [new(k, batch, sizes[i + 1]) if net.has_s[i] else None for i in layers]
        self.Z = [new(k, batch, sizes[i + 1]) for i in layers]
        self.H = [new(k, batch, sizes[i + 1]) for i in layers]
        self.mask = [new(k, batch, sizes[i + 1]) for i in layers] if dropout else []
        self.A = [new(k, batch, sizes[i + 1]) for i in layers] if dropout else self.H
        self.dA = [new(k, batch, sizes[i + 1]) for i in layers]  # dLoss/dA, then dZ, then dP
        self.dX = new(k, batch, sizes[0])
        self.scratch = [new(k, batch, max(sizes[i], sizes[i + 1])) for i in layers]
        self.out = new(k, batch, net.n_out)
        self.D = new(k, batch, net.n_out)
        self.mean = new(batch, net.n_out)
        if net.embedding is not None:  # the bin encoding and the embedding
            self.code, self.E = net.embedding.new_code(batch, like)


class SharedBatch(NamedTuple):
    """One minibatch, prepared once (its embedding's bin encoding included)."""

    X: torch.Tensor  # (batch, inputs)
    Y: torch.Tensor  # (batch, outputs)
    weights: torch.Tensor | None  # (batch, 1) per-row loss weights, normalised
    grad_scale: torch.Tensor  # d(loss)/d(elementwise loss), 0-d or (batch, 1)
    factor: float  # the returned loss times this is the batch's mean loss
    buf: _Buffers


class FastTabM:
    """A :class:`nnreg.tabm.TabM`'s parameters packed for hand-derived training; see the
    module docstring. The interface is :class:`~nnreg.engine.FastMLP`'s."""

    def __init__(
        self,
        model: nn.Module,
        activation: str,
        loss: str,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        net: Any = model  # a nnreg.tabm.TabM (not imported: it imports this package)
        config = net.config
        self.k, self.n_out = int(config.k), int(config.n_outputs)
        self.sizes = [int(w.shape[1]) for w in net.weights] + [int(net.weights[-1].shape[0])]
        n_layers = len(self.sizes) - 1
        self.has_r = [i < len(net.r) for i in range(n_layers)]
        self.has_s = [i < len(net.s) for i in range(n_layers)]
        named = list(model.named_parameters())
        first = named[0][1]
        total = sum(p.numel() for _, p in named)
        self.params = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grads = torch.zeros_like(self.params)
        self.view = named_views(self.params, named)
        self.grad = named_views(self.grads, named)
        self.copy_from(model)
        self.embedding = (
            None
            if net.embedding is None
            else PiecewiseInput(net.embedding, _prefixed(self.view), _prefixed(self.grad))
        )
        self.dropout = dropout
        self.sampler = DropoutSampler(dropout, generator)
        self._act, self._act_backward = ACTIVATION_KERNELS[activation]
        self.loss, self._kernel = loss, LOSS_KERNELS[loss]
        self._buffers: dict[int, _Buffers] = {}

    def copy_from(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                self.view[name].copy_(p)

    def copy_to(self, model: nn.Module) -> None:
        """Write the trained parameters back into ``model``."""
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.view[name])

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        return X

    def buffers(self, batch: int, train: bool = True) -> _Buffers:
        key = batch if train else -batch  # evaluation buffers never apply dropout
        if key not in self._buffers:
            self._buffers[key] = _Buffers(self, batch, train and self.dropout > 0)
        return self._buffers[key]

    def prepare(
        self,
        X: torch.Tensor,
        Y: torch.Tensor,
        w: torch.Tensor | None,
        train: bool = True,
        total: torch.Tensor | None = None,
    ) -> SharedBatch:
        """Views and scales for a batch, and its bin encoding. Training averages the k
        members' losses; evaluation scores their mean prediction."""
        members = self.k if train else 1
        weights, factor, grad_scale = loss_scales(self._kernel.slope, X, Y, w, total, members)
        if weights is not None:  # (batch, 1): they broadcast over members and outputs
            weights, grad_scale = weights.unsqueeze(1), grad_scale.unsqueeze(1)
        buf = self.buffers(Y.shape[0], train)
        if self.embedding is not None:
            self.embedding.prepare(X, buf.code, buf.X0)
        return SharedBatch(X, Y, weights, grad_scale, factor, buf)

    def loss_and_grad(self, batch: SharedBatch) -> torch.Tensor:
        """Forward and backward on one batch; gradients land in ``self.grads``. Returns the
        batch loss as a 0-d tensor; times ``batch.factor`` it is the members' mean loss."""
        buf, v, g = batch.buf, self.view, self.grad
        self._forward(batch, buf)
        torch.sub(buf.out, batch.Y, out=buf.D)
        loss = self._loss(batch, buf.D)
        last = buf.A[-1]
        torch.bmm(last.transpose(1, 2), buf.D, out=g["head_weight"])
        torch.sum(buf.D, dim=1, out=g["head_bias"])
        torch.bmm(buf.D, v["head_weight"].transpose(1, 2), out=buf.dA[-1])
        for i in range(len(self.sizes) - 2, -1, -1):
            self._layer_backward(i, buf)
        if self.embedding is not None:
            self._embedding_backward(batch, buf)
        return loss

    @torch.no_grad()
    def evaluate(self, batch: SharedBatch) -> torch.Tensor:
        """The loss of the members' mean prediction, on a batch prepared with
        ``train=False``."""
        buf = batch.buf
        self._forward(batch, buf)
        torch.mean(buf.out, dim=0, out=buf.mean)
        residual = buf.mean.sub_(batch.Y)
        return self._loss(batch, residual)

    def _loss(self, batch: SharedBatch, D: torch.Tensor) -> torch.Tensor:
        if batch.weights is None and self.loss == "squared_error":  # one dot
            flat = D.view(-1)
            loss = torch.dot(flat, flat)
            D.mul_(batch.grad_scale)
            return loss
        return loss_and_gradient_(self._kernel, D, batch.weights, batch.grad_scale).sum()

    def _embed(self, batch: SharedBatch, buf: _Buffers) -> torch.Tensor:
        """The first layer's input: the embedded columns, then the others."""
        if self.embedding is None:
            return batch.X
        self.embedding.forward(batch.X, buf.code, buf.E, buf.X0)
        return buf.X0

    def _forward(self, batch: SharedBatch, buf: _Buffers) -> None:
        v = self.view
        buf.x0 = x0 = self._embed(batch, buf)
        h = x0.unsqueeze(0)  # (1, batch, in): broadcast over the members
        for i in range(len(self.sizes) - 1):
            a, b = self.sizes[i], self.sizes[i + 1]
            U, P = buf.U[i], buf.P[i]
            if U is not None:
                torch.mul(h, v[f"r.{i}"].unsqueeze(1), out=U)
                h = U
            target = buf.Z[i] if P is None else P  # the first layer always has r: h is (k, ...)
            torch.mm(h.view(-1, a), v[f"weights.{i}"].t(), out=target.view(-1, b))
            bias = v[f"biases.{i}"]
            bias = bias.unsqueeze(1) if bias.dim() == 2 else bias
            if P is None:
                buf.Z[i].add_(bias)
            else:
                torch.addcmul(bias, P, v[f"s.{i}"].unsqueeze(1), out=buf.Z[i])
            self._act(buf.Z[i], buf.H[i])
            if buf.mask:  # inverted dropout, drawn as SeededDropout draws it
                self.sampler.fill_(buf.mask[i])
                torch.mul(buf.H[i], buf.mask[i], out=buf.A[i])
            h = buf.A[i]
        torch.baddbmm(v["head_bias"].unsqueeze(1), h, v["head_weight"], out=buf.out)

    def _layer_backward(self, i: int, buf: _Buffers) -> None:
        """Layer ``i``'s gradients from ``buf.dA[i]``; leaves dLoss/d(its input) in
        ``buf.dA[i - 1]`` (or ``buf.dX`` for the first layer)."""
        v, g = self.view, self.grad
        a, b = self.sizes[i], self.sizes[i + 1]
        dz = buf.dA[i]
        if buf.mask:
            dz.mul_(buf.mask[i])
        self._act_backward(dz, buf.Z[i], buf.H[i])
        bias_grad = g[f"biases.{i}"]
        torch.sum(dz, dim=1 if bias_grad.dim() == 2 else (0, 1), out=bias_grad)
        P = buf.P[i]
        if P is not None:
            scratch = buf.scratch[i][..., :b]
            torch.sum(torch.mul(dz, P, out=scratch), dim=1, out=g[f"s.{i}"])
            dz.mul_(v[f"s.{i}"].unsqueeze(1))  # now dP
        U = buf.U[i]
        inputs = U if U is not None else buf.A[i - 1]
        torch.mm(dz.view(-1, b).t(), inputs.view(-1, a), out=g[f"weights.{i}"])
        d_in = buf.dX if i == 0 else buf.dA[i - 1]
        torch.mm(dz.view(-1, b), v[f"weights.{i}"], out=d_in.view(-1, a))
        if U is not None:
            previous = buf.x0.unsqueeze(0) if i == 0 else buf.A[i - 1]
            scratch = buf.scratch[i][..., :a]
            torch.sum(torch.mul(d_in, previous, out=scratch), dim=1, out=g[f"r.{i}"])
            if i > 0 or self.embedding is not None:
                d_in.mul_(v[f"r.{i}"].unsqueeze(1))

    def _embedding_backward(self, batch: SharedBatch, buf: _Buffers) -> None:
        assert self.embedding is not None
        dx0 = buf.dX.sum(dim=0)  # (batch, first width): the members share the input
        n, d = self.embedding.n, self.embedding.d
        dE = dx0[:, : n * d].view(-1, n, d).transpose(0, 1)  # (feature, batch, d)
        self.embedding.backward(batch.X, buf.code, dE)


def _prefixed(
    views: dict[str, torch.Tensor], prefix: str = "embedding."
) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in views.items() if k.startswith(prefix)}
