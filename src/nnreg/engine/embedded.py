"""Piecewise-linear embeddings (:class:`nnreg.embeddings.PiecewiseLinearEmbedding`) in the
fast engines: :class:`PiecewiseInput`.

The embedding of feature ``f`` is ``x * linear_weight[f] + linear_bias[f] + code_f(x) @
weight[f]``, where the bin encoding ``code_f(x)`` depends on the fixed bins only. So it is
computed once per batch, and the embedding is linear in its parameters: their gradients are
two reductions and one batched product over the features, from the gradient of the embedded
columns. Both engines lay a batch's first-layer input out as rows, ``(batch, width)``: the
embedded columns (feature-major, as ``embed_inputs`` flattens them), then the other columns,
which are copied once per batch.

:class:`BatchedPiecewise` is the same for K independent members (:class:`~nnreg.engine.
BatchedMLP`): one set of bins, each member its own embedding parameters (rows of the members'
``(K, P)`` buffer), and each member's own rows, laid out as that engine's transposed
``(K, width + 1, batch)`` first-layer input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["BatchedPiecewise", "PiecewiseInput"]


def _encode(module: Any, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The bin encoding of ``x`` (..., feature, batch, 1), (..., feature, batch, bin)."""
    code = torch.addcmul(module.offset.unsqueeze(1), module.scale.unsqueeze(1), x, out=out)
    torch.maximum(code, module.lower.unsqueeze(1), out=code)
    return torch.minimum(code, module.upper.unsqueeze(1), out=code)


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
        _encode(self.module, x[:, : self.n].t().unsqueeze(2), out=code)
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


class BatchedPiecewise:
    """K members' piecewise-linear embeddings: the bins of ``module`` (every member's are the
    same, fitted on the same rows) and each member's parameters as views of the ``(K, P)``
    buffers ``params`` and ``grads`` from column ``start`` on, in the module's parameter
    order (:meth:`parameter_count` columns)."""

    def __init__(self, module: Any, params: torch.Tensor, grads: torch.Tensor, start: int) -> None:
        self.module = module
        self.n, self.bins, self.d = (int(s) for s in module.weight.shape)
        K = params.shape[0]
        self.p: dict[str, torch.Tensor] = {}
        self.g: dict[str, torch.Tensor] = {}
        for name, p in module.named_parameters():
            self.p[name] = params[:, start : start + p.numel()].view(K, *p.shape)
            self.g[name] = grads[:, start : start + p.numel()].view(K, *p.shape)
            start += p.numel()

    @staticmethod
    def parameter_count(module: Any) -> int:
        return sum(p.numel() for p in module.parameters())

    def load(self, members: Sequence[Any]) -> None:
        """Copy each member's embedding parameters into its row."""
        with torch.no_grad():
            for k, member in enumerate(members):
                for name in self.p:
                    self.p[name][k].copy_(getattr(member.embedding, name))

    def store(self, members: Sequence[Any]) -> None:
        """Write each row back into its member's embedding."""
        with torch.no_grad():
            for k, member in enumerate(members):
                for name in self.p:
                    getattr(member.embedding, name).copy_(self.p[name][k])

    def forward(self, X: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """Fill the first-layer input ``A`` (K, width + 1, batch; last row ones) from ``X``
        (K, batch, inputs + 1), or (batch, inputs + 1) shared by the members: each member's
        embedded columns, then the other columns. Returns the bin encoding, (K or 1,
        feature, batch, bin), for :meth:`backward`."""
        n, d = self.n, self.d
        K, batch = A.shape[0], A.shape[-1]
        x = X[..., :n].transpose(-2, -1).unsqueeze(-1)  # (K?, feature, batch, 1)
        code = _encode(self.module, x)
        E = torch.matmul(code, self.p["weight"])  # (K, feature, batch, d)
        E.addcmul_(self.p["linear_weight"].unsqueeze(2), x)
        E.add_(self.p["linear_bias"].unsqueeze(2))
        A[:, : n * d].view(K, n, d, batch).copy_(E.transpose(2, 3))
        rest = X.shape[-1] - 1 - n
        A[:, n * d : n * d + rest].copy_(X[..., n:-1].transpose(-2, -1))
        return code

    def backward(self, X: torch.Tensor, code: torch.Tensor, dA: torch.Tensor) -> None:
        """The parameters' gradients from ``dA`` (K, feature * d, batch), dLoss/d(the
        embedded rows of the first-layer input); they land in ``grads``."""
        n, d = self.n, self.d
        K, batch = dA.shape[0], dA.shape[-1]
        dE = dA.view(K, n, d, batch)
        x = X[..., :n].transpose(-2, -1).unsqueeze(-2)  # (K?, feature, 1, batch)
        self.g["linear_bias"].copy_(dE.sum(-1))
        self.g["linear_weight"].copy_((dE * x).sum(-1))
        self.g["weight"].copy_(torch.matmul(code.transpose(-1, -2), dE.transpose(-1, -2)))
