"""A model folder read back as a fit result, every part checked against the others.

:mod:`nnreg.artifact` has already checked the files (hashes, sizes, the architecture against
the weights' shapes); here the contents of ``model.json`` are checked for what they mean:
the features against the input preprocessing, its encoded width against the network's
inputs, the target scaling and the calibration against its outputs. Anything inconsistent is
a :class:`~nnreg.exceptions.ModelFileError` of one line, raised before the network is built.
"""

from __future__ import annotations

from typing import Any

import torch

from . import fitting
from .artifact import SavedModel
from .ensemble import ConformalCalibrator
from .epochs import EpochChoice
from .exceptions import ModelFileError
from .preprocess import Standardizer, TablePreprocessor, finite_floats
from .recipe import DTYPES, check_params
from .tabm import build
from .train import History

__all__ = ["restore"]


def restore(saved: SavedModel, names: set[str]) -> tuple[dict[str, Any], fitting.FitResult]:
    """The estimator parameters (those in ``names``) and the fit result a folder holds."""
    meta = saved.meta
    config = saved.config
    try:
        params, pre, y_scaler, features = _parts(meta, names)
        calibrator = _calibrator(meta.get("calibration"), config.n_outputs)
        history = History.from_dict(saved.history)
        _check_description(meta, config.n_outputs)
        choice = EpochChoice.from_dict(meta["training"].get("epochs_cv"))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ModelFileError(f"{saved.path}/model.json is inconsistent: {_reason(exc)}.") from exc
    if not all(bool(torch.isfinite(t).all()) for t in saved.state_dict.values()):
        raise ModelFileError(f"{saved.path}: the weights hold NaN or infinite values.")
    if len(pre.output_names) != config.n_inputs or len(y_scaler.mean) != config.n_outputs:
        raise ModelFileError(
            f"{saved.path}/model.json is inconsistent: its preprocessing makes "
            f"{len(pre.output_names)} inputs and {len(y_scaler.mean)} targets, the network "
            f"takes {config.n_inputs} and gives {config.n_outputs}."
        )
    model = build(config, int(meta.get("n_models", 1)))
    model = model.to(dtype=DTYPES[params["dtype"]])
    model.load_state_dict(saved.state_dict)  # the shapes were checked against the header
    best = meta["training"].get("best_epoch", len(history) - 1)
    return params, fitting.FitResult(
        model=model,
        history=history,
        preprocessor=pre,
        y_scaler=y_scaler,
        seed=params["random_state"],
        n_features=len(features),
        feature_names=features if meta.get("feature_names_given") else None,
        n_outputs=config.n_outputs,
        y_1d=bool(meta["target_1d"]),
        best_epoch=int(best) if isinstance(best, int) else len(history) - 1,
        calibrator=calibrator,
        held_out=_held_out(meta.get("metrics", {})),
        epoch_choice=choice,
    )


def _held_out(metrics: dict[str, float]) -> dict[str, float] | None:
    """The held-out metrics that ``validation_*`` entries of model.json hold, or None."""
    found = {k[len("validation_") :]: v for k, v in metrics.items() if k.startswith("validation_")}
    return found or None


def _check_description(meta: dict[str, Any], n_outputs: int) -> None:
    """What ``nnreg info`` and ``predict`` print or use of model.json, checked (ValueError)."""
    targets = meta["targets"]
    if (
        not (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
        or len(set(targets)) != n_outputs
        or len(targets) != n_outputs
    ):
        raise ValueError("its targets are not one name per output of the network")
    features = meta["features"]
    if not isinstance(features, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("dtype"), str)
        for f in features
    ):
        raise ValueError("its features are not a list of names and dtypes")
    if not isinstance(meta["target_1d"], bool) or not isinstance(meta["training"], dict):
        raise ValueError("its target shape or training settings are not what nnreg writes")
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise ValueError("its metrics are not numbers")
    for key in ("nnreg_version", "torch_version", "created"):
        if not isinstance(meta.get(key, ""), str):
            raise ValueError(f"its {key} is not text")


def _parts(
    meta: dict[str, Any], names: set[str]
) -> tuple[dict[str, Any], TablePreprocessor, Standardizer, list[str]]:
    params = {k: v for k, v in meta["training"]["params"].items() if k in names}
    params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    params["device"] = "cpu"
    check_params(params)
    pre = TablePreprocessor.from_dict(meta["preprocessing"]["inputs"])
    y_scaler = Standardizer.from_dict(meta["preprocessing"]["target"])
    features = [f["name"] for f in meta["features"]]
    if features != pre.columns:
        raise ValueError("its features are not the columns its preprocessing was fitted on")
    return params, pre, y_scaler, features


def _calibrator(d: Any, n_outputs: int) -> ConformalCalibrator | None:
    """The calibration, checked: one sorted list of non-negative scores per target, as many
    for each, and a positive floor (zero unscaled). (``validation_rows`` in the metrics need
    not count them: ``nnreg train --holdout`` scores its own rows there.)"""
    if d is None:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("scaled", True), bool):
        raise ValueError("its calibration is not what nnreg writes")
    scores, floor = d.get("scores"), d.get("floor")
    rows = (
        [finite_floats(s, "calibration scores") for s in scores]
        if isinstance(scores, list)
        else None
    )
    floors = finite_floats(floor, "floor")
    if rows is None or len(rows) != n_outputs or len(floors) != n_outputs:
        raise ValueError("its calibration does not have one list of scores per target")
    if any(r != sorted(r) or any(v < 0 for v in r) for r in rows):
        raise ValueError("its calibration scores are not sorted non-negative numbers")
    if len({len(r) for r in rows}) != 1 or not rows[0]:
        raise ValueError("its calibration does not score its held-out rows once per target")
    if any(v <= 0 if d.get("scaled", True) else v != 0 for v in floors):
        raise ValueError("its calibration floor is not positive (zero for unscaled scores)")
    return ConformalCalibrator.from_dict(d)


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]!r} is missing"
    return str(exc).rstrip(".")
