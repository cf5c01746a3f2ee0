"""Shared-weight members (TabM) trained on hand-derived gradients: :class:`FastTabM`.

The ``k`` members of :class:`nnreg.tabm.TabM` share each hidden layer's weight ``W``. Their
activations are kept as one ``(k, batch, width)`` block, so that a layer is one
``(k * batch, in) @ (in, out)`` product and the members' adapters are elementwise products
that broadcast over the batch; no step loops over members. Forward, for layer ``i``::

    "tabm" (r and s on every layer), the adapters folded into per-member weights:
    M = (s r^T) * W      (k, out, in)      small: the batch never passes through r or s
    Z = H @ M^T + b      (k, batch, out)   one batched product, the bias added in it

    "tabm-mini" (r on the first layer only, shared biases):
    U = H * r            (k, batch, in)    the first layer
    Z = U @ W.T + b      (k, batch, out)   one (k * batch, in) @ (in, out) product
    H' = dropout(act(Z))

and the output layers are ``H @ head_weight[m] + head_bias[m]`` per member: one batched
product, or with one output elementwise products summed over the width (a batched product
with a size of 1 runs as k slow matrix-vector calls).
Backward, from ``dZ``: ``db = sum_batch dZ``. Folded layers: ``dM = dZ^T @ H`` and ``dH = dZ @
M`` (batched products), then on the small (k, out, in) blocks ``dW = sum_k dM * s r^T``,
``T = dM * W``, ``dr = s^T T``, ``ds = T r``: about a third of the passes over the (k, batch,
width) activations that scaling them by r and s would take. Unfolded layers: ``dW = dZ.T @ U``
(one product over all members' rows), ``dU = dZ @ W``, ``dr = sum_batch dU * H``, ``dH = dU *
r``. Piecewise-linear embeddings (:class:`nnreg.embeddings.PiecewiseLinearEmbedding`) are
linear in their parameters once a batch's bin encoding is known, so it is computed once per
batch and their gradients are three reductions.

Dropout masks are :class:`~nnreg.engine.kernels.CounterDropout`'s: a key per layer and step.
Where :mod:`.native` has compiled ``csrc/shared.cpp``, the bias, activation (ReLU, SiLU) and
mask are one pass each way (:mod:`.fused`), the mask made where it is applied: forward leaves
mask * act' in Z for backward, and a one-output head is computed in the last layer's passes.
Folding M and its gradients back are compiled passes too; else PyTorch's operations compute
the same.

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

from . import fused, native
from .embedded import PiecewiseInput
from .kernels import (
    ACTIVATION_KERNELS,
    LOSS_KERNELS,
    CounterDropout,
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
        unfolded_r = [net.has_r[i] and not net.folded[i] for i in layers]
        self.U = [new(k, batch, sizes[i]) if unfolded_r[i] else None for i in layers]

        def outputs() -> list[torch.Tensor]:
            return [new(k, batch, sizes[i + 1]) for i in layers]

        # Z: pre-activations; H = act(Z); A: after dropout (H itself without). A fused pass
        # (net.fused) writes A from Z, its mask made from each layer's key, and leaves mask *
        # act'(Z) in Z for the backward pass (on the last layer with a head, Z itself).
        self.dropout, self.fused = dropout, dropout and net.fused
        # a one-output head computed in the last layer's fused passes: its A is never written
        self.head = self.fused and net.n_out == 1
        self.keys = [0 for _ in layers]  # the step's masks' keys, a layer's each
        self.Z = outputs()
        self.A = outputs()
        self.H = outputs() if dropout and not self.fused else self.A
        self.mask = outputs() if dropout and not self.fused else []
        # dLoss/dA, then dZ; the last one first holds the one-output head's products
        self.dA = [new(k, batch, sizes[i + 1]) for i in layers]
        self.dAT = [d.transpose(1, 2) for d in self.dA]
        self.dX = new(k, batch, sizes[0])
        self.scratch = [new(k, batch, sizes[i]) if unfolded_r[i] else None for i in layers]
        self.out = new(k, batch, net.n_out)
        self.D = new(k, batch, net.n_out)
        self.mean = new(batch, net.n_out)
        if net.embedding is not None:  # the bin encoding and the embedding
            self.code, self.E = net.embedding.new_code(batch, like)
        self.native: native.NativeStep | None = None  # the compiled step's buffers and arguments
        # the fused passes' calls on these buffers (their arguments worked out once)
        self.calls = net.calls.buffers(self) if self.fused and net.calls is not None else []


class SharedBatch(NamedTuple):
    """One minibatch, prepared once (its embedding's bin encoding included)."""

    X: torch.Tensor  # (batch, inputs)
    Y: torch.Tensor  # (batch, outputs)
    weights: torch.Tensor | None  # (batch, 1) per-row loss weights, normalised
    grad_scale: torch.Tensor  # d(loss)/d(elementwise loss), 0-d or (batch, 1)
    factor: float  # the returned loss times this is the batch's mean loss
    buf: _Buffers
    native: native.NativeStep | None = None  # set when the compiled step runs on this batch


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
        # "tabm" layers (r and s): r and s folded into per-member weights M = (s r^T) * W,
        # kept with their gradient's scratch as (k, out, in) blocks beside the parameters.
        self.folded = [self.has_r[i] and self.has_s[i] for i in range(n_layers)]

        def blocks() -> list[torch.Tensor | None]:
            return [
                first.new_empty(self.k, self.sizes[i + 1], self.sizes[i]) if f else None
                for i, f in enumerate(self.folded)
            ]

        self._rs, self._m, self._dm, self._t = blocks(), blocks(), blocks(), blocks()
        self._mT = [None if m is None else m.transpose(1, 2) for m in self._m]
        self.embedding = (
            None
            if net.embedding is None
            else PiecewiseInput(net.embedding, _prefixed(self.view), _prefixed(self.grad))
        )
        self.dropout = dropout
        self.sampler = CounterDropout(dropout, generator)
        self._act, self._act_backward = ACTIVATION_KERNELS[activation]
        self.loss, self._kernel = loss, LOSS_KERNELS[loss]
        self._buffers: dict[int, _Buffers] = {}
        self._use_compiled(activation, dropout, loss)

    def _use_compiled(self, activation: str, dropout: float, loss: str) -> None:
        """The compiled code this network can use (:mod:`.native`): the whole step where it
        covers the network, and passes of the PyTorch step (``csrc/shared.cpp``): the
        adapters' folding, and (``fused``) the activation and dropout in one pass each way."""
        cpu, dtype = self.params.device.type == "cpu", self.params.dtype
        passes = native.passes(dtype) if cpu else None
        number = native.DROPOUT_ACTIVATIONS.get(activation, -1)
        self.fused = dropout > 0 and number >= 0 and passes is not None
        self.calls = (
            None if passes is None else fused.FusedLayers(self, passes, self.sampler, number)
        )
        covered = native.covers(
            self.folded,
            self.sizes,
            activation,
            dropout,
            loss,
            self.n_out,
            self.embedding,
            self.params,
        )
        self.native = native.kernels(dtype) if covered else None
        if self.native is not None:
            self.one_thread_max_work = native.ONE_THREAD_MAX_WORK

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
            buf = self._buffers[key] = _Buffers(self, batch, train and self.dropout > 0)
            if self.native is not None:
                buf.native = native.NativeStep(self, batch)
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
        if buf.native is not None:
            buf.native.load(X, Y, weights)
        return SharedBatch(X, Y, weights, grad_scale, factor, buf, buf.native)

    def loss_and_grad(self, batch: SharedBatch) -> torch.Tensor:
        """Forward and backward on one batch; gradients land in ``self.grads``. Returns the
        batch loss as a 0-d tensor; times ``batch.factor`` it is the members' mean loss."""
        if batch.native is not None:  # one compiled call: csrc/tabm.cpp
            assert self.native is not None
            step = batch.native
            args = step.args if batch.weights is None else step.weighted_args
            return self.params.new_tensor(step.call(self.native.step, args))
        buf, v, g = batch.buf, self.view, self.grad
        self._forward(batch, buf)
        torch.sub(buf.out, batch.Y, out=buf.D)
        loss = self._loss(batch, buf.D)
        last = buf.A[-1]
        # with buf.head, the last layer's backward pass computes the head weight's gradient
        if self.n_out == 1 and not buf.head:  # elementwise, as in the forward pass
            products = torch.mul(last, buf.D, out=buf.dA[-1])
            torch.sum(products, dim=1, keepdim=True, out=self._row_head(g["head_weight"]))
            torch.mul(buf.D, self._row_head(v["head_weight"]), out=buf.dA[-1])
        elif self.n_out > 1:
            torch.bmm(last.transpose(1, 2), buf.D, out=g["head_weight"])
            torch.bmm(buf.D, v["head_weight"].transpose(1, 2), out=buf.dA[-1])
        torch.sum(buf.D, dim=1, out=g["head_bias"])
        for i in range(len(self.sizes) - 2, -1, -1):
            self._layer_backward(i, buf)
        if self.embedding is not None:
            self._embedding_backward(batch, buf)
        return loss

    @torch.no_grad()
    def evaluate(self, batch: SharedBatch) -> torch.Tensor:
        """The loss of the members' mean prediction, on a batch prepared with
        ``train=False``."""
        if batch.native is not None:
            assert self.native is not None
            step = batch.native
            args = step.forward if batch.weights is None else step.weighted_forward
            return self.params.new_tensor(step.call(self.native.mean_loss, args))
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
        if self.calls is not None:
            self.calls.threads = fused.threads()
        if buf.dropout:  # inverted dropout, drawn as the autograd TabM draws it: a key a layer
            buf.keys = self.sampler.keys(len(buf.keys))
        buf.x0 = x0 = self._embed(batch, buf)
        h = x0.unsqueeze(0)  # (1, batch, in): broadcast over the members
        for i in range(len(self.sizes) - 1):
            a, b = self.sizes[i], self.sizes[i + 1]
            MT = self._mT[i]
            if MT is not None:  # a folded layer
                self._fold(i)
                h3 = h.expand(self.k, -1, -1) if i == 0 else h  # the first input is shared
                if buf.fused:  # the fused pass adds the bias
                    torch.bmm(h3, MT, out=buf.Z[i])
                else:
                    torch.baddbmm(self._bias(i), h3, MT, out=buf.Z[i])
            else:
                U = buf.U[i]
                if U is not None:
                    torch.mul(h, v[f"r.{i}"].unsqueeze(1), out=U)
                    h = U  # the first layer always has r: h is (k, ...) from here
                torch.mm(h.view(-1, a), v[f"weights.{i}"].t(), out=buf.Z[i].view(-1, b))
                if not buf.fused:
                    buf.Z[i].add_(self._bias(i))
            if buf.fused:  # Z is without the bias here; with a head, its output and not A
                assert self.calls is not None
                self.calls.forward(i, buf.calls, buf.keys[i])
                if buf.head and i == len(self.sizes) - 2:
                    return
            elif buf.dropout:
                self._act(buf.Z[i], buf.H[i])
                self.sampler.fill_(buf.mask[i], buf.keys[i])
                torch.mul(buf.H[i], buf.mask[i], out=buf.A[i])
            else:
                self._act(buf.Z[i], buf.H[i])
            h = buf.A[i]
        head_bias = v["head_bias"].unsqueeze(1)
        if self.n_out == 1:  # a dot per row and member: (k, batch, width) * (k, 1, width)
            products = torch.mul(h, self._row_head(v["head_weight"]), out=buf.dA[-1])
            torch.sum(products, dim=2, keepdim=True, out=buf.out).add_(head_bias)
        else:
            torch.baddbmm(head_bias, h, v["head_weight"], out=buf.out)

    def _bias(self, i: int) -> torch.Tensor:
        """Layer ``i``'s bias as it broadcasts over a (k, batch, width) block."""
        bias = self.view[f"biases.{i}"]
        return bias.unsqueeze(1) if bias.dim() == 2 else bias

    def _row_head(self, head: torch.Tensor) -> torch.Tensor:
        """A one-output head's (k, width, 1) weight or gradient as (k, 1, width), a view: it
        broadcasts over the batch."""
        return head.view(self.k, 1, self.sizes[-1])

    def _layer_backward(self, i: int, buf: _Buffers) -> None:
        """Layer ``i``'s gradients from ``buf.dA[i]``; leaves dLoss/d(its input) in
        ``buf.dA[i - 1]`` (or ``buf.dX`` for the first layer)."""
        v, g = self.view, self.grad
        a, b = self.sizes[i], self.sizes[i + 1]
        dz = buf.dA[i]
        if buf.fused:  # the bias's gradient too (and the head's, from D, on the last layer)
            assert self.calls is not None
            self.calls.backward(i, buf.calls, buf.keys[i])
        else:
            if buf.mask:
                dz.mul_(buf.mask[i])
            self._act_backward(dz, buf.Z[i], buf.H[i])
            bias_grad = g[f"biases.{i}"]
            torch.sum(dz, dim=1 if bias_grad.dim() == 2 else (0, 1), out=bias_grad)
        if self.folded[i]:
            self._folded_backward(i, buf, dz)
            return
        U = buf.U[i]
        inputs = U if U is not None else buf.A[i - 1]
        torch.mm(dz.view(-1, b).t(), inputs.view(-1, a), out=g[f"weights.{i}"])
        d_in = buf.dX if i == 0 else buf.dA[i - 1]
        torch.mm(dz.view(-1, b), v[f"weights.{i}"], out=d_in.view(-1, a))
        if U is not None:
            previous = buf.x0.unsqueeze(0) if i == 0 else buf.A[i - 1]
            scratch = buf.scratch[i]
            assert scratch is not None
            torch.sum(torch.mul(d_in, previous, out=scratch), dim=1, out=g[f"r.{i}"])
            if i > 0 or self.embedding is not None:
                d_in.mul_(v[f"r.{i}"].unsqueeze(1))

    def _fold(self, i: int) -> None:
        """Layer ``i``'s per-member weights ``M = (s r^T) * W``, (k, out, in), into
        ``self._m[i]``."""
        if self.calls is not None:
            self.calls.fold(i)
            return
        v, rs, m = self.view, self._rs[i], self._m[i]
        assert rs is not None and m is not None
        torch.mul(v[f"s.{i}"].unsqueeze(2), v[f"r.{i}"].unsqueeze(1), out=rs)
        torch.mul(rs, v[f"weights.{i}"], out=m)

    def _folded_backward(self, i: int, buf: _Buffers, dz: torch.Tensor) -> None:
        """A folded layer's gradients from ``dz`` (k, batch, out): ``dM = dz^T @ H``, then
        W's, r's and s's from dM on (k, out, in) blocks; dLoss/d(input) = ``dz @ M``."""
        m, dm = self._m[i], self._dm[i]
        assert m is not None and dm is not None
        inputs = buf.x0.expand(self.k, -1, -1) if i == 0 else buf.A[i - 1]
        torch.bmm(buf.dAT[i], inputs, out=dm)
        if self.calls is not None:
            self.calls.unfold(i)
        else:
            self._unfold(i, dm)
        if i > 0 or self.embedding is not None:
            torch.bmm(dz, m, out=buf.dX if i == 0 else buf.dA[i - 1])

    def _unfold(self, i: int, dm: torch.Tensor) -> None:
        """W's, r's and s's gradients from layer ``i``'s dM, with PyTorch operations."""
        v, g, rs, t = self.view, self.grad, self._rs[i], self._t[i]
        assert rs is not None and t is not None
        torch.sum(torch.mul(dm, rs, out=t), dim=0, out=g[f"weights.{i}"])
        torch.mul(dm, v[f"weights.{i}"], out=t)  # T = dM * W
        torch.bmm(v[f"s.{i}"].unsqueeze(1), t, out=g[f"r.{i}"].unsqueeze(1))
        torch.bmm(t, v[f"r.{i}"].unsqueeze(2), out=g[f"s.{i}"].unsqueeze(2))

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
