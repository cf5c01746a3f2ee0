"""``Regressor``: the scikit-learn estimator built on the model, the preprocessing and the loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, RegressorMixin

from . import artifact
from .data import to_matrix
from .exceptions import ConfigError, DataError, NotFittedError
from .model import ACTIVATIONS, INITS, MLP, MLPConfig, count_parameters
from .preprocess import Standardizer
from .train import LOSSES, OPTIMIZERS, History, TrainConfig
from .train import fit as train_fit

__all__ = ["PRESETS", "Regressor", "load"]

# The seed experiment's recipe, exactly (DESIGN.md).
SEED_PRESET: dict[str, Any] = {
    "hidden_layer_sizes": (20, 20),
    "activation": "relu",
    "init": "xavier_uniform",
    "optimizer": "sgd",
    "learning_rate_init": 0.001,
    "momentum": 0.0,
    "nesterovs_momentum": False,
    "weight_decay": 0.0,
    "batch_size": "full",
    "max_iter": 500,
    "loss": "squared_error",
    "scale_inputs": False,
    "scale_target": False,
}
# The estimator's defaults; the accuracy benchmark is what tunes them.
RECOMMENDED_PRESET: dict[str, Any] = {
    "hidden_layer_sizes": (128, 128),
    "activation": "relu",
    "init": "xavier_uniform",
    "optimizer": "adam",
    "learning_rate_init": 0.001,
    "momentum": 0.9,
    "nesterovs_momentum": False,
    "weight_decay": 0.0,
    "batch_size": "auto",
    "max_iter": 200,
    "loss": "squared_error",
    "scale_inputs": True,
    "scale_target": True,
}
PRESETS = {"seed": SEED_PRESET, "recommended": RECOMMENDED_PRESET}


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and int(v) >= 1


def _real(lo: float, v: Any, *, open_lo: bool = False) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    x = float(v)
    return math.isfinite(x) and (x > lo if open_lo else x >= lo)


# One table of hyperparameter checks: name -> (test, what is allowed).
PARAMETER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "hidden_layer_sizes": (
        lambda v: isinstance(v, (tuple, list)) and all(_positive_int(h) for h in v),
        "a tuple of positive integers, e.g. (64, 64); () for a linear model",
    ),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {sorted(ACTIVATIONS)}"),
    "init": (lambda v: v in INITS, f"one of {list(INITS)}"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
    "learning_rate_init": (lambda v: _real(0, v, open_lo=True), "a finite number > 0"),
    "momentum": (lambda v: _real(0, v) and v < 1, "a number in [0, 1)"),
    "nesterovs_momentum": (lambda v: isinstance(v, bool), "True or False"),
    "weight_decay": (lambda v: _real(0, v), "a finite number >= 0"),
    "batch_size": (
        lambda v: v in ("auto", "full") or _positive_int(v),
        "a positive integer, 'auto' (min(256, rows)) or 'full' (one step per epoch)",
    ),
    "max_iter": (_positive_int, "a positive integer (epochs)"),
    "loss": (lambda v: v in LOSSES, f"one of {list(LOSSES)}"),
    "scale_inputs": (lambda v: isinstance(v, bool), "True or False"),
    "scale_target": (lambda v: isinstance(v, bool), "True or False"),
    "random_state": (
        lambda v: (
            v is None
            or isinstance(v, np.random.RandomState)
            or (_is_int(v) and 0 <= int(v) < 2**32)
        ),
        "None, an integer in [0, 2**32) or a numpy RandomState",
    ),
    "device": (
        lambda v: isinstance(v, str) and v.split(":")[0] in ("cpu", "cuda", "mps"),
        "'cpu', 'cuda', 'cuda:N' or 'mps'",
    ),
}


class Regressor(RegressorMixin, BaseEstimator):
    """A multilayer-perceptron regressor trained with PyTorch.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(128, 128)
        Width of each hidden layer.
    activation : {'relu', 'gelu', 'silu', 'tanh'}, default='relu'
    init : {'xavier_uniform', 'default'}, default='xavier_uniform'
        Initialisation of the hidden layers' weights (biases zero); the output layer always
        keeps PyTorch's default.
    optimizer : {'sgd', 'adam', 'adamw'}, default='adam'
    learning_rate_init : float, default=0.001
    momentum : float, default=0.9
        Momentum of SGD; ignored by the other optimisers.
    nesterovs_momentum : bool, default=False
    weight_decay : float, default=0.0
    batch_size : int, 'auto' or 'full', default='auto'
        Rows per step; 'auto' is ``min(256, rows)``, 'full' one full-batch step per epoch.
    max_iter : int, default=200
        Number of epochs.
    loss : {'squared_error', 'absolute_error', 'huber'}, default='squared_error'
    scale_inputs, scale_target : bool, default=True
        Standardise inputs / targets before training; predictions are returned in the
        target's own units.
    random_state : int, RandomState or None, default=None
        Seeds the initial weights and the minibatch order; an int gives identical fits.
    device : str, default='cpu'

    Attributes
    ----------
    model_ : MLP
        The trained network.
    history_ : History
        Per-epoch training loss (on the standardised target when ``scale_target``).
    loss_curve_ : list of float
    n_iter_ : int
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

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (128, 128),
        activation: str = "relu",
        init: str = "xavier_uniform",
        optimizer: str = "adam",
        learning_rate_init: float = 0.001,
        momentum: float = 0.9,
        nesterovs_momentum: bool = False,
        weight_decay: float = 0.0,
        batch_size: int | str = "auto",
        max_iter: int = 200,
        loss: str = "squared_error",
        scale_inputs: bool = True,
        scale_target: bool = True,
        random_state: int | np.random.RandomState | None = None,
        device: str = "cpu",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.init = init
        self.optimizer = optimizer
        self.learning_rate_init = learning_rate_init
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.loss = loss
        self.scale_inputs = scale_inputs
        self.scale_target = scale_target
        self.random_state = random_state
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

    # -- fitting -------------------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        *,
        callback: Callable[[int, float], None] | None = None,
    ) -> Regressor:
        """Train on ``X`` (rows, features) and ``y`` (rows,) or (rows, targets); returns self.

        ``callback(epoch, train_loss)``, when given, is called after every epoch.
        """
        self._check_params()
        X_arr = self._check_X(X, reset=True)
        y_arr = self._check_y(y, X_arr.shape[0])
        w = self._check_sample_weight(sample_weight, X_arr.shape[0])
        self.seed_ = self._resolve_seed()
        self.x_scaler_ = Standardizer(self.scale_inputs).fit(X_arr, w)
        self.y_scaler_ = Standardizer(self.scale_target).fit(y_arr, w)
        self.n_outputs_ = y_arr.shape[1]

        config = MLPConfig(
            n_inputs=X_arr.shape[1],
            hidden_sizes=tuple(self.hidden_layer_sizes),
            n_outputs=self.n_outputs_,
            activation=self.activation,
            init=self.init,
        )
        device = torch.device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_)
            model = MLP(config)
        model.to(device)
        generator = torch.Generator(device=device).manual_seed(self.seed_)
        history = train_fit(
            model,
            self._tensor(self.x_scaler_.transform(X_arr)),
            self._tensor(self.y_scaler_.transform(y_arr)),
            self._train_config(X_arr.shape[0]),
            sample_weight=None if w is None else self._tensor(w),
            generator=generator,
            callback=callback,
        )
        self._set_fitted(model.eval(), history)
        return self

    def _set_fitted(self, model: MLP, history: History) -> None:
        self.model_ = model
        self.history_ = history
        self.loss_curve_ = list(history.train_loss)
        self.n_iter_ = len(history)

    def _train_config(self, n_rows: int) -> TrainConfig:
        batch = self.batch_size
        batch_size = None if batch == "full" else min(256, n_rows) if batch == "auto" else batch
        return TrainConfig(
            epochs=self.max_iter,
            lr=float(self.learning_rate_init),
            optimizer=self.optimizer,
            momentum=float(self.momentum),
            nesterov=self.nesterovs_momentum,
            weight_decay=float(self.weight_decay),
            batch_size=None if batch_size is None else int(batch_size),
            loss=self.loss,
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

    def _check_X(self, X: Any, *, reset: bool) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            names = [str(c) for c in X.columns]
            if not reset and hasattr(self, "feature_names_in_"):
                X = _select_columns(X, list(self.feature_names_in_))
            elif reset and all(isinstance(c, str) for c in X.columns):
                self.feature_names_in_ = np.asarray(names, dtype=object)
            elif reset and hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif reset and hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        arr = to_matrix(X, "X")
        if reset:
            self.n_features_in_ = arr.shape[1]
        elif arr.shape[1] != self.n_features_in_:
            raise DataError(
                f"X has {arr.shape[1]} features, but Regressor is expecting "
                f"{self.n_features_in_} features as input."
            )
        return arr

    def _check_y(self, y: Any, n_rows: int) -> np.ndarray:
        if y is None:
            raise DataError("y is required: Regressor needs a target to fit.")
        if isinstance(y, (pd.Series, pd.DataFrame)):
            y = y.to_numpy()
        try:
            arr = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"y must hold numbers only ({exc}).") from exc
        if arr.ndim not in (1, 2):
            raise DataError(f"y must be 1-D or 2-D, but has {arr.ndim} dimensions.")
        self._y_1d = arr.ndim == 1
        arr = arr.reshape(arr.shape[0], -1)
        if arr.shape[0] != n_rows:
            raise DataError(f"X has {n_rows} rows but y has {arr.shape[0]}; they must match.")
        return to_matrix(arr, "y")

    def _check_sample_weight(self, sample_weight: Any, n_rows: int) -> np.ndarray | None:
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if w.shape[0] != n_rows:
            raise DataError(
                f"sample_weight has {w.shape[0]} values but X has {n_rows} rows; they must match."
            )
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise DataError("sample_weight must be finite, non-negative and not all zero.")
        return w

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        # A copy: pandas may hand out read-only arrays, which torch refuses to share.
        return torch.tensor(a, dtype=torch.float32, device=self.device)

    # -- prediction ----------------------------------------------------------------------------

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def predict(self, X: Any) -> np.ndarray:
        """Predictions in the target's units: (rows,) for one target, (rows, targets) otherwise."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this Regressor is not fitted yet; call fit(X, y) before predict.")
        X_arr = self._check_X(X, reset=False)
        with torch.no_grad():
            out = self.model_(self._tensor(self.x_scaler_.transform(X_arr)))  # (rows, targets)
        pred = self.y_scaler_.inverse_transform(out.cpu().numpy().astype(np.float64))
        return pred.ravel() if self._y_1d else pred

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
        feature_dtypes: list[str] | None = None,
        target_names: list[str] | None = None,
    ) -> Path:
        """Write the fitted model as a folder (see :mod:`nnreg.artifact`); returns its path.

        ``run_settings`` (data path, target, features) go into ``config.toml`` beside the
        estimator's parameters, so ``nnreg train --config PATH/config.toml`` repeats the run.
        """
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this Regressor is not fitted yet; call fit(X, y) before save.")
        names = (
            list(self.feature_names_in_)
            if hasattr(self, "feature_names_in_")
            else [f"x{j}" for j in range(self.n_features_in_)]
        )
        targets = target_names or [
            "y" if self.n_outputs_ == 1 else f"y{j}" for j in range(self.n_outputs_)
        ]
        params = self.get_params()
        params["random_state"] = self.seed_  # the seed actually used, so a rerun repeats exactly
        meta = {
            "features": [
                {"name": n, "dtype": d}
                for n, d in zip(names, feature_dtypes or ["float64"] * len(names), strict=True)
            ],
            "feature_names_given": hasattr(self, "feature_names_in_"),
            "targets": targets,
            "target_1d": self._y_1d,
            "preprocessing": {
                "inputs": self.x_scaler_.to_dict(),
                "target": self.y_scaler_.to_dict(),
            },
            "training": {"params": _jsonable(params), "epochs_run": self.n_iter_},
            "metrics": {"final_train_loss": self.loss_curve_[-1], **(metrics or {})},
        }
        settings = {"model": _jsonable(params)}
        if run_settings:
            settings = {"data": run_settings, **settings}
        return artifact.save(
            path,
            config=self.model_.config,
            state_dict=self.model_.state_dict(),
            meta=meta,
            history=self.history_.to_dict(),
            settings=settings,
        )

    @classmethod
    def _from_saved(cls, saved: artifact.SavedModel) -> Regressor:
        meta = saved.meta
        params = dict(meta["training"]["params"])
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        params["device"] = "cpu"
        reg = cls(**params)
        model = MLP(saved.config)
        model.load_state_dict(saved.state_dict)
        reg.seed_ = params["random_state"]
        reg.x_scaler_ = Standardizer.from_dict(meta["preprocessing"]["inputs"])
        reg.y_scaler_ = Standardizer.from_dict(meta["preprocessing"]["target"])
        reg.n_outputs_ = saved.config.n_outputs
        reg.n_features_in_ = saved.config.n_inputs
        reg._y_1d = bool(meta["target_1d"])
        if meta.get("feature_names_given"):
            reg.feature_names_in_ = np.asarray([f["name"] for f in meta["features"]], dtype=object)
        reg.model_info_ = meta
        reg._set_fitted(model.eval(), History(train_loss=list(saved.history["train_loss"])))
        return reg


def load(path: str | Path) -> Regressor:
    """Load a model folder written by :meth:`Regressor.save` or ``nnreg train``.

    Only JSON and safetensors files are read; the weights' SHA-256 and the format version are
    checked first. Raises :class:`~nnreg.exceptions.ModelFileError` when the folder is not a
    valid nnreg model.
    """
    return Regressor._from_saved(artifact.load(path))


def _select_columns(frame: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    columns = [str(c) for c in frame.columns]
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataError(
            f"X is missing the feature {missing[0]!r} seen in fit; it must have the columns "
            f"{', '.join(names)}."
        )
    extra = [c for c in columns if c not in names]
    if extra:
        raise DataError(
            f"X has the column {extra[0]!r} that was not seen in fit; drop it (fitted features: "
            f"{', '.join(names)})."
        )
    return frame.set_axis(columns, axis=1)[names]


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.random.RandomState):
            v = None
        out[k] = v
    return out
