"""Hyperparameter sweeps: a grid of configurations, ranked by validation RMSE.

Every configuration (hidden sizes, learning rate, weight decay, seed) trains on the same
training rows and is scored on the same held-out rows, with the preprocessing fitted once on
the training rows. Configurations that share hidden sizes train as one batched computation
(:class:`nnreg.ensemble.EnsembleTrainer`, with a learning rate and weight decay per member),
so a grid over learning rates, weight decays and seeds costs little more than one fit per
architecture. A member of the batch is the same network a single ``Regressor`` with that
configuration and ``random_state`` would train on those rows (exactly so without dropout,
whose masks the batch draws from one stream).

The result is a table ranked by validation RMSE and, from it, a fitted :class:`Regressor`:
the best configuration, or the ``top`` best of the winning architecture as an ensemble, with
prediction intervals calibrated on the held-out rows (the rows that also chose it, so the
intervals lean slightly optimistic).

In every process of a ``torch.distributed`` group (``nnreg sweep --nproc N``, torchrun) the
configurations are split across the processes: each trains a contiguous share of the grid,
cut where the work (the configurations' parameter counts) splits evenly, on all training
rows (its architectures batched as above), and every process then gathers every share's
networks and scores, so each holds the whole ranking (rank 0 writes it). The held-out rows,
the preprocessing and rank 0's seed are the same everywhere, so the ranking and scores are
those of one process (to float32 rounding; exactly so without dropout, as above).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from . import distributed
from .calibration import held_out_metrics
from .ensemble import EnsembleTrainer
from .estimator import Regressor
from .exceptions import ConfigError, DataError
from .fitting import FitData, FitResult, calibrate, raise_for_whole_table
from .model import MAX_MEMBERS, MLP, MLPConfig, MLPEnsemble, predict_moments, state_shapes
from .recipe import PARAMETER_RULES, Recipe, split_rows
from .train import History
from .validation import check_sample_weight, check_X, check_y

__all__ = ["Sweep", "Trial", "grid"]

ProgressFn = Callable[[int, int], None]  # (epochs done, epochs in all) over every group


@dataclass(frozen=True)
class Trial:
    """One configuration of a sweep."""

    hidden: tuple[int, ...]
    lr: float
    weight_decay: float
    seed: int

    def params(self) -> dict[str, Any]:
        """The Regressor parameters this configuration sets."""
        return {
            "hidden_layer_sizes": self.hidden,
            "learning_rate_init": self.lr,
            "weight_decay": self.weight_decay,
            "random_state": self.seed,
        }


# A grid's axes and the Regressor parameter each one sets (and is checked as).
GRID_AXES = {
    "hidden": "hidden_layer_sizes",
    "lr": "learning_rate_init",
    "weight_decay": "weight_decay",
    "seeds": "random_state",
}


def grid(
    hidden: Sequence[Sequence[int]],
    lr: Sequence[float],
    weight_decay: Sequence[float],
    seeds: Sequence[int],
) -> list[Trial]:
    """Every combination, in a stable order (architectures outermost); each value is
    checked by the rule of the parameter it sets (a seed must be an integer)."""
    axes = {"hidden": hidden, "lr": lr, "weight_decay": weight_decay, "seeds": seeds}
    for name, values in axes.items():
        if len(values) == 0:
            raise ConfigError(f"the sweep needs at least one value of {name}.")
        if len(set(map(str, values))) != len(values):
            raise ConfigError(f"the sweep's {name} values repeat; give each once.")
        param = GRID_AXES[name]
        ok, allowed = PARAMETER_RULES[param]
        for v in values:
            if not ok(v) or (name == "seeds" and not isinstance(v, (int, np.integer))):
                allowed = "an integer in [0, 2**32)" if name == "seeds" else allowed
                raise ConfigError(
                    f"the sweep's {name} ({param}) values must each be {allowed}, got {v!r}."
                )
    return [
        Trial(tuple(int(s) for s in h), float(a), float(w), int(s))
        for h, a, w, s in itertools.product(hidden, lr, weight_decay, seeds)
    ]


@dataclass
class _Group:
    """The trials of one architecture, their trained networks and scores."""

    hidden: tuple[int, ...]
    trials: list[Trial]
    members: list[MLP]
    histories: list[History]
    best_epochs: list[int]
    scores: np.ndarray  # (trials, 3): val RMSE, val MAE, final train loss


class Sweep:
    """Train every configuration of ``trials`` on top of the ``base`` Regressor's settings.

    ``base`` supplies everything the trials leave alone (activation, dropout, optimiser,
    epochs, batch size, schedule, scaling, early stopping, ``validation_fraction``, ...);
    its ``n_models`` must be 1 and its schedule not ``plateau``. After :meth:`fit`,
    :meth:`table` is the ranking and :meth:`regressor` a fitted model from it.
    """

    def __init__(self, base: Regressor, trials: Sequence[Trial]) -> None:
        if not trials:
            raise ConfigError("the sweep has no configurations to train.")
        self.base, self.trials = base, list(trials)
        self.stop: threading.Event | None = None  # set from outside: stop after this step

    def fit(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        *,
        progress: ProgressFn | None = None,
    ) -> Sweep:
        """Train and score every configuration; ``progress(done, total)`` counts epochs."""
        base = clone(self.base)
        recipe = Recipe.from_params(base.get_params())
        group = distributed.current()
        if group is not None:  # every process holds out the same rows: rank 0's seed
            recipe = replace(recipe, seed=group.broadcast_int(recipe.seed))
        if recipe.n_models != 1:
            raise ConfigError("a sweep trains single models; leave n_models at 1.")
        if recipe["embedding"] not in ("none", "auto"):
            raise ConfigError("a sweep trains plain networks; leave embedding at 'none'.")
        if recipe["learning_rate"] == "plateau":
            raise ConfigError("a sweep cannot use learning_rate='plateau'; use 'cosine'.")
        frame = check_X(base, X, reset=True, allow_nan=recipe["missing"] == "impute")
        y_arr, y_1d = check_y(y, len(frame))
        w = check_sample_weight(sample_weight, len(frame))
        if len(frame) < 4:
            raise ConfigError(f"a sweep needs at least 4 rows to hold some out, got {len(frame)}.")
        val_rows, train_rows = split_rows(
            len(frame), float(recipe["validation_fraction"]), recipe.seed, min_rows=2, min_train=2
        )
        if w is not None and (w[train_rows].sum() <= 0 or w[val_rows].sum() <= 0):
            raise ConfigError("sample weights are zero on every training or held-out row.")
        names = list(frame.columns) if hasattr(base, "feature_names_in_") else None
        self.data_ = FitData(frame, y_arr, w, y_1d, names)
        self.recipe_, self.train_rows_, self.val_rows_ = recipe, train_rows, val_rows
        self._prepare()
        self.groups_: list[_Group] = []
        self.interrupted_ = False
        self._train_groups(group, progress)
        if group is not None:
            self._gather(group)
        return self

    def _prepare(self) -> None:
        """Fit the preprocessing on the training rows; hold the tensors of both parts."""
        recipe, data, train_rows, val_rows = (
            self.recipe_,
            self.data_,
            self.train_rows_,
            self.val_rows_,
        )
        w = data.weight
        w_train = None if w is None else w[train_rows]
        try:
            self.preprocessor_ = recipe.preprocessor().fit(
                data.frame.iloc[train_rows], w_train, data.numbers(train_rows)
            )
        except DataError:
            raise_for_whole_table(recipe, data)
            raise
        self.y_scaler_ = recipe.target_scaler().fit(data.y[train_rows], w_train)
        X_all = recipe.tensor(self.preprocessor_.transform(data.frame))
        y_all = recipe.tensor(self.y_scaler_.transform(data.y))
        w_all = None if w is None else recipe.tensor(w)
        self._validation = (
            X_all[val_rows],
            y_all[val_rows],
            None if w_all is None else w_all[val_rows],
        )
        self._train = (
            X_all[train_rows],
            y_all[train_rows],
            None if w_all is None else w_all[train_rows],
        )
        self.y_val_ = data.y[val_rows]
        self.w_val_ = None if w is None else w[val_rows]

    def _model_config(self, hidden: tuple[int, ...]) -> MLPConfig:
        recipe = self.recipe_
        n_inputs, n_outputs = len(self.preprocessor_.output_names), self.data_.y.shape[1]
        return replace(recipe.model_config(n_inputs, n_outputs), hidden_sizes=hidden)

    def _train_groups(self, group: distributed.Group | None, progress: ProgressFn | None) -> None:
        """One batched training per architecture of this process's share of the grid, in
        the grid's order."""
        recipe = self.recipe_
        config = recipe.train_config(len(self.train_rows_))
        everywhere = _by_architecture(self.trials)
        sizes = {h: _parameters(self._model_config(h)) for h in everywhere}
        groups = _by_architecture(
            _share(self.trials, group, [sizes[t.hidden] for t in self.trials])
        )
        total, done = config.epochs * len(groups), 0
        for hidden, trials in groups.items():
            model_config = self._model_config(hidden)
            # These trials' place in the batch one process would train: the same masks.
            first = everywhere[hidden].index(trials[0])
            share = (first, len(everywhere[hidden])) if group is not None else None
            # Each initialised exactly as Regressor(random_state=t.seed) would be.
            members = [recipe.member(model_config, t.seed) for t in trials]
            trainer = EnsembleTrainer(
                members,
                config,
                [t.seed for t in trials],
                lr=[t.lr for t in trials],
                weight_decay=[t.weight_decay for t in trials],
                dropout_seed=recipe.seed + 2,
                dropout_share=share,
            )
            trainer.stop = self.stop

            def on_epoch(epoch: int, _train: float, _val: float | None, offset: int = done) -> None:
                if progress is not None:
                    progress(offset + epoch + 1, total)

            trainer.run(*self._train, validation=self._validation, callback=on_epoch)
            done += config.epochs
            if progress is not None:
                progress(done, total)
            self.groups_.append(self._score(hidden, trials, members, trainer, config.lr))
            if self.stop is not None and self.stop.is_set():
                self.interrupted_ = True
                break

    def _score(
        self,
        hidden: tuple[int, ...],
        trials: list[Trial],
        members: list[MLP],
        trainer: EnsembleTrainer,
        base_lr: float,
    ) -> _Group:
        record, K = trainer.record, len(trials)
        X_val = self._validation[0]
        pred = trainer.predict(X_val).double().cpu().numpy()  # (K, rows, outputs), scaled
        scores = np.empty((K, 3))
        histories, best_epochs = [], []
        for k in range(K):
            # A member that stopped early trained until then (its batch may train on).
            stopped = record.stopped_at[k] if record.stopped_at else -1
            epochs = stopped + 1 if stopped >= 0 else len(record.train_loss)
            p = self.y_scaler_.inverse_transform(pred[k])
            err = p - self.y_val_
            w = None if self.w_val_ is None else self.w_val_[:, None] * np.ones_like(err)
            scores[k] = (
                math.sqrt(float(np.average(err**2, weights=w))),
                float(np.average(np.abs(err), weights=w)),
                record.train_loss[epochs - 1][k] if epochs else math.nan,
            )
            val = (
                [v[k] for v in record.val_loss[:epochs]] if record.val_loss else [math.nan] * epochs
            )
            scale = trials[k].lr / base_lr
            histories.append(
                History(
                    train_loss=[v[k] for v in record.train_loss[:epochs]],
                    val_loss=val,
                    lr=[v * scale for v in trainer.history.lr[:epochs]],
                )
            )
            best = record.best_epoch[k] if record.best_epoch else -1
            best_epochs.append(best if best >= 0 else epochs - 1)
        return _Group(hidden, trials, members, histories, best_epochs, scores)

    def _gather(self, group: distributed.Group) -> None:
        """Every process's trained configurations, on every process, in the grid's order:
        an architecture whose trials two processes shared is one group again."""
        mine = [_plain(g) for g in self.groups_]
        shares = group.gather_objects((mine, self.interrupted_))
        self.interrupted_ = any(stopped for _, stopped in shares)
        merged: dict[tuple[int, ...], _Group] = {}
        for share, _ in shares:  # rank order is grid order: the shares are contiguous
            for plain in share:
                g = self._group_from(plain)
                if g.hidden not in merged:
                    merged[g.hidden] = g
                    continue
                m = merged[g.hidden]
                m.trials += g.trials
                m.members += g.members
                m.histories += g.histories
                m.best_epochs += g.best_epochs
                m.scores = np.concatenate([m.scores, g.scores])
        self.groups_ = list(merged.values())

    def _group_from(self, plain: dict[str, Any]) -> _Group:
        """A :class:`_Group` from what :func:`_plain` sent."""
        hidden = tuple(plain["hidden"])
        config = self._model_config(hidden)
        members = []
        for trial, state in zip(plain["trials"], plain["members"], strict=True):
            member = self.recipe_.member(config, trial.seed)
            member.load_state_dict(state)
            members.append(member.eval())
        histories = [History.from_dict(h) for h in plain["histories"]]
        return _Group(
            hidden,
            list(plain["trials"]),
            members,
            histories,
            list(plain["best_epochs"]),
            np.asarray(plain["scores"], dtype=np.float64),
        )

    # -- results -------------------------------------------------------------------------------

    def _ranked(self) -> list[tuple[_Group, int]]:
        if not hasattr(self, "groups_"):
            raise ConfigError("the sweep has not run yet; call fit(X, y) first.")
        entries = [(g, k) for g in self.groups_ for k in range(len(g.trials))]
        # NaN scores (a diverged member) rank last; ties keep the grid's order.
        return sorted(
            entries, key=lambda e: (not math.isfinite(e[0].scores[e[1], 0]), e[0].scores[e[1], 0])
        )

    def table(self) -> pd.DataFrame:
        """One row per configuration, best validation RMSE first."""
        rows = []
        for rank, (g, k) in enumerate(self._ranked(), start=1):
            t = g.trials[k]
            rows.append(
                {
                    "rank": rank,
                    "hidden": ",".join(map(str, t.hidden)) or "none",
                    "lr": t.lr,
                    "weight_decay": t.weight_decay,
                    "seed": t.seed,
                    "val_rmse": g.scores[k, 0],
                    "val_mae": g.scores[k, 1],
                    "train_loss": g.scores[k, 2],
                    "epochs": len(g.histories[k]),
                    "best_epoch": g.best_epochs[k],
                }
            )
        return pd.DataFrame(rows)

    def regressor(self, top: int = 1) -> Regressor:
        """A fitted Regressor: the best configuration, or for ``top`` > 1 an ensemble of the
        ``top`` best configurations that share the winner's hidden sizes."""
        if not 1 <= int(top) <= MAX_MEMBERS:
            raise ConfigError(f"top must be an integer in [1, {MAX_MEMBERS}], got {top!r}.")
        ranked = self._ranked()
        best_group, _ = ranked[0]
        chosen = [(g, k) for g, k in ranked if g is best_group][: max(1, int(top))]
        if len(chosen) < top:
            raise ConfigError(
                f"top={top} needs {top} configurations with the best hidden sizes "
                f"{best_group.hidden}, but the sweep trained {len(chosen)}; sweep more "
                "learning rates, weight decays or seeds."
            )
        if not math.isfinite(best_group.scores[chosen[0][1], 0]):
            raise ConfigError(
                "every configuration of the sweep diverged; lower the learning rates."
            )
        first = best_group.trials[chosen[0][1]]
        members = [best_group.members[k] for _, k in chosen]
        histories = [best_group.histories[k] for _, k in chosen]
        epochs = [best_group.best_epochs[k] for _, k in chosen]
        model: MLP | MLPEnsemble = (
            members[0] if len(members) == 1 else MLPEnsemble(members[0].config, members)
        ).eval()
        data = self.data_
        result = FitResult(
            model=model,
            history=histories[0] if len(members) == 1 else _mean_history(histories),
            preprocessor=self.preprocessor_,
            y_scaler=self.y_scaler_,
            seed=first.seed,
            n_features=data.frame.shape[1],
            feature_names=data.feature_names,
            n_outputs=data.y.shape[1],
            y_1d=data.y_1d,
            best_epoch=max(epochs),
            member_best_epochs=epochs if len(members) > 1 else None,
            calibrator=calibrate(model, self._validation),
            # The rows that chose this configuration: a slightly flattering score.
            held_out=held_out_metrics(
                self.y_scaler_,
                data.y[self.val_rows_],
                predict_moments(model, self._validation[0])[0],
            ),
            interrupted=self.interrupted_,
        )
        # the members trained apart, whatever ensemble form the base named for n_models > 1
        reg = clone(self.base).set_params(
            **first.params(), n_models=len(chosen), ensemble="independent"
        )
        return reg.adopt(result)


def _by_architecture(trials: list[Trial]) -> dict[tuple[int, ...], list[Trial]]:
    """The trials by hidden sizes, in the order the sizes first come."""
    groups: dict[tuple[int, ...], list[Trial]] = {}
    for t in trials:
        groups.setdefault(t.hidden, []).append(t)
    return groups


def _share(trials: list[Trial], group: distributed.Group | None, costs: list[int]) -> list[Trial]:
    """This process's configurations (all of them in one process): a contiguous share of
    the grid, so that each process batches few architectures, cut where the work (``costs``,
    each configuration's parameters, which its steps cost in proportion to) splits evenly."""
    if group is None:
        return trials
    work = np.asarray(costs, dtype=float)
    middle = np.cumsum(work) - work / 2  # (trials,) the work done halfway through each
    owner = np.minimum((middle * group.world_size / work.sum()).astype(int), group.world_size - 1)
    return [t for t, r in zip(trials, owner, strict=True) if r == group.rank]


def _parameters(config: MLPConfig) -> int:
    """How many parameters ``MLP(config)`` has."""
    return sum(math.prod(shape) for shape in state_shapes(config).values())


def _plain(g: _Group) -> dict[str, Any]:
    """A trained group as plain data (CPU tensors, lists, an array), to send to the other
    processes."""
    return {
        "hidden": list(g.hidden),
        "trials": g.trials,
        "members": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in g.members],
        "histories": [h.to_dict() for h in g.histories],
        "best_epochs": g.best_epochs,
        "scores": g.scores,
    }


def _mean_history(histories: list[History]) -> History:
    n = min(len(h) for h in histories)

    def mean(key: str) -> list[float]:
        return [float(np.mean([getattr(h, key)[i] for h in histories])) for i in range(n)]

    return History(train_loss=mean("train_loss"), val_loss=mean("val_loss"), lr=mean("lr"))
