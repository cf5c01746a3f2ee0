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

import torch

from .calibration import ConformalCalibrator as ConformalCalibrator  # its home before
from .device import adapt_threads, thread_policy
from .engine import BatchedMLP, BatchedOptimizer, epoch_batches, supports
from .exceptions import ConfigError
from .model import MLP
from .schedule import Schedule, check_finite, scored_epoch
from .train import ELEMENTWISE, EVAL_CHUNK, GradientSync, History, TrainConfig, Validation

__all__ = ["ConformalCalibrator", "EnsembleTrainer"]


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
    reported : int, optional
        How many leading members the history's mean losses cover (default: all); the others
        train alongside for another purpose, such as scoring calibration rows.
    dropout_share : (int, int), optional
        ``(first, total)``: these members are members ``first`` onwards of ``total`` trained
        as one batch elsewhere, and draw the dropout masks they would draw there.
    """

    def __init__(
        self,
        members: list[MLP],
        config: TrainConfig,
        seeds: Sequence[int],
        lr: Sequence[float] | None = None,
        weight_decay: Sequence[float] | None = None,
        dropout_seed: int = 0,
        reported: int | None = None,
        dropout_share: tuple[int, int] | None = None,
    ) -> None:
        model_config = members[0].config
        supported = supports(members[0], model_config.activation, config.loss, config.optimizer)
        if not supported:  # piecewise-linear embeddings are covered; periodic ones are not
            raise ConfigError("ensembles need the fast engine's layers, activations and losses.")
        if config.schedule == "plateau":
            raise ConfigError(
                "learning_rate='plateau' is not available for ensembles; use 'constant' or "
                "'cosine'."
            )
        self.members, self.config = members, config
        self.K = len(members)
        self.reported = self.K if reported is None else reported
        self.seeds = list(seeds)
        device = next(members[0].parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(dropout_seed)
        self.net = BatchedMLP(
            members,
            model_config.activation,
            config.loss,
            model_config.dropout,
            generator,
            dropout_share,
        )
        like = self.net.params
        lrs = torch.tensor(lr if lr is not None else [config.lr] * self.K, dtype=like.dtype)
        wds = torch.tensor(
            weight_decay if weight_decay is not None else [config.weight_decay] * self.K,
            dtype=like.dtype,
        )
        self.optimizer = BatchedOptimizer(
            self.net.params,
            self.net.grads,
            config.optimizer,
            lrs.to(like.device),
            wds.to(like.device),
            config.momentum,
            config.nesterov,
            config.betas,
            config.eps,
        )
        # The members' own rates live in the optimizer; the schedule scales them all.
        self.schedule = Schedule(config.schedule, 1.0)
        self.history = History()
        self.record = MemberRecord()
        self.stop: threading.Event | None = None  # set from outside (a signal): stop soon
        # Set for distributed runs: every process holds every member and its shard of the
        # rows; gradients and losses are averaged across processes (nnreg.distributed).
        self.sync: GradientSync | None = None

    def run(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        sample_weight: torch.Tensor | None = None,
        *,
        validation: Validation | None = None,
        owner: torch.Tensor | None = None,
        callback: Callable[[int, float, float | None], None] | None = None,
    ) -> History:
        """Train every member for ``config.epochs`` epochs (fewer with early stopping).

        ``sample_weight`` is (rows,) for all members or (K, rows) per member. The history holds
        the mean losses of the ``reported`` members; ``record`` holds each member's.

        With early stopping each member stops on its own loss on the ``validation`` rows and
        keeps its best weights. Given ``owner`` ((rows,) member indices), every member follows
        one out-of-fold loss instead: each validation row is scored by the member ``owner``
        names (one that did not train on it). With early stopping all members stop together
        when it stalls and go back to its best epoch; without, they train every epoch and go
        back only if the best epoch beat the last clearly (see :class:`_OutOfFold`).
        """
        cfg, K, n = self.config, self.K, X.shape[0]
        rows = _MemberRows(X, y, sample_weight, K, cfg.batch_size, self.seeds)
        self.schedule.total_steps = max(1, cfg.epochs * len(rows.batches))
        joint, per_member = None, None
        if validation is not None and owner is not None:
            joint = _OutOfFold(self.net, cfg.loss, validation, owner, cfg.tol)
        elif validation is not None and cfg.early_stopping:
            per_member = _MemberStopping(self.net.params, cfg.tol, cfg.n_iter_no_change)
        self.record = MemberRecord(best_epoch=[-1] * K, stopped_at=[-1] * K)
        threads = thread_policy(K * min(cfg.batch_size or n, n), max(self.net.widths), cfg.threads)
        with threads, torch.no_grad():
            for epoch in range(cfg.epochs):
                train = self._train_epoch(rows, epoch)
                val = self._score(epoch, validation, joint, per_member)
                self._record(epoch, train, val)
                if self._stalled(epoch, val, joint, per_member):
                    break
                if callback is not None:
                    val_loss = self.history.val_loss[-1] if val is not None else None
                    callback(epoch, self.history.train_loss[-1], val_loss)
                if self.stop is not None and self.stop.is_set():
                    break
            self._keep_best(joint, per_member)
        self.net.copy_to(self.members)
        return self.history

    def _train_epoch(self, rows: _MemberRows, epoch: int) -> torch.Tensor:
        """One epoch of every member; their (K,) mean training losses, with one host sync."""
        batches, sync = rows.batches, self.sync
        if len(batches) == 1:  # every member sees the same rows: shared, not copied
            self._set_scale(epoch)
            totals = rows.full_totals(sync)
            # The same tensors every epoch (their loss scales are made once).
            losses = self.net.loss_and_grad(rows.X1, rows.y, rows.w, totals)
            self._step(sync)
            adapt_threads()  # another process may have taken a core
            return self._mean_over_ranks(losses)
        Xe, ye, we = rows.shuffled()  # (K, rows, ...)
        total = Xe.new_zeros(self.K)
        for b, (start, stop) in enumerate(batches):
            self._set_scale(epoch * len(batches) + b)
            part = slice(start, stop)
            wb = None if we is None else we[:, part]
            # Weighted and distributed: each member's loss over its global batch's weights.
            totals = None if sync is None or wb is None else sync.weight_total(wb)
            losses = self.net.loss_and_grad(Xe[:, part], ye[:, part], wb, totals)
            self._step(sync)
            adapt_threads()
            total.add_(losses, alpha=(stop - start) / rows.n)
        return self._mean_over_ranks(total)

    def _step(self, sync: GradientSync | None) -> None:
        """The optimiser step, on the gradients of every process's rows: the members' (K, P)
        gradient is one all-reduce."""
        if sync is not None:
            sync.average_(self.net.grads)
        self.optimizer.step()

    def _mean_over_ranks(self, losses: torch.Tensor) -> torch.Tensor:
        """The (K,) losses of this process's rows, as the mean over every process's (each
        holds as many rows), on the CPU: the epoch's one host sync."""
        if self.sync is None:
            return losses.cpu()
        losses = losses.clone()
        self.sync.average_(losses)
        return losses.cpu()

    def _set_scale(self, step: int) -> None:
        if self.schedule.per_step:  # cosine: the factor on every member's rate moves per step
            self.optimizer.scale = self.schedule.rate(step)

    def _score(
        self,
        epoch: int,
        validation: Validation | None,
        joint: _OutOfFold | None,
        per_member: _MemberStopping | None,
    ) -> torch.Tensor | None:
        """The epoch's (K,) validation losses, or None when it is not scored.

        Per-member losses are only needed to stop early. The joint out-of-fold loss is also
        what a full run may roll back on; such a run scores it on at most MAX_SCORED_EPOCHS
        evenly spaced epochs (the last among them), so its cost stays small beside many tiny
        epochs.
        """
        cfg = self.config
        if joint is not None:
            if cfg.early_stopping or scored_epoch(epoch, cfg.epochs):
                return torch.full((self.K,), joint.update(epoch, self.net.params))
            return None
        if per_member is not None and validation is not None:
            return self.validation_losses(validation)
        return None

    def _stalled(
        self,
        epoch: int,
        val: torch.Tensor | None,
        joint: _OutOfFold | None,
        per_member: _MemberStopping | None,
    ) -> bool:
        """Early stopping's verdict on the epoch: True once every member has stopped."""
        if joint is not None:
            stopped = self.config.early_stopping and joint.misses >= self.config.n_iter_no_change
            if stopped:
                self.record.stopped_at = [epoch] * self.K
            return stopped
        if per_member is not None and val is not None:
            per_member.update(epoch, val, self.net.params, self.optimizer, self.record)
            return not bool(self.optimizer.active.any())
        return False

    def _keep_best(self, joint: _OutOfFold | None, per_member: _MemberStopping | None) -> None:
        """Put back the weights that early stopping (or the out-of-fold rule) chose."""
        if joint is not None:
            kept = joint.finish(self.net.params, rollback_always=self.config.early_stopping)
            self.record.best_epoch = [kept] * self.K
        elif per_member is not None:
            self.net.params.copy_(per_member.best)

    def _record(self, epoch: int, train_t: torch.Tensor, val: torch.Tensor | None) -> None:
        train = train_t.tolist()
        losses = train if val is None else train + val.tolist()
        check_finite(epoch, losses, self.config.lr, "a member's loss is not finite")
        r = self.reported
        self.history.train_loss.append(sum(train[:r]) / r)
        self.history.val_loss.append(math.nan if val is None else float(val[:r].mean()))
        self.history.lr.append(self.config.lr * self.optimizer.scale)
        self.record.train_loss.append(train)
        if val is not None:
            self.record.val_loss.append(val.tolist())

    @torch.no_grad()
    def validation_losses(self, validation: Validation) -> torch.Tensor:
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


class _MemberRows:
    """The training rows as the members see them: inputs with their column of ones, and each
    member's own shuffle (member k's generator is seeded ``seeds[k] + 1``, as a single model
    fitted with that seed shuffles)."""

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        sample_weight: torch.Tensor | None,
        K: int,
        batch_size: int | None,
        seeds: Sequence[int],
    ) -> None:
        self.n = X.shape[0]
        self.X1 = torch.cat([X, X.new_ones(self.n, 1)], dim=1)  # (rows, inputs + 1)
        self.y = y
        self.w = None if sample_weight is None else sample_weight.expand(K, self.n)  # (K, rows)
        self.batches = epoch_batches(self.n, batch_size)
        self._totals: torch.Tensor | None = None
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=X.device)
            g.manual_seed(s + 1)
            self.generators.append(g)

    def full_totals(self, sync: GradientSync | None) -> torch.Tensor | None:
        """The members' (K, 1) weight sums a distributed full-batch step normalises by (the
        global sums over the processes), made once; None in one process or without
        weights."""
        if sync is None or self.w is None:
            return None
        if self._totals is None:
            self._totals = sync.weight_total(self.w)
        return self._totals

    def shuffled(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This epoch's rows in each member's order: (K, rows, ...) each."""
        perms = torch.stack(
            [torch.randperm(self.n, generator=g, device=self.X1.device) for g in self.generators]
        )  # (K, rows)
        w = None if self.w is None else torch.gather(self.w, 1, perms)
        return self.X1[perms], self.y[perms], w


class _MemberStopping:
    """Per-member early stopping: each member's best validation loss and weights, and its
    epochs without improving by ``tol``; a member that stalls is frozen (stops changing)."""

    def __init__(self, params: torch.Tensor, tol: float, patience: int) -> None:
        K = params.shape[0]
        self.tol, self.patience = tol, patience
        self.best = params.clone()  # (K, P), on the weights' device
        # The bookkeeping lives on the CPU (val, best_loss, misses); weights on their device.
        self.best_loss = torch.full((K,), math.inf)
        self.misses = torch.zeros(K, dtype=torch.long)

    def update(
        self,
        epoch: int,
        val: torch.Tensor,
        params: torch.Tensor,
        optimizer: BatchedOptimizer,
        record: MemberRecord,
    ) -> None:
        """Take the epoch's (K,) validation losses: keep improved members' weights, freeze
        stalled members, and note both in ``record``."""
        device = params.device
        active = optimizer.active.view(-1).cpu() > 0
        improved = (val < self.best_loss - self.tol) & active
        if improved.any():
            rows = improved.nonzero().view(-1)
            self.best[rows.to(device)] = params[rows.to(device)]
            self.best_loss[improved] = val[improved]
            for k in rows.tolist():
                record.best_epoch[k] = epoch
        self.misses[improved] = 0
        self.misses[~improved & active] += 1
        stalled = active & (self.misses >= self.patience)
        if stalled.any():
            optimizer.freeze(stalled.to(device))  # a finished member stops changing
            for k in stalled.nonzero().view(-1).tolist():
                record.stopped_at[k] = epoch


class _OutOfFold:
    """The out-of-fold loss of an ensemble's held-out rows, epoch by epoch, and the weights of
    its best epoch.

    Each held-out row is scored by its owner, a member that did not train on it (in
    :class:`nnreg.Regressor`, one of two helper members that each leave out half of these
    rows). Only the owners run forward: every epoch when stopping early, else on at most
    MAX_SCORED_EPOCHS evenly spaced epochs, the last among them.

    Rolling back: an early-stopped run always ends on the best epoch. A run that trained
    every epoch ends there only if the held-out rows show clearly that the last epoch is
    worse: the mean per-row loss difference (last minus best) must exceed twice its standard
    error. Otherwise the final weights, which saw the whole schedule, stay; the best of many
    noisy epochs on a few rows is a biased choice, and a small gap is mostly that bias.
    """

    def __init__(
        self,
        net: BatchedMLP,
        loss: str,
        validation: Validation,
        owner: torch.Tensor,
        tol: float,
    ) -> None:
        X, y, w = validation
        self.yT = y.t()  # (outputs, rows)
        self.net, self.elementwise, self.tol = net, ELEMENTWISE[loss], tol
        self.X1 = torch.cat([X, X.new_ones(X.shape[0], 1)], dim=1)
        owner = owner.to(X.device)
        first, last = int(owner.min()), int(owner.max())
        self.members = slice(first, last + 1)  # the owners, and any members between them
        self.pos = (owner - first).view(1, -1)  # (1, rows)
        rows = X.shape[0]
        weight = torch.ones(rows, dtype=torch.float64, device=X.device) if w is None else w.double()
        self.weight = weight / weight.sum().clamp(min=1e-12)  # sums to 1
        self.best_loss, self.best_epoch, self.misses = math.inf, -1, 0
        self.best_rows: torch.Tensor | None = None
        self.best_params = torch.empty_like(net.params)

    def rows(self) -> torch.Tensor:
        """(rows,) each held-out row's loss under its owner, in float64."""
        out = self.net.predict_members(self.X1, self.members)  # (owners, outputs, rows)
        per_row = self.elementwise(out, self.yT.expand_as(out)).mean(dim=1)  # (owners, rows)
        return per_row.gather(0, self.pos).view(-1).double()

    def update(self, epoch: int, params: torch.Tensor) -> float:
        """Score this epoch; keep its weights if it is the best so far. Returns the loss."""
        rows = self.rows()
        loss = float(rows @ self.weight)
        if loss < self.best_loss - self.tol:
            self.best_loss, self.best_epoch, self.misses = loss, epoch, 0
            self.best_rows = rows
            self.best_params.copy_(params)
        else:
            self.misses += 1
        return loss

    def finish(self, params: torch.Tensor, rollback_always: bool) -> int:
        """Put back the best epoch's weights when due; returns the epoch the weights are from
        (-1: the final weights stay)."""
        if self.best_rows is None:
            return -1  # no epoch was scored
        if not rollback_always:
            last = self.rows()  # the final weights, whether or not their epoch was scored
            d = (last - self.best_rows) * self.weight * len(self.weight)
            if len(d) < 2 or float(d.mean()) <= 2.0 * float(d.std()) / math.sqrt(len(d)):
                return -1
        params.copy_(self.best_params)
        return self.best_epoch
