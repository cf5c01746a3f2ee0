"""The network: a frozen ``MLPConfig`` and the ``MLP`` it builds. Nothing about training here.

The default configuration is the seed experiment's network::

    Linear(2, 20) -> ReLU -> Linear(20, 20) -> ReLU -> Linear(20, 1)

with Xavier-uniform hidden weights, zero hidden biases, and PyTorch's default initialisation
for the output layer: 460 weights + 41 biases = 501 parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import EMBEDDINGS, PeriodicEmbedding, PiecewiseLinearEmbedding

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "MLP",
    "MLPConfig",
    "MLPEnsemble",
    "count_parameters",
    "embedding_shapes",
    "make_embedding",
    "predict_moments",
    "state_shapes",
    "summary",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
INITS = ("xavier_uniform", "default")


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of a multilayer perceptron; a saved model is rebuilt from this alone."""

    n_inputs: int = 2
    hidden_sizes: tuple[int, ...] = field(default=(20, 20))
    n_outputs: int = 1
    activation: str = "relu"
    init: str = "xavier_uniform"  # of the hidden layers; the output layer keeps PyTorch's default
    dropout: float = 0.0  # after each hidden activation, in training mode
    # Numeric embeddings (nnreg.embeddings) of the first n_embedded inputs, d_embedding
    # numbers each; n_bins: a piecewise embedding's slots per feature (its most bins), a
    # periodic one's frequencies per feature.
    embedding: str = "none"
    n_embedded: int = 0
    d_embedding: int = 16
    n_bins: int = 48

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store a tuple so the config stays hashable.
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))

    @property
    def first_width(self) -> int:
        """The first layer's input width: embedded inputs count ``d_embedding`` each."""
        if self.embedding == "none":
            return self.n_inputs
        return self.n_inputs + self.n_embedded * (self.d_embedding - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        if self.embedding == "none":  # written as before embeddings existed
            for name in EMBEDDING_FIELDS:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MLPConfig:
        """The configuration saved as ``d``, checked field by field (it may come from a file
        nnreg did not write): ValueError or TypeError names the first bad field."""
        if not isinstance(d, dict) or set(d) - set(cls.__dataclass_fields__):
            raise ValueError(
                f"not an MLP configuration: {sorted(d) if isinstance(d, dict) else d!r}"
            )
        sizes = d.get("hidden_sizes", [])
        checks = {
            "n_inputs": _count(d.get("n_inputs")),
            "n_outputs": _count(d.get("n_outputs")),
            "hidden_sizes": isinstance(sizes, list)
            and len(sizes) <= MAX_LAYERS
            and all(_count(h) for h in sizes),
            "activation": d.get("activation") in ACTIVATIONS,
            "init": d.get("init") in INITS,
            "dropout": isinstance(d.get("dropout"), (int, float)) and 0 <= d["dropout"] < 1,
            "embedding": d.get("embedding", "none") in EMBEDDINGS,
            "n_embedded": d.get("embedding", "none") == "none"
            or (_count(d.get("n_embedded")) and d["n_embedded"] <= d.get("n_inputs", 0)),
            "d_embedding": _count(d.get("d_embedding", 1)),
            "n_bins": _count(d.get("n_bins", 1)),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{bad[0]} is {d.get(bad[0])!r}")
        return cls(**d)


MAX_LAYERS = 1024  # hidden layers a saved configuration may have
EMBEDDING_FIELDS = ("embedding", "n_embedded", "d_embedding", "n_bins")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def state_shapes(config: MLPConfig, n_models: int = 1) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of ``MLP(config)`` (or of an ensemble of ``n_models``),
    computed without building the network."""
    sizes = [config.first_width, *config.hidden_sizes, config.n_outputs]
    one = embedding_shapes(config)
    for i, (a, b) in enumerate(pairwise(sizes)):
        one[f"layers.{i}.weight"], one[f"layers.{i}.bias"] = (b, a), (b,)
    if n_models == 1:
        return one
    return {f"members.{k}.{name}": s for k in range(n_models) for name, s in one.items()}


def embedding_shapes(config: MLPConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of the network's numeric embedding (none: empty)."""
    n, d, k = config.n_embedded, config.d_embedding, config.n_bins
    if config.embedding == "piecewise":
        shapes = {"linear_weight": (n, d), "linear_bias": (n, d), "weight": (n, k, d)}
        shapes |= {name: (n, k) for name in ("scale", "offset", "lower", "upper")}
    elif config.embedding == "periodic":
        shapes = {"frequencies": (n, k), "weight": (n, 2 * k, d), "bias": (n, d)}
    else:
        return {}
    return {f"embedding.{name}": shape for name, shape in shapes.items()}


def make_embedding(config: MLPConfig) -> nn.Module | None:
    """The configuration's numeric embedding module, initialised (None without one)."""
    if config.embedding == "piecewise":
        return PiecewiseLinearEmbedding(config.n_embedded, config.n_bins, config.d_embedding)
    if config.embedding == "periodic":
        return PeriodicEmbedding(config.n_embedded, config.n_bins, config.d_embedding)
    return None


class MLP(nn.Module):
    """A fully connected network built from an :class:`MLPConfig`.

    Parameters
    ----------
    config : MLPConfig
        The architecture. Layers are created in order (hidden layers, then output layer) and
        the hidden layers are then initialised, so a given ``torch.manual_seed`` always gives
        the same weights.

    Examples
    --------
    >>> import torch
    >>> from nnreg.model import MLP, MLPConfig
    >>> net = MLP(MLPConfig())
    >>> net(torch.zeros(5, 2)).shape
    torch.Size([5, 1])
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = make_embedding(config)  # drawn first; None draws nothing
        sizes = [config.first_width, *config.hidden_sizes, config.n_outputs]
        linears = [nn.Linear(a, b) for a, b in pairwise(sizes)]  # draws default inits in order
        if config.init == "xavier_uniform":
            for layer in linears[:-1]:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.layers = nn.ModuleList(linears)
        self.act = ACTIVATIONS[config.activation]()
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, n_inputs) -> (batch, n_outputs)
        x = self.embed(x)  # (batch, first_width)
        *hidden, out = self.layers
        for layer in hidden:
            x = self.drop(self.act(layer(x)))  # (batch, hidden)
        return out(x)

    def embed(
        self, x: torch.Tensor, cast: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    ) -> torch.Tensor:
        """The first layer's input: the embedded columns flattened, then the others as they
        are; ``cast`` converts the embedding's tensors (float64 inference)."""
        if self.embedding is None:
            return x
        n = self.config.n_embedded
        e = self.embedding(x[:, :n], cast)  # (batch, n, d)
        return torch.cat([e.flatten(1), x[:, n:]], dim=1)

    @torch.no_grad()
    def predict_float64(self, x: torch.Tensor) -> torch.Tensor:
        """Inference in float64 whatever the parameters' dtype: results do not depend on how
        rows are grouped into batches, and the model itself is left untouched."""
        x = self.embed(x.double(), lambda t: t.double())
        act = self.act
        *hidden, out = [m for m in self.layers if isinstance(m, nn.Linear)]
        for layer in hidden:
            x = act(F.linear(x, layer.weight.double(), layer.bias.double()))
        return F.linear(x, out.weight.double(), out.bias.double())


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summary(config: MLPConfig) -> list[dict[str, Any]]:
    """One row per layer: name, input and output width, weights, biases and parameters.

    >>> rows = summary(MLPConfig())
    >>> sum(r["params"] for r in rows)
    501
    """
    sizes = [config.first_width, *config.hidden_sizes, config.n_outputs]
    rows = []
    if config.embedding != "none":
        n, d, k = config.n_embedded, config.d_embedding, config.n_bins
        piecewise = config.embedding == "piecewise"
        weights = n * k * d + n * d if piecewise else n * (k + 2 * k * d)
        unit = "bins" if piecewise else "frequencies"
        rows.append(
            {
                "layer": f"{config.embedding} embedding ({k} {unit})",
                "in": config.n_inputs,
                "out": config.first_width,
                "weights": weights,
                "biases": n * d,
                "params": weights + n * d,
            }
        )
    for i, (a, b) in enumerate(pairwise(sizes)):
        last = i == len(sizes) - 2
        rows.append(
            {
                "layer": f"Linear{'' if last else ' + ' + config.activation}",
                "in": a,
                "out": b,
                "weights": a * b,
                "biases": b,
                "params": a * b + b,
            }
        )
    return rows


class MLPEnsemble(nn.Module):
    """K MLPs of one configuration (the members of an ensemble), saved and loaded together.

    >>> ens = MLPEnsemble(MLPConfig(), [MLP(MLPConfig()) for _ in range(3)])
    >>> ens.predict_float64(torch.zeros(5, 2)).shape
    torch.Size([3, 5, 1])
    """

    def __init__(self, config: MLPConfig, members: list[MLP]) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(members)

    @classmethod
    def empty(cls, config: MLPConfig, n_models: int) -> MLPEnsemble:
        return cls(config, [MLP(config) for _ in range(n_models)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, n_inputs) -> (K, batch, n_outputs)
        return torch.stack([m(x) for m in self.members])

    @torch.no_grad()
    def predict_float64(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's float64 prediction: (K, batch, n_outputs)."""
        members: list[MLP] = list(self.members)  # type: ignore[arg-type]
        return torch.stack([m.predict_float64(x) for m in members])


PREDICT_CHUNK = 8192  # rows per float64 forward pass when predicting


def predict_moments(model: MLP | MLPEnsemble, Z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of the members' float64 predictions for encoded inputs ``Z``,
    (rows, outputs) each; a single network has spread 1 (plain conformal residuals).

    Forward passes of PREDICT_CHUNK rows keep the float64 activations small; a row's
    prediction does not depend on the rows beside it."""
    parts = [
        model.predict_float64(Z[lo : lo + PREDICT_CHUNK]).cpu().numpy()
        for lo in range(0, max(len(Z), 1), PREDICT_CHUNK)
    ]
    out = np.concatenate(parts, axis=-2)  # rows are the second-to-last axis
    if isinstance(model, MLPEnsemble):  # out: (K, rows, outputs)
        return out.mean(axis=0), out.std(axis=0, ddof=1)
    return out, np.ones_like(out)
