"""What a training loop decides between steps: the learning rate, stalls, divergence.

Shared by :class:`nnreg.train.Trainer` and :class:`nnreg.ensemble.EnsembleTrainer`: one
learning-rate :class:`Schedule` (constant, per-step cosine decay, or reduce-on-plateau), one
score tracker (:class:`EarlyStopping`, which the plateau rule uses too), one divergence
check (:func:`check_finite`) and which epochs score validation rows (:func:`scored_epoch`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .exceptions import TrainingDivergedError

__all__ = [
    "MAX_SCORED_EPOCHS",
    "PLATEAU_FACTOR",
    "PLATEAU_MIN_SCALE",
    "EarlyStopping",
    "Schedule",
    "check_finite",
    "scored_epoch",
]

PLATEAU_FACTOR = 0.2  # reduce-on-plateau multiplies the learning rate by this
PLATEAU_MIN_SCALE = 1e-3  # ... but never below this fraction of the initial rate
MAX_SCORED_EPOCHS = 128  # at most, in a run that neither stops nor schedules on them


def scored_epoch(epoch: int, epochs: int) -> bool:
    """Whether a run of ``epochs`` that neither stops early nor schedules on its validation
    loss scores it after ``epoch``: on at most MAX_SCORED_EPOCHS evenly spaced epochs, the
    last among them (shared members' calibration rows, independent members' helpers)."""
    stride = max(1, math.ceil(epochs / MAX_SCORED_EPOCHS))
    return (epochs - 1 - epoch) % stride == 0


class EarlyStopping:
    """Tracks the best score and the epochs since it improved by more than ``tol``."""

    def __init__(self, patience: int, tol: float) -> None:
        self.patience, self.tol = patience, tol
        self.best, self.best_epoch, self.misses = math.inf, -1, 0

    def update(self, epoch: int, score: float) -> bool:
        """Record an epoch's score; True when it is a new best."""
        if score < self.best - self.tol:
            self.best, self.best_epoch, self.misses = score, epoch, 0
            return True
        self.misses += 1
        return False

    @property
    def stalled(self) -> bool:
        return self.misses >= self.patience


def cosine(step: int, total_steps: int) -> float:
    """The cosine decay's factor at ``step`` of ``total_steps``: from 1 down to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


class Schedule:
    """The learning rate at every step of a run.

    ``kind`` is ``"constant"``; ``"cosine"``, decaying ``lr`` to 0 over the run's
    ``total_steps``, step by step; or ``"plateau"``, multiplying the rate by
    ``PLATEAU_FACTOR`` (never below ``PLATEAU_MIN_SCALE`` of ``lr``) whenever the monitored
    loss has not improved by ``tol`` for half of ``patience`` epochs.

    >>> s = Schedule("cosine", lr=0.1)
    >>> s.total_steps = 4
    >>> [round(s.rate(step), 4) for step in range(4)]
    [0.1, 0.0854, 0.05, 0.0146]
    """

    def __init__(self, kind: str, lr: float, patience: int = 10, tol: float = 1e-4) -> None:
        self.kind, self.lr, self.tol = kind, lr, tol
        self.patience = max(1, patience // 2)
        self.scale = 1.0  # lowered by reduce-on-plateau; kept from one run to the next
        self.plateau = EarlyStopping(self.patience, tol)
        self.total_steps = 1  # of the current run, for the cosine decay

    @property
    def per_step(self) -> bool:
        """True when the rate changes within an epoch (the cosine decay)."""
        return self.kind == "cosine"

    def restart(self) -> None:
        """A fresh run: the plateau rule starts counting again (the lowered scale stays)."""
        self.plateau = EarlyStopping(self.patience, self.tol)

    def rate(self, step: int) -> float:
        """The learning rate at ``step`` (counted from the run's start)."""
        lr = self.lr * self.scale
        if self.kind == "cosine":
            lr *= cosine(step, self.total_steps)
        return lr

    def observe(self, epoch: int, loss: float) -> None:
        """Record an epoch's monitored loss; reduce-on-plateau lowers the rate on a stall."""
        if self.kind != "plateau" or self.plateau.update(epoch, loss):
            return
        if self.plateau.stalled:
            self.scale = max(self.scale * PLATEAU_FACTOR, PLATEAU_MIN_SCALE)
            self.plateau.misses = 0


def check_finite(
    epoch: int, losses: Iterable[float], lr: float, what: str, kept: bool = False
) -> None:
    """Raise :class:`TrainingDivergedError` when any of an epoch's ``losses`` is NaN or inf.

    ``what`` says which loss (in the message's parentheses); ``kept`` adds that the weights
    of the last finite epoch are kept.
    """
    if all(math.isfinite(v) for v in losses):
        return
    tail = "; the weights of the last finite epoch are kept" if kept else ""
    raise TrainingDivergedError(
        f"training diverged at epoch {epoch} ({what}); lower the learning rate "
        f"(now {lr:g}) or scale the data{tail}."
    )
