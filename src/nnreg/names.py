"""The names the library's settings accept, importable without PyTorch.

The command line lists them in ``--help`` without importing anything heavy. Each tuple
repeats the keys of one library constant, which stays the authority
(``tests/test_startup.py`` checks that the two agree)::

    ACTIVATIONS   nnreg.model.ACTIVATIONS
    OPTIMIZERS    nnreg.train.OPTIMIZERS
    LOSSES        nnreg.train.LOSSES
    SCHEDULES     nnreg.train.SCHEDULES
    SCALINGS      nnreg.preprocess.SCALINGS
    EMBEDDINGS    nnreg.recipe.EMBEDDINGS
    ENSEMBLES     nnreg.recipe.ENSEMBLES

The presets themselves live in :mod:`nnreg.presets`, which imports nothing heavy either.
"""

from __future__ import annotations

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "ENSEMBLES",
    "LOSSES",
    "OPTIMIZERS",
    "SCALINGS",
    "SCHEDULES",
]

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("squared_error", "absolute_error", "huber")
SCHEDULES = ("constant", "cosine", "plateau")
SCALINGS = ("standard", "robust", "quantile", "none")
EMBEDDINGS = ("auto", "none", "piecewise", "periodic")
ENSEMBLES = ("independent", "tabm", "tabm-mini")
