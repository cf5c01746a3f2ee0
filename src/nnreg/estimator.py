"""``Regressor``: the scikit-learn estimator built on the model, the preprocessing and the loop."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_array, validate_data

from . import artifact, distributed
from .device import DEVICE_HELP, is_device_name, training_device
from .ensemble import ConformalCalibrator, EnsembleTrainer, member_seeds
from .exceptions import ConfigError, DataError, DataTypeError, ModelFileError, NotFittedError
from .model import ACTIVATIONS, INITS, MLP, MLPConfig, MLPEnsemble, count_parameters
from .preprocess import MISSING, SCALINGS, Standardizer, TablePreprocessor
from .train import (
    EVAL_CHUNK,
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    EpochCallback,
    History,
    TrainConfig,
    Trainer,
)

__all__ = ["PRESETS", "Regressor", "load"]

# The seed experiment's recipe, exactly (DESIGN.md).
SEED_PRESET: dict[str, Any] = {
    "hidden_layer_sizes": (20, 20),
    "activation": "relu",
    "init": "xavier_uniform",
    "dropout": 0.0,
    "optimizer": "sgd",
    "learning_rate_init": 0.001,
    "learning_rate": "constant",
    "momentum": 0.0,
    "nesterovs_momentum": False,
    "weight_decay": 0.0,
    "batch_size": "full",
    "max_iter": 500,
    "loss": "squared_error",
    "early_stopping": False,
    "scaling": "none",
    "scale_target": False,
}
# The estimator's defaults, tuned on benchmarks/accuracy.py's panel (results/accuracy.md):
# three SiLU layers of 128 with dropout, AdamW with weight decay and a short-memory second
# moment (beta_2=0.95, as in RealMLP), a cosine learning-rate decay over 128 epochs.
RECOMMENDED_PRESET: dict[str, Any] = {
    "hidden_layer_sizes": (128, 128, 128),
    "activation": "silu",
    "init": "xavier_uniform",
    "dropout": 0.15,
    "optimizer": "adamw",
    "learning_rate_init": 0.003,
    "learning_rate": "cosine",
    "momentum": 0.9,
    "nesterovs_momentum": False,
    "weight_decay": 0.02,
    "beta_1": 0.9,
    "beta_2": 0.95,
    "batch_size": "auto",
    "max_iter": 128,
    "loss": "squared_error",
    "early_stopping": False,
    "scaling": "standard",
    "scale_target": True,
}
PRESETS = {"seed": SEED_PRESET, "recommended": RECOMMENDED_PRESET}


AUTO_BATCH = 256  # the most rows per step of batch_size='auto'
MIN_CALIBRATION_ROWS = 100  # an ensemble calibrates on at least this many (or a third of) rows
# Extra members an ensemble trains (batched with the others) only to score its calibration
# rows out of fold; the members that predict train on every row.
CALIBRATION_MEMBERS = 2


def auto_batch_size(n_rows: int) -> int:
    """Rows per step for ``batch_size='auto'``: the epoch in equal batches of at most
    AUTO_BATCH rows, so no epoch ends with a stray handful of rows taking a full step."""
    n_batches = max(1, math.ceil(n_rows / AUTO_BATCH))
    return max(1, math.ceil(n_rows / n_batches))


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and int(v) >= 1


def _real(v: Any, lo: float, hi: float = math.inf, *, open_lo: bool = False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    x = float(v)
    return math.isfinite(x) and (x > lo if open_lo else x >= lo) and x < hi


def _one_of(options: tuple[str, ...] | list[str]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and v in options), f"one of {list(options)}"


BOOL = (lambda v: isinstance(v, (bool, np.bool_)), "True or False")

# One table of hyperparameter checks: name -> (test, what is allowed).
PARAMETER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "hidden_layer_sizes": (
        lambda v: isinstance(v, (tuple, list)) and all(_positive_int(h) for h in v),
        "a tuple of positive integers, e.g. (64, 64); () for a linear model",
    ),
    "activation": _one_of(sorted(ACTIVATIONS)),
    "init": _one_of(INITS),
    "dropout": (lambda v: _real(v, 0.0, 1.0), "a number in [0, 1)"),
    "optimizer": _one_of(OPTIMIZERS),
    "learning_rate_init": (lambda v: _real(v, 0.0, open_lo=True), "a finite number > 0"),
    "learning_rate": _one_of(SCHEDULES),
    "momentum": (lambda v: _real(v, 0.0, 1.0), "a number in [0, 1)"),
    "nesterovs_momentum": BOOL,
    "weight_decay": (lambda v: _real(v, 0.0), "a finite number >= 0"),
    "beta_1": (lambda v: _real(v, 0.0, 1.0), "a number in [0, 1)"),
    "beta_2": (lambda v: _real(v, 0.0, 1.0), "a number in [0, 1)"),
    "epsilon": (lambda v: _real(v, 0.0, open_lo=True), "a finite number > 0"),
    "batch_size": (
        lambda v: v in ("auto", "full") or _positive_int(v),
        "a positive integer, 'auto' (equal batches of at most 256 rows) or 'full' (one step "
        "per epoch)",
    ),
    "max_iter": (_positive_int, "a positive integer (epochs)"),
    "loss": _one_of(LOSSES),
    "early_stopping": BOOL,
    "validation_fraction": (lambda v: _real(v, 0.0, 1.0, open_lo=True), "a number in (0, 1)"),
    "n_iter_no_change": (_positive_int, "a positive integer (epochs)"),
    "tol": (lambda v: _real(v, 0.0), "a finite number >= 0"),
    "scaling": _one_of(SCALINGS),
    "scale_target": BOOL,
    "missing": _one_of(MISSING),
    "max_categories": (_positive_int, "a positive integer"),
    "dtype": _one_of(("float32", "float64")),
    "random_state": (
        lambda v: (
            v is None
            or isinstance(v, np.random.RandomState)
            or (_is_int(v) and 0 <= int(v) < 2**32)
        ),
        "None, an integer in [0, 2**32) or a numpy RandomState",
    ),
    "warm_start": BOOL,
    "n_models": (_positive_int, "a positive integer (ensemble members)"),
    "device": (
        is_device_name,
        DEVICE_HELP,
    ),
}


class Regressor(RegressorMixin, BaseEstimator):
    """A multilayer-perceptron regressor trained with PyTorch.

    The defaults are the ``recommended`` preset; ``Regressor.from_preset("seed")`` is the
    seed experiment's recipe.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(128, 128, 128)
        Width of each hidden layer.
    activation : {'relu', 'gelu', 'silu', 'tanh'}, default='silu'
    init : {'xavier_uniform', 'default'}, default='xavier_uniform'
        Initialisation of the hidden layers' weights (biases zero); the output layer always
        keeps PyTorch's default.
    dropout : float, default=0.15
        Probability of zeroing each hidden unit during training.
    optimizer : {'sgd', 'adam', 'adamw'}, default='adamw'
    learning_rate_init : float, default=0.003
    learning_rate : {'constant', 'cosine', 'plateau'}, default='cosine'
        Schedule: fixed; cosine decay to 0 over ``max_iter`` epochs (per step); or divided by
        5 whenever the monitored loss (validation if any, else training) stalls for
        ``n_iter_no_change // 2`` epochs, down to 1/1000 of ``learning_rate_init``.
    momentum : float, default=0.9
        Momentum of SGD; ignored by the other optimisers.
    nesterovs_momentum : bool, default=False
    weight_decay : float, default=0.02
        L2 penalty as ``torch.optim`` applies it (decoupled for 'adamw').
    beta_1, beta_2, epsilon : float, default=0.9, 0.95, 1e-8
        Adam's moment decay rates and its numerical-stability term.
    batch_size : int, 'auto' or 'full', default='auto'
        Rows per step; 'auto' splits each epoch into equal batches of at most 256 rows (300
        rows: two of 150, never 256 and a stray 44), 'full' one full-batch step per epoch.
    max_iter : int, default=128
        Number of epochs (at most, with early stopping).
    loss : {'squared_error', 'absolute_error', 'huber'}, default='squared_error'
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows, stop when their loss has not improved
        by ``tol`` for ``n_iter_no_change`` epochs, and keep the best epoch's weights.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-4
    scaling : {'standard', 'robust', 'none'}, default='standard'
        Numeric inputs: mean/std, median/IQR with a smooth clip, or unchanged.
    scale_target : bool, default=True
        Standardise the target; predictions are always in the target's own units.
    missing : {'error', 'impute'}, default='error'
        Missing values raise an error naming the column, or are imputed: numeric ones by the
        median plus a missing-indicator column, categorical ones as a category of their own.
    max_categories : int, default=32
        One-hot columns per categorical feature (most frequent first; the rest share one).
        Categorical features are DataFrame columns of strings, objects or ``category`` dtype;
        categories first seen at prediction share that column too.
    dtype : {'float32', 'float64'}, default='float32'
        Precision of the weights and of training.
    random_state : int, RandomState or None, default=None
        Seeds the initial weights, the validation split, the minibatch order and dropout; an
        int gives bitwise-identical fits on the CPU.
    warm_start : bool, default=False
        ``fit`` continues from the current weights and preprocessing instead of starting over.
    n_models : int, default=1
        Members of an ensemble trained together as one batched computation, each with its own
        initial weights, minibatch order and (with ``early_stopping``) stopping epoch.
        ``predict`` returns their mean; ``predict(X, return_std=True)`` their spread too.
        Every member trains on every row. :meth:`predict_interval` is calibrated by two extra
        members trained in the same batch: each leaves out half of the calibration rows
        (``validation_fraction`` of the rows, but at least 100 or a third) and scores them;
        they are discarded after ``fit``. Their out-of-fold loss, epoch by epoch, is
        ``history_.val_loss``: with ``early_stopping`` all members stop together when it
        stalls and keep its best epoch; without, they train every epoch and go back to the
        best one only if it beat the last by more than two standard errors (``best_epoch_``).
    device : str, default='cpu'
        Where to train: 'cpu', 'cuda', 'cuda:N', 'mps', or 'auto' (CUDA when available, else
        the CPU). In a multi-process run a bare 'cuda' is ``cuda:LOCAL_RANK``. Predictions are
        returned as NumPy arrays and saved weights are moved to the CPU; a loaded model is on
        the CPU.

    Attributes
    ----------
    model_ : MLP
        The trained network.
    history_ : History
        Per epoch: training loss, validation loss and learning rate (losses on the
        standardised target when ``scale_target``).
    loss_curve_ : list of float
    validation_scores_ : list of float
        Validation loss per epoch; only with ``early_stopping``.
    n_iter_ : int
        Epochs trained.
    best_epoch_ : int
        Epoch whose weights were kept (the last one without early stopping).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a DataFrame with string column names.
    model_info_ : dict
        Only on a model read by :func:`nnreg.load`: the folder's ``model.json``.

    Examples
    --------
    >>> import nnreg
    >>> df = nnreg.seed_dataset(n=200)
    >>> reg = nnreg.Regressor(max_iter=20, random_state=0).fit(df[["x1", "x2"]], df["y"])
    >>> reg.predict(df[["x1", "x2"]].head(3)).shape
    (3,)
    """

    feature_names_in_: np.ndarray
    n_outputs_: int
    calibrator_: ConformalCalibrator
    _trainer: Trainer | None = None  # kept between partial_fit calls

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (128, 128, 128),
        activation: str = "silu",
        init: str = "xavier_uniform",
        dropout: float = 0.15,
        optimizer: str = "adamw",
        learning_rate_init: float = 0.003,
        learning_rate: str = "cosine",
        momentum: float = 0.9,
        nesterovs_momentum: bool = False,
        weight_decay: float = 0.02,
        beta_1: float = 0.9,
        beta_2: float = 0.95,
        epsilon: float = 1e-8,
        batch_size: int | str = "auto",
        max_iter: int = 128,
        loss: str = "squared_error",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        tol: float = 1e-4,
        scaling: str = "standard",
        scale_target: bool = True,
        missing: str = "error",
        max_categories: int = 32,
        dtype: str = "float32",
        random_state: int | np.random.RandomState | None = None,
        warm_start: bool = False,
        n_models: int = 1,
        device: str = "cpu",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.init = init
        self.dropout = dropout
        self.optimizer = optimizer
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.weight_decay = weight_decay
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.loss = loss
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.scaling = scaling
        self.scale_target = scale_target
        self.missing = missing
        self.max_categories = max_categories
        self.dtype = dtype
        self.random_state = random_state
        self.warm_start = warm_start
        self.n_models = n_models
        self.device = device

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Regressor:
        """A Regressor configured by a named preset ('seed' or 'recommended'), then overrides.

        >>> Regressor.from_preset("seed").max_iter
        500
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.allow_nan = self.missing == "impute"
        tags.input_tags.categorical = True
        return tags

    # -- fitting -------------------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        *,
        callback: EpochCallback | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 0,
        checkpoint_info: dict[str, Any] | None = None,
        resume: str | Path | None = None,
        stop: threading.Event | None = None,
    ) -> Regressor:
        """Train on ``X`` (rows, features) and ``y`` (rows,) or (rows, targets); returns self.

        ``callback(epoch, train_loss, val_loss)``, when given, is called after every epoch
        (``val_loss`` is None without early stopping). Every ``checkpoint_every`` epochs the
        full training state (weights, optimiser, random generators, history, early-stopping
        state, plus ``checkpoint_info``) is written atomically to ``checkpoint``;
        ``resume=path`` continues such a run, given the same data and parameters, to the
        bitwise-same result on the CPU. Setting ``stop`` ends training after the current
        step (``interrupted_`` is then True). A diverging run keeps its last finite weights
        and raises :class:`~nnreg.exceptions.TrainingDivergedError`.

        Called in every process of an initialised ``torch.distributed`` process group (as
        ``torchrun`` starts them), ``fit`` trains data-parallel: each process takes an equal
        share of the training rows, ``batch_size`` rows per step, and gradients are averaged
        every step, so all processes end with the same model (see :mod:`nnreg.distributed`).
        """
        self._check_params()
        if self.warm_start and self.n_models > 1:
            raise ConfigError("warm_start is not available with n_models > 1.")
        if self.n_models > 1 and (checkpoint is not None or resume is not None):
            raise ConfigError("checkpoints are available for single models (n_models=1).")
        warm = self.warm_start and self.__sklearn_is_fitted__()
        frame = self._check_X(X, reset=not warm)
        y_arr = self._check_y(y, len(frame), reset=not warm)
        w = self._check_sample_weight(sample_weight, len(frame))
        frame, y_arr, w = _drop_zero_weights(frame, y_arr, w)
        if not warm:
            self.seed_ = self._resolve_seed()
        group = distributed.current()  # several processes: rank 0's seed, a shard of rows each
        if group is not None:
            distributed.refuse_unsupported(
                group,
                sample_weight=w is not None,
                n_models=int(self.n_models),
                checkpoint=checkpoint is not None or resume is not None,
            )
            self.seed_ = group.broadcast_int(self.seed_)
        val_rows, train_rows = self._validation_split(len(frame))
        # An ensemble trains every member on every row; its held-out rows are scored by extra
        # members that each leave out their own fold of them, which calibrates the intervals
        # and, with early stopping, chooses the epoch all members keep.
        cal_rows = None
        if val_rows is not None and self.n_models > 1:
            cal_rows, val_rows, train_rows = val_rows, None, np.arange(len(frame))
        train_frame = frame.iloc[train_rows] if val_rows is not None else frame
        w_train = None if w is None or val_rows is None else w[train_rows]
        if not warm:
            self._init_model(
                train_frame,
                y_arr if val_rows is None else y_arr[train_rows],
                w if val_rows is None else w_train,
            )
        X_all = self._tensor(self.preprocessor_.transform(frame))  # (rows, encoded)
        y_all = self._tensor(self.y_scaler_.transform(y_arr))  # (rows, targets)
        w_all = None if w is None else self._tensor(w)
        validation = None
        if val_rows is not None:
            validation = (
                X_all[val_rows],
                y_all[val_rows],
                None if w_all is None else w_all[val_rows],
            )
            X_all, y_all = X_all[train_rows], y_all[train_rows]
            w_all = None if w_all is None else w_all[train_rows]
        if group is not None:
            rows = group.shard(X_all.shape[0])
            X_all, y_all = X_all[rows], y_all[rows]
        previous = self.history_ if warm else History()
        config = self._train_config(X_all.shape[0])
        if isinstance(self.model_, MLPEnsemble):
            members = [m for m in self.model_.members if isinstance(m, MLP)]
            K, helpers, member_w, owner = len(members), [], w_all, None
            seeds = member_seeds(
                self.seed_, K + (CALIBRATION_MEMBERS if cal_rows is not None else 0)
            )
            if cal_rows is not None:
                helpers = [self._new_member(self.model_.config, s) for s in seeds[K:]]
                folds = self._calibration_folds(len(cal_rows), len(helpers))
                member_w = X_all.new_ones(X_all.shape[0]) if w_all is None else w_all
                member_w = member_w.expand(K + len(helpers), -1).clone()  # (K + helpers, rows)
                member_w[K + torch.as_tensor(folds), torch.as_tensor(cal_rows)] = 0.0
                # The helpers' out-of-fold loss on these rows: stop on it, or roll back.
                owner = K + torch.as_tensor(folds, device=X_all.device)
                validation = (
                    X_all[cal_rows],
                    y_all[cal_rows],
                    None if w_all is None else w_all[cal_rows],
                )
            ensemble = EnsembleTrainer(
                members + helpers, config, seeds, dropout_seed=self.seed_ + 2, reported=K
            )
            ensemble.stop = stop
            history = ensemble.run(
                X_all, y_all, member_w, validation=validation, owner=owner, callback=callback
            )
            record = ensemble.record
            best = max(record.best_epoch) if validation is not None else -1
            self._set_fitted(self.model_, history)
            self.best_epoch_ = best if best >= 0 else len(history) - 1
            self.member_best_epochs_ = [
                b if b >= 0 else len(history) - 1 for b in record.best_epoch[:K]
            ]
        else:
            if group is not None:
                group.broadcast_parameters_(self.model_)
            trainer = Trainer(self.model_, config, self._generator())
            trainer.sync = None if group is None else distributed.TorchSync(group)
            trainer.stop = stop
            write = attach_checkpoints(trainer, resume, checkpoint, checkpoint_info)
            try:
                trainer.run(
                    X_all,
                    y_all,
                    w_all,
                    validation=validation,
                    callback=callback,
                    checkpoint=write,
                    checkpoint_every=checkpoint_every,
                )
            finally:  # also after divergence: the last finite weights stay usable
                self._set_fitted(self.model_, _concat(previous, trainer.history))
                self.best_epoch_ = max(0, trainer.best_epoch + len(previous))
        self.interrupted_ = stop is not None and stop.is_set()
        if cal_rows is not None:
            self._calibrate_out_of_fold(X_all[cal_rows], y_all[cal_rows], folds, helpers)
        else:
            self._calibrate(validation)
        self._trainer = None  # partial_fit starts a fresh optimiser after fit
        return self

    def _calibrate(self, validation: Any) -> None:
        """Keep the held-out rows' conformity scores, for predict_interval."""
        if validation is None:
            if hasattr(self, "calibrator_"):
                del self.calibrator_
            return
        X_val, y_val, _ = validation
        mean, std = self._moments(X_val)
        self.calibrator_ = ConformalCalibrator.fit(y_val.cpu().double().numpy(), mean, std)

    def _calibration_folds(self, n_cal: int, n_helpers: int) -> np.ndarray:
        """The helper member that leaves out each calibration row: seeded and balanced."""
        return np.random.default_rng(self.seed_ + 3).permutation(n_cal) % n_helpers

    def _calibrate_out_of_fold(
        self, X_cal: torch.Tensor, y_cal: torch.Tensor, folds: Any, helpers: list[MLP]
    ) -> None:
        """Conformity scores of the calibration rows, each the residual of the helper member
        that did not train on it. Unscaled: one network's out-of-sample residuals are no
        smaller than the mean of members trained on every row, so the intervals keep
        (slightly more than) their coverage, and the members' spread on rows they fitted is
        not the spread a new row gets."""
        out = torch.stack([h.predict_float64(X_cal) for h in helpers]).cpu().numpy()
        out_of_fold = out[folds, np.arange(out.shape[1])]  # (rows, targets)
        self.calibrator_ = ConformalCalibrator.fit(y_cal.cpu().double().numpy(), out_of_fold)

    def _moments(self, Z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread of the members' predictions, (rows, targets) each, in the model's
        standardised target units; a single model has spread 1 (plain conformal residuals).

        Forward passes of EVAL_CHUNK rows keep the float64 activations small; a row's
        prediction does not depend on the rows beside it."""
        parts = [
            self.model_.predict_float64(Z[lo : lo + EVAL_CHUNK]).cpu().numpy()
            for lo in range(0, max(len(Z), 1), EVAL_CHUNK)
        ]
        out = np.concatenate(parts, axis=-2)  # rows are the second-to-last axis
        if isinstance(self.model_, MLPEnsemble):  # out: (K, rows, targets)
            return out.mean(axis=0), out.std(axis=0, ddof=1)
        return out, np.ones_like(out)

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> Regressor:
        """One epoch over ``X, y``, continuing the weights and optimiser state of earlier calls.

        The first call fits the preprocessing on its data and builds the network. The learning
        rate stays at ``learning_rate_init``: a schedule needs to know where training ends.
        """
        first = self._trainer is None or not self.__sklearn_is_fitted__()
        if first:
            self._check_params()
            if self.n_models > 1:
                raise ConfigError("partial_fit trains one model; use n_models=1.")
            if distributed.current() is not None:
                raise ConfigError("partial_fit trains in one process; use fit in distributed runs.")
        frame = self._check_X(X, reset=first)
        y_arr = self._check_y(y, len(frame), reset=first)
        w = self._check_sample_weight(sample_weight, len(frame))
        frame, y_arr, w = _drop_zero_weights(frame, y_arr, w)
        if first:
            self.seed_ = self._resolve_seed()
            self._init_model(frame, y_arr, w)
            config = replace(self._train_config(len(frame)), schedule="constant")
            self._trainer = Trainer(self.model_, config, self._generator())
        X_t = self._tensor(self.preprocessor_.transform(frame))
        y_t = self._tensor(self.y_scaler_.transform(y_arr))
        trainer = self._trainer
        assert trainer is not None  # made by the first call
        trainer.run(X_t, y_t, None if w is None else self._tensor(w), epochs=1)
        self._set_fitted(self.model_, trainer.history)
        self.best_epoch_ = len(trainer.history) - 1
        return self

    def _init_model(self, frame: pd.DataFrame, y: np.ndarray, w: np.ndarray | None) -> None:
        self.preprocessor_ = TablePreprocessor(
            scaling=self.scaling, missing=self.missing, max_categories=int(self.max_categories)
        ).fit(frame, w)
        self.y_scaler_ = Standardizer(self.scale_target).fit(y, w)
        config = MLPConfig(
            n_inputs=len(self.preprocessor_.output_names),
            hidden_sizes=tuple(int(h) for h in self.hidden_layer_sizes),
            n_outputs=y.shape[1],
            activation=self.activation,
            init=self.init,
            dropout=float(self.dropout),
        )
        # Member 0 uses seed_ itself, so it is the single model.
        members = [
            self._new_member(config, s) for s in member_seeds(self.seed_, int(self.n_models))
        ]
        self.model_ = members[0] if len(members) == 1 else MLPEnsemble(config, members)

    def _new_member(self, config: MLPConfig, seed: int) -> MLP:
        """A network initialised from ``seed`` alone, on the training device and dtype."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MLP(config).to(device=self._device(), dtype=_DTYPES[self.dtype])

    def _generator(self) -> torch.Generator:
        # Minibatch order and dropout draw from their own stream, seeded like the weights.
        return torch.Generator(device=self._device()).manual_seed(self.seed_ + 1)

    def _device(self) -> torch.device:
        """Where training runs: ``device`` resolved ('auto', a bare 'cuda' per process)."""
        return training_device(self.device)

    def _set_fitted(self, model: MLP | MLPEnsemble, history: History) -> None:
        self.model_ = model.eval()
        self.history_ = history
        self.loss_curve_ = list(history.train_loss)
        if self.early_stopping:
            self.validation_scores_ = list(history.val_loss)
        self.n_iter_ = len(history)

    def _validation_split(self, n: int) -> tuple[np.ndarray | None, np.ndarray]:
        """Row indices (validation, training): held out for early stopping, and for ensembles
        always (they calibrate prediction intervals); (None, all) otherwise."""
        everything = np.arange(n)
        if not (self.early_stopping or self.n_models > 1) or n < 2:
            return None, everything
        n_val = min(n - 1, max(1, round(self.validation_fraction * n)))
        if self.n_models > 1:
            # Calibration rows: only the helper members leave them out (half each), so more
            # are cheap, and a 90% quantile of a few dozen scores is a coin toss.
            n_val = max(n_val, min(MIN_CALIBRATION_ROWS, n // 3))
        perm = np.random.default_rng(self.seed_).permutation(n)
        return np.sort(perm[:n_val]), np.sort(perm[n_val:])

    def _train_config(self, n_rows: int) -> TrainConfig:
        batch = self.batch_size
        batch_size = (
            None if batch == "full" else auto_batch_size(n_rows) if batch == "auto" else batch
        )
        return TrainConfig(
            epochs=int(self.max_iter),
            lr=float(self.learning_rate_init),
            optimizer=self.optimizer,
            momentum=float(self.momentum),
            nesterov=bool(self.nesterovs_momentum),
            weight_decay=float(self.weight_decay),
            betas=(float(self.beta_1), float(self.beta_2)),
            eps=float(self.epsilon),
            batch_size=None if batch_size is None else int(batch_size),
            loss=self.loss,
            schedule=self.learning_rate,
            early_stopping=bool(self.early_stopping),
            n_iter_no_change=int(self.n_iter_no_change),
            tol=float(self.tol),
        )

    def _check_params(self) -> None:
        problems = []
        for name, (ok, allowed) in PARAMETER_RULES.items():
            value = getattr(self, name)
            if not ok(value):
                problems.append(f"{name} must be {allowed}, got {value!r}")
        if (
            not problems
            and self.nesterovs_momentum
            and self.optimizer == "sgd"
            and self.momentum == 0
        ):
            problems.append("nesterovs_momentum=True needs momentum > 0 with optimizer='sgd'")
        if problems:
            raise ConfigError("invalid Regressor settings: " + "; ".join(problems) + ".")

    def _resolve_seed(self) -> int:
        rs = self.random_state
        if isinstance(rs, (int, np.integer)):
            return int(rs)
        rng = rs if isinstance(rs, np.random.RandomState) else np.random.mtrand._rand
        return int(rng.randint(0, 2**31 - 1))

    # -- input checks --------------------------------------------------------------------------

    def _check_X(self, X: Any, *, reset: bool) -> pd.DataFrame:
        """Validate X once, here; returns a DataFrame with string column names."""
        with _as_data_errors():
            if isinstance(X, pd.DataFrame):
                validate_data(self, X, reset=reset, skip_check_array=True)
                if X.shape[0] == 0:
                    raise DataError(
                        f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 "
                        "is required: X has no rows."
                    )
                return X.set_axis([str(c) for c in X.columns], axis=1)
            arr = validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=False)
        _require_finite(arr, "X", allow_nan=self.missing == "impute")
        return pd.DataFrame(arr, columns=[f"x{j}" for j in range(arr.shape[1])], copy=False)

    def _check_y(self, y: Any, n_rows: int, *, reset: bool) -> np.ndarray:
        with _as_data_errors():
            if y is None:
                raise DataError(
                    "Regressor requires y to be passed, but the target y is None; give the "
                    "target values to fit."
                )
            arr = check_array(
                y, ensure_2d=False, dtype=np.float64, input_name="y", ensure_all_finite=False
            )
        _require_finite(arr, "y", allow_nan=False)
        if arr.shape[0] != n_rows:
            raise DataError(f"X has {n_rows} rows but y has {arr.shape[0]}; they must match.")
        y_1d = arr.ndim == 1
        arr = arr.reshape(n_rows, -1)
        if reset:
            self._y_1d = y_1d
        elif arr.shape[1] != self.n_outputs_:
            raise DataError(
                f"y has {arr.shape[1]} targets, but this Regressor was fitted on {self.n_outputs_}."
            )
        self.n_outputs_ = arr.shape[1]
        return arr

    def _check_sample_weight(self, sample_weight: Any, n_rows: int) -> np.ndarray | None:
        if sample_weight is None:
            return None
        with _as_data_errors():
            w = check_array(
                sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight"
            )
        if w.ndim != 1 or w.shape[0] != n_rows:
            raise DataError(
                f"sample_weight.shape == {w.shape}, expected ({n_rows},): one weight per row."
            )
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise DataError("sample_weight must be finite, non-negative and not all zero.")
        return w

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        # A copy: pandas may hand out read-only arrays, which torch refuses to share.
        return torch.tensor(a, dtype=_DTYPES[self.dtype], device=self._device())

    # -- prediction ----------------------------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def predict(self, X: Any, return_std: bool = False) -> Any:
        """Predictions in the target's units: (rows,) for one target, (rows, targets) otherwise.

        An ensemble predicts its members' mean; with ``return_std=True`` it also returns their
        standard deviation (same shape). Computed in float64, so a row's prediction does not
        depend on the other rows.
        """
        mean, std = self._predict_moments(X)
        pred = self.y_scaler_.inverse_transform(mean)
        if not return_std:
            return self._shape(pred)
        if not isinstance(self.model_, MLPEnsemble):
            raise ConfigError("return_std=True needs an ensemble: fit with n_models > 1.")
        return self._shape(pred), self._shape(std * np.asarray(self.y_scaler_.scale))

    def predict_interval(self, X: Any, coverage: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds that contain the true value with probability ``coverage``.

        Split-conformal. An ensemble sets aside ``validation_fraction`` of the rows (but at
        least 100, or a third of them) as calibration rows, split into one fold per member:
        member k trains on every row but its fold, and each calibration row is scored by the
        residual of the member that did not see it (intervals of one width for every row).
        With ``early_stopping`` the held-out rows are left out by every member instead and
        score the ensemble's mean, scaled by the members' spread so that uncertain rows get
        wider intervals; a single model needs ``early_stopping`` for intervals.
        """
        if not _real(coverage, 0.0, 1.0, open_lo=True):
            raise ConfigError(f"coverage must be a number in (0, 1), got {coverage!r}.")
        mean, std = self._predict_moments(X)
        if not hasattr(self, "calibrator_"):
            raise ConfigError(
                "predict_interval needs rows held out during fit: use n_models > 1 or "
                "early_stopping=True."
            )
        lower, upper = self._interval(mean, std, float(coverage))
        return self._shape(lower), self._shape(upper)

    def _interval(
        self, mean: np.ndarray, std: np.ndarray, coverage: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) in the target's units from standardised mean and spread."""
        half = self.calibrator_.halfwidth(std, coverage)
        return (
            self.y_scaler_.inverse_transform(mean - half),
            self.y_scaler_.inverse_transform(mean + half),
        )

    def _predict_moments(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this Regressor is not fitted yet; call fit(X, y) before predict.")
        frame = self._check_X(X, reset=False)
        device = next(self.model_.parameters()).device  # where it was trained; CPU once loaded
        Z = torch.from_numpy(self.preprocessor_.transform(frame)).to(device)
        return self._moments(Z)  # (rows, targets) each, standardised units

    def _shape(self, a: np.ndarray) -> np.ndarray:
        return a.ravel() if self._y_1d else a

    def n_parameters(self) -> int:
        """Number of trainable parameters of the fitted network."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this Regressor is not fitted yet; call fit(X, y) first.")
        return count_parameters(self.model_)

    # -- persistence ---------------------------------------------------------------------------

    def save(
        self,
        path: str | Path,
        *,
        metrics: dict[str, float] | None = None,
        run_settings: dict[str, Any] | None = None,
        target_names: list[str] | None = None,
    ) -> Path:
        """Write the fitted model as a folder (see :mod:`nnreg.artifact`); returns its path.

        ``run_settings`` (data path, target, features) go into ``config.toml`` beside the
        estimator's parameters, so ``nnreg train --config PATH/config.toml`` repeats the run.
        """
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this Regressor is not fitted yet; call fit(X, y) before save.")
        pre = self.preprocessor_
        targets = target_names or (
            ["y"] if self.n_outputs_ == 1 else [f"y{j}" for j in range(self.n_outputs_)]
        )
        params = _jsonable(self.get_params())
        params["random_state"] = self.seed_  # the seed actually used, so a rerun repeats exactly
        meta = {
            "features": [{"name": n, "dtype": pre.dtypes[n]} for n in pre.columns],
            "feature_names_given": hasattr(self, "feature_names_in_"),
            "targets": targets,
            "target_1d": self._y_1d,
            "preprocessing": {"inputs": pre.to_dict(), "target": self.y_scaler_.to_dict()},
            "training": {
                "params": params,
                "epochs_run": self.n_iter_,
                "best_epoch": self.best_epoch_,
            },
            "metrics": {"final_train_loss": self.loss_curve_[-1], **(metrics or {})},
            "n_models": len(self.model_.members) if isinstance(self.model_, MLPEnsemble) else 1,
        }
        if hasattr(self, "calibrator_"):
            meta["calibration"] = self.calibrator_.to_dict()
        settings = {"model": params}
        if run_settings:
            settings = {"data": run_settings, **settings}
        return artifact.save(
            path,
            config=self.model_.config,
            state_dict={k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
            meta=meta,
            history=self.history_.to_dict(),
            settings=settings,
        )

    @classmethod
    def _from_saved(cls, saved: artifact.SavedModel) -> Regressor:
        meta = saved.meta
        params = {k: v for k, v in meta["training"]["params"].items() if k in _PARAM_NAMES}
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        params["device"] = "cpu"
        reg = cls(**params)
        n_models = int(meta.get("n_models", 1))
        model: MLP | MLPEnsemble = (
            MLP(saved.config) if n_models == 1 else MLPEnsemble.empty(saved.config, n_models)
        )
        model = model.to(dtype=_DTYPES[reg.dtype])
        try:
            model.load_state_dict(saved.state_dict)
        except RuntimeError as exc:
            raise ModelFileError(
                f"{saved.path}: the weights do not fit the architecture in model.json ({exc})"
            ) from exc
        if "calibration" in meta:
            reg.calibrator_ = ConformalCalibrator.from_dict(meta["calibration"])
        reg.seed_ = params["random_state"]
        reg.preprocessor_ = TablePreprocessor.from_dict(meta["preprocessing"]["inputs"])
        reg.y_scaler_ = Standardizer.from_dict(meta["preprocessing"]["target"])
        reg.n_outputs_ = saved.config.n_outputs
        reg.n_features_in_ = len(meta["features"])
        reg._y_1d = bool(meta["target_1d"])
        if meta.get("feature_names_given"):
            reg.feature_names_in_ = np.asarray([f["name"] for f in meta["features"]], dtype=object)
        reg.model_info_ = meta
        reg._set_fitted(model, History.from_dict(saved.history))
        reg.best_epoch_ = int(meta["training"].get("best_epoch", reg.n_iter_ - 1))
        return reg


def attach_checkpoints(
    trainer: Trainer,
    resume: str | Path | None,
    checkpoint: str | Path | None,
    info: dict[str, Any] | None = None,
) -> Callable[[Trainer], None] | None:
    """Load the training state saved at ``resume`` into ``trainer``; return the function that
    writes ``trainer``'s state (plus ``info``) to ``checkpoint``, or None without one."""
    if resume is not None:
        tensors, meta = artifact.load_checkpoint(resume)
        trainer.load_state_dict(tensors, meta["trainer"])
    if checkpoint is None:
        return None
    extra = info or {}

    def write(t: Trainer) -> None:
        tensors, meta = t.state_dict()
        artifact.save_checkpoint(checkpoint, tensors, {"trainer": meta, **extra})

    return write


def load(path: str | Path) -> Regressor:
    """Load a model folder written by :meth:`Regressor.save` or ``nnreg train``.

    Only JSON and safetensors files are read; the weights' SHA-256 and the format version are
    checked first. Raises :class:`~nnreg.exceptions.ModelFileError` when the folder is not a
    valid nnreg model.
    """
    return Regressor._from_saved(artifact.load(path))


_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_PARAM_NAMES = set(Regressor().get_params())


@contextlib.contextmanager
def _as_data_errors() -> Iterator[None]:
    """Re-raise scikit-learn's validation errors as nnreg's, as one line each."""
    try:
        yield
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(_one_line(exc)) from exc
    except TypeError as exc:
        raise DataTypeError(_one_line(exc)) from exc


def _one_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines if line and not line.startswith("array="))
    if "could not convert" in text or "argument must be" in text:
        text += "; X must hold numbers (pass a DataFrame to use text columns as categories)"
    return text


def _require_finite(a: np.ndarray, name: str, allow_nan: bool) -> None:
    bad = np.isinf(a) if allow_nan else ~np.isfinite(a)
    if not bad.any():
        return
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    if np.isnan(a[where]):
        raise DataError(
            f"{name} contains {int(np.isnan(a).sum())} NaN values (first at index {where}); "
            "fill or drop them, or use missing='impute' to fill them with the median."
            if name == "X"
            else f"{name} contains NaN (first at index {where}); drop those rows."
        )
    raise DataError(
        f"{name} contains infinite values (inf, first at index {where}); replace or drop them."
    )


def _drop_zero_weights(
    frame: pd.DataFrame, y: np.ndarray, w: np.ndarray | None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
    """Rows of weight 0 cannot change the fit: drop them, so that weighting is exactly like
    repeating and removing rows; equal weights then change nothing and are dropped too."""
    if w is None:
        return frame, y, None
    keep = w > 0
    if not keep.all():
        rows = np.flatnonzero(keep)
        frame, y, w = frame.iloc[rows], y[rows], w[rows]
    return frame, y, (None if np.all(w == w[0]) else w)


def _concat(a: History, b: History) -> History:
    return History(a.train_loss + b.train_loss, a.val_loss + b.val_loss, a.lr + b.lr)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, tuple):
            v = [int(h) for h in v]
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.floating):
            v = float(v)
        elif isinstance(v, np.random.RandomState):
            v = None
        out[k] = v
    return out
