"""The presets: named sets of estimator parameters, importable without PyTorch (``train
--help`` shows their values). :mod:`nnreg.recipe` checks them like any other parameters."""

from __future__ import annotations

from typing import Any

__all__ = ["PLAIN_PRESET", "PRESETS", "RECOMMENDED_PRESET", "SEED_PRESET", "Parameters"]

# The seed experiment's recipe, exactly (DESIGN.md).
SEED_PRESET: dict[str, Any] = {
    "hidden_layer_sizes": (20, 20),
    "activation": "relu",
    "init": "xavier_uniform",
    "dropout": 0.0,
    "optimizer": "sgd",
    "learning_rate_init": 0.001,
    "learning_rate": "constant",
    "momentum": 0.0,
    "nesterovs_momentum": False,
    "weight_decay": 0.0,
    "batch_size": "full",
    "max_iter": 500,
    "loss": "squared_error",
    "early_stopping": False,
    "scaling": "none",
    "scale_target": False,
    "embedding": "none",
}
# The recipe nnreg recommended before numeric embeddings, tuned on benchmarks/accuracy.py's
# panel: three SiLU layers of 128 with dropout, AdamW with weight decay and a short-memory
# second moment (beta_2=0.95, as in RealMLP), a cosine learning-rate decay over 128 epochs;
# numeric columns enter the network as they are.
PLAIN_PRESET: dict[str, Any] = {
    "hidden_layer_sizes": (128, 128, 128),
    "activation": "silu",
    "init": "xavier_uniform",
    "dropout": 0.15,
    "optimizer": "adamw",
    "learning_rate_init": 0.003,
    "learning_rate": "cosine",
    "momentum": 0.9,
    "nesterovs_momentum": False,
    "weight_decay": 0.02,
    "beta_1": 0.9,
    "beta_2": 0.95,
    "batch_size": "auto",
    "max_iter": 128,
    "loss": "squared_error",
    "early_stopping": False,
    "scaling": "standard",
    "scale_target": True,
    "embedding": "none",
}
# The estimator's defaults (results/accuracy.md): the plain recipe with piecewise-linear
# embeddings of the numeric columns (16 numbers each, over at most 48 quantile bins and at
# most one per 64 training rows), where the fit can embed ("auto"), and on tables of 100 to
# 1,000 rows 32, 64, 128 or 256 epochs, chosen by cross-validation (nnreg.epochs).
RECOMMENDED_PRESET: dict[str, Any] = {**PLAIN_PRESET, "embedding": "auto", "max_iter": "auto"}
PRESETS = {"seed": SEED_PRESET, "recommended": RECOMMENDED_PRESET, "plain": PLAIN_PRESET}


class Parameters:
    """The estimator's parameters as typed attributes: ``nnreg.Regressor.__init__`` stores
    each under its own name (scikit-learn's rule)."""

    hidden_layer_sizes: tuple[int, ...]
    activation: str
    init: str
    dropout: float
    optimizer: str
    learning_rate_init: float
    learning_rate: str
    momentum: float
    nesterovs_momentum: bool
    weight_decay: float
    beta_1: float
    beta_2: float
    epsilon: float
    batch_size: int | str
    max_iter: int | str
    loss: str
    early_stopping: bool
    validation_fraction: float
    n_iter_no_change: int
    tol: float
    scaling: str
    scale_target: bool
    clip_predictions: bool
    missing: str
    max_categories: int
    dtype: str
    random_state: Any  # int, numpy RandomState or None
    warm_start: bool
    n_models: int
    ensemble: str
    embedding: str
    d_embedding: int
    n_bins: int
    device: str
    verbose: int
