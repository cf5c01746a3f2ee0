"""The training loop: run -> epoch -> step. Knows nothing about files or the command line.

The model trains in training mode, the loss is called as ``loss(prediction, target)``, and
every epoch's losses are recorded in a :class:`History`. Data arrives as tensors already on
the device; minibatches are slices of a per-epoch permutation. The per-step math runs on the
hand-derived kernels of :mod:`nnreg.engine` when they cover the model and recipe, and on
autograd otherwise: two backends (:mod:`nnreg.backends`) behind one interface, which visit the
same minibatches in the same order. The learning-rate schedule, the score tracker and the
divergence check live in :mod:`nnreg.schedule`, shared with the ensemble trainer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from .backends import ELEMENTWISE as ELEMENTWISE  # the autograd losses, public here too
from .backends import MEAN as MEAN
from .backends import AutogradBackend, FastBackend, StepBackend, loss_function
from .device import adapt_threads, thread_policy
from .engine import FastMLP, FastTabM, FlatOptimizer, epoch_batches, shared_members, supports
from .exceptions import TrainingDivergedError
from .model import SeededDropout, step_shape
from .schedule import EarlyStopping, Schedule, check_finite, scored_epoch

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULES",
    "EarlyStopping",
    "History",
    "TrainConfig",
    "Trainer",
    "BatchSource",
    "GradientSync",
    "fit",
    "loss_function",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("squared_error", "absolute_error", "huber")
SCHEDULES = ("constant", "cosine", "plateau")
EVAL_CHUNK = 8192  # rows per forward pass when scoring validation data

EpochCallback = Callable[[int, float, "float | None"], None]
Validation = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]
Minibatch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]  # X, y, sample weights


class BatchSource(Protocol):
    """Minibatches that are not one in-memory table: a streamed file, or one rank's shard.

    ``epoch(i)`` yields epoch ``i``'s minibatches ``(X, y, weights or None)`` as tensors on
    the training device, already preprocessed; ``steps_per_epoch`` is how many it yields
    (the cosine schedule needs it in advance).
    """

    steps_per_epoch: int

    def epoch(self, epoch: int) -> Iterator[Minibatch]: ...


class GradientSync(Protocol):
    """How the processes of a distributed run agree (see :mod:`nnreg.distributed`).

    ``average_`` replaces a gradient tensor by its mean over the processes; ``sum_`` replaces
    a tensor of counts or totals by their sum. Both work in place. ``weight_total`` is what a
    weighted step's loss is normalised by, so that the averaged gradient is that of the
    global batch.
    """

    def average_(self, tensor: torch.Tensor) -> None: ...

    def sum_(self, tensor: torch.Tensor) -> None: ...

    def weight_total(self, weights: torch.Tensor) -> torch.Tensor:
        """What a process divides its weighted loss by: the sum of the step's weights over
        every process, divided by their number (per member for (K, rows) weights)."""
        ...


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults are the seed experiment's recipe."""

    epochs: int = 500
    lr: float = 0.001
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates
    eps: float = 1e-8
    batch_size: int | None = None  # None: one full-batch step per epoch
    loss: str = "squared_error"
    schedule: str = "constant"  # per-step cosine decay to 0, or reduce-on-plateau
    early_stopping: bool = False  # stop when the validation loss stalls; keep the best weights
    n_iter_no_change: int = 10
    tol: float = 1e-4
    engine: str = "auto"  # "fast" (hand-derived gradients), "autograd", or "auto": fast if it can
    threads: int | None = None  # intra-op threads; None: device.thread_policy decides

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """Per-epoch record: mean training loss, validation loss (NaN without one), learning rate."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, list[Any]]:
        return {
            "epoch": list(range(len(self))),
            "train_loss": list(self.train_loss),
            "val_loss": list(self.val_loss),
            "lr": list(self.lr),
        }

    @classmethod
    def from_dict(cls, d: dict[str, list[Any]]) -> History:
        n = len(d["train_loss"])
        return cls(
            train_loss=[float(v) for v in d["train_loss"]],
            val_loss=[float(v) for v in d.get("val_loss", [math.nan] * n)],
            lr=[float(v) for v in d.get("lr", [math.nan] * n)],
        )


def make_optimizer(params: Iterator[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(
        params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )


def make_backend(
    model: nn.Module, config: TrainConfig, generator: torch.Generator | None
) -> StepBackend:
    """The fast engine when ``config.engine`` asks for it or ("auto") it covers the model and
    recipe; autograd otherwise."""
    model_config = getattr(model, "config", None)
    activation = getattr(model_config, "activation", "")
    dropout = float(getattr(model_config, "dropout", 0.0))
    fast = config.engine == "fast" or (
        config.engine == "auto" and supports(model, activation, config.loss, config.optimizer)
    )
    if not fast:
        for module in model.modules():  # dropout draws from the fit's own stream
            if isinstance(module, SeededDropout):
                module.generator = generator
        return AutogradBackend(model, make_optimizer(model.parameters(), config), config.loss)
    kind = FastTabM if shared_members(model) else FastMLP
    net = kind(model, activation, config.loss, dropout, generator)
    flat = FlatOptimizer(
        net.params,
        net.grads,
        config.optimizer,
        config.lr,
        config.momentum,
        config.nesterov,
        config.weight_decay,
        config.betas,
        config.eps,
    )
    return FastBackend(model, net, flat)


@dataclass
class _Run:
    """What one call of :meth:`Trainer.run` was given, and the weights it falls back on."""

    validation: Validation | None
    callback: EpochCallback | None
    checkpoint: Callable[[Trainer], None] | None
    checkpoint_every: int
    steps_per_epoch: int
    first: int  # the history index of the run's epoch 0
    epochs: int = 0  # the run's length
    every_epoch: bool = True  # validation is scored every epoch, else on scored_epoch's
    good: Any = None  # the weights of the last finite epoch


class Trainer:
    """Training state that lives across calls: weights, optimiser state, history.

    ``run`` trains for some epochs and may be called again (``partial_fit``); the model's
    ``nn.Linear`` layers hold the current weights whenever ``run`` returns. The steps run on
    one backend (:mod:`nnreg.backends`): ``fast`` says which.
    """

    def __init__(
        self, model: nn.Module, config: TrainConfig, generator: torch.Generator | None = None
    ) -> None:
        self.model, self.config, self.generator = model, config, generator
        self.backend = make_backend(model, config, generator)
        self.fast = self.backend.fast
        self.history = History()
        self.schedule = Schedule(config.schedule, config.lr, config.n_iter_no_change, config.tol)
        self.best_epoch = -1
        self.best: Any = None  # weights of the best validation epoch, with early stopping
        self.run_epoch = 0  # epochs done in the current run (its schedule's position)
        self.stopper = EarlyStopping(config.n_iter_no_change, config.tol)
        self.stop: threading.Event | None = None  # set from outside (a signal): stop soon
        self.sync: GradientSync | None = None  # set for distributed runs: gradients averaged
        self.resuming = False  # set by load_state_dict: the next run continues that one

    def run(
        self,
        X: torch.Tensor | BatchSource,
        y: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
        *,
        epochs: int | None = None,
        validation: Validation | None = None,
        callback: EpochCallback | None = None,
        checkpoint: Callable[[Trainer], None] | None = None,
        checkpoint_every: int = 0,
    ) -> History:
        """Train on ``X`` (rows, inputs), ``y`` (rows, outputs) for ``epochs`` epochs.

        ``X`` may instead be a :class:`BatchSource` (then ``y`` and ``sample_weight`` stay
        None): its minibatches are trained on in the order it yields them.

        With ``validation`` data the validation loss is recorded every epoch; with
        ``early_stopping`` training stops once it has not improved by ``tol`` for
        ``n_iter_no_change`` epochs, and the weights of the best epoch are restored.
        ``callback(epoch, train_loss, val_loss)`` is called after every epoch, and
        ``checkpoint(trainer)`` after every ``checkpoint_every`` epochs (see ``state_dict``).
        Setting ``stop_requested`` (e.g. from a signal handler) ends training after the
        current step, keeping the best weights so far. A NaN or infinite loss restores the
        last finite weights and raises :class:`TrainingDivergedError`.
        """
        epochs = self.config.epochs if epochs is None else epochs
        batches, steps, batch_rows = self._plan(X)
        self._begin(max(1, epochs * steps))
        start = self.run_epoch
        first = len(self.history) - start
        every = self.config.early_stopping or self.config.schedule == "plateau"
        run = _Run(validation, callback, checkpoint, checkpoint_every, steps, first, epochs, every)
        rows, widest = step_shape(self.model, batch_rows)
        policy = thread_policy(rows, widest, self.config.threads, self.backend.one_thread_max_work)
        with policy, self.backend.no_graph():
            run.good = self.backend.snapshot()
            if isinstance(X, torch.Tensor):
                assert y is not None, "in-memory training needs targets"
                losses = self._epochs(X, y, sample_weight, batches, start, epochs)
            else:
                losses = self._source_epochs(X, start, epochs)
            for i, train_loss in enumerate(losses, start=start):
                if self._end_epoch(run, i, train_loss):
                    break
            if self.best is not None:
                self.backend.restore(self.best)
        self.backend.finish()
        if self.best_epoch < run.first:
            self.best_epoch = len(self.history) - 1
        return self.history

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _plan(self, X: torch.Tensor | BatchSource) -> tuple[list[tuple[int, int]], int, int]:
        """(minibatch bounds, steps per epoch, rows per step) of a run on ``X``."""
        batch_size = self.config.batch_size
        if isinstance(X, torch.Tensor):
            n = X.shape[0]
            batches = epoch_batches(n, batch_size)
            return batches, len(batches), min(batch_size or n, n)
        return [], max(1, X.steps_per_epoch), batch_size or EVAL_CHUNK

    def _begin(self, total_steps: int) -> None:
        """A fresh run gets its own schedule, stopping state and best weights; a resumed one
        (after ``load_state_dict``) continues the saved ones."""
        self.schedule.total_steps = total_steps
        if not self.resuming:
            self.run_epoch, self.best = 0, None
            self.stopper = EarlyStopping(self.config.n_iter_no_change, self.config.tol)
            self.schedule.restart()
        self.resuming = False

    def _end_epoch(self, run: _Run, i: int, train_loss: float) -> bool:
        """Score, record and judge the run's epoch ``i``; True when training should stop."""
        epoch = run.first + i
        validation = run.validation if run.every_epoch or scored_epoch(i, run.epochs) else None
        scored = validation is not None
        val_loss = self._validation_loss(validation) if validation is not None else math.nan
        self._check_finite(run, epoch, (train_loss, val_loss) if scored else (train_loss,))
        self.run_epoch = i + 1
        self.history.train_loss.append(train_loss)
        self.history.val_loss.append(val_loss)
        self.history.lr.append(self.schedule.rate(i * run.steps_per_epoch))
        self.schedule.observe(epoch, val_loss if scored else train_loss)
        stalled = self._early_stopping(epoch, val_loss) if scored else False
        if run.callback is not None:
            run.callback(epoch, train_loss, val_loss if scored else None)
        if self.stop_requested or stalled:
            return True
        every = run.checkpoint_every
        if run.checkpoint is not None and every and self.run_epoch % every == 0:
            run.checkpoint(self)
        return False

    def _early_stopping(self, epoch: int, val_loss: float) -> bool:
        """Keep the weights of a new best validation epoch; True once it has stalled."""
        if not self.config.early_stopping:
            return False
        if self.stopper.update(epoch, val_loss):
            self.best = self.backend.snapshot()
            self.best_epoch = epoch
        return self.stopper.stalled

    def _check_finite(self, run: _Run, epoch: int, losses: tuple[float, ...]) -> None:
        """Keep this epoch's weights as the last finite ones, or go back to those and raise.
        ``losses``: the training loss, then the validation loss when it was scored."""
        try:
            check_finite(epoch, losses, self.config.lr, f"loss is {losses[0]}", kept=True)
        except TrainingDivergedError:
            self.backend.restore(run.good)
            self.backend.finish()
            raise
        self.backend.copy_into(run.good)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue bitwise: (tensors, JSON-able scalars)."""
        tensors, optimizer_meta = self.backend.state_tensors()
        if self.generator is not None:
            tensors["generator"] = self.generator.get_state()
        if self.best is not None:
            tensors.update(self.backend.best_tensors(self.best))
        meta = {
            "run_epoch": self.run_epoch,
            "history": self.history.to_dict(),
            "lr_scale": self.schedule.scale,
            "best_epoch": self.best_epoch,
            "stopper": dict(vars(self.stopper)),
            "plateau": dict(vars(self.schedule.plateau)),
            "fast": self.backend.fast,
            "optimizer": optimizer_meta,
        }
        return {k: v.detach().cpu().clone() for k, v in tensors.items()}, meta  # a snapshot

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same model, data and config)."""
        if bool(meta["fast"]) != self.backend.fast:
            raise ValueError("the checkpoint was written by the other training engine")
        with torch.no_grad():
            self.backend.load_state(tensors, meta["optimizer"])
            self.best = self.backend.best_from(tensors)
        if self.generator is not None and "generator" in tensors:
            self.generator.set_state(tensors["generator"])
        self.run_epoch = int(meta["run_epoch"])
        self.history = History.from_dict(meta["history"])
        self.schedule.scale = float(meta["lr_scale"])
        self.best_epoch = int(meta["best_epoch"])
        vars(self.stopper).update(meta["stopper"])
        vars(self.schedule.plateau).update(meta["plateau"])
        self.resuming = True

    def _epochs(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor | None,
        batches: list[tuple[int, int]],
        start: int,
        epochs: int,
    ) -> Iterator[float]:
        """Yield each epoch's mean training loss: one host sync per epoch."""
        X = self.backend.inputs(X)
        self.backend.start()
        steps = len(batches)
        full = None if steps > 1 or self.sync is not None else self.backend.full_batch(X, y, w)
        for epoch in range(start, epochs):
            self.backend.set_lr(self.schedule.rate(epoch * steps))
            if full is not None:  # one fixed batch: the backend's shortest step
                adapt_threads()
                yield full()
            else:
                yield self._train_epoch(self._shuffle(X, y, w, batches), epoch, steps, X)

    def _shuffle(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor | None,
        batches: list[tuple[int, int]],
    ) -> Iterator[Minibatch]:
        """An epoch's minibatches: slices of a fresh permutation (drawn now, before any step
        draws dropout masks from the same generator); one batch is not shuffled."""
        if len(batches) > 1:
            perm = torch.randperm(X.shape[0], generator=self.generator, device=X.device)
            X, y = X[perm], y[perm]
            w = None if w is None else w[perm]
        return ((X[lo:hi], y[lo:hi], None if w is None else w[lo:hi]) for lo, hi in batches)

    def _source_epochs(self, source: BatchSource, start: int, epochs: int) -> Iterator[float]:
        """Like ``_epochs``, for minibatches that a :class:`BatchSource` yields."""
        steps = max(1, source.steps_per_epoch)
        like = next(self.model.parameters())
        self.backend.start()
        inputs = self.backend.inputs
        for epoch in range(start, epochs):
            self.backend.set_lr(self.schedule.rate(epoch * steps))
            minibatches = ((inputs(xb), yb, wb) for xb, yb, wb in source.epoch(epoch))
            yield self._train_epoch(minibatches, epoch, steps, like)

    def _train_epoch(
        self, minibatches: Iterable[Minibatch], epoch: int, steps: int, like: torch.Tensor
    ) -> float:
        """One step per minibatch (the cosine schedule moves every step); the epoch's mean
        training loss, with one host sync."""
        per_step = self.schedule.per_step
        sync = self.sync
        average = None if sync is None else sync.average_
        total = like.new_zeros(())
        rows = 0
        for b, (xb, yb, wb) in enumerate(minibatches):
            if per_step and b:
                self.backend.set_lr(self.schedule.rate(epoch * steps + b))
            # Weighted and distributed: normalise by the global batch's weight sum.
            weight_total = None if wb is None or sync is None else sync.weight_total(wb)
            loss, factor = self.backend.step(xb, yb, wb, average, weight_total)
            adapt_threads()  # another process may have taken a core
            total.add_(loss, alpha=factor * xb.shape[0])
            rows += xb.shape[0]
            if self.stop_requested:  # a signal: end the epoch after this step
                break
        return self._epoch_mean(total, rows)

    def _epoch_mean(self, total: torch.Tensor, rows: int) -> float:
        """The epoch's mean training loss over every row (of every process): one host sync."""
        if self.sync is not None:
            both = torch.stack([total.detach(), total.new_tensor(float(rows))])
            self.sync.sum_(both)
            total_all, rows_all = both.tolist()
            return total_all / rows_all if rows_all else math.nan
        return total.item() / rows if rows else math.nan

    @torch.no_grad()
    def _validation_loss(self, validation: Validation) -> float:
        """The mean loss on the validation rows, scored in chunks of EVAL_CHUNK rows."""
        X, y, w = validation
        n = X.shape[0]
        weight_total = None if w is None else float(w.sum())
        total = 0.0
        for start in range(0, n, EVAL_CHUNK):
            xb, yb = X[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
            wb = None if w is None else w[start : start + EVAL_CHUNK]
            loss = self.backend.validation_loss(xb, yb, wb)
            # Chunks count by their rows, or by their share of the total sample weight.
            share = (
                xb.shape[0] / n
                if wb is None or not weight_total
                else float(wb.sum()) / weight_total
            )
            total += loss * share
        return total


def fit(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    validation: Validation | None = None,
    callback: EpochCallback | None = None,
) -> History:
    """Train ``model`` in place on ``X`` (rows, inputs) and ``y`` (rows, outputs).

    Raises :class:`TrainingDivergedError` when an epoch's loss is NaN or infinite.
    """
    trainer = Trainer(model, config, generator)
    return trainer.run(X, y, sample_weight, validation=validation, callback=callback)
