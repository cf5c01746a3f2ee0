"""Where training runs and with how many threads: device names and the thread policy.

:func:`resolve_device` turns a device parameter ('auto', 'cpu', 'cuda', 'cuda:N', 'mps')
into a ``torch.device`` (one GPU per process in a multi-process run); :func:`thread_policy`
chooses the intra-op threads of a training loop from the size of its steps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .exceptions import ConfigError

__all__ = [
    "DEVICE_HELP",
    "ONE_THREAD_MAX_WORK",
    "is_device_name",
    "local_rank",
    "resolve_device",
    "thread_policy",
    "training_device",
]

DEVICE_HELP = "'auto' (CUDA when available, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'"


def local_rank() -> int | None:
    """``LOCAL_RANK`` of a process that torchrun started as one of several, else None."""
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ.get("LOCAL_RANK", "0"))
    return None


def training_device(spec: str) -> torch.device:
    """The device a fit in this process trains on: ``spec`` resolved, a bare 'cuda' being
    this process's own GPU in a multi-process run."""
    return resolve_device(spec, local_rank())


def is_device_name(spec: object) -> bool:
    """True for the device names :func:`resolve_device` knows."""
    return isinstance(spec, str) and (
        spec in ("auto", "cpu", "cuda", "mps") or (spec[:5] == "cuda:" and spec[5:].isdigit())
    )


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """The device that ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'mps'`` names here.

    ``'auto'`` is CUDA when a CUDA device is available, else the CPU. A CUDA device without an
    index is ``cuda:local_rank`` in a multi-process run (one device per process), else the
    current one. Raises :class:`ConfigError` when the device is not available.
    """
    if not is_device_name(spec):
        raise ConfigError(f"device must be {DEVICE_HELP}, got {spec!r}.")
    name = "cuda" if spec == "auto" and torch.cuda.is_available() else spec
    if name == "auto":
        return torch.device("cpu")
    if name.split(":")[0] == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device={spec!r} needs a CUDA device, but none is available to this PyTorch "
                f"({torch.__version__}); use device='cpu' or 'auto'."
            )
        index = int(name[5:]) if ":" in name else local_rank
        if index is None:
            index = torch.cuda.current_device()
        if index >= count:
            raise ConfigError(
                f"device {spec!r} is cuda:{index}, but only {count} CUDA device(s) are visible; "
                "use a lower index or start fewer processes per machine."
            )
        return torch.device("cuda", index)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' is not available here; use device='cpu' or 'auto'.")
    return torch.device(name)


# Batch x width**2 (a step's arithmetic, roughly) up to which one intra-op thread is as fast
# as two; measured by benchmarks/threads.py (benchmarks/results/threads.md).
ONE_THREAD_MAX_WORK = 2**21  # between 1M (one thread won) and 4M (two won)


@contextlib.contextmanager
def thread_policy(batch: int, widest: int, threads: int | None = None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, or by measurement when None.

    Small matrix products finish before a second thread is worth waking, so steps whose
    ``batch * widest**2`` is at most :data:`ONE_THREAD_MAX_WORK` use one thread; larger ones
    keep torch's setting. The previous setting is restored afterwards.
    """
    before = torch.get_num_threads()
    if threads is None:
        threads = 1 if batch * widest**2 <= ONE_THREAD_MAX_WORK else before
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
