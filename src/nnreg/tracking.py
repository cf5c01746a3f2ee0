"""Run tracking, as an option: ``nnreg train --log tensorboard[:DIR]`` or ``--log
mlflow[:EXPERIMENT]``.

:class:`TensorBoardLog` writes TensorBoard event files with ``torch.utils.tensorboard`` (the
``nnreg[tensorboard]`` extra): during training, the training and validation loss of every
epoch (``loss/train``, ``loss/validation``); at the end, the learning rate of every epoch
(``lr``), the final metrics on the training rows (``final/train_rmse``, ...) and the run's
settings as text. Each run gets a folder of its own under DIR (default ``tensorboard/``),
named after its model folder and the time it started, so ``tensorboard --logdir DIR``
shows runs side by side.

:class:`MLflowLog` (the ``nnreg[mlflow]`` extra) logs to the tracking server or store that
MLflow's environment names (``MLFLOW_TRACKING_URI``; MLflow's own default otherwise, a
local ``mlflow.db`` with the artifacts under ``mlruns/``), in the experiment given (or
MLflow's default): the estimator's parameters, the per-epoch ``train_loss``,
``validation_loss`` and ``lr`` (sent in batches, not a request per epoch), the final
metrics, and the model folder as an MLflow model that ``mlflow.pyfunc.load_model`` reads
(:mod:`nnreg.mlflow_model`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .exceptions import ConfigError, MissingExtraError

__all__ = ["TRACKERS", "MLflowLog", "TensorBoardLog", "check", "tracker"]

TRACKERS = ("tensorboard", "mlflow")
DEFAULT_DIR = "tensorboard"
FLUSH_SECONDS = 2.0  # MLflow: epochs are sent at most this long after they end
MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch


def check(spec: str) -> None:
    """Raise now (ConfigError, MissingExtraError) what :func:`tracker` would raise later."""
    kind = spec.partition(":")[0]
    if kind not in TRACKERS:
        raise ConfigError(
            "--log must be tensorboard, tensorboard:DIR, mlflow or mlflow:EXPERIMENT, "
            f"got {spec!r}."
        )
    if kind == "mlflow":
        _mlflow()
    else:
        _summary_writer()


def _mlflow() -> Any:
    import os

    # The bar MLflow draws while it copies a model folder is noise in a command's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        with warnings.catch_warnings():  # MLflow's about its own type hints, at import
            warnings.simplefilter("ignore", UserWarning)
            import mlflow
            import mlflow.pyfunc  # noqa: F401 - the model flavour the run is logged with
    except ImportError:
        raise MissingExtraError(
            "--log mlflow needs the 'mlflow' extra, which is not installed; "
            "install it with: pip install 'nnreg[mlflow]'"
        ) from None
    return mlflow


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingExtraError(
            "--log tensorboard needs the 'tensorboard' extra, which is not installed; "
            "install it with: pip install 'nnreg[tensorboard]'"
        ) from None
    return SummaryWriter


def tracker(spec: str, run_name: str) -> TensorBoardLog | MLflowLog:
    """The tracker that ``spec`` (``tensorboard[:DIR]`` or ``mlflow[:EXPERIMENT]``) names."""
    check(spec)
    kind, _, where = spec.partition(":")
    if kind == "mlflow":
        return MLflowLog(where or None, run_name)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return TensorBoardLog(Path(where or DEFAULT_DIR) / f"{run_name}-{stamp}")


class TensorBoardLog:
    """Scalars of one training run, in TensorBoard's event files under ``logdir``."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._writer = _summary_writer()(log_dir=str(logdir))

    def epoch(self, epoch: int, loss: float, val: float | None) -> None:
        """One epoch's losses (the units of training: standardised for a scaled target)."""
        self._writer.add_scalar("loss/train", loss, epoch)
        if val is not None and math.isfinite(val):
            self._writer.add_scalar("loss/validation", val, epoch)

    def finish(
        self,
        history: Mapping[str, Sequence[float]],
        metrics: Mapping[str, float],
        settings: Mapping[str, Any],
        model_dir: Path,
        status: str = "FINISHED",
    ) -> str:
        """The learning rate of every epoch, the final metrics and the settings; closes.
        Returns where the run went, for the user."""
        for epoch, lr in zip(history.get("epoch", []), history.get("lr", []), strict=False):
            if math.isfinite(lr):
                self._writer.add_scalar("lr", lr, int(epoch))
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"final/{name}", value, 0)
        text = json.dumps(settings, indent=2, default=str)
        self._writer.add_text("settings", f"```\n{text}\n```", 0)
        self.close()
        return f"logged the run for TensorBoard in {self.logdir}"

    def close(self, status: str = "FINISHED") -> None:
        self._writer.flush()
        self._writer.close()


class MLflowLog:
    """One training run in MLflow: parameters, metric history, final metrics and the model."""

    def __init__(self, experiment: str | None, run_name: str) -> None:
        mlflow = _mlflow()
        if experiment is not None:
            mlflow.set_experiment(experiment)
        self._mlflow = mlflow
        self._run = mlflow.start_run(run_name=run_name)
        self._client = mlflow.MlflowClient()
        self._pending: list[Any] = []
        self._sent = time.monotonic()

    def _metric(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        if math.isfinite(value):
            self._pending.append(Metric(key, float(value), int(time.time() * 1000), int(step)))

    def _flush(self) -> None:
        run_id = self._run.info.run_id
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._client.log_batch(run_id, metrics=batch)
        self._sent = time.monotonic()

    def epoch(self, epoch: int, loss: float, val: float | None) -> None:
        self._metric("train_loss", loss, epoch)
        if val is not None:
            self._metric("validation_loss", val, epoch)
        if time.monotonic() - self._sent > FLUSH_SECONDS:
            self._flush()

    def finish(
        self,
        history: Mapping[str, Sequence[float]],
        metrics: Mapping[str, float],
        settings: Mapping[str, Any],
        model_dir: Path,
        status: str = "FINISHED",
    ) -> str:
        """Everything but the epochs' losses, then the model; ends the run with ``status``
        (KILLED for a run a signal stopped: its folder holds the best weights so far)."""
        from .artifact import load
        from .mlflow_model import log_model

        for epoch, lr in zip(history.get("epoch", []), history.get("lr", []), strict=False):
            self._metric("lr", lr, int(epoch))
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self._metric(name, value, 0)
        self._flush()
        params = {
            k: json.dumps(v, default=str) if not isinstance(v, str) else v
            for k, v in settings.items()
        }
        self._mlflow.log_params(params)
        uri = log_model(model_dir, load(model_dir, history=False).meta)
        self.close(status)
        return f"logged the run to MLflow ({self._mlflow.get_tracking_uri()}); its model: {uri}"

    def close(self, status: str = "FINISHED") -> None:
        """Send what is pending and end the run (FAILED when training failed)."""
        try:
            self._flush()
        finally:
            if self._mlflow.active_run() is not None:
                self._mlflow.end_run(status)
