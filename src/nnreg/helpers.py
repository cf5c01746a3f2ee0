"""Calibration helpers: extra networks that each leave out one fold of the calibration rows
and score it, so that the networks that predict train on every row.

Independent members (:func:`nnreg.fitting`'s ensemble fit) train their helpers beside them in
one batch, and the helpers' out-of-fold loss decides the epoch they all keep. Shared members
(TabM) cannot: a helper sharing their weights would have seen its fold through them. Where
nnreg chooses their epochs and nothing else scores their rows out of fold (``max_iter='auto'``
on a table the epoch search does not run on) they train on every row first, and
:func:`train_after` then trains two helpers, each one network of a member's architecture, for
one network's epochs, to the last epoch as the members do. Either way a calibration row's
conformity score is its residual under the helper that left it out: one network's
out-of-sample residual, no smaller than the members' mean's, so the intervals keep (slightly
more than) their coverage.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from . import distributed
from .calibration import ConformalCalibrator, held_out_metrics, out_of_fold
from .embeddings import share_bins
from .engine import FAST_ACTIVATIONS, FAST_LOSSES, FAST_OPTIMIZERS
from .ensemble import EnsembleTrainer
from .model import MLP, MLPConfig
from .preprocess import Standardizer
from .recipe import Recipe, epochs_of, member_seeds
from .train import Validation

__all__ = ["CALIBRATION_MEMBERS", "MIN_CALIBRATION_ROWS", "Helpers", "can_calibrate", "train_after"]

MIN_CALIBRATION_ROWS = 100  # helpers calibrate on at least this many (or a third of) rows
CALIBRATION_MEMBERS = 2  # helpers: each leaves out its own fold of the calibration rows


@dataclass
class Helpers:
    """The helper networks, the calibration ``rows`` (of the table) and each one's helper
    (``folds``: the index of the helper that leaves it out)."""

    nets: list[MLP]
    rows: np.ndarray
    folds: np.ndarray

    @classmethod
    def make(
        cls,
        recipe: Recipe,
        config: MLPConfig,
        seeds: Sequence[int],
        bins: nn.Module,
        rows: np.ndarray,
    ) -> Helpers:
        """Helpers of ``config`` drawn from ``seeds``, with the piecewise-linear bins of
        ``bins`` (the members'), each leaving out an equal share of ``rows``."""
        nets = [recipe.member(config, s) for s in seeds]
        for net in nets:  # the members' bins, the helper's own parameters
            share_bins(net, bins)
        folds = np.random.default_rng(recipe.seed + 3).permutation(len(rows)) % len(nets)
        return cls(nets, rows, folds)

    def weights(self, X: torch.Tensor, w: torch.Tensor | None, first: int) -> torch.Tensor:
        """(first + helpers, rows) loss weights: every row (times ``w``) for the ``first``
        members trained beside the helpers, and for each helper all but its fold."""
        ones = X.new_ones(X.shape[0]) if w is None else w
        weights = ones.expand(first + len(self.nets), -1).clone()
        weights[first + torch.as_tensor(self.folds), torch.as_tensor(self.rows)] = 0.0
        return weights

    def validation(
        self, X: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, first: int
    ) -> tuple[Validation, torch.Tensor]:
        """The calibration rows (scored whole by every process) and each row's owner among
        ``first`` members and the helpers: the helpers' out-of-fold loss."""
        owner = first + torch.as_tensor(self.folds, device=X.device)
        rows = self.rows
        return (X[rows], y[rows], None if w is None else w[rows]), owner

    def calibrate(
        self, X: torch.Tensor, y: torch.Tensor, y_scaler: Standardizer, target: np.ndarray
    ) -> tuple[ConformalCalibrator, dict[str, float]]:
        """The conformity scores of the calibration rows and their held-out metrics (those
        of one network) from ``X`` and ``y`` (standardised, every row of the table) and the
        ``target`` in its own units."""
        predicted = out_of_fold(X[self.rows], self.folds, self.nets)
        calibrator = ConformalCalibrator.fit(y[self.rows].cpu().double().numpy(), predicted)
        return calibrator, held_out_metrics(y_scaler, target[self.rows], predicted)


def can_calibrate(recipe: Recipe, n_rows: int) -> bool:
    """Whether helpers can calibrate the recipe's shared members on ``n_rows`` rows: no
    early stopping (that needs held-out rows), and one network of the recipe trains in the
    batched engine (its activation, loss and optimiser; no periodic embedding, no
    learning-rate plateau)."""
    p = recipe.params
    return (
        recipe.shared_ensemble is not None
        and not p["early_stopping"]
        and n_rows >= 2
        and p["activation"] in FAST_ACTIVATIONS
        and p["loss"] in FAST_LOSSES
        and p["optimizer"] in FAST_OPTIMIZERS
        and p["embedding"] != "periodic"
        and p["learning_rate"] != "plateau"
    )


def train_after(
    recipe: Recipe,
    config: MLPConfig,
    bins: nn.Module,
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    group: distributed.Group | None,
    stop: threading.Event | None,
) -> Helpers | None:
    """Helpers of ``config`` trained on ``tensors`` (every row of the table), each without
    its fold of ``validation_fraction`` of the rows (at least 100 or a third), for as many
    epochs as one network of the recipe trains; data-parallel in a group. None when the
    ``stop`` event is set before they have trained every epoch: half-trained helpers' wide
    residuals would describe them, not the members."""
    if stop is not None and stop.is_set():
        return None
    X, y, w = tensors
    n = X.shape[0]
    rows, _ = recipe.validation_split(n, min_rows=min(MIN_CALIBRATION_ROWS, n // 3))
    assert rows is not None  # members: rows are held out
    seeds = member_seeds(recipe.seed, recipe.n_models + CALIBRATION_MEMBERS)[recipe.n_models :]
    helpers = Helpers.make(recipe, config, seeds, bins, rows)
    weights = helpers.weights(X, w, 0)
    if group is not None:  # this process's shard of the rows, with their weights
        shard = group.shard(n)
        X, y, weights = X[shard], y[shard], weights[..., shard]
    train = recipe.train_config(X.shape[0])
    train = replace(train, epochs=epochs_of("auto"))  # one network's, where nnreg chooses
    trainer = EnsembleTrainer(helpers.nets, train, seeds, dropout_seed=recipe.seed + 2)
    trainer.stop = stop
    if group is not None:
        group.broadcast_(trainer.net.params)
        trainer.sync = distributed.TorchSync(group)
    trainer.run(X, y, weights)  # every epoch, as the members train
    return None if stop is not None and stop.is_set() else helpers
