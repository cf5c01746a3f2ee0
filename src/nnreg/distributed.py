"""Data-parallel training across processes: torchrun ranks, one shard of the rows each.

``torchrun --nproc-per-node=N -m nnreg train DATA ...`` (or ``nnreg train DATA ... --nproc N``
on one machine) starts N processes. Each one:

1. joins the process group that torchrun describes in its environment (``RANK``,
   ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on the CPU, NCCL on
   CUDA, where the process of local rank ``r`` uses ``cuda:r``;
2. reads the whole table and fits the preprocessing on all training rows (deterministic, so
   every process holds the same transform), with rank 0's seed and rank 0's initial weights;
3. trains on its own shard, an equal-size contiguous range of the training rows: the last
   ``rows % world_size`` rows are dropped, so that every process takes the same number of
   steps per epoch (``batch_size`` is per process; a step's global batch is ``world_size``
   times as large);
4. averages the gradients of every step across processes before the optimiser step, and sums
   each epoch's loss totals, so that every process keeps the same weights, the same history
   and the same early-stopping decisions (validation rows are scored whole by every process).

That is the data-parallel step of ``torch.nn.parallel.DistributedDataParallel``, done by
:class:`TorchSync` through the trainer's :class:`~nnreg.train.GradientSync` hook: the fast
engine keeps all gradients in one flat buffer, so each step is a single all-reduce of that
buffer; the autograd engine all-reduces each parameter's gradient. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .device import local_rank, resolve_device
from .exceptions import ConfigError, DataError, NnregError

__all__ = [
    "Group",
    "TorchSync",
    "current",
    "launch",
    "join",
    "launched",
    "leave",
    "local_rank",
    "on_rank0",
    "refuse_unsupported",
]


def launched() -> bool:
    """True in a process that torchrun started as one of several (``WORLD_SIZE`` > 1)."""
    return local_rank() is not None


@dataclass(frozen=True)
class Group:
    """This process's place in the default process group."""

    rank: int
    world_size: int
    local_rank: int

    def shard(self, n: int) -> slice:
        """This rank's rows of ``n``: equal contiguous ranges, the remainder dropped."""
        per_rank = n // self.world_size
        if per_rank == 0:
            raise DataError(
                f"{n} training rows cannot be shared by {self.world_size} processes; use more "
                "rows or fewer processes."
            )
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value``, on every rank."""
        t = torch.tensor([value], dtype=torch.int64, device=_collective_device())
        dist.broadcast(t, src=0)
        return int(t.item())

    def broadcast_parameters_(self, module: nn.Module) -> None:
        """Overwrite every rank's parameters with rank 0's (they already agree when seeded)."""
        with torch.no_grad():
            for p in module.parameters():
                dist.broadcast(p.data, src=0)


def current() -> Group | None:
    """The process group this process belongs to, or None outside a multi-process run."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return Group(dist.get_rank(), dist.get_world_size(), local_rank)


class TorchSync:
    """:class:`~nnreg.train.GradientSync` on ``torch.distributed``: all-reduce, then divide."""

    def __init__(self, group: Group) -> None:
        self.world_size = group.world_size

    def average_(self, tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(self.world_size)

    def sum_(self, tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def join(device: str) -> Group | None:
    """Join the process group torchrun describes, for training on ``device`` (as the
    estimator's parameter: 'auto', 'cpu', 'cuda', ...); None when this process was not
    started as one of several. NCCL on CUDA (``cuda:LOCAL_RANK``), gloo otherwise."""
    if not launched():
        return None
    where = resolve_device(device, local_rank())
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; train in one process.")
    if not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)  # NCCL uses the current device
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return current()


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where small tensors for collectives live: NCCL only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def on_rank0(group: Group | None, write: Callable[[], Any]) -> None:
    """Run ``write`` on rank 0 only; every rank then fails if it failed, so that all of them
    exit with an error code."""
    if group is None:
        write()
        return
    ok = torch.ones(1, dtype=torch.int64, device=_collective_device())
    try:
        if group.rank == 0:
            try:
                write()
            except BaseException:
                ok.zero_()
                raise
    finally:
        dist.broadcast(ok, src=0)
    if not int(ok.item()):
        raise NnregError("rank 0 could not write the model folder; see its message.")


def refuse_unsupported(
    group: Group, *, sample_weight: bool, n_models: int, checkpoint: bool
) -> None:
    """One clear error for what data-parallel training does not cover."""
    if sample_weight:
        raise ConfigError(
            "sample_weight is not available in distributed runs; train in one process."
        )
    if n_models > 1:
        raise ConfigError(
            "ensembles (n_models > 1) are not available in distributed runs; train them in one "
            "process, where the members already train as one batched computation."
        )
    if checkpoint:
        raise ConfigError(
            "checkpoints and resuming are not available in distributed runs; train in one "
            "process to use them."
        )


def launch(nproc: int, args: list[str]) -> int:
    """Run ``python -m nnreg ARGS`` as ``nproc`` processes on this machine, as
    ``torchrun --standalone --nproc-per-node=NPROC`` does; returns the exit code.

    Each process gets ``cpu_count // nproc`` intra-op threads unless ``OMP_NUM_THREADS`` is
    set. Rank 0 prints; when another rank fails first, this says which one.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if launched():
        raise ConfigError("--nproc starts its own processes; leave it out under torchrun.")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # The launcher's own log lines would repeat what rank 0 already printed.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    try:
        elastic_launch(config, sys.executable)("-m", "nnreg", *args)
    except ChildFailedError as exc:
        rank0 = exc.failures.get(0)
        if rank0 is not None and rank0.exitcode > 0:
            return int(rank0.exitcode)  # rank 0 failed on its own and printed why
        rank, failure = exc.get_first_failure()
        print(
            f"error: the process of rank {rank} stopped with exit code "
            f"{_exit_code(failure.exitcode)}; rerun with --debug to see every process's "
            "messages.",
            file=sys.stderr,
        )
        return _exit_code(failure.exitcode) or 1
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


def _exit_code(code: int) -> int:
    """A child's exit status as a shell reports it: 128 + N when signal N ended it."""
    return 128 - code if code < 0 else code
