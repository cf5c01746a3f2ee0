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

The same hook carries the rest of what runs on one process: sample weights (each step's loss
is normalised by the global batch's weight sum, see :meth:`TorchSync.weight_total`),
ensembles (every rank holds every member and its shard of the rows; the members' ``(K, P)``
gradient is one all-reduce), and checkpoints (rank 0 writes them with every rank's random
state, :meth:`Group.gather`; a resumed run must have the same number of processes). A sweep
splits its configurations across the ranks instead (:mod:`nnreg.sweep`).

When a process of the run dies, the others' next collective fails: they raise
:class:`~nnreg.exceptions.ProcessGroupError`. Under ``--nproc`` (:func:`launch`) they exit
quietly with :data:`PEER_STOPPED_EXIT` and the launcher prints the one line that names the
rank that stopped first.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .device import local_rank, resolve_device
from .exceptions import ConfigError, DataError, NnregError, ProcessGroupError

__all__ = [
    "LAUNCHER_ENV",
    "PEER_STOPPED_EXIT",
    "Group",
    "TorchSync",
    "current",
    "end_with_launcher",
    "launch",
    "join",
    "launched",
    "leave",
    "local_rank",
    "on_rank0",
    "under_launcher",
]

# Set for the processes that :func:`launch` starts; a process whose collective failed because
# another one stopped then exits quietly with PEER_STOPPED_EXIT, and the launcher, which
# knows which process stopped first, says so in one line.
LAUNCHER_ENV = "NNREG_LAUNCHER"
LAUNCHER_PID_ENV = "NNREG_LAUNCHER_PID"  # its processes end with it (end_with_launcher)
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies
PEER_STOPPED_EXIT = 75  # EX_TEMPFAIL: a temporary failure, to be retried (or resumed)
# A process that SIGTERM ended as it unwound (nnreg.cli's Terminated): under --nproc, most
# often the launcher ending every process after another one failed first.
TERMINATED_EXIT = 128 + signal.SIGTERM
T = TypeVar("T")


def under_launcher() -> bool:
    """True in a process that ``nnreg ... --nproc N`` started."""
    return os.environ.get(LAUNCHER_ENV) == "1"


def end_with_launcher() -> None:
    """In a process ``--nproc`` started: have the kernel send it SIGTERM when the launcher
    dies (even by SIGKILL), so that no rank trains on, orphaned, after the command ended.
    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing changes."""
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not under_launcher() or not sys.platform.startswith("linux") or launcher is None:
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(launcher):  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def _collective() -> Iterator[None]:
    """Turn the failure of a collective (another process died, or the network went) into
    one :class:`ProcessGroupError`."""
    try:
        yield
    except RuntimeError as exc:  # gloo and NCCL raise RuntimeError (DistBackendError, ...)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = detail.split("] ", 1)[-1].split(". This is typically")[0]
        raise ProcessGroupError(
            f"another process of this distributed run stopped, so this one cannot go on "
            f"({detail}); every process ends here. Start the run again, or continue it from "
            "its last checkpoint with --resume if it wrote one."
        ) from exc


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
        with _collective():
            dist.broadcast(t, src=0)
        return int(t.item())

    def broadcast_(self, tensor: torch.Tensor) -> None:
        """Overwrite ``tensor`` on every rank with rank 0's."""
        with _collective():
            dist.broadcast(tensor, src=0)

    def broadcast_parameters_(self, module: nn.Module) -> None:
        """Overwrite every rank's parameters with rank 0's (they already agree when seeded)."""
        with torch.no_grad():
            for p in module.parameters():
                self.broadcast_(p.data)

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (of one shape and dtype on all ranks), in rank order, on
        every rank, on ``tensor``'s device (they travel on the backend's: NCCL's is CUDA)."""
        sent = tensor.to(_collective_device()).contiguous()
        parts = [torch.empty_like(sent) for _ in range(self.world_size)]
        with _collective():
            dist.all_gather(parts, sent)
        return [part.to(tensor.device) for part in parts]

    def gather_objects(self, value: T) -> list[T]:
        """Every rank's ``value`` (plain data: numbers, lists, arrays, CPU tensors), in rank
        order, on every rank. The values travel between this run's own processes only."""
        parts: list[Any] = [None] * self.world_size
        with _collective():
            dist.all_gather_object(parts, value)
        return parts


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
        with _collective():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(self.world_size)

    def sum_(self, tensor: torch.Tensor) -> None:
        with _collective():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def weight_total(self, weights: torch.Tensor) -> torch.Tensor:
        """What each process divides its step's weighted loss by: the global batch's weight
        sum over the number of processes (per member, for (K, rows) weights: (K, 1)). Then
        the averaged gradient is that of the loss normalised by the global sum."""
        total = weights.sum(dim=-1, keepdim=True)  # (1,) or (K, 1)
        self.average_(total)
        return total


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
        group.broadcast_(ok)
    if not int(ok.item()):
        raise NnregError("rank 0 could not write its files; see its message.")


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
    os.environ[LAUNCHER_ENV] = "1"
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    try:
        elastic_launch(config, sys.executable)("-m", "nnreg", *args)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        rank = _first_to_stop(codes)
        if rank == 0 and codes[0] > 0 and codes[0] not in (PEER_STOPPED_EXIT, TERMINATED_EXIT):
            return int(codes[0])  # rank 0 failed on its own and printed why
        code = _exit_code(codes[rank])
        print(_stopped_message(rank, codes[rank], args), file=sys.stderr)
        return code or 1
    except SignalException as exc:
        if exc.sigval == signal.SIGTERM:  # the processes ended quietly: this speaks for them
            print("error: terminated by SIGTERM; nothing was left half-written", file=sys.stderr)
        return 128 + int(exc.sigval)
    finally:
        os.environ.pop(LAUNCHER_ENV, None)
        os.environ.pop(LAUNCHER_PID_ENV, None)
    return 0


def _first_to_stop(codes: dict[int, int]) -> int:
    """The rank whose end made the others fail: not one that ended because another had
    (PEER_STOPPED_EXIT), and, where there is a choice, not one the launcher ended with
    SIGTERM after the first failure (killed by it, or TERMINATED_EXIT when it unwound);
    then one a signal killed (nnreg never ends a process so) before one that exited with an
    error; the lowest such rank."""
    causes = [r for r, c in codes.items() if c != PEER_STOPPED_EXIT] or list(codes)
    ended = (-signal.SIGTERM, TERMINATED_EXIT)
    first = [r for r in causes if codes[r] not in ended] or causes
    killed = [r for r in first if codes[r] < 0]
    return min(killed or first)


def _stopped_message(rank: int, status: int, args: list[str]) -> str:
    """One line naming the process that stopped, and how to go on."""
    how = f"exit code {_exit_code(status)}"
    if status < 0:
        with suppress(ValueError):
            how += f", {signal.Signals(-status).name}"
    resumable = any(a.startswith(("--checkpoint-every", "--resume")) for a in args)
    folder = _option(args, "--resume") or _option(args, "--out", "-o") or "OUT"
    then = (
        f"continue the run from its last checkpoint with --resume {folder}"
        if resumable
        else "rerun with --debug to see every process's messages"
    )
    return (
        f"error: the process of rank {rank} stopped ({how}) and every process of the run "
        f"ended; {then}."
    )


def _option(args: list[str], *names: str) -> str | None:
    """The value given to the option ``names`` on the command line ``args``, if any."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return None


def _exit_code(code: int) -> int:
    """A child's exit status as a shell reports it: 128 + N when signal N ended it."""
    return 128 - code if code < 0 else code
