"""Fitting a recipe to checked data: the one path that every in-memory fit takes.

:func:`fit` trains a :class:`~nnreg.recipe.Recipe` on a :class:`FitData` (a single network,
or an ensemble with its calibration helpers; in one process or data-parallel in several) and
returns a :class:`FitResult`: the trained network, its history, the fitted preprocessing and
calibration. Only :class:`nnreg.Regressor` turns a result into fitted attributes
(:meth:`Regressor.adopt`), so the streamed and swept fits that build results of their own
end the same way. :func:`partial_fit` trains one more epoch; :func:`train_single` is the
training step that in-memory and streamed fits share. A single network's result keeps the
state its trainer ended in (:class:`~nnreg.warm.TrainerState`), which a warm start or
``partial_fit`` continues; with ``verbose`` set, each fit prints its epochs
(:mod:`nnreg.progress`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from . import distributed, epochs
from .calibration import (
    ConformalCalibrator,
    OutOfFold,
    calibrate,
    cross_conformal,
    held_out_metrics,
    prediction_interval,
)
from .checkpoint import Checkpoints, attach_checkpoints, run_fingerprint
from .embeddings import PiecewiseLinearEmbedding, adapted_bins, quantile_bins
from .ensemble import EnsembleTrainer
from .epochs import EpochChoice
from .exceptions import ConfigError, DataError, RowNumbers, TrainingDivergedError
from .helpers import CALIBRATION_MEMBERS, MIN_CALIBRATION_ROWS, Helpers, can_calibrate, train_after
from .model import MLP, MLPConfig, MLPEnsemble, predict_moments
from .preprocess import Standardizer, TablePreprocessor
from .progress import report_end, with_progress
from .recipe import Recipe, member_seeds
from .tabm import Network, TabM
from .train import (
    BatchSource,
    EpochCallback,
    GradientSync,
    History,
    TrainConfig,
    Trainer,
    Validation,
)
from .warm import TrainerState, check_continuable, continue_state

__all__ = [
    "CALIBRATION_MEMBERS",
    "MIN_CALIBRATION_ROWS",
    "StartCallback",
    "Checkpoints",
    "FitData",
    "FitResult",
    "calibrate",
    "fit",
    "partial_fit",
    "prediction_interval",
    "train_single",
]

# Shared members (TabM) with a set max_iter or early stopping hold out validation_fraction of
# the rows to calibrate on, but at least this many (or a third) (_fit_single).
MIN_SHARED_CALIBRATION_ROWS = 20
TRIAL: OutOfFold = (np.empty((0, 0)), np.empty((0, 0)))  # a search's trial: no calibration
HELPERS: OutOfFold = (np.empty((0, 0)), np.empty((0, 0)))  # calibrate by nnreg.helpers
StartCallback = Callable[[MLPConfig], None]  # told the network's architecture before training


@dataclass(frozen=True)
class FitData:
    """Checked training data: features as given, targets (rows, targets), weights or None."""

    frame: pd.DataFrame
    y: np.ndarray
    weight: np.ndarray | None = None
    y_1d: bool = True
    feature_names: list[str] | None = None  # None: X had no column names
    # each row's number in the table as given, for data errors: set where rows of weight 0
    # were dropped; None: 0, 1, ...
    row_numbers: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return len(self.frame)

    def numbers(self, rows: np.ndarray | None = None) -> RowNumbers:
        """How data errors number the frame's ``rows`` (default all), in the table as given."""
        if rows is None:
            return 0 if self.row_numbers is None else self.row_numbers
        return rows if self.row_numbers is None else self.row_numbers[rows]


@dataclass
class FitResult:
    """What a fit produced; :meth:`nnreg.Regressor.adopt` makes it the estimator's state."""

    model: Network
    history: History
    preprocessor: TablePreprocessor
    y_scaler: Standardizer
    seed: int
    n_features: int
    feature_names: list[str] | None
    n_outputs: int
    y_1d: bool
    best_epoch: int = -1  # the epoch whose weights were kept; -1: the last
    member_best_epochs: list[int] | None = None  # an ensemble's, member by member
    calibrator: ConformalCalibrator | None = None  # held-out scores for prediction intervals
    held_out: dict[str, float] | None = None  # metrics on the held-out rows, the target's units
    interrupted: bool = False  # a stop event ended training early
    state: TrainerState | None = field(default=None, repr=False)  # what continuing resumes
    epoch_choice: EpochChoice | None = None  # max_iter='auto' chosen by cross-validation


def refuse(recipe: Recipe, *, warm_start: bool, checkpoints: Checkpoints) -> None:
    """What :func:`fit` cannot do with these settings, as a ConfigError."""
    if warm_start and recipe.n_models > 1:
        raise ConfigError("warm_start is not available with n_models > 1.")
    writes = checkpoints.path is not None or checkpoints.resume is not None
    if writes and recipe.n_models > 1 and recipe.shared_ensemble is None:
        raise ConfigError(
            "checkpoints are available for one network: n_models=1, or ensemble='tabm' or "
            "'tabm-mini'."
        )


def raise_for_whole_table(recipe: Recipe, data: FitData) -> None:
    """A data problem that fitting the preprocessing on part of the rows found (a trial's
    fold, the rows left after held-out ones), raised again with the rows and counts of the
    whole table, when the whole table has it too; otherwise nothing."""
    try:
        recipe.preprocessor().fit(data.frame, data.weight, data.numbers())
    except DataError as whole:
        raise whole from None  # the part's error would only repeat it with other numbers


def fit(
    recipe: Recipe,
    data: FitData,
    *,
    warm: FitResult | None = None,
    callback: EpochCallback | None = None,
    stop: threading.Event | None = None,
    checkpoints: Checkpoints | None = None,
    on_start: StartCallback | None = None,
) -> FitResult:
    """Train ``recipe`` on ``data``; ``warm`` continues that result's network, preprocessing
    and (see :mod:`nnreg.warm`) optimiser state. In a process of a ``torch.distributed``
    group the fit is data-parallel. ``on_start(config)`` is called with the network's
    architecture once it is built (its input width depends on the fitted encoding), before
    the first epoch.

    A diverging fit raises :class:`TrainingDivergedError`; for a single network its
    ``partial`` attribute holds the result with the last finite weights.
    """
    checkpoints = checkpoints or Checkpoints()
    group = distributed.current()  # several processes: rank 0's seed, a shard of rows each
    if group is not None:
        recipe = replace(recipe, seed=group.broadcast_int(recipe.seed))
    hooks = _Hooks(callback, stop, on_start)
    previous = None if warm is None else warm.epoch_choice
    auto = recipe.params["max_iter"] == "auto"
    try:
        recipe, choice = epochs.resolve(
            recipe,
            data,
            _fit_alone,
            continued=warm is not None,
            previous=previous,
            group=group,
            stop=stop,
        )
        out_of_fold = HELPERS if auto else None  # nnreg chose the epochs, without a search
        out_of_fold = out_of_fold if choice is None else choice.out_of_fold
        result = _fit_either(recipe, data, warm, group, hooks, checkpoints, out_of_fold)
    except DataError:
        if warm is None:
            raise_for_whole_table(recipe, data)
        raise
    result.interrupted = stop is not None and stop.is_set()
    result.epoch_choice = choice or previous
    return result


def _fit_either(
    recipe: Recipe,
    data: FitData,
    warm: FitResult | None,
    group: distributed.Group | None,
    hooks: _Hooks,
    checkpoints: Checkpoints,
    out_of_fold: OutOfFold | None = None,
) -> FitResult:
    """Independent members with calibration helpers, or one network (:func:`_fit_single`)."""
    if recipe.n_models > 1 and recipe.shared_ensemble is None:
        return _fit_ensemble(recipe, data, group, hooks)
    return _fit_single(recipe, data, warm, group, hooks, checkpoints, out_of_fold)


def _fit_alone(recipe: Recipe, data: FitData) -> FitResult:
    """A fit in this process that nothing listens to: :mod:`nnreg.epochs`'s trials. Shared
    members train on every row of theirs, as the fit they choose for does."""
    return _fit_either(recipe, data, None, None, _Hooks(), Checkpoints(), TRIAL)


@dataclass(frozen=True)
class _Hooks:
    """What the caller of a fit listens with: per epoch, a stop request, the built network."""

    callback: EpochCallback | None = None
    stop: threading.Event | None = None
    on_start: StartCallback | None = None

    def started(self, model: Network) -> None:
        if self.on_start is not None:
            self.on_start(model.config)


def _start(recipe: Recipe, data: FitData, rows: np.ndarray | None) -> FitResult:
    """A result holding the preprocessing fitted on ``rows`` (default all) and the initial
    network; no history yet."""
    frame = data.frame if rows is None else data.frame.iloc[rows]
    y = data.y if rows is None else data.y[rows]
    w = data.weight if rows is None or data.weight is None else data.weight[rows]
    preprocessor = recipe.preprocessor().fit(frame, w, data.numbers(rows))
    y_scaler = recipe.target_scaler().fit(y, w)
    n_numeric = len(preprocessor.numeric)  # the first encoded columns
    config = recipe.model_config(len(preprocessor.output_names), y.shape[1], n_numeric)
    edges = None
    if config.embedding == "piecewise":
        numeric = preprocessor.transform(frame)[:, :n_numeric]
        edges = quantile_bins(numeric, adapted_bins(config.n_bins, len(frame)), w)
        config = replace(config, n_bins=max(len(e) - 1 for e in edges))
    model = recipe.model(config)
    if edges is not None:  # one set of bins: the network's, or every member's
        for net in model.members if isinstance(model, MLPEnsemble) else [model]:
            assert isinstance(net.embedding, PiecewiseLinearEmbedding)
            net.embedding.set_bins(edges)
    return FitResult(
        model=model,
        history=History(),
        preprocessor=preprocessor,
        y_scaler=y_scaler,
        seed=recipe.seed,
        n_features=data.frame.shape[1],
        feature_names=data.feature_names,
        n_outputs=y.shape[1],
        y_1d=data.y_1d,
    )


def _tensors(
    recipe: Recipe, result: FitResult, data: FitData
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The whole table preprocessed: (rows, encoded), (rows, targets), (rows,) or None."""
    X = recipe.tensor(result.preprocessor.transform(data.frame))
    y = recipe.tensor(result.y_scaler.transform(data.y))
    return X, y, None if data.weight is None else recipe.tensor(data.weight)


def _fit_single(
    recipe: Recipe,
    data: FitData,
    warm: FitResult | None,
    group: distributed.Group | None,
    hooks: _Hooks,
    checkpoints: Checkpoints,
    out_of_fold: OutOfFold | None = None,
) -> FitResult:
    """One network, or shared members. These hold out calibration rows, unless nnreg chose
    their epochs (``max_iter='auto'``, without early stopping): then every row trains and
    either ``out_of_fold``, the search's prediction of each row by the trial that held it
    out, calibrates the intervals (cross-conformal) and gives the held-out metrics, or
    (:data:`HELPERS`: no search ran) two helper networks trained afterwards do; the
    search's trials (:data:`TRIAL`) need neither."""
    val_rows, train_rows, out_of_fold, helped = _calibration(recipe, data, warm, out_of_fold)
    if warm is None:
        result = _start(recipe, data, None if val_rows is None else train_rows)
    else:
        result = _continued(recipe, warm, data, "warm_start")
    hooks.started(result.model)
    X, y, w = _tensors(recipe, result, data)
    validation: Validation | None = None
    if val_rows is not None:
        validation = (X[val_rows], y[val_rows], None if w is None else w[val_rows])
        X, y, w = X[train_rows], y[train_rows], None if w is None else w[train_rows]
    whole = (X, y, w)  # every process's rows: what a checkpoint is tied to
    if group is not None:  # this process's shard; its weights travel with it
        rows = group.shard(X.shape[0])
        X, y, w = X[rows], y[rows], None if w is None else w[rows]
        group.broadcast_parameters_(result.model)
    sync = None if group is None else distributed.TorchSync(group)
    config = recipe.train_config(X.shape[0])
    train_single(
        recipe,
        result,
        (X, y, w),
        config,
        validation,
        hooks.callback,
        hooks.stop,
        checkpoints,
        sync,
        whole=whole,
    )
    result.calibrator = calibrate(result.model, validation)
    if val_rows is not None and validation is not None:
        held = predict_moments(result.model, validation[0])[0]
        result.held_out = held_out_metrics(result.y_scaler, data.y[val_rows], held)
    elif out_of_fold is not None and out_of_fold is not TRIAL:
        result.calibrator, held = cross_conformal(result.y_scaler, data.y, out_of_fold)
        result.held_out = held_out_metrics(result.y_scaler, data.y, held)
    elif helped:
        one = replace(result.model.config, ensemble="none", k=1)  # a member, alone
        helpers = train_after(recipe, one, result.model, whole, group, hooks.stop)
        if helpers is not None:  # None: a stop came before they had trained
            X, y = whole[0], whole[1]
            result.calibrator, result.held_out = helpers.calibrate(X, y, result.y_scaler, data.y)
    return result


def _calibration(
    recipe: Recipe, data: FitData, warm: FitResult | None, out_of_fold: OutOfFold | None
) -> tuple[np.ndarray | None, np.ndarray, OutOfFold | None, bool]:
    """How :func:`_fit_single` calibrates: the rows it holds out (None: every row trains)
    and trains on, the search's predictions to calibrate on (or None), and whether helpers
    calibrate instead."""
    shared = recipe.shared_ensemble is not None
    helped = out_of_fold is HELPERS and warm is None and can_calibrate(recipe, data.n_rows)
    if out_of_fold is HELPERS or recipe.params["early_stopping"] or not shared:
        out_of_fold = None  # the helpers score the rows, or held-out rows do
    if out_of_fold is not None or helped:
        return None, np.arange(data.n_rows), out_of_fold, helped
    calibration = min(MIN_SHARED_CALIBRATION_ROWS, data.n_rows // 3) if shared else 1
    val_rows, train_rows = recipe.validation_split(data.n_rows, min_rows=calibration)
    return val_rows, train_rows, None, False


def _continued(recipe: Recipe, previous: FitResult, data: FitData, how: str) -> FitResult:
    """A copy of ``previous`` to train on further: its network (checked, see
    :func:`~nnreg.warm.check_continuable`) and preprocessing, without the calibration and
    held-out metrics that described its old weights."""
    model = check_continuable(recipe, previous.model, how)
    n_features = data.frame.shape[1]
    return replace(previous, model=model, n_features=n_features, calibrator=None, held_out=None)


def train_single(
    recipe: Recipe,
    result: FitResult,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | BatchSource,
    config: TrainConfig,
    validation: Validation | None,
    callback: EpochCallback | None,
    stop: threading.Event | None,
    checkpoints: Checkpoints,
    sync: GradientSync | None = None,
    *,
    partial: bool = False,
    whole: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
) -> None:
    """Train ``result``'s network by ``config`` on in-memory tensors or a batch source, and
    record the history (appended to the one it has) and best epoch in ``result``, also when
    training diverges (then the error's ``partial`` is ``result``). The trainer continues
    ``result.state`` where it can; the state it ends in replaces it (in one process). With
    ``verbose``, its epochs are printed; ``partial`` (one epoch of ``partial_fit``) prints
    them without a planned total. ``whole``: every process's rows, when ``data`` is a shard."""
    model = result.model
    assert isinstance(model, (MLP, TabM))  # one network
    trainer = Trainer(model, config, recipe.generator())
    trainer.sync, trainer.stop = sync, stop
    if sync is None:  # in a distributed run, each process's optimiser state is its own
        continue_state(trainer, result.state)
    result.state = None  # until this run has ended well
    previous = result.history
    epochs = None if partial else config.epochs
    callback = with_progress(recipe, callback, epochs, offset=len(previous))
    mark = None
    if checkpoints.path is not None or checkpoints.resume is not None:
        mark = run_fingerprint(recipe, result, data if whole is None else whole)
    write = attach_checkpoints(
        trainer, checkpoints.resume, checkpoints.path, checkpoints.info, fingerprint=mark
    )
    try:
        if isinstance(data, tuple):
            trainer.run(
                *data,
                validation=validation,
                callback=callback,
                checkpoint=write,
                checkpoint_every=checkpoints.every,
            )
        else:
            trainer.run(
                data, callback=callback, checkpoint=write, checkpoint_every=checkpoints.every
            )
    except TrainingDivergedError as exc:
        exc.partial = result
        raise
    finally:  # also after divergence: the last finite weights stay usable
        result.model = model.eval()
        result.history = _concat(previous, trainer.history)
        result.best_epoch = max(0, trainer.best_epoch + len(previous))
    if sync is None:
        result.state = TrainerState.of(trainer)
    if epochs is not None:
        report_end(recipe, len(result.history), len(previous) + epochs, result.best_epoch)


def _fit_ensemble(
    recipe: Recipe, data: FitData, group: distributed.Group | None, hooks: _Hooks
) -> FitResult:
    """K members on every row; the held-out (calibration) rows are scored by extra helper
    members that each leave out their own fold of them, which calibrates the intervals and,
    with early stopping, chooses the epoch all members keep.

    In a distributed run every process holds every member (and helper) and trains them on
    its shard of the rows, the members' gradients averaged every step; the calibration rows
    are scored whole by every process, so each ends with the same members, calibration and
    stopping epoch."""
    n = data.n_rows
    cal_rows, _ = recipe.validation_split(n, min_rows=min(MIN_CALIBRATION_ROWS, n // 3))
    result = _start(recipe, data, None)
    hooks.started(result.model)
    X, y, w = _tensors(recipe, result, data)
    assert isinstance(result.model, MLPEnsemble)
    members = [m for m in result.model.members if isinstance(m, MLP)]
    K = len(members)
    seeds = member_seeds(recipe.seed, K + (CALIBRATION_MEMBERS if cal_rows is not None else 0))
    helpers, member_w, owner, validation = None, w, None, None
    if cal_rows is not None:
        helpers = Helpers.make(recipe, result.model.config, seeds[K:], members[0], cal_rows)
        member_w = helpers.weights(X, w, K)  # (K + helpers, rows)
        # The helpers' out-of-fold loss on these rows: stop on it, or roll back.
        validation, owner = helpers.validation(X, y, w, K)
    X_all, y_all = X, y
    if group is not None:  # this process's shard of the rows, with their weights
        rows = group.shard(X.shape[0])
        X, y = X[rows], y[rows]
        member_w = None if member_w is None else member_w[..., rows]
    config = recipe.train_config(X.shape[0])
    nets = members + ([] if helpers is None else helpers.nets)
    trainer = EnsembleTrainer(nets, config, seeds, dropout_seed=recipe.seed + 2, reported=K)
    trainer.stop = hooks.stop
    if group is not None:
        group.broadcast_(trainer.net.params)  # rank 0's members (they agree when seeded)
        trainer.sync = distributed.TorchSync(group)
    callback = with_progress(recipe, hooks.callback, config.epochs)
    history = trainer.run(X, y, member_w, validation=validation, owner=owner, callback=callback)
    last = len(history) - 1
    best = max(trainer.record.best_epoch) if validation is not None else -1
    result.model, result.history = result.model.eval(), history
    result.best_epoch = best if best >= 0 else last
    result.member_best_epochs = [b if b >= 0 else last for b in trainer.record.best_epoch[:K]]
    report_end(recipe, len(history), config.epochs, result.best_epoch)
    if helpers is not None:
        result.calibrator, result.held_out = helpers.calibrate(
            X_all, y_all, result.y_scaler, data.y
        )
    return result


def partial_fit(recipe: Recipe, data: FitData, previous: FitResult | None) -> FitResult:
    """One more epoch over ``data``, continuing the network, preprocessing, optimiser state
    and random stream of ``previous`` (None: fit the preprocessing on ``data`` and start a
    network). The learning rate stays at ``learning_rate_init`` (times the reduction that
    ``learning_rate='plateau'`` reached earlier): a schedule needs to know where training
    ends. Every row of ``data`` trains: none is held out."""
    if previous is None:
        result = _start(recipe, data, None)
    else:
        result = _continued(recipe, previous, data, "partial_fit")
    config = recipe.train_config(data.n_rows)
    config = replace(config, epochs=1, schedule="constant", early_stopping=False)
    X, y, w = _tensors(recipe, result, data)
    train_single(recipe, result, (X, y, w), config, None, None, None, Checkpoints(), partial=True)
    return result


def _concat(a: History, b: History) -> History:
    return History(a.train_loss + b.train_loss, a.val_loss + b.val_loss, a.lr + b.lr)
