"""The training loop: run -> epoch -> step. Knows nothing about files or the command line.

The model trains in training mode, the loss is called as ``loss(prediction, target)``, and
every epoch's losses are recorded in a :class:`History`. Data arrives as tensors already on
the device; minibatches are slices of a per-epoch permutation. The per-step math runs on the
hand-derived kernels of :mod:`nnreg.engine` when they cover the model and recipe, and on
autograd otherwise; both visit the same minibatches in the same order.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .device import thread_policy
from .engine import FastMLP, FlatOptimizer, epoch_batches, supports
from .exceptions import TrainingDivergedError

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
PLATEAU_FACTOR = 0.2  # reduce-on-plateau multiplies the learning rate by this
PLATEAU_MIN_SCALE = 1e-3  # ... but never below this fraction of the initial rate
EVAL_CHUNK = 8192  # rows per forward pass when scoring validation data

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
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
    a tensor of counts or totals by their sum. Both work in place.
    """

    def average_(self, tensor: torch.Tensor) -> None: ...

    def sum_(self, tensor: torch.Tensor) -> None: ...


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


def loss_function(name: str) -> LossFn:
    """Per-batch loss ``f(prediction, target, weight)``, a scalar; weights are per row."""
    elementwise, plain = ELEMENTWISE[name], MEAN[name]

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        if weight is None:
            return plain(pred, target)
        per_row = elementwise(pred, target).mean(dim=1)  # (batch,)
        return (per_row * weight).sum() / weight.sum()

    return loss


Pointwise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ELEMENTWISE: dict[str, Pointwise] = {
    "squared_error": lambda p, t: (p - t).square(),
    "absolute_error": lambda p, t: (p - t).abs(),
    "huber": lambda p, t: F.huber_loss(p, t, reduction="none", delta=1.0),
}
MEAN: dict[str, Pointwise] = {
    "squared_error": lambda p, t: F.mse_loss(p, t),
    "absolute_error": lambda p, t: F.l1_loss(p, t),
    "huber": lambda p, t: F.huber_loss(p, t, delta=1.0),
}


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


class Trainer:
    """Training state that lives across calls: weights, optimiser state, history.

    ``run`` trains for some epochs and may be called again (``partial_fit``); the model's
    ``nn.Linear`` layers hold the current weights whenever ``run`` returns.
    """

    def __init__(
        self, model: nn.Module, config: TrainConfig, generator: torch.Generator | None = None
    ) -> None:
        self.model, self.config, self.generator = model, config, generator
        model_config = getattr(model, "config", None)
        activation = getattr(model_config, "activation", "")
        dropout = float(getattr(model_config, "dropout", 0.0))
        self.fast = config.engine == "fast" or (
            config.engine == "auto" and supports(model, activation, config.loss, config.optimizer)
        )
        self.net: FastMLP | None = None
        if self.fast:
            self.net = FastMLP(model, activation, config.loss, dropout, generator)
            self.optimizer: Any = FlatOptimizer(
                self.net.params,
                self.net.grads,
                config.optimizer,
                config.lr,
                config.momentum,
                config.nesterov,
                config.weight_decay,
                config.betas,
                config.eps,
            )
        else:
            self.optimizer = make_optimizer(model.parameters(), config)
            self.loss_fn = loss_function(config.loss)
        self.history = History()
        self.lr_scale = 1.0  # lowered by reduce-on-plateau
        self.best_epoch = -1
        self.best: Any = None  # weights of the best validation epoch, with early stopping
        self.run_epoch = 0  # epochs done in the current run (its schedule's position)
        self.stopper = EarlyStopping(config.n_iter_no_change, config.tol)
        self.plateau = EarlyStopping(max(1, config.n_iter_no_change // 2), config.tol)
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
        cfg = self.config
        epochs = cfg.epochs if epochs is None else epochs
        if isinstance(X, torch.Tensor):
            assert y is not None, "in-memory training needs targets"
            n = X.shape[0]
            batches = epoch_batches(n, cfg.batch_size)
            steps_per_epoch = len(batches)
            batch_rows = min(cfg.batch_size or n, n)
        else:
            steps_per_epoch = max(1, X.steps_per_epoch)
            batch_rows = cfg.batch_size or EVAL_CHUNK
        total_steps = max(1, epochs * steps_per_epoch)
        if not self.resuming:  # a fresh run: its own schedule, stopping state and best weights
            self.run_epoch, self.best = 0, None
            self.stopper = EarlyStopping(cfg.n_iter_no_change, cfg.tol)
            self.plateau = EarlyStopping(max(1, cfg.n_iter_no_change // 2), cfg.tol)
        self.resuming = False
        start = self.run_epoch
        first = len(self.history) - start
        widest = max(p.shape[0] for p in self.model.parameters())
        no_graph = torch.no_grad() if self.net is not None else contextlib.nullcontext()
        with thread_policy(batch_rows, widest, cfg.threads), no_graph:
            good = self._snapshot()  # the last finite weights
            if isinstance(X, torch.Tensor):
                assert y is not None
                epoch_losses = self._epochs(
                    X, y, sample_weight, batches, start, epochs, total_steps
                )
            else:
                epoch_losses = self._source_epochs(X, start, epochs, total_steps)
            for i, train_loss in enumerate(epoch_losses, start=start):
                epoch = first + i
                val_loss = self._validation_loss(validation) if validation else math.nan
                checked = (train_loss, val_loss) if validation else (train_loss,)
                if not all(math.isfinite(v) for v in checked):
                    self._restore(good)
                    self._finish()
                    raise TrainingDivergedError(
                        f"training diverged at epoch {epoch} (loss is {train_loss}); lower "
                        f"the learning rate (now {cfg.lr:g}) or scale the data; the weights "
                        "of the last finite epoch are kept."
                    )
                self._copy_into(good)
                self.run_epoch = i + 1
                self.history.train_loss.append(train_loss)
                self.history.val_loss.append(val_loss)
                self.history.lr.append(self._lr(i * steps_per_epoch, total_steps))
                monitored = val_loss if validation else train_loss
                if cfg.schedule == "plateau" and not self.plateau.update(epoch, monitored):
                    self._maybe_reduce_lr(self.plateau)
                stopping = cfg.early_stopping and validation is not None
                if stopping and self.stopper.update(epoch, val_loss):
                    self.best = self._snapshot()
                    self.best_epoch = epoch
                if callback is not None:
                    callback(epoch, train_loss, val_loss if validation else None)
                if self.stop_requested or (stopping and self.stopper.stalled):
                    break
                if (
                    checkpoint is not None
                    and checkpoint_every
                    and self.run_epoch % checkpoint_every == 0
                ):
                    checkpoint(self)
            if self.best is not None:
                self._restore(self.best)
        self._finish()
        if self.best_epoch < first:
            self.best_epoch = len(self.history) - 1
        return self.history

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _finish(self) -> None:
        if self.net is not None:
            self.net.copy_to(self.model)

    def _copy_into(self, snapshot: Any) -> None:
        if self.net is not None:
            snapshot.copy_(self.net.params)
        else:
            for k, v in self.model.state_dict().items():
                snapshot[k].copy_(v)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue bitwise: (tensors, JSON-able scalars)."""
        tensors: dict[str, torch.Tensor] = {}
        if self.net is not None:
            tensors["params"] = self.net.params
            for name in ("buf", "exp_avg", "exp_avg_sq", "step_t"):
                value = getattr(self.optimizer, name, None)
                if value is not None:
                    tensors[f"optimizer.{name}"] = value
            optimizer_meta: dict[str, Any] = {}
        else:
            tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
            state = self.optimizer.state_dict()
            for index, entry in state["state"].items():
                for key, value in entry.items():
                    tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
            optimizer_meta = {"param_groups": state["param_groups"]}
        if self.generator is not None:
            tensors["generator"] = self.generator.get_state()
        if self.best is not None:
            best = self.best if self.net is not None else None
            if best is not None:
                tensors["best"] = best
            else:
                tensors.update({f"best.{k}": v for k, v in self.best.items()})
        meta = {
            "run_epoch": self.run_epoch,
            "history": self.history.to_dict(),
            "lr_scale": self.lr_scale,
            "best_epoch": self.best_epoch,
            "stopper": dict(vars(self.stopper)),
            "plateau": dict(vars(self.plateau)),
            "fast": self.net is not None,
            "optimizer": optimizer_meta,
        }
        return {k: v.detach().cpu().clone() for k, v in tensors.items()}, meta  # a snapshot

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same model, data and config)."""
        if bool(meta["fast"]) != (self.net is not None):
            raise ValueError("the checkpoint was written by the other training engine")
        with torch.no_grad():
            if self.net is not None:
                self.net.params.copy_(tensors["params"])
                for name in ("buf", "exp_avg", "exp_avg_sq", "step_t"):
                    if f"optimizer.{name}" in tensors:
                        getattr(self.optimizer, name).copy_(tensors[f"optimizer.{name}"])
                if "best" in tensors:
                    self.best = tensors["best"].clone()
            else:
                self.model.load_state_dict(
                    {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
                )
                state: dict[int, dict[str, torch.Tensor]] = {}
                for key, value in tensors.items():
                    if key.startswith("optimizer."):
                        _, index, name = key.split(".", 2)
                        state.setdefault(int(index), {})[name] = value
                self.optimizer.load_state_dict(
                    {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
                )
                best = {k[5:]: v.clone() for k, v in tensors.items() if k.startswith("best.")}
                self.best = best or None
        if self.generator is not None and "generator" in tensors:
            self.generator.set_state(tensors["generator"])
        self.run_epoch = int(meta["run_epoch"])
        self.history = History.from_dict(meta["history"])
        self.lr_scale = float(meta["lr_scale"])
        self.best_epoch = int(meta["best_epoch"])
        vars(self.stopper).update(meta["stopper"])
        vars(self.plateau).update(meta["plateau"])
        self.resuming = True

    def _maybe_reduce_lr(self, plateau: EarlyStopping) -> None:
        if plateau.stalled:
            self.lr_scale = max(self.lr_scale * PLATEAU_FACTOR, PLATEAU_MIN_SCALE)
            plateau.misses = 0

    def _lr(self, step: int, total_steps: int) -> float:
        lr = self.config.lr * self.lr_scale
        if self.config.schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        return lr

    def _set_lr(self, lr: float) -> None:
        if self.net is not None:
            self.optimizer.lr = lr
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def _epochs(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor | None,
        batches: list[tuple[int, int]],
        start: int,
        epochs: int,
        total_steps: int,
    ) -> Iterator[float]:
        """Yield each epoch's mean training loss: one host sync per epoch."""
        n = X.shape[0]
        if self.net is not None:
            X = torch.cat([X, X.new_ones(n, 1)], dim=1)  # (rows, inputs + 1): ones meet the bias
        else:
            self.model.train()
        full = self.net.prepare(X, y, w) if self.net is not None and len(batches) == 1 else None
        for epoch in range(start, epochs):
            self._set_lr(self._lr(epoch * len(batches), total_steps))
            if full is not None and self.sync is None:  # the seed experiment's path: just the step
                assert self.net is not None
                loss = self.net.loss_and_grad(full)
                self.optimizer.step()
                yield loss.item() * full.factor
                continue
            Xe, ye, we = X, y, w
            if len(batches) > 1:
                perm = torch.randperm(n, generator=self.generator, device=X.device)
                Xe, ye = X[perm], y[perm]
                we = None if w is None else w[perm]
            minibatches = (
                (Xe[lo:hi], ye[lo:hi], None if we is None else we[lo:hi]) for lo, hi in batches
            )
            yield self._train_epoch(minibatches, epoch, len(batches), total_steps, X)

    def _source_epochs(
        self, source: BatchSource, start: int, epochs: int, total_steps: int
    ) -> Iterator[float]:
        """Like ``_epochs``, for minibatches that a :class:`BatchSource` yields."""
        steps = max(1, source.steps_per_epoch)
        like = next(self.model.parameters())
        if self.net is None:
            self.model.train()
        for epoch in range(start, epochs):
            self._set_lr(self._lr(epoch * steps, total_steps))
            minibatches = source.epoch(epoch)
            if self.net is not None:  # the fast engine's inputs end in a column of ones
                minibatches = (
                    (torch.cat([xb, xb.new_ones(xb.shape[0], 1)], dim=1), yb, wb)
                    for xb, yb, wb in minibatches
                )
            yield self._train_epoch(minibatches, epoch, steps, total_steps, like)

    def _train_epoch(
        self,
        minibatches: Iterable[Minibatch],
        epoch: int,
        steps: int,
        total_steps: int,
        like: torch.Tensor,
    ) -> float:
        """One step per minibatch (the cosine schedule moves every step); the epoch's mean
        training loss, with one host sync."""
        step_lr = self.config.schedule == "cosine"
        total = like.new_zeros(())
        rows = 0
        for b, (xb, yb, wb) in enumerate(minibatches):
            if step_lr and b:
                self._set_lr(self._lr(epoch * steps + b, total_steps))
            loss, factor = self._step(xb, yb, wb)
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

    def _step(
        self, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None
    ) -> tuple[torch.Tensor, float]:
        """One update; returns the batch loss (0-d) and the factor that makes it a mean."""
        if self.net is not None:
            batch = self.net.prepare(xb, yb, wb)
            loss = self.net.loss_and_grad(batch)
            if self.sync is not None:
                self.sync.average_(self.net.grads)
            self.optimizer.step()
            return loss, batch.factor
        pred = self.model(xb)  # (batch, outputs)
        loss = self.loss_fn(pred, yb, wb)
        self.optimizer.zero_grad()
        loss.backward()
        if self.sync is not None:
            for p in self.model.parameters():
                if p.grad is not None:
                    self.sync.average_(p.grad)
        self.optimizer.step()
        return loss.detach(), 1.0

    @torch.no_grad()
    def _validation_loss(self, validation: Validation) -> float:
        X, y, w = validation
        n = X.shape[0]
        weight_total = None if w is None else float(w.sum())
        total = 0.0
        for start in range(0, n, EVAL_CHUNK):
            xb, yb = X[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
            wb = None if w is None else w[start : start + EVAL_CHUNK]
            if self.net is not None:
                xb = torch.cat([xb, xb.new_ones(xb.shape[0], 1)], dim=1)
                batch = self.net.prepare(xb, yb, wb, train=False)
                loss = self.net.evaluate(batch).item() * batch.factor
            else:
                self.model.eval()
                loss = self.loss_fn(self.model(xb), yb, wb).item()
                self.model.train()
            # Chunks count by their rows, or by their share of the total sample weight.
            share = (
                xb.shape[0] / n
                if wb is None or not weight_total
                else float(wb.sum()) / weight_total
            )
            total += loss * share
        return total

    def _snapshot(self) -> Any:
        if self.net is not None:
            return self.net.params.clone()
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def _restore(self, state: Any) -> None:
        if self.net is not None:
            self.net.params.copy_(state)
        else:
            self.model.load_state_dict(state)


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
