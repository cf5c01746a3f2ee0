"""Run tracking, as an option: ``nnreg train --log tensorboard[:DIR]``.

:class:`TensorBoardLog` writes TensorBoard event files with ``torch.utils.tensorboard`` (the
``nnreg[tensorboard]`` extra): during training, the training and validation loss of every
epoch (``loss/train``, ``loss/validation``); at the end, the learning rate of every epoch
(``lr``), the final metrics on the training rows (``final/train_rmse``, ...) and the run's
settings as text. Each run gets a folder of its own under DIR (default ``tensorboard/``),
named after its model folder and the time it started, so ``tensorboard --logdir DIR``
shows runs side by side.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .exceptions import ConfigError, MissingExtraError

__all__ = ["TRACKERS", "TensorBoardLog", "check", "tracker"]

TRACKERS = ("tensorboard",)
DEFAULT_DIR = "tensorboard"


def check(spec: str) -> None:
    """Raise now (ConfigError, MissingExtraError) what :func:`tracker` would raise later."""
    kind = spec.partition(":")[0]
    if kind not in TRACKERS:
        raise ConfigError(
            f"--log must be one of {', '.join(TRACKERS)} (optionally kind:DIR), got {spec!r}."
        )
    _summary_writer()


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingExtraError(
            "--log tensorboard needs the 'tensorboard' extra, which is not installed; "
            "install it with: pip install 'nnreg[tensorboard]'"
        ) from None
    return SummaryWriter


def tracker(spec: str, run_name: str) -> TensorBoardLog:
    """The tracker that ``spec`` (``tensorboard`` or ``tensorboard:DIR``) names."""
    check(spec)
    where = spec.partition(":")[2]
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
    ) -> None:
        """The learning rate of every epoch, the final metrics and the settings; closes."""
        for epoch, lr in zip(history.get("epoch", []), history.get("lr", []), strict=False):
            if math.isfinite(lr):
                self._writer.add_scalar("lr", lr, int(epoch))
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"final/{name}", value, 0)
        text = json.dumps(settings, indent=2, default=str)
        self._writer.add_text("settings", f"```\n{text}\n```", 0)
        self.close()

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
