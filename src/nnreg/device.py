"""Where training runs and with how many threads: device names and the thread policy.

:func:`resolve_device` turns a device parameter ('auto', 'cpu', 'cuda', 'cuda:N', 'mps')
into a ``torch.device`` (one GPU per process in a multi-process run); :func:`thread_policy`
chooses the intra-op threads of a training loop from the size of its steps.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

from .exceptions import ConfigError

__all__ = [
    "DEVICE_HELP",
    "ONE_THREAD_MAX_WORK",
    "adapt_threads",
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
def thread_policy(
    batch: int,
    widest: int,
    threads: int | None = None,
    one_thread_max_work: int = ONE_THREAD_MAX_WORK,
) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, or by measurement when None.

    Small matrix products finish before a second thread is worth waking, so steps whose
    ``batch * widest**2`` is at most ``one_thread_max_work`` use one thread (an engine that
    splits its step more cheaply than PyTorch's products passes a lower bound). Larger ones
    use torch's setting, but only as many threads as there are cores that other processes
    leave free (outside a data-parallel process group): a :class:`_Governor` watches the
    machine while the block runs (the trainers call :func:`adapt_threads` every step),
    because threads that wait for a core another process holds slow every step down
    several times. The thread count does not change the result (tested; see ``MKL_CBWR``
    in ``nnreg/__init__.py``). The previous setting is restored afterwards.
    """
    global _governor
    before = torch.get_num_threads()
    governor = None
    if threads is None:
        threads = 1 if batch * widest**2 <= one_thread_max_work else before
        if threads > 1 and not _in_process_group():
            governor = _Governor(threads)
            threads = governor.current
    if threads != before:
        torch.set_num_threads(threads)
    outer, _governor = _governor, governor
    try:
        yield
    finally:
        _governor = outer
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def adapt_threads() -> None:
    """Let the running :func:`thread_policy` adjust its thread count (cheap: it looks at the
    machine at most every :data:`_Governor.PERIOD` seconds)."""
    if _governor is not None:
        _governor.check()


class _Governor:
    """Intra-op threads that follow the cores other processes leave free.

    Every PERIOD seconds it compares the CPU time the machine spent (``/proc/stat``, on the
    cores this process may use) with this process's own: the difference is what other
    processes used. The thread count becomes the free cores, at least one and at most the
    count asked for. Where there is no ``/proc/stat``, the count stays as asked.
    """

    PERIOD = 0.25  # seconds between looks at the machine; the first comes after the first

    def __init__(self, wanted: int) -> None:
        self.wanted = self.current = wanted
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.last = self._sample()  # no waiting here: every run (each partial_fit) starts now

    def _sample(self) -> tuple[float, float, float] | None:
        """(wall seconds, busy core-seconds of the machine, this process's CPU seconds)."""
        busy = _busy_seconds(self.cores)
        return None if busy is None else (time.monotonic(), busy, time.process_time())

    def check(self) -> None:
        if self.last is not None and time.monotonic() - self.last[0] >= self.PERIOD:
            self._update()

    def _update(self) -> None:
        now = self._sample()
        if now is None or self.last is None or now[0] <= self.last[0]:
            return
        wall = now[0] - self.last[0]
        others = max(0.0, (now[1] - self.last[1]) - (now[2] - self.last[2])) / wall
        self.last = now
        free = len(self.cores) - others
        target = max(1, min(self.wanted, int(free + 0.5)))  # free cores, rounded
        if target != self.current:
            torch.set_num_threads(target)
            self.current = target


_governor: _Governor | None = None


def physical_memory() -> int | None:
    """Bytes of memory this machine has, or its container's limit when lower (cgroup v2);
    None where the system does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that counts pages
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def _in_process_group() -> bool:
    """A data-parallel process: its launcher already chose its share of the cores, and its
    collectives' threads are not to be raced by changing the pool mid-run."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds(cores: list[int]) -> float | None:
    """Core-seconds the machine has spent busy on ``cores`` since boot, or None."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    busy = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(v) for v in fields[1:8]]  # user nice system idle iowait irq softirq
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / _TICKS if wanted else None
