"""The training loop: fit -> epoch -> step. Knows nothing about files or the command line.

The model trains in training mode, the loss is called as ``loss(prediction, target)``, and the
loss of every epoch is recorded in a :class:`History`. Data arrives as tensors already on the
device; minibatches are slices of a per-epoch permutation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .engine import FastMLP, FlatOptimizer, epoch_batches, supports, thread_policy
from .exceptions import TrainingDivergedError

__all__ = ["LOSSES", "OPTIMIZERS", "History", "TrainConfig", "fit", "loss_function"]

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("squared_error", "absolute_error", "huber")

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
EpochCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults are the seed experiment's recipe."""

    epochs: int = 500
    lr: float = 0.001
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int | None = None  # None: one full-batch step per epoch
    loss: str = "squared_error"
    engine: str = "auto"  # "fast" (hand-derived gradients), "autograd", or "auto": fast if it can
    threads: int | None = None  # intra-op threads; None: engine.thread_policy decides

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """Per-epoch record of training: the mean training loss of each epoch."""

    train_loss: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, list[Any]]:
        return {"epoch": list(range(len(self))), "train_loss": list(self.train_loss)}


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


def loss_function(name: str) -> LossFn:
    """Per-batch loss ``f(prediction, target, weight)``, a scalar; weights are per row."""
    elementwise, plain = ELEMENTWISE[name], MEAN[name]

    def loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        if weight is None:
            return plain(pred, target)
        per_row = elementwise(pred, target).mean(dim=1)  # (batch,)
        return (per_row * weight).sum() / weight.sum()

    return loss


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
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    sample_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: EpochCallback | None = None,
) -> History:
    """Train ``model`` in place on ``X`` (rows, inputs) and ``y`` (rows, outputs).

    Uses the hand-derived kernels of :mod:`nnreg.engine` when they cover the model and recipe,
    autograd otherwise; both visit the same minibatches in the same order.
    ``callback(epoch, train_loss)`` is called after every epoch. Raises
    :class:`TrainingDivergedError` when an epoch's loss is NaN or infinite.
    """
    activation = getattr(getattr(model, "config", None), "activation", "")
    fast = config.engine == "fast" or (
        config.engine == "auto" and supports(model, activation, config.loss, config.optimizer)
    )
    widest = max(p.shape[0] for p in model.parameters())
    batch = min(config.batch_size or X.shape[0], X.shape[0])
    with thread_policy(batch, widest, config.threads):
        epochs = (
            _fast_epochs(model, activation, X, y, sample_weight, config, generator)
            if fast
            else _autograd_epochs(model, X, y, sample_weight, config, generator)
        )
        history = History()
        for epoch, loss in enumerate(epochs):
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch} (loss is {loss}); lower the learning "
                    f"rate (now {config.lr:g}) or scale the data."
                )
            history.train_loss.append(loss)
            if callback is not None:
                callback(epoch, loss)
    return history


def _autograd_epochs(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    config: TrainConfig,
    generator: torch.Generator | None,
) -> Iterator[float]:
    optimizer = make_optimizer(model.parameters(), config)
    loss_fn = loss_function(config.loss)
    model.train()
    for _ in range(config.epochs):
        yield run_epoch(model, X, y, w, optimizer, loss_fn, config, generator)


def _fast_epochs(
    model: nn.Module,
    activation: str,
    X: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    config: TrainConfig,
    generator: torch.Generator | None,
) -> Iterator[float]:
    """The same epochs as :func:`_autograd_epochs`, on :class:`nnreg.engine.FastMLP`."""
    net = FastMLP(model, activation, config.loss)
    optimizer = FlatOptimizer(
        net.params, net.grads, config.optimizer, config.lr, config.momentum, config.nesterov,
        config.weight_decay,
    )  # fmt: skip
    n = X.shape[0]
    X1 = torch.cat([X, X.new_ones(n, 1)], dim=1)  # (rows, inputs + 1): ones meet the bias
    batches = epoch_batches(n, config.batch_size)
    try:
        if len(batches) == 1:
            full = net.prepare(X1, y, w)
            for _ in range(config.epochs):
                loss = net.loss_and_grad(full)
                optimizer.step()
                yield loss.item() * full.factor  # the epoch's one host sync
            return
        for _ in range(config.epochs):
            perm = torch.randperm(n, generator=generator, device=X.device)
            Xe, ye = X1[perm], y[perm]
            we = None if w is None else w[perm]
            total = X.new_zeros(())
            for start, stop in batches:
                wb = None if we is None else we[start:stop]
                batch = net.prepare(Xe[start:stop], ye[start:stop], wb)
                loss = net.loss_and_grad(batch)
                optimizer.step()
                total.add_(loss, alpha=batch.factor * (stop - start))
            yield total.item() / n  # the epoch's one host sync
    finally:
        net.copy_to(model)


def run_epoch(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    config: TrainConfig,
    generator: torch.Generator | None,
) -> float:
    """One pass over the data; returns the epoch's row-weighted mean training loss."""
    n = X.shape[0]
    if config.batch_size is None or config.batch_size >= n:
        return step(model, X, y, w, optimizer, loss_fn).item()
    perm = torch.randperm(n, generator=generator, device=X.device)
    total = torch.zeros((), device=X.device)
    for start in range(0, n, config.batch_size):
        idx = perm[start : start + config.batch_size]
        wb = None if w is None else w[idx]
        loss = step(model, X[idx], y[idx], wb, optimizer, loss_fn)
        total += loss * idx.shape[0]
    return (total / n).item()  # the epoch's one host sync


def step(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    wb: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
) -> torch.Tensor:
    """Forward, loss, clear gradients, backward, update; returns the (detached) batch loss."""
    pred = model(xb)  # (batch, outputs)
    loss = loss_fn(pred, yb, wb)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()
