"""Piecewise-linear embeddings (:class:`nnreg.embeddings.PiecewiseLinearEmbedding`) in the
fast engines: :class:`PiecewiseInput`.

The embedding of feature ``f`` is ``x * linear_weight[f] + linear_bias[f] + code_f(x) @
weight[f]``, where the bin encoding ``code_f(x)`` depends on the fixed bins only. So it is
computed once per batch, and the embedding is linear in its parameters: their gradients are
two reductions and one batched product over the features, from the gradient of the embedded
columns. Both engines lay a batch's first-layer input out as rows, ``(batch, width)``: the
embedded columns (feature-major, as ``embed_inputs`` flattens them), then the other columns,
which are copied once per batch.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PiecewiseInput"]


class PiecewiseInput:
    """One network's embedding: its module (for the bins) and views of its parameters and
    their gradients in an engine's flat buffers (``linear_weight``, ``linear_bias``,
    ``weight``)."""

    def __init__(
        self, module: Any, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]
    ) -> None:
        self.module = module
        self.n, self.bins, self.d = (int(s) for s in module.weight.shape)
        self.p, self.g = params, grads

    @property
    def width(self) -> int:
        """The embedded columns' count."""
        return self.n * self.d

    def new_code(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffers for a batch: the bin encoding ``(feature, batch, bin)`` and the embedding
        ``(feature, batch, d)``."""
        return like.new_empty(self.n, batch, self.bins), like.new_empty(self.n, batch, self.d)

    def prepare(self, x: torch.Tensor, code: torch.Tensor, first: torch.Tensor) -> None:
        """A new batch ``x`` (batch, inputs): its bin encoding, and the other columns copied
        into the first-layer input ``first`` (batch, >= inputs' width)."""
        e = self.module
        xe = x[:, : self.n].t().unsqueeze(2)  # (feature, batch, 1)
        torch.addcmul(e.offset.unsqueeze(1), e.scale.unsqueeze(1), xe, out=code)
        torch.maximum(code, e.lower.unsqueeze(1), out=code)
        torch.minimum(code, e.upper.unsqueeze(1), out=code)
        rest = x.shape[1] - self.n
        first[:, self.width : self.width + rest].copy_(x[:, self.n :])

    def forward(
        self, x: torch.Tensor, code: torch.Tensor, E: torch.Tensor, first: torch.Tensor
    ) -> None:
        """Write the embedded columns of ``first`` (batch, ...)."""
        p = self.p
        torch.bmm(code, p["weight"], out=E)  # (feature, batch, d)
        E.addcmul_(p["linear_weight"].unsqueeze(1), x[:, : self.n].t().unsqueeze(2))
        E.add_(p["linear_bias"].unsqueeze(1))
        first[:, : self.width].view(-1, self.n, self.d).copy_(E.transpose(0, 1))

    def backward(self, x: torch.Tensor, code: torch.Tensor, dE: torch.Tensor) -> None:
        """The parameters' gradients from ``dE`` (feature, batch, d), the embedding's."""
        g = self.g
        torch.sum(dE, dim=1, out=g["linear_bias"])
        torch.sum(dE * x[:, : self.n].t().unsqueeze(2), dim=1, out=g["linear_weight"])
        torch.bmm(code.transpose(1, 2), dE, out=g["weight"])
