"""What a fit with ``verbose`` prints: a line per epoch (or per tenth of the run) on stdout.

Each line names the epoch, the training loss and, when the fit holds rows out, their loss,
and says which loss it is and in what units, so that a line read alone means something::

    epoch 10/30: train 0.0421, validation 0.0513 (mean squared error, standardised target)

Printing is all it does: the callback only reads the losses the loop computes anyway, so a
verbose fit trains exactly like a quiet one. Only rank 0 of a distributed run prints.
"""

from __future__ import annotations

import math
import sys

from . import distributed
from .recipe import Recipe
from .train import EpochCallback

__all__ = ["LOSS_NAMES", "Progress", "report_end", "units", "with_progress"]

LOSS_NAMES = {
    "squared_error": "mean squared error",
    "absolute_error": "mean absolute error",
    "huber": "mean Huber loss",
}
LINES = 10  # verbose=1 prints about this many lines a fit (and its first and last epoch)


def units(loss: str, scale_target: bool) -> str:
    """What a fit's losses measure, e.g. 'mean squared error, standardised target'."""
    if scale_target:
        where = "standardised target"
    else:
        where = "target's units squared" if loss == "squared_error" else "target's units"
    return f"{LOSS_NAMES[loss]}, {where}"


class Progress:
    """An epoch callback printing one line for the epochs ``verbose`` asks for.

    ``offset`` is the number of epochs trained before this fit (a warm start or
    ``partial_fit`` continues the count); ``epochs`` how many this fit plans, or None where
    it does not say (``partial_fit``: every call prints its epoch).
    """

    def __init__(self, verbose: int, units: str, epochs: int | None, offset: int = 0) -> None:
        self.verbose, self.units, self.epochs, self.offset = verbose, units, epochs, offset
        self.every = 1 if verbose > 1 or epochs is None else max(1, math.ceil(epochs / LINES))

    def __call__(self, epoch: int, train_loss: float, val_loss: float | None) -> None:
        done = epoch + 1
        if not (done == 1 or done % self.every == 0 or done == self.epochs):
            return
        number = f"{self.offset + done}"
        if self.epochs is not None:
            number += f"/{self.offset + self.epochs}"
        scores = f"train {train_loss:.6g}"
        if val_loss is not None:
            scores += f", validation {val_loss:.6g}"
        print(f"epoch {number}: {scores} ({self.units})", file=sys.stdout, flush=True)


def with_progress(
    recipe: Recipe, callback: EpochCallback | None, epochs: int | None, offset: int = 0
) -> EpochCallback | None:
    """``callback``, preceded by a :class:`Progress` when the recipe's ``verbose`` is set
    (and this process is the one that prints)."""
    verbose = _verbosity(recipe)
    if not verbose:
        return callback
    progress = Progress(
        verbose, units(recipe["loss"], bool(recipe["scale_target"])), epochs, offset
    )
    if callback is None:
        return progress

    def both(epoch: int, train_loss: float, val_loss: float | None) -> None:
        progress(epoch, train_loss, val_loss)
        callback(epoch, train_loss, val_loss)

    return both


def report_end(recipe: Recipe, done: int, planned: int, kept: int) -> None:
    """With ``verbose``: one line when a fit of ``planned`` epochs (counting those before
    it) ended after ``done`` or keeps the weights of an earlier epoch ``kept`` (0-based)."""
    if _verbosity(recipe) and (done < planned or kept + 1 < done):
        print(
            f"stopped after epoch {done} of {planned}; the weights are those of epoch {kept + 1}",
            file=sys.stdout,
            flush=True,
        )


def _verbosity(recipe: Recipe) -> int:
    """The recipe's ``verbose``; 0 in a process of a distributed run other than rank 0."""
    group = distributed.current()
    return 0 if group is not None and group.rank != 0 else int(recipe.params.get("verbose", 0))
