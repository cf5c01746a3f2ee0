"""Many models at once: K members of one architecture trained as one batched computation.

:class:`EnsembleTrainer` runs :class:`nnreg.engine.BatchedMLP` over minibatches that each
member draws in its own order, with per-member learning rates and weight decays, and per-member
early stopping (a member keeps its best weights and stops changing once its validation loss
stalls). :class:`ConformalCalibrator` turns held-out residuals into prediction intervals whose
coverage holds by construction (split conformal, scaled by the members' spread).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .engine import BatchedMLP, BatchedOptimizer, epoch_batches, supports, thread_policy
from .exceptions import ConfigError, TrainingDivergedError
from .model import MLP
from .train import ELEMENTWISE, EVAL_CHUNK, History, TrainConfig

__all__ = ["ConformalCalibrator", "EnsembleTrainer", "member_seeds"]


def member_seeds(seed: int, n_models: int) -> list[int]:
    """Seeds of the members: the first is ``seed`` itself, so member 0 is the single model."""
    return [(seed + 7919 * k) % (2**31 - 1) for k in range(n_models)]


@dataclass
class MemberRecord:
    """Per-member training curves, (epochs, K) each, and the epoch each member kept."""

    train_loss: list[list[float]] = field(default_factory=list)
    val_loss: list[list[float]] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    stopped_at: list[int] = field(default_factory=list)


class EnsembleTrainer:
    """Train ``members`` (MLPs of one configuration) together on the same data.

    Parameters
    ----------
    members : list of MLP
        Initialised networks, one per member; trained in place.
    config : TrainConfig
        Shared recipe; ``lr`` and ``weight_decay`` may be overridden per member.
    seeds : list of int
        One per member: member k shuffles its minibatches with a generator seeded
        ``seeds[k] + 1``, exactly as a single model fitted with that seed does.
    lr, weight_decay : sequence of float, optional
        Per-member values (default: the config's, for all).
    """

    def __init__(
        self,
        members: list[MLP],
        config: TrainConfig,
        seeds: Sequence[int],
        lr: Sequence[float] | None = None,
        weight_decay: Sequence[float] | None = None,
        dropout_seed: int = 0,
    ) -> None:
        model_config = members[0].config
        if not supports(members[0], model_config.activation, config.loss, config.optimizer):
            raise ConfigError("ensembles need the fast engine's layers, activations and losses.")
        if config.schedule == "plateau":
            raise ConfigError(
                "learning_rate='plateau' is not available for ensembles; use 'constant' or "
                "'cosine'."
            )
        self.members, self.config = members, config
        self.K = len(members)
        self.seeds = list(seeds)
        device = next(members[0].parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(dropout_seed)
        self.net = BatchedMLP(
            members, model_config.activation, config.loss, model_config.dropout, generator
        )
        like = self.net.params
        lrs = torch.tensor(lr if lr is not None else [config.lr] * self.K, dtype=like.dtype)
        wds = torch.tensor(
            weight_decay if weight_decay is not None else [config.weight_decay] * self.K,
            dtype=like.dtype,
        )
        self.optimizer = BatchedOptimizer(
            self.net.params, self.net.grads, config.optimizer, lrs.to(like.device),
            wds.to(like.device), config.momentum, config.nesterov, config.betas, config.eps,
        )  # fmt: skip
        self.history = History()
        self.record = MemberRecord()
        self.stop: threading.Event | None = None  # set from outside (a signal): stop soon

    def run(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        sample_weight: torch.Tensor | None = None,
        *,
        validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
        callback: Callable[[int, float, float | None], None] | None = None,
    ) -> History:
        """Train every member for ``config.epochs`` epochs (fewer with early stopping).

        ``sample_weight`` is (rows,) for all members or (K, rows) per member. The history holds
        the members' mean losses; ``record`` holds each member's.
        """
        cfg, K = self.config, self.K
        n = X.shape[0]
        X1 = torch.cat([X, X.new_ones(n, 1)], dim=1)  # (rows, inputs + 1)
        w = None if sample_weight is None else sample_weight.expand(K, n)
        batches = epoch_batches(n, cfg.batch_size)
        total_steps = max(1, cfg.epochs * len(batches))
        generators = []
        for s in self.seeds:
            g = torch.Generator(device=X.device)
            g.manual_seed(s + 1)
            generators.append(g)
        early = cfg.early_stopping and validation is not None
        best = self.net.params.clone() if early else None
        best_loss = torch.full((K,), math.inf)
        misses = torch.zeros(K, dtype=torch.long)
        self.record = MemberRecord(best_epoch=[-1] * K, stopped_at=[-1] * K)
        widest = max(self.net.widths)
        with thread_policy(K * min(cfg.batch_size or n, n), widest, cfg.threads), torch.no_grad():
            for epoch in range(cfg.epochs):
                if len(batches) == 1:  # every member sees the same rows: shared, not copied
                    Xe, ye, we = X1, y, w
                else:
                    perms = torch.stack([torch.randperm(n, generator=g, device=X.device)
                                         for g in generators])  # fmt: skip
                    Xe, ye = X1[perms], y[perms]  # (K, rows, ...)
                    we = None if w is None else torch.gather(w, 1, perms)
                total = X.new_zeros(K)
                for b, (start, stop) in enumerate(batches):
                    if cfg.schedule == "cosine":
                        step = epoch * len(batches) + b
                        self.optimizer.scale = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                    wb = None if we is None else we[:, start:stop]
                    rows = slice(start, stop)
                    xb, yb = (Xe, ye) if len(batches) == 1 else (Xe[:, rows], ye[:, rows])
                    losses = self.net.loss_and_grad(xb, yb, wb)
                    self.optimizer.step()
                    total.add_(losses, alpha=stop - start)
                train = (total / n).cpu()  # the epoch's one host sync
                # Validation losses are only needed per epoch to stop early; an ensemble
                # without early stopping uses its held-out rows for calibration alone.
                val = self.validation_losses(validation) if validation and early else None
                self._record(epoch, train, val)
                if early:
                    assert val is not None and best is not None
                    self._early_stopping(epoch, val, best, best_loss, misses)
                    if not bool(self.optimizer.active.any()):
                        break
                if callback is not None:
                    mean_val = None if val is None else float(val.mean())
                    callback(epoch, float(train.mean()), mean_val)
                if self.stop is not None and self.stop.is_set():
                    break
            if best is not None:
                self.net.params.copy_(best)
        self.net.copy_to(self.members)
        return self.history

    def _record(self, epoch: int, train_t: torch.Tensor, val: torch.Tensor | None) -> None:
        train = train_t.tolist()
        finite = all(map(math.isfinite, train))
        if not finite or (val is not None and not torch.isfinite(val).all()):
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch} (a member's loss is not finite); lower "
                f"the learning rate (now {self.config.lr:g}) or scale the data."
            )
        self.history.train_loss.append(sum(train) / len(train))
        self.history.val_loss.append(math.nan if val is None else float(val.mean()))
        self.history.lr.append(self.config.lr * self.optimizer.scale)
        self.record.train_loss.append(train)
        if val is not None:
            self.record.val_loss.append(val.tolist())

    def _early_stopping(
        self,
        epoch: int,
        val: torch.Tensor,
        best: torch.Tensor,
        best_loss: torch.Tensor,
        misses: torch.Tensor,
    ) -> None:
        # The bookkeeping lives on the CPU (val, best_loss, misses); weights on their device.
        device = self.net.params.device
        active = self.optimizer.active.view(-1).cpu() > 0
        improved = (val < best_loss - self.config.tol) & active
        if improved.any():
            rows = improved.nonzero().view(-1)
            best[rows.to(device)] = self.net.params[rows.to(device)]
            best_loss[improved] = val[improved]
            for k in rows.tolist():
                self.record.best_epoch[k] = epoch
        misses[improved] = 0
        misses[~improved & active] += 1
        stalled = active & (misses >= self.config.n_iter_no_change)
        if stalled.any():
            self.optimizer.active[stalled.to(device)] = 0.0  # a finished member stops changing
            for k in stalled.nonzero().view(-1).tolist():
                self.record.stopped_at[k] = epoch

    @torch.no_grad()
    def validation_losses(
        self, validation: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
    ) -> torch.Tensor:
        """Each member's loss on the validation rows (no dropout), as a (K,) tensor."""
        X, y, w = validation
        elementwise = ELEMENTWISE[self.config.loss]
        total = torch.zeros(self.K, dtype=X.dtype, device=X.device)
        for start in range(0, X.shape[0], EVAL_CHUNK):
            xb, yb = X[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
            pred = self.predict(xb)  # (K, rows, outputs)
            per_row = elementwise(pred, yb.expand_as(pred)).mean(dim=2)  # (K, rows)
            if w is None:
                total += per_row.sum(dim=1)
            else:
                total += (per_row * w[start : start + EVAL_CHUNK]).sum(dim=1)
        return (total / (X.shape[0] if w is None else w.sum())).cpu()

    @torch.no_grad()
    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """(rows, inputs) -> (K, rows, outputs) with the current weights."""
        X1 = torch.cat([X, X.new_ones(X.shape[0], 1)], dim=1)
        out = self.net.predict(X1)  # (K, outputs, rows)
        return out.transpose(1, 2).clone()


@dataclass
class ConformalCalibrator:
    """Split-conformal intervals from held-out rows, optionally scaled by the ensemble's spread.

    Scaled (``std`` given to :meth:`fit`): the score of a held-out row is
    ``|y - mean| / (std + floor)``, ``floor`` the median spread on those rows, and an interval
    of coverage ``c`` is ``mean +- q * (std + floor)``. Unscaled: the score is ``|y - mean|``
    and the interval ``mean +- q``. ``q`` is the ``ceil((n + 1) c) / n`` empirical quantile of
    the scores, which covers a new exchangeable row with probability >= c, provided the
    scores of the held-out rows and of new rows are computed alike. Everything is per target
    and in the model's (standardised) target units.
    """

    scores: list[list[float]] = field(default_factory=list)  # (targets, rows), sorted
    floor: list[float] = field(default_factory=list)  # per target
    scaled: bool = True

    @classmethod
    def fit(
        cls, y: np.ndarray, mean: np.ndarray, std: np.ndarray | None = None
    ) -> ConformalCalibrator:
        # y, mean, std: (rows, targets)
        if std is None:
            scores = np.sort(np.abs(y - mean), axis=0)
            return cls(scores=scores.T.tolist(), floor=[0.0] * y.shape[1], scaled=False)
        # The members' spread measures the model's uncertainty, not the noise; adding its
        # median keeps the scaling from blowing up rows where the members happen to agree.
        floor = np.maximum(np.median(std, axis=0), 1e-12)
        scores = np.sort(np.abs(y - mean) / (std + floor), axis=0)
        return cls(scores=scores.T.tolist(), floor=floor.tolist())

    def halfwidth(self, std: np.ndarray, coverage: float) -> np.ndarray:
        """(rows, targets) half-widths of intervals with the given coverage."""
        scores = np.asarray(self.scores)  # (targets, n)
        n = scores.shape[1]
        rank = math.ceil((n + 1) * coverage)
        if rank > n:
            raise ConfigError(
                f"coverage {coverage} needs at least {math.ceil(1 / (1 - coverage)) - 1} "
                f"held-out rows, but only {n} were kept; lower the coverage or raise "
                "validation_fraction."
            )
        q = scores[:, rank - 1]  # (targets,)
        if not self.scaled:
            return np.broadcast_to(q, std.shape).copy()
        return q * (std + np.asarray(self.floor))

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "floor": self.floor, "scaled": self.scaled}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalCalibrator:
        return cls(scores=[list(map(float, s)) for s in d["scores"]], floor=list(d["floor"]),
                   scaled=bool(d.get("scaled", True)))  # fmt: skip
