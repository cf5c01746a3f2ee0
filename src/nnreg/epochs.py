"""``max_iter="auto"``: the number of epochs, chosen by cross-validation on small tables.

How long to train is what matters most on a small table, and no fixed count suits them all.
On scikit-learn's diabetes data (353 training rows, a noisy target) the recommended network
is best after 32 to 64 epochs and overfits by 128; on plotnine's mpg (187 rows) and on the
seed experiment's 100 rows it still improves at 256 (``benchmarks/results/accuracy.md``).
The rows themselves can tell these apart, and on a table this small a fit takes a second, so
a fit in memory with ``max_iter="auto"`` on :data:`MIN_ROWS` to :data:`MAX_ROWS` rows:

1. splits the rows into :data:`FOLDS` folds (drawn from the fit's seed);
2. for each count in :data:`CANDIDATES` (times :data:`~nnreg.recipe.SHARED_EPOCHS` for
   members that share their weights, which learn more slowly), trains the recipe on every
   fold's complement, with its own learning-rate schedule over that many epochs and as many
   steps per epoch as the fit on all the rows takes (its batches are smaller in proportion:
   the number of steps, not of epochs, is what overfits), and scores each held-out row in
   the fit's own loss;
3. trains on every row for the count with the lowest mean held-out loss, among
   :data:`~nnreg.recipe.AUTO_EPOCHS` (times the same factor) and the counts that beat it by
   more than :data:`SE_MARGIN` standard errors of the rows' paired differences (the
   one-standard-error rule: the default stays unless the rows clearly say otherwise).

The margin and the lower bound keep noise from choosing. On tables the recipe was not chosen
on, picking the plain minimum made statsmodels' ccard (57 rows) 2.1x worse and msleep (60)
1.6x; with both, the twelve such tables scored 1.2% better in geometric mean (README, Accuracy).
Members that share weights (``ensemble="tabm"``) are cross-validated as they are; independent
members are copies of one network, so one network is. Shared members' trials also keep each
held-out row's prediction (the members' mean and spread, in the target's units), so that the
fit they chose for trains on every row and calibrates its intervals on those out-of-fold
predictions (:func:`nnreg.calibration.cross_conformal`) instead of holding out rows of its
own; the trials themselves hold none out either. Larger tables, streamed and swept fits
and continued ones train :data:`~nnreg.recipe.AUTO_EPOCHS` (times the factor for shared
members; a warm start keeps its first fit's choice). In a data-parallel run the processes
share the trials out and each gets all their losses, so every process makes the same choice
(rank 0's holds). The choice, with each candidate's held-out loss, is the estimator's
``epochs_cv_``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .backends import ELEMENTWISE
from .exceptions import TrainingDivergedError
from .model import predict_moments
from .recipe import SHARED_EPOCHS, Recipe, epochs_of

if TYPE_CHECKING:  # fitting imports this module
    from .distributed import Group
    from .fitting import FitData, FitResult

__all__ = [
    "CANDIDATES",
    "FOLDS",
    "MAX_ROWS",
    "MIN_ROWS",
    "SE_MARGIN",
    "EpochChoice",
    "candidates",
    "choose",
    "resolve",
]

CANDIDATES = (32, 64, 128, 256)  # epochs, each with its own schedule
FOLDS = 3
MIN_ROWS = 100  # fewer rows hold out too few per fold to choose by
MAX_ROWS = 1000  # larger tables train AUTO_EPOCHS: 3 x 4 fits would cost too much there
SE_MARGIN = 1.0  # another count than AUTO_EPOCHS must beat it by this many standard errors

Train = Callable[["Recipe", "FitData"], "FitResult"]  # one process, no hooks


@dataclass(frozen=True)
class EpochChoice:
    """The epochs a fit chose and each candidate's held-out loss (the mean over every row of
    the loss the fit optimises, on the standardised target when ``scale_target``; inf where
    that count diverged)."""

    epochs: int
    candidates: tuple[int, ...]
    losses: tuple[float, ...]
    folds: int
    # Shared members' out-of-fold predictions at the chosen count: each row's mean and spread
    # (rows, targets) in the target's units, from the trial that held the row out. They
    # calibrate the fit's intervals in place of held-out rows; not saved (the scores are).
    out_of_fold: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, compare=False, repr=False
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "folds": self.folds,
            "candidates": list(self.candidates),
            "held_out_loss": [x if math.isfinite(x) else None for x in self.losses],
        }

    @classmethod
    def from_dict(cls, d: Any) -> EpochChoice | None:
        """The choice :meth:`to_dict` wrote (None for None); ValueError when it is not one."""
        if d is None:
            return None
        candidates, losses = d["candidates"], d["held_out_loss"]
        ints = [d["epochs"], d["folds"], *candidates]
        if not (
            all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ints)
            and all(x is None or isinstance(x, float) for x in losses)
            and len(losses) == len(candidates)
            and d["epochs"] in candidates
        ):
            raise ValueError("its epochs_cv is not what nnreg writes")
        held = tuple(math.inf if x is None else x for x in losses)
        return cls(d["epochs"], tuple(candidates), held, d["folds"])


def resolve(
    recipe: Recipe,
    data: FitData,
    train: Train,
    *,
    continued: bool = False,
    previous: EpochChoice | None = None,
    group: Group | None = None,
    stop: threading.Event | None = None,
) -> tuple[Recipe, EpochChoice | None]:
    """``recipe`` with a number for ``max_iter='auto'`` (unchanged otherwise), and the
    choice when cross-validation made it. A ``continued`` fit (a warm start) trains its
    first fit's choice (``previous``) or the recipe's default count."""
    if recipe.params["max_iter"] != "auto":
        return recipe, None
    choice = None
    default = epochs_of("auto", recipe.shared_ensemble is not None)
    if continued:
        epochs = default if previous is None else previous.epochs
    elif MIN_ROWS <= data.n_rows <= MAX_ROWS:
        choice = choose(recipe, data, train, stop, group)
        epochs = default if choice is None else choice.epochs  # None: stopped
    else:
        epochs = default
    if group is not None:  # every process chose alike; rank 0's holds
        epochs = group.broadcast_int(epochs)
        choice = None if choice is None else replace(choice, epochs=epochs)
    return with_params(recipe, max_iter=epochs), choice


def choose(
    recipe: Recipe,
    data: FitData,
    train: Train,
    stop: threading.Event | None = None,
    group: Group | None = None,
) -> EpochChoice | None:
    """The count of :func:`candidates` chosen on :data:`FOLDS` folds of ``data``'s rows;
    see the module docstring. A set ``stop`` ends the search between two trials (None:
    nothing was chosen). In a ``group`` of processes each trains its share of the trials
    (fold and count pairs, about as many epochs each) and every process gets all their
    held-out losses, so that all choose alike in a fraction of the time; a search stopped in
    any of them chose nothing."""
    n = data.n_rows
    order = np.random.default_rng([recipe.seed, 1]).permutation(n)
    folds = [np.sort(f) for f in np.array_split(order, FOLDS)]
    base = recipe if recipe.shared_ensemble else with_params(recipe, n_models=1)
    base = with_params(base, verbose=0)
    steps = _steps_per_epoch(recipe, n)
    counts = candidates(recipe)
    # per count and row, when the row was held out: its loss, then (shared members) the
    # members' mean and spread of each target
    width = 1 + 2 * data.y.shape[1] if recipe.shared_ensemble else 1
    held_out = np.full((len(counts), n, width), math.nan)
    trials = [(held, j) for held in folds for j in range(len(counts))]
    mine = _share([counts[j] for _, j in trials], group)
    for held, j in (trial for trial, ours in zip(trials, mine, strict=True) if ours):
        if stop is not None and stop.is_set():
            break
        rows = np.setdiff1d(np.arange(n), held)
        batch = base.params["batch_size"]
        if batch != "full":  # as many steps per epoch as on all rows
            batch = math.ceil(len(rows) / steps)
        fold_recipe = with_params(base, max_iter=counts[j], batch_size=batch)
        held_out[j, held] = _held_out(
            fold_recipe, _subset(data, rows), _subset(data, held), train, width
        )
    if group is not None:  # each entry is one trial's: its process has it, the others NaN
        for part in group.gather(torch.from_numpy(held_out)):
            held_out = np.where(np.isnan(held_out), part.numpy(), held_out)
    per_row = held_out[:, :, 0]
    if np.isnan(per_row).any():  # a trial did not run: stopped
        return None
    weight = np.ones(n) if data.weight is None else np.asarray(data.weight, dtype=np.float64)
    p = weight / weight.sum()
    losses = tuple(float(x) for x in per_row @ p)
    default = counts.index(epochs_of("auto", recipe.shared_ensemble is not None))
    best = _best(per_row, p, default)
    out_of_fold = None
    if width > 1 and np.isfinite(held_out[best]).all():
        mean, spread = np.split(held_out[best, :, 1:], 2, axis=1)
        out_of_fold = (mean, spread)
    return EpochChoice(counts[best], counts, losses, FOLDS, out_of_fold)


def candidates(recipe: Recipe) -> tuple[int, ...]:
    """The epoch counts the search tries for ``recipe``: :data:`CANDIDATES`, times
    :data:`~nnreg.recipe.SHARED_EPOCHS` for members that share their weights."""
    factor = SHARED_EPOCHS if recipe.shared_ensemble is not None else 1
    return tuple(c * factor for c in CANDIDATES)


def _share(work: list[int], group: Group | None) -> list[bool]:
    """Which of the trials (their epochs, ``work``) this process trains: each goes to the
    process with the least work so far, longest first (ties to the lowest rank), so that
    two processes take about half of the epochs each."""
    if group is None:
        return [True] * len(work)
    load = [0] * group.world_size
    owner = [0] * len(work)
    for t in sorted(range(len(work)), key=lambda t: -work[t]):
        owner[t] = min(range(group.world_size), key=lambda r: load[r])
        load[owner[t]] += work[t]
    return [o == group.rank for o in owner]


def _best(per_row: np.ndarray, p: np.ndarray, default: int) -> int:
    """The candidate with the lowest mean held-out loss among the default (row ``default``)
    and those that beat it by more than SE_MARGIN standard errors of the paired per-row
    differences."""
    with np.errstate(invalid="ignore", over="ignore"):
        means = per_row @ p
        finite = np.isfinite(means)
        if not finite[default]:  # the default diverged: the best count that did not, if any
            return int(np.argmin(np.where(finite, means, np.inf))) if finite.any() else default
        diff = per_row - per_row[default]
        gain = diff @ p  # < 0: better than the default
        se = np.sqrt(((diff - gain[:, None]) ** 2) @ (p**2))
        clear = np.isfinite(gain) & (gain + SE_MARGIN * se < 0)
    clear[default] = True
    return int(np.argmin(np.where(clear, means, np.inf)))


def with_params(recipe: Recipe, **changes: Any) -> Recipe:
    return replace(recipe, params={**recipe.params, **changes})


def _steps_per_epoch(recipe: Recipe, n: int) -> int:
    size = recipe.train_config(n).batch_size or n  # None: the full batch
    return max(1, math.ceil(n / size))


def _subset(data: FitData, rows: np.ndarray) -> FitData:
    weight = None if data.weight is None else data.weight[rows]
    numbers = np.asarray(data.numbers(rows))  # a fold's data errors name the table's rows
    return replace(
        data, frame=data.frame.iloc[rows], y=data.y[rows], weight=weight, row_numbers=numbers
    )


def _held_out(recipe: Recipe, part: FitData, rest: FitData, train: Train, width: int) -> np.ndarray:
    """(rows of ``rest``, ``width``) after training ``recipe`` on ``part``: each row's loss
    (mean over targets; inf where it diverged), then, with ``width`` > 1, the members' mean
    and spread of each target in the target's units (NaN where it diverged)."""
    out = np.full((rest.n_rows, width), math.nan)
    try:
        result = train(recipe, part)
    except TrainingDivergedError:
        out[:, 0] = math.inf
        return out
    X = recipe.tensor(result.preprocessor.transform(rest.frame))
    mean, spread = predict_moments(result.model, X)
    target = torch.from_numpy(np.asarray(result.y_scaler.transform(rest.y), dtype=np.float64))
    losses = ELEMENTWISE[recipe.params["loss"]](torch.from_numpy(mean), target).mean(dim=1)
    out[:, 0] = np.where(np.isfinite(losses.numpy()), losses.numpy(), math.inf)
    if width > 1:  # unscaled by the trial's own standardisation, unclipped
        scale = np.asarray(result.y_scaler.scale)
        out[:, 1:] = np.hstack([mean * scale + np.asarray(result.y_scaler.mean), spread * scale])
    return out
