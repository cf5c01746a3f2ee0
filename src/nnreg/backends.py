"""The two step engines of :class:`nnreg.train.Trainer`, behind one small interface.

:class:`FastBackend` trains on the hand-derived kernels of :mod:`nnreg.engine`
(:class:`~nnreg.engine.FastMLP` or :class:`~nnreg.engine.FastTabM`, and
:class:`~nnreg.engine.FlatOptimizer`);
:class:`AutogradBackend` trains the ``nn.Module`` itself with autograd and a ``torch.optim``
optimiser. Each prepares its inputs, takes one step on a minibatch, sets the learning rate,
scores a validation chunk, snapshots and restores the weights, hands a checkpoint its
tensors, and leaves the trained weights in the module. The trainer holds the loop only, and
both visit the same minibatches in the same order.

The autograd engine's losses (:func:`loss_function`, from :data:`ELEMENTWISE` and
:data:`MEAN`) live here too; they are the reference the fast kernels are tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .device import ONE_THREAD_MAX_WORK
from .engine import FlatOptimizer

__all__ = ["ELEMENTWISE", "MEAN", "AutogradBackend", "FastBackend", "StepBackend", "loss_function"]

Average = Callable[[torch.Tensor], None]  # replaces a gradient by its mean over processes
LossFn = Callable[..., torch.Tensor]  # (prediction, target, weight, total=None) -> 0-d
Weights = Any  # a backend's snapshot of the weights: a flat tensor, or a state dict


class FastNet(Protocol):
    """What :class:`FastBackend` steps: :class:`~nnreg.engine.FastMLP` (one network) or
    :class:`~nnreg.engine.FastTabM` (shared-weight members), each with its own batch type."""

    params: torch.Tensor  # every parameter, one flat buffer
    grads: torch.Tensor  # their gradients, the same layout

    def inputs(self, X: torch.Tensor) -> torch.Tensor: ...

    def prepare(
        self,
        X: torch.Tensor,
        Y: torch.Tensor,
        w: torch.Tensor | None,
        train: bool = True,
        total: torch.Tensor | None = None,
    ) -> Any: ...

    def loss_and_grad(self, batch: Any) -> torch.Tensor: ...

    def evaluate(self, batch: Any) -> torch.Tensor: ...

    def copy_to(self, model: nn.Module) -> None: ...


class StepBackend(Protocol):
    """What :class:`nnreg.train.Trainer` needs from an engine."""

    fast: bool  # which engine; checkpoints record it (their key "fast")
    # A step's batch x width**2 up to which it runs on one thread (device.thread_policy)
    one_thread_max_work: int

    def no_graph(self) -> AbstractContextManager[object]:
        """The context a run trains in."""
        ...

    def start(self) -> None:
        """Called once before a run's first step."""
        ...

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` (rows, inputs) as :meth:`step` takes it."""
        ...

    def full_batch(
        self, X: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None
    ) -> Callable[[], float] | None:
        """A function taking one full-batch step that returns the epoch's mean loss, for
        training on one fixed batch; None where :meth:`step` is as fast."""
        ...

    def step(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor | None,
        average: Average | None,
        total: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float]:
        """One update; the batch loss (0-d) and the factor that makes it the batch's mean.
        Weights ``wb`` are normalised by their sum, or by ``total`` when given."""
        ...

    def set_lr(self, lr: float) -> None: ...

    def validation_loss(self, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None) -> float:
        """The mean loss on one chunk of validation rows, in evaluation mode."""
        ...

    def snapshot(self) -> Weights: ...

    def copy_into(self, snapshot: Weights) -> None:
        """Overwrite ``snapshot`` with the current weights."""
        ...

    def restore(self, snapshot: Weights) -> None: ...

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Weights and optimiser state for a checkpoint: (tensors, JSON-able optimiser meta)."""
        ...

    def best_tensors(self, best: Weights) -> dict[str, torch.Tensor]:
        """A snapshot's checkpoint tensors."""
        ...

    def load_state(self, tensors: dict[str, torch.Tensor], optimizer: dict[str, Any]) -> None:
        """Continue from :meth:`state_tensors`."""
        ...

    def best_from(self, tensors: dict[str, torch.Tensor]) -> Weights | None:
        """The snapshot saved by :meth:`best_tensors`, or None."""
        ...

    def finish(self) -> None:
        """Leave the current weights in the model's ``nn.Linear`` layers."""
        ...


_FAST_STATE = ("buf", "exp_avg", "exp_avg_sq", "step_t")  # FlatOptimizer's state tensors


class FastBackend:
    """Steps on a :class:`FastNet`'s packed weights (one flat buffer)."""

    fast = True

    def __init__(self, model: nn.Module, net: FastNet, optimizer: FlatOptimizer) -> None:
        self.model, self.net, self.optimizer = model, net, optimizer
        self.one_thread_max_work = getattr(net, "one_thread_max_work", ONE_THREAD_MAX_WORK)

    def no_graph(self) -> AbstractContextManager[object]:
        return torch.no_grad()  # the buffers are plain tensors: no graph, no per-step guard

    def start(self) -> None:
        pass

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        return self.net.inputs(X)

    def full_batch(
        self, X: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None
    ) -> Callable[[], float] | None:
        batch = self.net.prepare(X, y, w)  # views and scales made once, for every epoch

        def step() -> float:  # the seed experiment's path: just the step
            loss = self.net.loss_and_grad(batch)
            self.optimizer.step()
            return loss.item() * batch.factor

        return step

    def step(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor | None,
        average: Average | None,
        total: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float]:
        batch = self.net.prepare(xb, yb, wb, total=total)
        loss = self.net.loss_and_grad(batch)
        if average is not None:
            average(self.net.grads)  # one flat buffer: one all-reduce
        self.optimizer.step()
        return loss, batch.factor

    def set_lr(self, lr: float) -> None:
        self.optimizer.lr = lr

    def validation_loss(self, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None) -> float:
        batch = self.net.prepare(self.inputs(xb), yb, wb, train=False)
        return self.net.evaluate(batch).item() * batch.factor

    def snapshot(self) -> torch.Tensor:
        return self.net.params.clone()

    def copy_into(self, snapshot: torch.Tensor) -> None:
        snapshot.copy_(self.net.params)

    def restore(self, snapshot: torch.Tensor) -> None:
        self.net.params.copy_(snapshot)

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"params": self.net.params}
        for name in _FAST_STATE:
            value = getattr(self.optimizer, name, None)
            if value is not None:
                tensors[f"optimizer.{name}"] = value
        return tensors, {}

    def best_tensors(self, best: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"best": best}

    def load_state(self, tensors: dict[str, torch.Tensor], optimizer: dict[str, Any]) -> None:
        self.net.params.copy_(tensors["params"])
        for name in _FAST_STATE:
            if f"optimizer.{name}" in tensors:
                getattr(self.optimizer, name).copy_(tensors[f"optimizer.{name}"])

    def best_from(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return tensors["best"].clone() if "best" in tensors else None

    def finish(self) -> None:
        self.net.copy_to(self.model)


def loss_function(name: str) -> LossFn:
    """Per-batch loss ``f(prediction, target, weight, total=None)``, a scalar; weights are
    per row, normalised by their sum or by ``total``."""
    elementwise, plain = ELEMENTWISE[name], MEAN[name]

    def loss(
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        total: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if weight is None:
            return plain(pred, target)
        per_row = elementwise(pred, target).mean(dim=1)  # (batch,)
        return (per_row * weight).sum() / (weight.sum() if total is None else total.reshape(()))

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


class AutogradBackend:
    """Steps on the model itself: forward, loss, backward, ``torch.optim`` update."""

    fast = False
    one_thread_max_work = ONE_THREAD_MAX_WORK

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: str) -> None:
        self.model, self.optimizer = model, optimizer
        self.loss_fn = loss_function(loss)

    def no_graph(self) -> AbstractContextManager[object]:
        return nullcontext()

    def start(self) -> None:
        self.model.train()

    def inputs(self, X: torch.Tensor) -> torch.Tensor:
        return X

    def full_batch(
        self, X: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None
    ) -> Callable[[], float] | None:
        return None

    def step(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor | None,
        average: Average | None,
        total: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float]:
        pred = self.model(xb)  # (batch, outputs), or shared members' (k, batch, outputs)
        if pred.dim() == 3:  # the mean of the members' losses: k copies of the batch
            k = pred.shape[0]
            pred, yb = pred.flatten(0, 1), yb.repeat(k, 1)
            wb = None if wb is None else wb.repeat(k)
            total = None if wb is None else (wb.sum() if total is None else total * k)
        loss = self.loss_fn(pred, yb, wb, total)
        self.optimizer.zero_grad()
        loss.backward()
        if average is not None:
            for p in self.model.parameters():
                if p.grad is not None:
                    average(p.grad)
        self.optimizer.step()
        return loss.detach(), 1.0

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def validation_loss(self, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None) -> float:
        self.model.eval()
        pred = self.model(xb)
        loss = self.loss_fn(pred.mean(0) if pred.dim() == 3 else pred, yb, wb).item()
        self.model.train()
        return loss

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def copy_into(self, snapshot: dict[str, torch.Tensor]) -> None:
        for k, v in self.model.state_dict().items():
            snapshot[k].copy_(v)

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(snapshot)

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state = self.optimizer.state_dict()
        for index, entry in state["state"].items():
            for key, value in entry.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
        return tensors, {"param_groups": state["param_groups"]}

    def best_tensors(self, best: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"best.{k}": v for k, v in best.items()}

    def load_state(self, tensors: dict[str, torch.Tensor], optimizer: dict[str, Any]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": optimizer["param_groups"]})

    def best_from(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        best = {k[5:]: v.clone() for k, v in tensors.items() if k.startswith("best.")}
        return best or None

    def finish(self) -> None:
        pass
