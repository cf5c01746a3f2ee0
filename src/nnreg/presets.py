"""The presets: named sets of estimator parameters, importable without PyTorch (``train
--help`` shows their values). :mod:`nnreg.recipe` checks them like any other parameters."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "RECOMMENDED_PRESET", "SEED_PRESET"]

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
}
# The estimator's defaults, tuned on benchmarks/accuracy.py's panel (results/accuracy.md):
# three SiLU layers of 128 with dropout, AdamW with weight decay and a short-memory second
# moment (beta_2=0.95, as in RealMLP), a cosine learning-rate decay over 128 epochs.
RECOMMENDED_PRESET: dict[str, Any] = {
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
}
PRESETS = {"seed": SEED_PRESET, "recommended": RECOMMENDED_PRESET}
