"""``Regressor``: the scikit-learn surface over the recipe and the fit path.

The estimator stores its parameters; ``fit`` checks the data (:mod:`nnreg.validation`),
builds a :class:`~nnreg.recipe.Recipe` from its parameters and hands both to
:func:`nnreg.fitting.fit`, whose :class:`~nnreg.fitting.FitResult` becomes the fitted
attributes through :meth:`Regressor.adopt`, the one place they are set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.metaestimators import available_if

from . import artifact, distributed, fitting
from .description import describe
from .ensemble import ConformalCalibrator
from .exceptions import ConfigError, NotFittedError, TrainingDivergedError
from .importance import Importance
from .model import MLPEnsemble, count_parameters, predict_moments
from .presets import Parameters
from .recipe import PRESETS, Recipe, is_real, jsonable
from .restore import restore
from .tabm import TabM
from .train import EpochCallback
from .validation import check_sample_weight, check_X, check_y, drop_zero_weights

__all__ = ["PRESETS", "Regressor", "load"]


def _one_network(reg: Regressor) -> bool:
    if reg.n_models > 1:
        raise AttributeError("partial_fit trains one model; use n_models=1.")
    return True


class Regressor(Parameters, RegressorMixin, BaseEstimator):
    """A multilayer-perceptron regressor trained with PyTorch.

    The defaults are the ``recommended`` preset; ``from_preset("seed")`` the seed experiment.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(128, 128, 128)
        Width of each hidden layer.
    activation : {'relu', 'gelu', 'silu', 'tanh'}, default='silu'
    init : {'xavier_uniform', 'default'}, default='xavier_uniform'
        The hidden layers' weights (biases zero); the output layer keeps PyTorch's default.
    dropout : float, default=0.15
        Probability of zeroing each hidden unit during training.
    optimizer : {'sgd', 'adam', 'adamw'}, default='adamw'
    learning_rate_init : float, default=0.003
    learning_rate : {'constant', 'cosine', 'plateau'}, default='cosine'
        Schedule: fixed; cosine decay to 0 over ``max_iter`` epochs (per step); or divided by
        5 whenever the monitored loss (validation if any, else training) stalls for
        ``n_iter_no_change // 2`` epochs, down to 1/1000 of ``learning_rate_init``.
    momentum : float, default=0.9 (SGD's; the other optimisers ignore it)
    nesterovs_momentum : bool, default=False
    weight_decay : float, default=0.02
        L2 penalty as ``torch.optim`` applies it (decoupled for 'adamw').
    beta_1, beta_2, epsilon : float, default=0.9, 0.95, 1e-8
        Adam's moment decay rates and its numerical-stability term.
    batch_size : int, 'auto' or 'full', default='auto'
        Rows per step; 'auto' splits each epoch into equal batches of at most 256 rows (300
        rows: two of 150, never 256 and a stray 44), 'full' one full-batch step per epoch.
    max_iter : int or 'auto', default='auto'
        Epochs (at most, with early stopping). 'auto' chooses 32, 64, 128 or 256 by 3-fold
        cross-validation on 100 to 1,000 rows, else 128; shared members twice (nnreg.epochs).
    loss : {'squared_error', 'absolute_error', 'huber'}, default='squared_error'
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows, stop when their loss has not improved
        by ``tol`` for ``n_iter_no_change`` epochs, and keep the best epoch's weights.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-4
    scaling : {'standard', 'robust', 'quantile', 'none'}, default='standard'
        Numeric inputs: mean/std, median/IQR with a smooth clip, through the training
        quantiles to a standard normal (:mod:`nnreg.quantile`), or unchanged.
    scale_target : bool, default=True
        Standardise the target; predictions are always in the target's own units.
    clip_predictions : bool, default=False
        Clip predictions (and interval bounds) to the training target's range.
    missing : {'error', 'impute'}, default='error'
        Missing values raise an error naming the column, or are imputed: numeric ones by the
        median plus a missing-indicator column, categorical ones as a category of their own.
    max_categories : int, default=32
        One-hot columns per categorical feature (most frequent first; the rest, and those
        first seen at prediction, share one). Categorical features are DataFrame columns of
        text, objects or ``category`` dtype (polars: ``pl.Categorical``, ``pl.Enum``).
    dtype : {'float32', 'float64'}, default='float32'
        Precision of the weights and of training.
    random_state : int, RandomState or None, default=None
        Seeds the initial weights, the validation split, the minibatch order and dropout; an
        int gives bitwise-identical fits on the CPU.
    warm_start : bool, default=False
        ``fit`` continues the fitted network for ``max_iter`` more epochs, with its
        preprocessing, optimiser state and random stream: two fits of k epochs are one of 2k
        with ``learning_rate='constant'``. :mod:`nnreg.warm` says what may change.
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
    ensemble : {'independent', 'tabm', 'tabm-mini'}, default='independent'
        How ``n_models > 1`` members are built: independent networks (above), or TabM's
        parameter-efficient members (:mod:`nnreg.tabm`) that share each layer's weights and
        differ by per-member scalings and biases ('tabm-mini': an input scaling only),
        trained as one network on the mean of their losses. Where ``max_iter='auto'`` chose
        their epochs (no ``early_stopping``) every row trains, scored out of fold by the epoch
        search or by helpers trained afterwards; else ``validation_fraction`` is held out.
    embedding : {'auto', 'none', 'piecewise', 'periodic'}, default='auto'
        Numeric embeddings (:mod:`nnreg.embeddings`): each numeric column enters the network
        as ``d_embedding`` learned numbers, piecewise-linear over ``n_bins`` quantile bins
        (fewer on small tables: at most one per 64 training rows, and at least 2) or periodic
        with ``n_bins`` frequencies. 'auto' is piecewise-linear in memory and none for sweeps
        and streamed training, which do not embed. Periodic embeddings train by autograd, for
        one network or shared members only.
    d_embedding, n_bins : int, default=16, 48
    device : str, default='cpu'
        Where to train: 'cpu', 'cuda', 'cuda:N', 'mps', or 'auto' (CUDA when available, else
        the CPU). In a multi-process run a bare 'cuda' is ``cuda:LOCAL_RANK``. Predictions are
        returned as NumPy arrays and saved weights are moved to the CPU; a loaded model is on
        the CPU.
    verbose : int, default=0
        1 prints a line on stdout about every tenth epoch, 2 or more every epoch: the
        training loss and, when rows are held out, theirs, in the units the fit optimises
        (e.g. mean squared error of the standardised target). It changes nothing else.

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
    validation_metrics_ : dict
        ``rows``, MSE, RMSE, MAE and R² in the target's units on the rows the fit held out
        (scored out of fold: by helper members, or by the epoch search for every row).
    epochs_cv_ : dict
        Only when ``max_iter='auto'`` cross-validated: the ``epochs`` chosen, the ``folds``,
        the ``candidates`` and each one's ``held_out_loss``.
    n_iter_ : int
        Epochs trained.
    best_epoch_ : int
        Epoch whose weights were kept (the last one without early stopping).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a DataFrame with string column names.
    model_info_ : dict
        Only on a model read by :func:`nnreg.load`: the folder's ``model.json`` (dropped
        when the model is fitted again).

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
    _fit: fitting.FitResult | None = None  # what adopt took in; partial_fit continues it

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
        max_iter: int | str = "auto",
        loss: str = "squared_error",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        tol: float = 1e-4,
        scaling: str = "standard",
        scale_target: bool = True,
        clip_predictions: bool = False,
        missing: str = "error",
        max_categories: int = 32,
        dtype: str = "float32",
        random_state: int | np.random.RandomState | None = None,
        warm_start: bool = False,
        n_models: int = 1,
        ensemble: str = "independent",
        embedding: str = "auto",
        d_embedding: int = 16,
        n_bins: int = 48,
        device: str = "cpu",
        verbose: int = 0,
    ) -> None:
        # Only stores the parameters, each as the attribute of its name (scikit-learn's rule).
        self.__dict__.update((k, v) for k, v in locals().items() if k != "self")

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
        tags.input_tags.sparse = True  # densified per call, see nnreg.validation
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
        on_start: fitting.StartCallback | None = None,
    ) -> Regressor:
        """Train on ``X`` (rows, features) and ``y`` (rows,) or (rows, targets); returns self.

        ``X`` is a pandas or polars DataFrame, an array, or a SciPy sparse matrix (densified
        per call, see :mod:`nnreg.validation`); so it is for the other methods too.

        ``callback(epoch, train_loss, val_loss)``, when given, is called after every epoch
        (``val_loss`` is None without early stopping), and ``on_start(config)`` once with the
        network's :class:`~nnreg.model.MLPConfig` before the first. Every
        ``checkpoint_every`` epochs the full training state (weights, optimiser, random
        generators, history, early-stopping state, plus ``checkpoint_info``) is written
        atomically to ``checkpoint``; ``resume=path`` continues such a run, given the same
        data and parameters, to the bitwise-same result on the CPU. Setting ``stop`` ends
        training after the current step (``interrupted_`` is then True). A diverging run
        keeps its last finite weights and raises
        :class:`~nnreg.exceptions.TrainingDivergedError`.

        Called in every process of an initialised ``torch.distributed`` process group (as
        ``torchrun`` starts them), ``fit`` trains data-parallel: each process takes an equal
        share of the training rows, ``batch_size`` rows per step, and gradients are averaged
        every step, so all processes end with the same model (see :mod:`nnreg.distributed`).
        Ensembles, ``sample_weight`` (normalised by the global batch's weight sum) and
        checkpoints (rank 0 writes them; resume with as many processes) work there too.
        """
        warm = bool(self.warm_start) and self.__sklearn_is_fitted__()
        recipe = Recipe.from_params(self.get_params(), seed=self.seed_ if warm else None)
        checkpoints = fitting.Checkpoints(checkpoint, checkpoint_every, checkpoint_info, resume)
        fitting.refuse(recipe, warm_start=bool(self.warm_start), checkpoints=checkpoints)
        data = self._fit_data(X, y, sample_weight, reset=not warm)
        try:
            result = fitting.fit(
                recipe,
                data,
                warm=self._fit if warm else None,
                callback=callback,
                stop=stop,
                checkpoints=checkpoints,
                on_start=on_start,
            )
        except TrainingDivergedError as exc:
            if exc.partial is not None:  # the last finite weights stay usable
                self.adopt(exc.partial)
            raise
        return self.adopt(result)

    @available_if(_one_network)  # an ensemble has no partial_fit (scikit-learn checks hasattr)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> Regressor:
        """One epoch over ``X, y``, continuing the fitted network; returns self.

        On an unfitted Regressor the first call fits the preprocessing on its data and builds
        the network. After ``fit`` (or earlier calls) it trains on from the fitted weights,
        optimiser state and random stream, so ``n_iter_`` grows by one and the loss goes on
        from where it was: ``fit`` for k epochs, then m calls, train like one fit of k + m
        epochs with ``learning_rate='constant'``. On a model read by :func:`load`, which keeps
        no optimiser state, training goes on from its weights with a fresh optimiser state.
        The learning rate stays at ``learning_rate_init`` (times the reduction that
        ``learning_rate='plateau'`` reached): a schedule needs to know where training ends.
        Every row trains (none is held out); the calibration of :meth:`predict_interval`
        and ``validation_metrics_`` (of the old weights) are dropped. One process only.
        """
        fitted = self.__sklearn_is_fitted__()
        recipe = Recipe.from_params(self.get_params(), seed=self.seed_ if fitted else None)
        if distributed.current() is not None:
            raise ConfigError("partial_fit trains in one process; use fit in distributed runs.")
        data = self._fit_data(X, y, sample_weight, reset=not fitted)
        try:
            result = fitting.partial_fit(recipe, data, self._fit if fitted else None)
        except TrainingDivergedError as exc:
            if exc.partial is not None:  # the last finite weights stay usable
                self.adopt(exc.partial)
            raise
        return self.adopt(result)

    def adopt(self, result: fitting.FitResult) -> Regressor:
        """Make ``result`` (of :mod:`nnreg.fitting`, or a streamed or swept fit) this
        estimator's fitted state; returns self."""
        self.model_, self.history_ = result.model.eval(), result.history
        self.loss_curve_ = list(result.history.train_loss)
        if self.early_stopping:
            self.validation_scores_ = list(result.history.val_loss)
        self.n_iter_ = len(result.history)
        self.best_epoch_ = result.best_epoch if result.best_epoch >= 0 else self.n_iter_ - 1
        self.seed_ = result.seed
        self.preprocessor_, self.y_scaler_ = result.preprocessor, result.y_scaler
        self.n_features_in_, self.n_outputs_ = result.n_features, result.n_outputs
        self._y_1d = result.y_1d
        if result.feature_names is not None:
            self.feature_names_in_ = np.asarray(result.feature_names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        for name, value in (
            ("calibrator_", result.calibrator),
            ("member_best_epochs_", result.member_best_epochs),
            ("validation_metrics_", result.held_out),
            ("epochs_cv_", result.epoch_choice and result.epoch_choice.to_dict()),
            ("model_info_", None),  # a loaded folder's description, which no longer holds
        ):
            if value is not None:
                setattr(self, name, value)
            elif hasattr(self, name):
                delattr(self, name)
        self.interrupted_ = result.interrupted
        self._fit = result
        return self

    def _fit_data(self, X: Any, y: Any, sample_weight: Any, *, reset: bool) -> fitting.FitData:
        """The checked training data; ``reset`` records X's features (a fresh fit)."""
        columns = None if reset else self.preprocessor_.columns  # a continued fit's
        frame = check_X(self, X, reset=reset, allow_nan=self.missing == "impute", columns=columns)
        y_arr, y_1d = check_y(y, len(frame), None if reset else self.n_outputs_)
        w = check_sample_weight(sample_weight, len(frame))
        frame, y_arr, w, numbers = drop_zero_weights(frame, y_arr, w)
        names = [str(c) for c in frame.columns] if hasattr(self, "feature_names_in_") else None
        return fitting.FitData(frame, y_arr, w, y_1d if reset else self._y_1d, names, numbers)

    # -- prediction ----------------------------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def predict(self, X: Any, return_std: bool = False) -> Any:
        """Predictions in the target's units: (rows,) for one target, (rows, targets) otherwise.

        An ensemble predicts its members' mean; with ``return_std=True`` it also returns their
        standard deviation (same shape). Computed in float64: a row's prediction depends on
        the other rows only by float64 rounding (about 1e-16 relative).
        """
        mean, std = self._predict_moments(X)
        pred = self.y_scaler_.inverse_transform(mean)
        if not return_std:
            return self._shape(pred)
        if not isinstance(self.model_, (MLPEnsemble, TabM)):
            raise ConfigError("return_std=True needs an ensemble: fit with n_models > 1.")
        return self._shape(pred), self._shape(std * np.asarray(self.y_scaler_.scale))

    def predict_interval(self, X: Any, coverage: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds that contain the true value with probability ``coverage``.

        Split-conformal, from rows held out during fit: an ensemble's calibration rows (see
        ``n_models`` and ``ensemble``), or a single model's early-stopping rows.
        """
        if not is_real(coverage, 0.0, 1.0, open_lo=True):
            raise ConfigError(f"coverage must be a number in (0, 1), got {coverage!r}.")
        mean, std = self._predict_moments(X)
        if not hasattr(self, "calibrator_"):
            raise ConfigError(
                "predict_interval needs rows held out during fit: use n_models > 1 or "
                "early_stopping=True (shared members stopped early have none)."
            )
        lower, upper = fitting.prediction_interval(
            self.calibrator_, self.y_scaler_, mean, std, float(coverage)
        )
        return self._shape(lower), self._shape(upper)

    def _predict_moments(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this Regressor is not fitted yet; call fit(X, y) before predict.")
        impute, columns = self.missing == "impute", self.preprocessor_.columns
        frame = check_X(self, X, reset=False, allow_nan=impute, columns=columns)
        device = next(self.model_.parameters()).device  # where it was trained; CPU once loaded
        Z = torch.from_numpy(self.preprocessor_.transform(frame)).to(device)
        return predict_moments(self.model_, Z)  # (rows, targets) each, standardised units

    def _shape(self, a: np.ndarray) -> np.ndarray:
        return a.ravel() if self._y_1d else a

    def feature_importances(
        self, X: Any, y: Any, *, n_repeats: int = 5, random_state: int | None = 0
    ) -> Importance:
        """Permutation importance of each input column on rows ``(X, y)``: how much the RMSE
        grows when the column is shuffled (a categorical column as one); see
        :mod:`nnreg.importance`. ``.to_frame()`` lists them, the most important first."""
        from .importance import permutation_importance

        return permutation_importance(self, X, y, n_repeats=n_repeats, random_state=random_state)

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
        files: dict[str, artifact.Writer] | None = None,
        protect: Iterable[str | Path] = (),
    ) -> Path:
        """Write the fitted model as a folder (see :mod:`nnreg.artifact`); returns its path.

        ``run_settings`` (data path, target, features) go into ``config.toml`` beside the
        estimator's parameters, so ``nnreg train --config PATH/config.toml`` repeats the run.
        ``files`` (name -> function writing that file) add files to the folder and its
        manifest. An existing folder at ``path`` is replaced only if nnreg wrote it, and
        never when it holds one of the ``protect`` paths (such as the training data).
        """
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this Regressor is not fitted yet; call fit(X, y) before save.")
        params = jsonable(self.get_params())
        params["random_state"] = self.seed_  # the seed actually used, so a rerun repeats exactly
        meta = describe(
            self, params, target_1d=self._y_1d, target_names=target_names, metrics=metrics
        )
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
            extra=files,
            protect=protect,
        )

    @classmethod
    def _from_saved(cls, saved: artifact.SavedModel) -> Regressor:
        params, result = restore(saved, _PARAM_NAMES)
        reg = cls(**params).adopt(result)
        reg.model_info_ = saved.meta
        return reg


def load(path: str | Path, *, history: bool = True) -> Regressor:
    """Load a model folder written by :meth:`Regressor.save` or ``nnreg train``.

    The folder is untrusted input: only its own JSON, CSV and safetensors files are read,
    each checked against the SHA-256 recorded for it, and ``model.json`` is checked for
    consistency before the network is built. ``history=False`` leaves the training history
    unread (``history_`` is then empty), as prediction does not need it. Raises
    :class:`~nnreg.exceptions.ModelFileError` when the folder is not a valid nnreg model.
    """
    return Regressor._from_saved(artifact.load(path, history=history))


_PARAM_NAMES = set(Regressor().get_params())
