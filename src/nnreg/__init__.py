"""nnreg: neural-network regressors for tabular data, on PyTorch.

Public API (imported lazily, so ``nnreg --help`` starts without loading PyTorch)::

    nnreg.Regressor        scikit-learn estimator
    nnreg.load(path)       load a model folder
    nnreg.seed_dataset()   the seed experiment's data
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

# oneMKL's strict reproducibility mode: matrix products whose bits do not depend on the
# number of threads. nnreg changes its thread count with the machine's load (nnreg.device),
# and a seeded fit must not change with it; without this, MKL splits long reductions (a
# weight gradient over a batch) across threads on some processors. MKL reads it at its first
# call, so it is set here, before any; a value already set is kept. No measurable cost.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__all__ = [
    "ConfigError",
    "DataError",
    "DataFileError",
    "MLP",
    "MLPConfig",
    "ModelFileError",
    "NnregError",
    "NotFittedError",
    "PRESETS",
    "Regressor",
    "TrainingDivergedError",
    "__version__",
    "load",
    "read_table",
    "regression_metrics",
    "seed_dataset",
]

_WHERE = {
    "Regressor": "estimator",
    "PRESETS": "estimator",
    "load": "estimator",
    "MLP": "model",
    "MLPConfig": "model",
    "seed_dataset": "data",
    "read_table": "data",
    "regression_metrics": "metrics",
    "NnregError": "exceptions",
    "ConfigError": "exceptions",
    "DataError": "exceptions",
    "DataFileError": "exceptions",
    "ModelFileError": "exceptions",
    "NotFittedError": "exceptions",
    "TrainingDivergedError": "exceptions",
}

if TYPE_CHECKING:
    from .data import read_table, seed_dataset
    from .estimator import PRESETS, Regressor, load
    from .exceptions import (
        ConfigError,
        DataError,
        DataFileError,
        ModelFileError,
        NnregError,
        NotFittedError,
        TrainingDivergedError,
    )
    from .metrics import regression_metrics
    from .model import MLP, MLPConfig


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nnreg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
