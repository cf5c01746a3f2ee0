"""The fast training kernel: hand-derived gradients of an MLP, no autograd, no allocations.

Tiny networks on a CPU are bound by per-operation overhead, so every step here is a short,
fixed list of PyTorch kernels writing into preallocated buffers:

* Each layer's weight and bias live together as one ``(out, in + 1)`` matrix ``[W | b]``, a
  view into one flat parameter buffer; gradients mirror that in one flat gradient buffer. The
  whole optimiser update is then a couple of operations on two flat tensors.
* Activations are kept transposed, ``(width + 1, batch)``, with a last row of ones, so that
  ``W_aug @ A`` applies weight and bias in one matrix product, ``dZ @ A.T`` yields the weight
  *and* bias gradients in one product, and each layer writes into a contiguous row block.
* Losses are accumulated as tensors and read once per epoch (one host sync per epoch).
* No autograd graph is ever built: the buffers are plain tensors, and the trainers run the
  whole loop under one ``torch.no_grad()`` (decorating every step would cost microseconds).

:func:`supports` says whether a model and recipe are covered; :mod:`nnreg.train` falls back to
autograd otherwise. The tests check every covered combination against autograd in float64.

Layout: :mod:`.kernels` (what both engines share: coverage, packed layers, step buffers,
activations, loss kernels, dropout masks, minibatch bounds), :mod:`.single` (:class:`FastMLP`,
:class:`FlatOptimizer`: one model), :mod:`.batched` (:class:`BatchedMLP`,
:class:`BatchedOptimizer`: K members as one computation), :mod:`.shared` (:class:`FastTabM`:
K members that share their weights, as one network) and :mod:`.embedded` (piecewise-linear
embeddings in each of them).
"""

from .batched import BatchedMLP, BatchedOptimizer
from .kernels import (
    FAST_ACTIVATIONS,
    FAST_LOSSES,
    FAST_OPTIMIZERS,
    DropoutSampler,
    epoch_batches,
    shared_members,
    supports,
)
from .shared import FastTabM, SharedBatch
from .single import Batch, FastMLP, FlatOptimizer

__all__ = [
    "FAST_ACTIVATIONS",
    "FAST_LOSSES",
    "FAST_OPTIMIZERS",
    "Batch",
    "BatchedMLP",
    "BatchedOptimizer",
    "DropoutSampler",
    "FastMLP",
    "FastTabM",
    "FlatOptimizer",
    "SharedBatch",
    "epoch_batches",
    "shared_members",
    "supports",
]
