"""K MLPs of one architecture trained as one computation: :class:`BatchedMLP` and
:class:`BatchedOptimizer`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .embedded import BatchedPiecewise
from .kernels import (
    ACTIVATION_KERNELS,
    LOSS_KERNELS,
    Buffers,
    DropoutSampler,
    layer_shapes,
    layer_views,
    load_layers,
    loss_and_gradient_,
    store_layers,
)


class BatchedMLP:
    """K MLPs of one architecture trained as one computation: the batched twin of FastMLP.

    Parameters live in one ``(K, P)`` buffer, one row per member, so each member's weights are
    contiguous (its optimiser state, learning rate and weight decay are rows too); layer ``l``
    of all members is a ``(K, out, in + 1)`` view and each step is a handful of batched
    matrix products (``torch.bmm``) instead of K Python-level training loops. Members with
    piecewise-linear embeddings (one set of bins) keep their embedding parameters after their
    layers in their row (:class:`~nnreg.engine.embedded.BatchedPiecewise`).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        activation: str,
        loss: str,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        dropout_share: tuple[int, int] | None = None,
    ) -> None:
        first = list(members[0].layers)  # type: ignore[arg-type]
        like = first[0].weight
        self.K = len(members)
        self.widths = [first[0].in_features] + [m.out_features for m in first]
        self.activation, self.loss = activation, loss
        self.dropout = dropout
        # Draws from ``generator``; ``dropout_share``: these members' part of a larger batch.
        self.sampler = DropoutSampler(dropout, generator, dropout_share)
        shapes = layer_shapes(self.widths)
        total = sum(r * c for r, c in shapes)
        embedding = getattr(members[0], "embedding", None)  # piecewise-linear, or None
        extra = 0 if embedding is None else BatchedPiecewise.parameter_count(embedding)
        self.params = like.new_empty(self.K, total + extra)  # (K, P): layers, then embedding
        self.grads = torch.zeros_like(self.params)
        self.W = layer_views(self.params, shapes)  # (K, out, in + 1) views: [weight | bias]
        self.G = layer_views(self.grads, shapes)
        self.WT = [w[:, :, :-1].transpose(1, 2) for w in self.W]  # (K, in, out)
        # bmm writes a strided output (member rows P apart) through a slow per-matrix loop, so
        # gradients land in contiguous blocks first and are copied into ``grads``.
        self.G_blocks = [torch.empty_like(g, memory_format=torch.contiguous_format) for g in self.G]
        for k, member in enumerate(members):
            load_layers([w[k] for w in self.W], member.layers)  # type: ignore[arg-type]
        self.embedding = (
            None
            if embedding is None
            else BatchedPiecewise(embedding, self.params, self.grads, total)
        )
        if self.embedding is not None:
            self.embedding.load(members)
        # With an embedding: the first layer's input per batch size, (K, width + 1, batch)
        # with a last row of ones, and the last forward pass's bin encoding.
        self._first: dict[int, torch.Tensor] = {}
        self._code = torch.empty(0)
        self._act, self._act_backward = ACTIVATION_KERNELS[activation]
        self._kernel = LOSS_KERNELS[loss]
        self._buffers: dict[tuple[int, bool], Buffers] = {}
        # The last row weights and target shape, and their loss scales: full-batch training
        # passes the same weights tensor every step (not to be changed in place meanwhile).
        self._scale_key: tuple[Any, ...] = (None, None, None)
        self._scales = (torch.empty(0), torch.empty(0))

    def copy_to(self, members: Sequence[nn.Module]) -> None:
        for k, member in enumerate(members):
            store_layers([w[k] for w in self.W], member.layers)  # type: ignore[arg-type]
        if self.embedding is not None:
            self.embedding.store(members)

    def buffers(self, batch: int, train: bool = True) -> Buffers:
        key = (batch, train)
        if key not in self._buffers:
            dropout = train and self.dropout > 0
            # Products always land in their own contiguous buffer: bmm into the strided
            # activation rows (member blocks width + 1 rows apart) takes a slow per-matrix path.
            self._buffers[key] = Buffers(self.widths, batch, True, dropout, self.params, self.K)
        return self._buffers[key]

    def loss_and_grad(
        self,
        X: torch.Tensor,
        Y: torch.Tensor,
        w: torch.Tensor | None,
        totals: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step's forward and backward for every member; returns the (K,) batch losses.

        ``X`` is (K, batch, inputs + 1) with a last column of ones, ``Y`` (K, batch, outputs)
        and ``w`` (K, batch) per-member row weights, or None. Gradients land in ``grads``.
        When every member sees the same rows (full-batch training), ``X`` may be the shared
        (batch, inputs + 1) and ``Y`` (batch, outputs): the first layer's products then run
        as one matrix product over all members' stacked weights. Each member's row weights
        are normalised by their sum, or by ``totals`` (K, 1) when given (a distributed step's
        share of the global batch's sums).
        """
        buf = self.buffers(X.shape[-2])
        self._forward(X, buf)
        key = (w, Y.shape, totals)
        stale = key[0] is not self._scale_key[0] or key[2] is not self._scale_key[2]
        if stale or key[1] != self._scale_key[1]:
            scale = self._scale(Y, w, totals)  # the same weights and shape (full batch): reused
            self._scale_key, self._scales = key, (scale, scale * self._kernel.slope)
        losses, dZ = self._loss(buf, Y.transpose(-2, -1), *self._scales)
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
        if self.embedding is not None:  # the embedded input's product, then the embedding's
            self._embedding_backward(X, dZ)
        elif X.dim() == 2:  # shared rows: (K * width, batch) @ (batch, inputs + 1), one product
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
        if self.embedding is not None:  # every member's pass (scoring a few held-out rows)
            return self.predict(X)[members].clone()
        W = [w[members] for w in self.W]  # views
        k, rows = W[0].shape[0], X.shape[0]
        z = torch.mm(W[0].reshape(-1, X.shape[1]), X.t()).view(k, -1, rows)
        for w in W[1:]:
            self._act(z, z)
            h = torch.cat([z, z.new_ones(k, 1, rows)], dim=1)  # (members, width + 1, rows)
            z = torch.bmm(w, h)
        return z

    def _embed(self, X: torch.Tensor) -> torch.Tensor:
        """The members' first-layer input (K, width + 1, batch) for raw rows ``X``."""
        assert self.embedding is not None
        batch = X.shape[-2]
        if batch not in self._first:
            first = self.params.new_empty(self.K, self.widths[0] + 1, batch)
            first[:, -1].fill_(1.0)
            self._first[batch] = first
        self._code = self.embedding.forward(X, self._first[batch])
        return self._first[batch]

    def _embedding_backward(self, X: torch.Tensor, dZ: torch.Tensor) -> None:
        """The first layer's and the embedding's gradients from ``dZ`` (K, width, batch)."""
        assert self.embedding is not None
        first = self._first[X.shape[-2]]
        torch.bmm(dZ, first.transpose(1, 2), out=self.G_blocks[0])
        embedded = self.embedding.n * self.embedding.d
        d_first = torch.bmm(self.W[0][:, :, :embedded].transpose(1, 2), dZ)
        self.embedding.backward(X, self._code, d_first)

    def _forward(self, X: torch.Tensor, buf: Buffers) -> None:
        inputs = X.transpose(-2, -1)  # (K, inputs + 1, batch), or shared (inputs + 1, batch)
        if self.embedding is not None:
            inputs = self._embed(X)  # (K, width + 1, batch)
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

    def _scale(
        self, Y: torch.Tensor, w: torch.Tensor | None, totals: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-element loss weight, (K, 1, batch): 1/(batch*outputs), or w / (sum w * outputs)
        (``totals`` in place of the sums, when given)."""
        rows, n_out = Y.shape[-2], Y.shape[-1]
        if w is None:
            return Y.new_full((1, 1, 1), 1.0 / (rows * n_out))
        total = w.sum(dim=1, keepdim=True) if totals is None else totals.clone()
        total.clamp_(min=1e-12)  # (K, 1); all-zero: no gradient
        return (w / (total * n_out)).unsqueeze(1)

    def _loss(
        self, buf: Buffers, YT: torch.Tensor, scale: torch.Tensor, grad_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(K,) losses, and the loss's gradient (``buf.D`` or ``buf.G``); ``grad_scale`` is
        ``scale`` times the kernel's slope."""
        D = buf.D
        torch.sub(buf.out, YT, out=D)  # (K, outputs, batch)
        if self.loss == "squared_error":  # sum(scale * D**2) = sum(D * G) / 2, G = 2 scale D
            G = self._kernel.gradient(D, grad_scale, buf.G)
            losses = torch.bmm(D.view(self.K, 1, -1), G.view(self.K, -1, 1)).view(-1)
            return losses.mul_(0.5), G
        return loss_and_gradient_(self._kernel, D, scale, grad_scale), D


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
