"""Parameter-efficient ensembles: TabM (Gorishniy et al., ICLR 2025) and its "mini" form.

``k`` members share every hidden layer's weight ``W`` and differ by small per-member vectors.
A hidden layer of the ``"tabm"`` form computes, for member ``m`` (BatchEnsemble)::

    h -> ((h * r[m]) @ W.T) * s[m] + b[m] -> activation -> dropout

and the ``"tabm-mini"`` form scales only the network's input by ``r[m]``; its hidden layers
are plain shared ``Linear`` layers. Both end in ``k`` separate output layers. With a batch
of B rows, a hidden layer is one ``(k * B, in) @ (in, out)`` product plus elementwise
scaling: the members cost little more than one network of their width on the CPU.

The members train together on the mean of their losses (not the loss of their mean) and
predict their mean; their spread is the ensemble's ``return_std``. The initialisation is
TabM's: shared weights and biases uniform in +-1/sqrt(fan in), every member starting from
the same bias; the first ``r`` random signs (normal with numeric embeddings, one draw per
embedded feature), every other ``r`` and ``s`` ones; the output layers drawn per member.

Layout (state-dict keys): ``embedding.*`` (shared, optional), ``weights.{i}`` (out, in),
``biases.{i}`` (k, out) ("tabm") or (out,) ("tabm-mini"), ``r.{i}`` (k, in) (every hidden
layer, or only the first), ``s.{i}`` (k, out) ("tabm" only), ``head_weight`` (k, last, outputs)
and ``head_bias`` (k, outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .model import (
    ACTIVATIONS,
    MLP,
    CounterSeededDropout,
    MLPConfig,
    MLPEnsemble,
    embed_inputs,
    make_embedding,
)

__all__ = ["Network", "TabM", "build"]

Cast = Callable[[torch.Tensor], torch.Tensor]


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    bound = fan_in**-0.5
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class TabM(nn.Module):
    """``config.k`` members in one network (``config.ensemble``: "tabm" or "tabm-mini"):
    ``(batch, n_inputs) -> (k, batch, n_outputs)``, each member's prediction.

    >>> from nnreg import Regressor
    >>> from nnreg.recipe import Recipe
    >>> params = Regressor(hidden_layer_sizes=(8,), n_models=4, ensemble="tabm").get_params()
    >>> net = TabM(Recipe.from_params(params).model_config(n_inputs=2, n_outputs=1))
    >>> net(torch.zeros(5, 2)).shape, net.predict_float64(torch.zeros(5, 2)).dtype
    (torch.Size([4, 5, 1]), torch.float64)
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        if config.ensemble not in ("tabm", "tabm-mini") or not config.hidden_sizes:
            raise ValueError("TabM needs ensemble='tabm' or 'tabm-mini' and a hidden layer")
        self.config = config
        k, full = config.k, config.ensemble == "tabm"
        self.embedding = make_embedding(config)
        sizes = [config.first_width, *config.hidden_sizes]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        self.r, self.s = nn.ParameterList(), nn.ParameterList()
        for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
            self.weights.append(_uniform((b, a), a))
            bias = _uniform((b,), a)  # every member starts from the same bias
            self.biases.append(nn.Parameter(bias.detach().expand(k, b).clone()) if full else bias)
            if full or i == 0:
                self.r.append(nn.Parameter(self._first_scaling(k) if i == 0 else torch.ones(k, a)))
            if full:
                self.s.append(nn.Parameter(torch.ones(k, b)))
        last = sizes[-1]
        self.head_weight = _uniform((k, last, config.n_outputs), last)
        self.head_bias = _uniform((k, config.n_outputs), last)
        self.act = ACTIVATIONS[config.activation]()
        self.drop = CounterSeededDropout(config.dropout)

    def _first_scaling(self, k: int) -> torch.Tensor:
        """The first layer's ``r``: random signs, or with embeddings a normal draw per
        embedded feature (shared by its ``d_embedding`` columns) and per other column."""
        c = self.config
        if c.embedding == "none":
            return torch.randint(0, 2, (k, c.first_width)).float().mul_(2).sub_(1)
        per_feature = torch.randn(k, c.n_embedded).repeat_interleave(c.d_embedding, dim=1)
        return torch.cat([per_feature, torch.randn(k, c.n_inputs - c.n_embedded)], dim=1)

    def forward(self, x: torch.Tensor, cast: Cast = lambda t: t) -> torch.Tensor:
        h = embed_inputs(self.embedding, self.config, x, cast)  # (batch, first_width)
        h = h.unsqueeze(0).expand(self.config.k, -1, -1)  # (k, batch, width), a view
        dropout = self.training and self.config.dropout > 0
        for i, weight in enumerate(self.weights):
            if i < len(self.r):
                h = h * cast(self.r[i]).unsqueeze(1)
            z = h @ cast(weight).T  # one (k * batch, in) @ (in, out) product
            if i < len(self.s):
                z = z * cast(self.s[i]).unsqueeze(1)
            bias = cast(self.biases[i])
            h = self.act(z + (bias.unsqueeze(1) if bias.dim() == 2 else bias))
            if dropout:
                h = self.drop(h)
        return torch.baddbmm(cast(self.head_bias).unsqueeze(1), h, cast(self.head_weight))

    @torch.no_grad()
    def predict_float64(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's float64 prediction, (k, batch, n_outputs), without dropout."""
        training = self.training
        self.eval()
        try:
            return self(x.double(), lambda t: t.double())
        finally:
            self.train(training)


Network = MLP | MLPEnsemble | TabM  # what a fit trains and a model folder holds


def build(config: MLPConfig, n_models: int = 1) -> Network:
    """An (untrained) network of ``config``: shared members when the configuration says so,
    else one MLP or ``n_models`` independent ones."""
    if config.ensemble != "none":
        return TabM(config)
    return MLP(config) if n_models == 1 else MLPEnsemble.empty(config, n_models)
