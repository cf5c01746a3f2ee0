"""The compiled passes of :class:`~nnreg.engine.FastTabM`'s PyTorch step (``csrc/shared.cpp``,
loaded by :func:`.native.passes`), called with arguments worked out once.

A pass streams a whole ``(k, batch, width)`` block through the processor's caches, and so
does a product; what Python touches between two of them is no longer cached. On the Intel Xeon
of ``benchmarks/results/ensemble.md``, working out a pass's arguments (a few dictionary
lookups and tensors' pointers) took 2.5 us with warm caches and 25 us right after a pass. So
the pointers are read once: the parameters' and gradients' when the network is packed (they
live in its flat buffers for its whole life), a batch size's buffers' when they are made, and
each call unpacks one tuple.
"""

from __future__ import annotations

from typing import Any

import torch

from . import native
from .kernels import CounterDropout

__all__ = ["FusedLayers"]


class FusedLayers:
    """The passes of one :class:`~nnreg.engine.FastTabM` (``net``): the adapters' folding
    for its "tabm" layers, and (where ``net.fused``) each layer's activation and dropout in
    one pass each way, the one-output head's in the last layer's (``net.n_out == 1``)."""

    def __init__(
        self, net: Any, passes: native.Passes, sampler: CounterDropout, activation: int
    ) -> None:
        self.passes = passes
        self.threads = 1  # set per step: PyTorch's setting then
        self.mask = (0, sampler.threshold, sampler.factor, activation)  # after a mask's key
        self.k, self.sizes, self.last = net.k, net.sizes, len(net.sizes) - 2
        v, g = net.view, net.grad
        layers, adapters = range(len(net.sizes) - 1), ("weights", "r", "s")

        def pointers(i: int, views: dict[str, torch.Tensor]) -> tuple[int, ...]:
            return tuple(views[f"{name}.{i}"].data_ptr() for name in adapters)

        self.fold_args: list[tuple[int, ...]] = []
        self.unfold_args: list[tuple[int, ...]] = []
        for i in layers:
            shape = (self.k, net.sizes[i + 1], net.sizes[i])
            M, dM = net._m[i], net._dm[i]
            if M is None or dM is None:  # not a "tabm" layer: nothing to fold
                self.fold_args.append(())
                self.unfold_args.append(())
                continue
            self.fold_args.append((*shape, *pointers(i, v), M.data_ptr()))
            self.unfold_args.append((*shape, *pointers(i, v), dM.data_ptr(), *pointers(i, g)))
        biases = [(v[f"biases.{i}"], g[f"biases.{i}"]) for i in layers]
        self.bias = [(b.data_ptr(), int(b.dim() == 2), db.data_ptr()) for b, db in biases]
        self.head_params = (v["head_weight"].data_ptr(), v["head_bias"].data_ptr())
        self.head_grad = g["head_weight"].data_ptr()

    def fold(self, i: int) -> None:
        """Layer ``i``'s per-member weights ``M = (s r^T) * W``."""
        self.passes.fold(self.threads, *self.fold_args[i])

    def unfold(self, i: int) -> None:
        """Layer ``i``'s shared weight's and adapters' gradients from its dM."""
        self.passes.unfold(self.threads, *self.unfold_args[i])

    def buffers(self, buf: Any) -> list[tuple[Any, ...]]:
        """Each layer's calls on ``buf`` (an ``engine.shared`` batch size's buffers): the
        forward pass and its arguments up to the mask's, the backward pass and its, and
        whether the backward pass takes the mask."""
        p, calls = self.passes, list[tuple[Any, ...]]()
        for i, (bias, per_member, dbias) in enumerate(self.bias):
            shape = (self.k, buf.Z[i].shape[1], self.sizes[i + 1])
            Z, dA = buf.Z[i].data_ptr(), buf.dA[i].data_ptr()
            forward: tuple[int, ...]
            backward: tuple[int, ...]
            if buf.head and i == self.last:  # the head's output, and from its gradient D
                forward = (*shape, Z, bias, per_member, *self.head_params, buf.out.data_ptr())
                to_head = (self.head_params[0], buf.D.data_ptr(), self.head_grad)
                backward = (*shape, dA, Z, bias, per_member, dbias, *to_head)
                calls.append((p.head_forward, forward, p.head_backward, backward, True))
            else:
                forward = (*shape, Z, bias, per_member, buf.A[i].data_ptr())
                backward = (*shape, dA, Z, per_member, dbias)
                calls.append((p.dropout_forward, forward, p.dropout_backward, backward, False))
        return calls

    def forward(self, i: int, calls: list[tuple[Any, ...]], key: int) -> None:
        """Layer ``i``'s activation and dropout: A from Z, leaving mask * act' in Z (or on
        the last layer with a head, the head's output)."""
        function, arguments = calls[i][:2]
        function(self.threads, *arguments, key, *self.mask)

    def backward(self, i: int, calls: list[tuple[Any, ...]], key: int) -> None:
        """Layer ``i``'s dLoss/dZ in place of dLoss/dA, and its bias's gradient (on the last
        layer with a head, from the output's gradient, with the head weight's)."""
        function, arguments, masked = calls[i][2:]
        if masked:
            function(self.threads, *arguments, key, *self.mask)
        else:
            function(self.threads, *arguments)


def threads() -> int:
    """The threads a compiled pass may use: PyTorch's setting now."""
    return max(1, torch.get_num_threads())
