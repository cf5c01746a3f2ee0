"""Continuing a fitted network: the training state a fit leaves behind, and what may change.

A single network's fit ends by keeping a :class:`TrainerState`, the optimiser's state and
the random stream of its :class:`~nnreg.train.Trainer`, taken apart from the trainer itself
(whose buffers are sized to the data it saw). A warm start or ``partial_fit`` builds a new
trainer on the fitted network and :func:`continue_state` loads that state into it, so that
training goes on as if it had never stopped: ``fit`` for k epochs and then for m more, or k
epochs and m calls of ``partial_fit``, steps exactly like one run of k + m epochs when the
learning rate is constant. The run itself starts afresh: a new history, early-stopping
count and (for ``learning_rate='cosine'``) decay; the reduction ``'plateau'`` reached stays.

What may change between fits: the number of epochs, the schedule, the learning rate, the
batch size, early stopping and the loss go on from the state as it is; a change of the
optimiser's settings (optimizer, momentum, weight_decay, beta_1, beta_2, epsilon), of the
device or of the dtype continues from the weights with a fresh optimiser state, which is
also what a network read from a model folder gets (the folder keeps no optimiser state).
The architecture (``hidden_layer_sizes``, ``activation``, ``dropout``) cannot change:
:func:`check_continuable` refuses. The preprocessing stays the one fitted first, whatever
its parameters now say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .exceptions import ConfigError
from .model import MLP
from .recipe import Recipe
from .tabm import Network
from .train import History, TrainConfig, Trainer

__all__ = ["ARCHITECTURE_PARAMS", "TrainerState", "check_continuable", "continue_state"]

# The network's fields that its estimator parameters set, and those parameters' names; a
# fitted network cannot change them (its initialisation is done, so `init` may differ).
ARCHITECTURE_PARAMS = {
    "hidden_sizes": "hidden_layer_sizes",
    "activation": "activation",
    "dropout": "dropout",
    "embedding": "embedding",
}
# What the optimiser state depends on: settings that differ leave it behind.
_OPTIMIZER_SETTINGS = ("optimizer", "momentum", "nesterov", "weight_decay", "betas", "eps")


@dataclass(frozen=True)
class TrainerState:
    """A trainer's :meth:`~nnreg.train.Trainer.state_dict` at the end of a fit (on the CPU),
    with the settings and the place (device, dtype) it was trained with."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    config: TrainConfig
    where: tuple[str, str]  # (device, dtype) of the weights

    @classmethod
    def of(cls, trainer: Trainer) -> TrainerState:
        trainer.best = None  # the run has put the best weights back already: no second copy
        tensors, meta = trainer.state_dict()
        return cls(tensors, meta, trainer.config, _where(trainer))

    def fits(self, trainer: Trainer) -> bool:
        """True when ``trainer`` updates its weights as the one this state came from: the
        same engine, optimiser settings, device and dtype."""
        same = all(
            getattr(self.config, name) == getattr(trainer.config, name)
            for name in _OPTIMIZER_SETTINGS
        )
        return same and self.meta["fast"] == trainer.backend.fast and self.where == _where(trainer)


def _where(trainer: Trainer) -> tuple[str, str]:
    first = next(trainer.model.parameters())
    return str(first.device), str(first.dtype)


def continue_state(trainer: Trainer, state: TrainerState | None) -> bool:
    """Load ``state`` into a new ``trainer`` on the same network when it fits (see
    :meth:`TrainerState.fits`); its next run starts afresh. True when it was loaded."""
    if state is None or not state.fits(trainer):
        return False
    trainer.load_state_dict(state.tensors, state.meta)
    trainer.history, trainer.best_epoch, trainer.resuming = History(), -1, False
    return True


def check_continuable(recipe: Recipe, model: Network, how: str) -> MLP:
    """``model``, on the recipe's device and dtype, when ``recipe`` continues it (``how``:
    'warm_start' or 'partial_fit', for the message); a :class:`ConfigError` when it is an
    ensemble or the recipe asks for another architecture."""
    if not isinstance(model, MLP):
        raise ConfigError(
            f"{how} continues one network, but this Regressor was fitted as an ensemble "
            "(n_models > 1); call fit with warm_start=False to train anew."
        )
    config = model.config
    # Any numeric column count > 0 tells whether the recipe embeds (the bins are fitted).
    wanted = recipe.model_config(config.n_inputs, config.n_outputs, max(1, config.n_embedded))
    names = dict(ARCHITECTURE_PARAMS)
    if config.embedding != "none":
        names["d_embedding"] = "d_embedding"
    changed = [
        f"{param} ({getattr(config, name)!r} -> {getattr(wanted, name)!r})"
        for name, param in names.items()
        if getattr(config, name) != getattr(wanted, name)
    ]
    if changed:
        raise ConfigError(
            f"{how} continues the fitted network, but {', '.join(changed)} changed since it "
            "was fitted; set them back, or fit anew with warm_start=False."
        )
    first = next(model.parameters())
    if first.device != recipe.device or first.dtype != recipe.dtype:  # e.g. loaded on the CPU
        model = model.to(device=recipe.device, dtype=recipe.dtype)
    return model
