"""A model folder as an MLflow model: ``mlflow.pyfunc.load_model(uri).predict(frame)``.

Needs the ``nnreg[mlflow]`` extra; :mod:`nnreg.tracking` logs it at the end of a run with
``nnreg train --log mlflow``. The logged model holds the whole model folder as its
artifact, and its prediction is ``nnreg predict``'s table: one ``<target>_pred`` column per
target, in the rows' order. It is logged as MLflow's "model from code" (the file
``_mlflow_entry.py``, which names :class:`NnregModel`), so loading it unpickles nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from ._version import __version__
from .tracking import _mlflow

_mlflow()  # imported as MLflow's own warnings about its own classes are left unsaid
from mlflow.pyfunc import PythonModel  # noqa: E402

__all__ = ["NnregModel", "log_model"]

ARTIFACT = "model_dir"
# model.json's dtypes, as MLflow's column types; other kinds are text (categories).
COLUMN_TYPES = {"float64": "double", "float32": "float", "int64": "long", "int32": "integer"}


class NnregModel(PythonModel):
    """The model folder in the artifact ``model_dir``, read by :func:`nnreg.load`."""

    def load_context(self, context: Any) -> None:
        from .estimator import load

        self._reg = load(context.artifacts[ARTIFACT], history=False)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """``nnreg predict``'s table of the rows ``model_input`` (a DataFrame)."""
        reg = self._reg
        names = [f["name"] for f in reg.model_info_["features"]]
        pred = reg.predict(model_input[names]).reshape(len(model_input), -1)
        targets = reg.model_info_["targets"]
        return pd.DataFrame({f"{t}_pred": pred[:, j] for j, t in enumerate(targets)})


def log_model(model_dir: Path, meta: dict[str, Any]) -> str:
    """Log the folder as this run's model ``model``; returns its ``runs:/`` URI."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec(COLUMN_TYPES.get(f["dtype"], _other(f["dtype"])), f["name"])
            for f in meta["features"]
        ]
    )
    outputs = Schema([ColSpec("double", f"{t}_pred") for t in meta["targets"]])
    with warnings.catch_warnings():  # the signature is given: no example needed for it
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = _mlflow().pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("_mlflow_entry.py")),
            artifacts={ARTIFACT: str(model_dir)},
            signature=ModelSignature(inputs=inputs, outputs=outputs),
            pip_requirements=[f"nnreg=={__version__}"],
        )
    run = _mlflow().active_run()
    return f"runs:/{run.info.run_id}/model" if run is not None else str(info.model_uri)


def _other(dtype: str) -> str:
    return "boolean" if dtype == "bool" else "string"
