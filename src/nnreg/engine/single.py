"""One MLP trained on hand-derived gradients: :class:`FastMLP` and :class:`FlatOptimizer`."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .embedded import PiecewiseInput
from .kernels import (
    ACTIVATION_KERNELS,
    LOSS_KERNELS,
    Buffers,
    DropoutSampler,
    layer_shapes,
    layer_views,
    load_layers,
    loss_and_gradient_,
    loss_scales,
    named_views,
    store_layers,
)


class Batch(NamedTuple):
    """One minibatch, as views prepared once so that a step creates no tensors."""

    X: torch.Tensor  # (batch, inputs + 1), last column ones
    XT: torch.Tensor  # (inputs + 1, batch)
    YT: torch.Tensor  # (outputs, batch)
    weights: torch.Tensor | None  # (batch,) per-row loss weights, summing to 1/outputs
    grad_scale: torch.Tensor  # d(loss)/d(elementwise loss), 0-d or (batch,)
    factor: float  # the returned loss times this is the batch's mean loss
    buf: Buffers
    raw: torch.Tensor | None = None  # with an embedding: the batch's inputs, (batch, inputs)
    code: torch.Tensor | None = None  # its bin encoding, (feature, batch, bin)
    E: torch.Tensor | None = None  # its embedding, (feature, batch, d)


class FastMLP:
    """An MLP's parameters packed for hand-derived training; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        An :class:`nnreg.model.MLP` (``layers`` of ``nn.Linear``, and optionally a piecewise-
        linear ``embedding``, whose parameters follow the layers' in the flat buffer); its
        weights are copied in.
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
        shapes = layer_shapes(self.widths)
        embedding = getattr(model, "embedding", None)
        named = [] if embedding is None else list(embedding.named_parameters())
        layer_total = sum(r * c for r, c in shapes)
        total = layer_total + sum(p.numel() for _, p in named)
        self.params = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grads = torch.zeros_like(self.params)
        self.W = layer_views(self.params, shapes)  # (out, in + 1) views: [weight | bias]
        self.G = layer_views(self.grads, shapes)  # matching views of grads
        self.WT = [w[:, :-1].t() for w in self.W]  # (in, out): weights only, for backprop
        load_layers(self.W, layers)
        views = named_views(self.params, named, layer_total)  # after the layers
        grads = named_views(self.grads, named, layer_total)
        for name, p in named:
            views[name].copy_(p.detach())
        self.embedding = None if embedding is None else PiecewiseInput(embedding, views, grads)
        self._first: dict[int, tuple[torch.Tensor, ...]] = {}
        self._buffers: dict[int, Buffers] = {}
        self._act, self._act_backward = ACTIVATION_KERNELS[activation]
        self._kernel = LOSS_KERNELS[loss]

    def copy_to(self, model: nn.Module) -> None:
        """Write the trained parameters back into ``model``'s ``nn.Linear`` layers."""
        store_layers(self.W, model.layers)  # type: ignore[arg-type]
        if self.embedding is not None:
            with torch.no_grad():
                for name, p in model.embedding.named_parameters():  # type: ignore[union-attr]
                    p.copy_(self.embedding.p[name])

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` as :meth:`prepare` takes it: (rows, inputs + 1), last column ones; with an
        embedding, ``X`` itself (the first layer's input is made per step)."""
        if self.embedding is not None:
            return X
        return torch.cat([X, X.new_ones(X.shape[0], 1)], dim=1)

    def buffers(self, batch: int, train: bool = True) -> Buffers:
        key = batch if train else -batch  # evaluation buffers never apply dropout
        if key not in self._buffers:
            dropout = train and self.dropout > 0
            # GELU and SiLU need their input to differentiate; so does anything after dropout.
            keep_z = self.activation in ("gelu", "silu") or dropout
            self._buffers[key] = Buffers(self.widths, batch, keep_z, dropout, self.params)
        return self._buffers[key]

    def prepare(
        self,
        X: torch.Tensor,
        Y: torch.Tensor,
        w: torch.Tensor | None,
        train: bool = True,
        total: torch.Tensor | None = None,
    ) -> Batch:
        """Views and scales for a batch: ``X`` (batch, inputs + 1), ``Y`` (batch, outputs).
        Row weights ``w`` are normalised by their sum, or by ``total`` when given (a
        distributed step's share of the global batch's sum)."""
        rows = Y.shape[0]
        weights, factor_out, grad_scale = loss_scales(self._kernel.slope, X, Y, w, total)
        buf = self.buffers(rows, train)
        if self.embedding is None:
            return Batch(X, X.t(), Y.t(), weights, grad_scale, factor_out, buf)
        first, code, E = self._first_input(rows, train)
        self.embedding.prepare(X, code, first)
        return Batch(first, first.t(), Y.t(), weights, grad_scale, factor_out, buf, X, code, E)

    def _first_input(self, rows: int, train: bool) -> tuple[torch.Tensor, ...]:
        """With an embedding: the first layer's input (rows, width + 1) (last column ones),
        the bin encoding and the embedding, for one batch size."""
        assert self.embedding is not None
        key = rows if train else -rows
        if key not in self._first:
            first = self.params.new_ones(rows, self.widths[0] + 1)
            self._first[key] = (first, *self.embedding.new_code(rows, self.params))
        return self._first[key]

    def loss_and_grad(self, batch: Batch) -> torch.Tensor:
        """Forward and backward on one batch; gradients land in ``self.grads``.

        Returns the batch loss as a 0-d tensor (not synchronised); times ``batch.factor`` it
        is the batch's mean loss.
        """
        buf = batch.buf
        self._forward(batch)
        loss = self._loss(batch)  # buf.D <- dLoss/dout
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
        if self.embedding is not None:
            assert batch.raw is not None and batch.code is not None
            emb = self.embedding
            dX = torch.mm(self.WT[0][: emb.width], dZ)  # (embedded columns, batch)
            emb.backward(batch.raw, batch.code, dX.view(emb.n, emb.d, -1).transpose(1, 2))
        return loss

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> torch.Tensor:
        """The loss on a batch prepared with ``train=False``: no dropout, no gradients."""
        self._forward(batch)
        return self._loss(batch)

    def _loss(self, batch: Batch) -> torch.Tensor:
        """The batch loss, unscaled without weights (times ``batch.factor``); ``buf.D`` <-
        dLoss/dout."""
        buf = batch.buf
        torch.sub(buf.out, batch.YT, out=buf.D)  # (outputs, batch) residual
        if batch.weights is None and self.loss == "squared_error":  # sum of squares: one dot
            loss = torch.dot(buf.D_flat, buf.D_flat)
            self._kernel.gradient(buf.D, batch.grad_scale, buf.D)
            return loss
        return loss_and_gradient_(self._kernel, buf.D, batch.weights, batch.grad_scale)

    def _forward(self, batch: Batch) -> None:
        buf = batch.buf
        if self.embedding is not None:
            assert batch.raw is not None and batch.code is not None and batch.E is not None
            self.embedding.forward(batch.raw, batch.code, batch.E, batch.X)
        inputs = batch.XT
        for i in range(len(buf.A)):
            torch.mm(self.W[i], inputs, out=buf.Z[i])  # (width, batch)
            self._act(buf.Z[i], buf.H[i])
            if buf.mask:  # inverted dropout: zero with probability p, scale the rest by 1/(1-p)
                self.sampler.fill_(buf.mask[i])
                torch.mul(buf.H[i], buf.mask[i], out=buf.act[i])
            inputs = buf.A[i]  # (width + 1, batch)
        torch.mm(self.W[-1], inputs, out=buf.out)  # (outputs, batch)


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
