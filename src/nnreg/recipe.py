"""Presets, parameter rules and the recipe: the one validated description of a fit.

Every way into fitting (``Regressor.fit`` and ``partial_fit``, streamed Parquet, sweeps, the
command line) turns an estimator's parameters into a :class:`Recipe` with
:meth:`Recipe.from_params`, which checks every parameter against :data:`PARAMETER_RULES` at
once and raises one :class:`~nnreg.exceptions.ConfigError` naming each problem. The recipe
then answers everything a fit needs to know before it sees data, and some things it needs
once it has: the network's :class:`~nnreg.model.MLPConfig` for a number of inputs and
outputs, the :class:`~nnreg.train.TrainConfig` for a number of rows, the resolved device, the
seeded initial networks (the only place that seeds torch's global generator), the minibatch
generator, and the validation split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .device import DEVICE_HELP, is_device_name, physical_memory, training_device
from .embeddings import EMBEDDINGS as NETWORK_EMBEDDINGS
from .exceptions import ConfigError
from .model import ACTIVATIONS, INITS, MAX_MEMBERS, MLP, MLPConfig, MLPEnsemble, count_parameters
from .preprocess import MISSING, SCALINGS, Standardizer, TablePreprocessor
from .presets import PRESETS, RECOMMENDED_PRESET, SEED_PRESET
from .tabm import TabM
from .train import LOSSES, OPTIMIZERS, SCHEDULES, TrainConfig

__all__ = [
    "EMBEDDINGS",
    "AUTO_BATCH",
    "AUTO_EPOCHS",
    "SHARED_EPOCHS",
    "PARAMETER_RULES",
    "PRESETS",
    "RECOMMENDED_PRESET",
    "SEED_PRESET",
    "Recipe",
    "auto_batch_size",
    "check_params",
    "epochs_of",
    "is_real",
    "jsonable",
    "member_seeds",
    "resolve_seed",
    "split_rows",
]


ENSEMBLES = ("independent", "tabm", "tabm-mini")  # how n_models > 1 members are built
MAX_BINS = 1024  # n_bins at most
AUTO_EPOCHS = 128  # max_iter='auto' where no count was chosen (streamed, swept, continued)
# Members that share their weights (TabM) learn more slowly than one network: each shared
# weight's gradient is the mean of k members' that pull apart, so their epoch counts are this
# many times one network's (README, Ensembles).
SHARED_EPOCHS = 2
AUTO_BATCH = 256  # the most rows per step of batch_size='auto'
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def auto_batch_size(n_rows: int) -> int:
    """Rows per step for ``batch_size='auto'``: the epoch in equal batches of at most
    AUTO_BATCH rows, so no epoch ends with a stray handful of rows taking a full step."""
    n_batches = max(1, math.ceil(n_rows / AUTO_BATCH))
    return max(1, math.ceil(n_rows / n_batches))


def epochs_of(max_iter: int | str, shared: bool = False) -> int:
    """The epochs a fit trains for ``max_iter``: 'auto' where nothing chose a count
    (:mod:`nnreg.epochs` chooses it for fits in memory) is AUTO_EPOCHS, SHARED_EPOCHS times
    that for ``shared`` members (TabM)."""
    if max_iter != "auto":
        return int(max_iter)
    return AUTO_EPOCHS * (SHARED_EPOCHS if shared else 1)


def member_seeds(seed: int, n_models: int) -> list[int]:
    """Seeds of the members: the first is ``seed`` itself, so member 0 is the single model."""
    return [(seed + 7919 * k) % (2**31 - 1) for k in range(n_models)]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and int(v) >= 1


def is_real(v: Any, lo: float, hi: float = math.inf, *, open_lo: bool = False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    x = float(v)
    return math.isfinite(x) and (x > lo if open_lo else x >= lo) and x < hi


def _one_of(options: tuple[str, ...] | list[str]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and v in options), f"one of {list(options)}"


def _seed(v: Any) -> bool:
    return v is None or isinstance(v, np.random.RandomState) or (_is_int(v) and 0 <= v < 2**32)


BOOL = (lambda v: isinstance(v, (bool, np.bool_)), "True or False")
FRACTION = (lambda v: is_real(v, 0.0, 1.0), "a number in [0, 1)")
POSITIVE = (lambda v: is_real(v, 0.0, open_lo=True), "a finite number > 0")
NON_NEGATIVE = (lambda v: is_real(v, 0.0), "a finite number >= 0")

# One table of parameter checks: name -> (test, what is allowed).
# The estimator's embedding choices: "auto" is piecewise-linear where the fit can embed (in
# memory: one network, independent or shared members) and none elsewhere (sweeps, streaming).
EMBEDDINGS = ("auto", *NETWORK_EMBEDDINGS)
PARAMETER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "hidden_layer_sizes": (
        lambda v: isinstance(v, (tuple, list)) and all(_positive_int(h) for h in v),
        "a tuple of positive integers, e.g. (64, 64); () for a linear model",
    ),
    "activation": _one_of(sorted(ACTIVATIONS)),
    "init": _one_of(INITS),
    "dropout": FRACTION,
    "optimizer": _one_of(OPTIMIZERS),
    "learning_rate_init": POSITIVE,
    "learning_rate": _one_of(SCHEDULES),
    "momentum": FRACTION,
    "nesterovs_momentum": BOOL,
    "weight_decay": NON_NEGATIVE,
    "beta_1": FRACTION,
    "beta_2": FRACTION,
    "epsilon": POSITIVE,
    "batch_size": (
        lambda v: v in ("auto", "full") or _positive_int(v),
        "a positive integer, 'auto' (equal batches of at most 256 rows) or 'full' (one step "
        "per epoch)",
    ),
    "max_iter": (
        lambda v: v == "auto" or _positive_int(v),
        "a positive integer (epochs) or 'auto' (chosen by cross-validation, nnreg.epochs)",
    ),
    "loss": _one_of(LOSSES),
    "early_stopping": BOOL,
    "validation_fraction": (lambda v: is_real(v, 0.0, 1.0, open_lo=True), "a number in (0, 1)"),
    "n_iter_no_change": (_positive_int, "a positive integer (epochs)"),
    "tol": NON_NEGATIVE,
    "scaling": _one_of(SCALINGS),
    "scale_target": BOOL,
    "clip_predictions": BOOL,
    "missing": _one_of(MISSING),
    "max_categories": (_positive_int, "a positive integer"),
    "dtype": _one_of(tuple(DTYPES)),
    "random_state": (_seed, "None, an integer in [0, 2**32) or a numpy RandomState"),
    "warm_start": BOOL,
    "n_models": (
        lambda v: _positive_int(v) and int(v) <= MAX_MEMBERS,
        f"an integer in [1, {MAX_MEMBERS}] (ensemble members)",
    ),
    "ensemble": _one_of(ENSEMBLES),
    "embedding": _one_of(EMBEDDINGS),
    "d_embedding": (_positive_int, "a positive integer (numbers per numeric column)"),
    "n_bins": (
        lambda v: _positive_int(v) and int(v) <= MAX_BINS,
        f"an integer in [1, {MAX_BINS}] (bins or frequencies per numeric column)",
    ),
    "device": (is_device_name, DEVICE_HELP),
    "verbose": (
        lambda v: isinstance(v, (bool, np.bool_)) or (_is_int(v) and v >= 0),
        "an integer >= 0 (0: silent, 1: about ten lines a fit, 2: every epoch)",
    ),
}

Label = Callable[[str], str]  # how a message names a parameter (the CLI adds its flag)


def check_params(params: Mapping[str, Any], label: Label | None = None) -> None:
    """Check every parameter in ``params`` that has a rule; raise one :class:`ConfigError`
    that lists each problem (``label(name)`` names a parameter; default: the name)."""
    name_of = label or (lambda name: name)
    problems = [
        f"{name_of(name)} must be {allowed}, got {params[name]!r}"
        for name, (ok, allowed) in PARAMETER_RULES.items()
        if name in params and not ok(params[name])
    ]
    if (
        not problems
        and params.get("nesterovs_momentum")
        and params.get("optimizer") == "sgd"
        and params.get("momentum") == 0
    ):
        problems.append(
            f"{name_of('nesterovs_momentum')}=True needs {name_of('momentum')} > 0 with "
            f"{name_of('optimizer')}='sgd'"
        )
    independent = params.get("n_models", 1) > 1 and params.get("ensemble") == "independent"
    if not problems and independent and params.get("embedding") == "periodic":
        problems.append(
            f"{name_of('embedding')}='periodic' needs one network or shared members (independent "
            f"members embed piecewise-linearly): set {name_of('ensemble')}='tabm' or "
            f"'tabm-mini', or {name_of('n_models')}=1"
        )
    shared = params.get("n_models", 1) > 1 and params.get("ensemble") in ("tabm", "tabm-mini")
    if not problems and shared and not params.get("hidden_layer_sizes"):
        problems.append(f"{name_of('ensemble')}={params['ensemble']!r} needs a hidden layer")
    if problems:
        raise ConfigError("invalid Regressor settings: " + "; ".join(problems) + ".")


def resolve_seed(random_state: Any) -> int:
    """The integer seed a fit uses: ``random_state`` itself, or one drawn from it (a
    RandomState) or from NumPy's global generator (None)."""
    if _is_int(random_state):
        return int(random_state)
    rng = (
        random_state if isinstance(random_state, np.random.RandomState) else np.random.mtrand._rand
    )
    return int(rng.randint(0, 2**31 - 1))


def jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as JSON/TOML values: tuples as lists, NumPy scalars as Python numbers, a
    RandomState as None (a fit records the seed it drew instead)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, tuple):
            v = [int(h) for h in v]
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.floating):
            v = float(v)
        elif isinstance(v, np.random.RandomState):
            v = None
        out[k] = v
    return out


@dataclass(frozen=True)
class Recipe:
    """A validated set of estimator parameters, and the seed one fit draws from them.

    Build it with :meth:`from_params`; ``params`` keeps the parameters as given, the fields
    hold them checked and typed.

    >>> from nnreg import Regressor
    >>> params = Regressor(hidden_layer_sizes=(8,), random_state=3).get_params()
    >>> recipe = Recipe.from_params(params)
    >>> recipe.model_config(n_inputs=2, n_outputs=1).hidden_sizes, recipe.seed
    ((8,), 3)
    """

    params: Mapping[str, Any]
    seed: int
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], *, seed: int | None = None, label: Label | None = None
    ) -> Recipe:
        """Check ``params`` (a full set, as ``Regressor.get_params()`` gives them) and fix
        the seed: ``seed`` when given (a warm start keeps its first fit's), else one
        resolved from ``random_state``."""
        check_params(params, label)
        fixed = dict(params)
        fixed["hidden_layer_sizes"] = tuple(int(h) for h in params["hidden_layer_sizes"])
        return cls(
            params=fixed,
            seed=resolve_seed(params["random_state"]) if seed is None else int(seed),
            device=training_device(params["device"]),
            dtype=DTYPES[params["dtype"]],
        )

    def __getitem__(self, name: str) -> Any:
        return self.params[name]

    @property
    def n_models(self) -> int:
        return int(self.params["n_models"])

    def preprocessor(self) -> TablePreprocessor:
        """The input transform to fit (unfitted)."""
        p = self.params
        return TablePreprocessor(p["scaling"], p["missing"], int(p["max_categories"]))

    def target_scaler(self) -> Standardizer:
        """The target transform to fit (unfitted)."""
        p = self.params
        return Standardizer(bool(p["scale_target"]), clip=bool(p["clip_predictions"]))

    def model_config(self, n_inputs: int, n_outputs: int, n_numeric: int = 0) -> MLPConfig:
        """The network for ``n_inputs`` encoded columns, the first ``n_numeric`` of them the
        numeric ones (what an embedding embeds); a piecewise embedding's ``n_bins`` is the
        most it may get (:func:`~nnreg.fitting` sets the number its bins have)."""
        p = self.params
        embedding = p["embedding"] if n_numeric > 0 else "none"
        if embedding == "auto":  # see EMBEDDINGS
            embedding = "piecewise"
        return MLPConfig(
            n_inputs=n_inputs,
            hidden_sizes=p["hidden_layer_sizes"],
            n_outputs=n_outputs,
            activation=p["activation"],
            init=p["init"],
            dropout=float(p["dropout"]),
            embedding=embedding,
            n_embedded=n_numeric if embedding != "none" else 0,
            d_embedding=int(p["d_embedding"]),
            n_bins=int(p["n_bins"]),
            ensemble=self.shared_ensemble or "none",
            k=self.n_models if self.shared_ensemble else 1,
        )

    @property
    def shared_ensemble(self) -> str | None:
        """'tabm' or 'tabm-mini' when the members share one network (nnreg.tabm), else None."""
        form = self.params["ensemble"]
        return form if self.n_models > 1 and form != "independent" else None

    def train_config(self, n_rows: int) -> TrainConfig:
        """How to train on ``n_rows`` rows per epoch (``batch_size='auto'`` depends on it)."""
        p = self.params
        batch = p["batch_size"]
        batch_size = (
            None if batch == "full" else auto_batch_size(n_rows) if batch == "auto" else int(batch)
        )
        return TrainConfig(
            epochs=epochs_of(p["max_iter"], self.shared_ensemble is not None),
            lr=float(p["learning_rate_init"]),
            optimizer=p["optimizer"],
            momentum=float(p["momentum"]),
            nesterov=bool(p["nesterovs_momentum"]),
            weight_decay=float(p["weight_decay"]),
            betas=(float(p["beta_1"]), float(p["beta_2"])),
            eps=float(p["epsilon"]),
            batch_size=batch_size,
            loss=p["loss"],
            schedule=p["learning_rate"],
            early_stopping=bool(p["early_stopping"]),
            n_iter_no_change=int(p["n_iter_no_change"]),
            tol=float(p["tol"]),
        )

    def member(self, config: MLPConfig, seed: int) -> MLP:
        """A network initialised from ``seed`` alone, on the training device and dtype; the
        global torch generator is left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MLP(config).to(device=self.device, dtype=self.dtype)

    def model(self, config: MLPConfig) -> MLP | MLPEnsemble | TabM:
        """The initial network: one, ``n_models`` independent members (member 0 is the single
        model), or shared-weight members in one network, drawn from the seed."""
        if config.ensemble != "none":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return TabM(config).to(device=self.device, dtype=self.dtype)
        seeds = member_seeds(self.seed, self.n_models)
        members = [self.member(config, seeds[0])]
        if len(seeds) > 1:
            self._refuse_oversized(members[0])
        members += [self.member(config, s) for s in seeds[1:]]
        return members[0] if len(members) == 1 else MLPEnsemble(config, members)

    def _refuse_oversized(self, member: MLP) -> None:
        """A ConfigError, before the members are built, when they would not fit in memory:
        training holds about nine copies of the weights (gradients, optimiser state, the
        engine's buffers), calibration helpers included; ten are counted."""
        need = count_parameters(member) * (self.n_models + 2) * self.dtype.itemsize * 10
        have = physical_memory()
        if have is not None and need > have:
            raise ConfigError(
                f"n_models={self.n_models} members of this network need about "
                f"{need / 2**30:.1f} GiB to train (weights, gradients, optimiser state), "
                f"more than this machine's {have / 2**30:.1f} GiB; use fewer members, "
                "ensemble='tabm' (shared weights) or a smaller network."
            )

    def generator(self) -> torch.Generator:
        """Minibatch order and dropout draw from their own stream, seeded like the weights."""
        return torch.Generator(device=self.device).manual_seed(self.seed + 1)

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        """``a`` on the training device and dtype. A copy: pandas may hand out read-only
        arrays, which torch refuses to share."""
        return torch.tensor(a, dtype=self.dtype, device=self.device)

    def validation_split(self, n: int, min_rows: int = 1) -> tuple[np.ndarray | None, np.ndarray]:
        """Row indices (held out, training): ``validation_fraction`` of ``n`` rows (at least
        ``min_rows``), drawn from the seed; (None, all) for a fit that holds out nothing (no
        early stopping, one model) or has fewer than two rows."""
        if not (self.params["early_stopping"] or self.n_models > 1) or n < 2:
            return None, np.arange(n)
        fraction = float(self.params["validation_fraction"])
        held_out, train = split_rows(n, fraction, self.seed, min_rows=min_rows, min_train=1)
        return held_out, train


def split_rows(
    n: int, fraction: float, seed: int, *, min_rows: int, min_train: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (held out, training), each sorted: ``fraction`` of ``n`` rows rounded,
    but at least ``min_rows`` (and 1) and leaving at least ``min_train``, drawn from
    ``seed``."""
    n_val = min(n - min_train, max(1, min_rows, round(fraction * n)))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])
