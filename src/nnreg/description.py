"""A fitted Regressor described as its model folder records it: the inverse of
:mod:`nnreg.restore`.

:func:`describe` gives the contents of ``model.json`` beyond what :mod:`nnreg.artifact` adds
itself (format, versions, architecture, hashes): the features and their dtypes, the targets,
the fitted preprocessing, the training settings and epochs, the final metrics and the
calibration. It reads only a fitted estimator's public attributes.
"""

from __future__ import annotations

import math
from typing import Any

from .model import n_members

__all__ = ["describe"]


def describe(
    reg: Any,
    params: dict[str, Any],
    *,
    target_1d: bool,
    target_names: list[str] | None = None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``model.json``'s description of fitted ``reg`` trained with ``params`` (JSON-able);
    targets are named ``target_names`` (default y, or y0, y1, ...)."""
    pre = reg.preprocessor_
    n_outputs = reg.n_outputs_
    targets = target_names or (["y"] if n_outputs == 1 else [f"y{j}" for j in range(n_outputs)])
    held_out = dict(getattr(reg, "validation_metrics_", {}))
    training: dict[str, Any] = {
        "params": params,
        "epochs_run": reg.n_iter_,
        "best_epoch": reg.best_epoch_,
    }
    if hasattr(reg, "epochs_cv_"):  # max_iter='auto': how the epochs were chosen
        training["epochs_cv"] = reg.epochs_cv_
    meta = {
        "features": [{"name": n, "dtype": pre.dtypes[n]} for n in pre.columns],
        "feature_names_given": hasattr(reg, "feature_names_in_"),
        "targets": targets,
        "target_1d": target_1d,
        "preprocessing": {"inputs": pre.to_dict(), "target": reg.y_scaler_.to_dict()},
        "training": training,
        "metrics": {
            "final_train_loss": (reg.loss_curve_ or [math.nan])[-1],
            **{f"validation_{k}": v for k, v in held_out.items()},
            **(metrics or {}),
        },
        "n_models": n_members(reg.model_),
    }
    if hasattr(reg, "calibrator_"):
        meta["calibration"] = reg.calibrator_.to_dict()
    return meta
