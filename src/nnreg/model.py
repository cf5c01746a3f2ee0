"""The network: a frozen ``MLPConfig`` and the ``MLP`` it builds. Nothing about training here.

The default configuration is the seed experiment's network::

    Linear(2, 20) -> ReLU -> Linear(20, 20) -> ReLU -> Linear(20, 1)

with Xavier-uniform hidden weights, zero hidden biases, and PyTorch's default initialisation
for the output layer: 460 weights + 41 biases = 501 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import BIN_BUFFERS, EMBEDDINGS, PeriodicEmbedding, PiecewiseLinearEmbedding
from .engine.kernels import CounterDropout, DropoutSampler

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "MLP",
    "MLPConfig",
    "MLPEnsemble",
    "count_parameters",
    "embedding_shapes",
    "make_embedding",
    "n_members",
    "predict_moments",
    "state_shapes",
    "step_shape",
    "summary",
    "SeededDropout",
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
    # A parameter-efficient ensemble (nnreg.tabm) of k members: "tabm" or "tabm-mini".
    ensemble: str = "none"
    k: int = 1

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
        if self.ensemble == "none":
            del d["ensemble"], d["k"]
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
            "ensemble": d.get("ensemble", "none") in ("none", *SHARED_ENSEMBLES)
            and (d.get("ensemble", "none") == "none" or bool(sizes)),
            "k": _count(d.get("k", 1)) and d.get("k", 1) <= MAX_MEMBERS,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{bad[0]} is {d.get(bad[0])!r}")
        return cls(**d)


MAX_LAYERS = 1024  # hidden layers a saved configuration may have
SHARED_ENSEMBLES = ("tabm", "tabm-mini")  # nnreg.tabm's forms
MAX_MEMBERS = 4096  # k a saved configuration may have
EMBEDDING_FIELDS = ("embedding", "n_embedded", "d_embedding", "n_bins")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def state_shapes(config: MLPConfig, n_models: int = 1) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of ``MLP(config)`` (or of an ensemble of ``n_models``),
    computed without building the network."""
    if config.ensemble != "none":
        return tabm_shapes(config)
    sizes = [config.first_width, *config.hidden_sizes, config.n_outputs]
    one = embedding_shapes(config)
    for i, (a, b) in enumerate(pairwise(sizes)):
        one[f"layers.{i}.weight"], one[f"layers.{i}.bias"] = (b, a), (b,)
    if n_models == 1:
        return one
    return {f"members.{k}.{name}": s for k in range(n_models) for name, s in one.items()}


def tabm_shapes(config: MLPConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of ``nnreg.tabm.TabM(config)``."""
    k, full = config.k, config.ensemble == "tabm"
    shapes = embedding_shapes(config)
    sizes = [config.first_width, *config.hidden_sizes]
    for i, (a, b) in enumerate(pairwise(sizes)):
        shapes[f"weights.{i}"], shapes[f"biases.{i}"] = (b, a), (k, b) if full else (b,)
    for i, (a, b) in enumerate(pairwise(sizes)):
        if full or i == 0:
            shapes[f"r.{i}"] = (k, a)
        if full:
            shapes[f"s.{i}"] = (k, b)
    shapes["head_weight"], shapes["head_bias"] = (
        (k, sizes[-1], config.n_outputs),
        (k, config.n_outputs),
    )
    return shapes


def embedding_shapes(config: MLPConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of the network's numeric embedding (none: empty)."""
    n, d, k = config.n_embedded, config.d_embedding, config.n_bins
    if config.embedding == "piecewise":
        shapes = {"linear_weight": (n, d), "linear_bias": (n, d), "weight": (n, k, d)}
        shapes |= {name: (n, k) for name in BIN_BUFFERS}
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


def embed_inputs(
    embedding: nn.Module | None,
    config: MLPConfig,
    x: torch.Tensor,
    cast: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> torch.Tensor:
    """The first layer's input: the embedded columns flattened, then the others as they are;
    ``cast`` converts the embedding's tensors (float64 inference)."""
    if embedding is None:
        return x
    n = config.n_embedded
    e = embedding(x[:, :n], cast)  # (batch, n, d)
    return torch.cat([e.flatten(1), x[:, n:]], dim=1)


class SeededDropout(nn.Dropout):
    """``nn.Dropout`` whose masks come from ``generator`` once a trainer sets one (the fit's
    own stream, so that a seeded fit repeats and a resumed one continues exactly), drawn as
    the fast engine draws them (:class:`~nnreg.engine.DropoutSampler`); torch's global
    generator before."""

    generator: torch.Generator | None = None
    sampler: type[DropoutSampler] = DropoutSampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None or not self.training or self.p == 0:
            return super().forward(x)
        sampler = self.sampler(self.p, self.generator)
        return x * sampler.fill_(torch.empty_like(x, memory_format=torch.contiguous_format))


class CounterSeededDropout(SeededDropout):
    """:class:`SeededDropout` for shared-weight members (:class:`nnreg.tabm.TabM`), whose
    masks are :class:`~nnreg.engine.kernels.CounterDropout`'s, as their fast engine's are."""

    sampler = CounterDropout


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
        self.drop = SeededDropout(config.dropout)

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
        return embed_inputs(self.embedding, self.config, x, cast)

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
    shapes = state_shapes(config)
    for i, (a, b) in enumerate(pairwise(sizes)):
        last = i == len(sizes) - 2
        name, weights, biases = f"Linear{'' if last else ' + ' + config.activation}", a * b, b
        if config.ensemble != "none":  # shared weights and per-member r, s; k output layers
            adapters = [shapes.get(f"{v}.{i}", (0,)) for v in ("r", "s")]
            weights += sum(math.prod(s) for s in adapters)
            biases = math.prod(shapes.get(f"biases.{i}", (b,)))
            name = f"{config.ensemble} layer + {config.activation}"
            if last:
                name, weights, biases = f"{config.k} output layers", config.k * a * b, config.k * b
        rows.append(
            {
                "layer": name,
                "in": a,
                "out": b,
                "weights": weights,
                "biases": biases,
                "params": weights + biases,
            }
        )
    return rows


def n_members(model: nn.Module) -> int:
    """How many predictions a network makes per row: its members (independent or shared)."""
    if isinstance(model, MLPEnsemble):
        return len(model.members)
    config = getattr(model, "config", None)
    return config.k if isinstance(config, MLPConfig) else 1


def step_shape(model: nn.Module, batch: int) -> tuple[int, int]:
    """(rows, widest layer) of the products in a training step of ``model`` on ``batch``
    rows, which size its thread count: shared members are one network of k times the batch."""
    config = getattr(model, "config", None)
    if isinstance(config, MLPConfig) and config.ensemble != "none" and config.hidden_sizes:
        return batch * config.k, max(config.hidden_sizes)
    return batch, max(p.shape[0] for p in model.parameters())


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


class Predicts(Protocol):
    """A network that predicts in float64: (rows, outputs), or (members, rows, outputs)."""

    def predict_float64(self, x: torch.Tensor) -> torch.Tensor: ...


def predict_moments(model: Predicts, Z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of the members' float64 predictions for encoded inputs ``Z``,
    (rows, outputs) each; a single network has spread 1 (plain conformal residuals).

    Forward passes of PREDICT_CHUNK rows keep the float64 activations small; a row's
    prediction depends on the rows beside it only through float64 rounding (matrix products
    block their sums differently for other row counts), about 1e-16 relative."""
    parts = [
        model.predict_float64(Z[lo : lo + PREDICT_CHUNK]).cpu().numpy()
        for lo in range(0, max(len(Z), 1), PREDICT_CHUNK)
    ]
    out = np.concatenate(parts, axis=-2)  # rows are the second-to-last axis
    if out.ndim == 3:  # members: (K, rows, outputs)
        return out.mean(axis=0), out.std(axis=0, ddof=1)
    return out, np.ones_like(out)
