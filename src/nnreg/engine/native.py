"""Compiled code for shared-weight members, built on first use, else nothing.

:class:`~nnreg.engine.FastTabM` runs every step as a short list of PyTorch operations. For
wide layers those are large matrix products and the list costs nothing; for narrow ones (the
seed experiment's 20 units, 32 members on 100 rows) each operation moves a few thousand
numbers and the per-operation cost dominates. ``csrc/tabm.cpp`` fuses one whole step (the
adapters folded into each member's weights, forward, backward, and the adapters' gradients)
into one call with no allocation, for the form it covers (:func:`covers`). For wide layers
the PyTorch step runs, and ``csrc/shared.cpp`` compiles the passes of it that PyTorch would
spread over several operations (:class:`Passes`): an activation with dropout, whose mask it
makes where it applies it, and the adapters' folding.

The sources are compiled once per machine with the C++ compiler (``$CXX``, else ``g++``, else
``c++``) into nnreg's cache folder (``$NNREG_CACHE_DIR``, else ``$XDG_CACHE_HOME/nnreg``, else
``~/.cache/nnreg``), under a name that hashes the sources, the compiler's version and the
processor's flags; a later process loads that file. Nothing is compiled when no compiler is
found, when the cache folder cannot be written or is not the user's own, or when
``NNREG_NATIVE=0``: the PyTorch step runs instead, which computes the same thing.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..outputs import clean_stale, fsync, temporary_name

__all__ = ["Kernels", "NativeStep", "Passes", "cache_dir", "covers", "kernels", "library", "passes"]

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "tabm.cpp", CSRC / "shared.cpp")
HEADERS = (CSRC / "adapters.h",)  # included by both: part of what a compiled library is of
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
OPENMP = "-fopenmp"  # tried first; without it the members run on one thread
DTYPE_NAMES = ("float32", "float64")
SYMBOLS = (
    [f"nnreg_tabm_{f}_{t}" for f in ("step", "mean_loss") for t in DTYPE_NAMES]
    + [
        f"nnreg_{f}_{t}"
        for f in (
            "dropout_forward",
            "dropout_backward",
            "head_forward",
            "head_backward",
            "fold",
            "unfold",
        )
        for t in DTYPE_NAMES
    ]
    + ["nnreg_dropout_draws"]
)
DTYPES = {torch.float32: ("float32", ctypes.c_float), torch.float64: ("float64", ctypes.c_double)}
_COMPILE_TIMEOUT_S = 300
# Members x rows x width**2 above which a step splits its members between threads: the
# threads share no data until the step's end, so two pay off far sooner than they do for
# PyTorch's products (device.ONE_THREAD_MAX_WORK). At 32 x 100 x 20**2 (1.3M, the seed
# network) a step took 166 us on one thread and 100 us on two.
ONE_THREAD_MAX_WORK = 2**17
# The widest layer the compiled step takes. Against the PyTorch step (whose adapters fold in
# compiled passes too), 32 members on 256 rows on an Intel Xeon (benchmarks/results/native.md):
# 1.9x as fast at width 32, 1.2-1.3x at 64, 0.8x at 128 and 0.55-0.68x at 256 to 512, where
# its products (written out here) fall behind PyTorch's. (Against the PyTorch step before
# its compiled passes, on an AMD EPYC, it had been 1.1-1.4x as fast up to width 256.)
MAX_WIDTH = 64


def covers(
    folded: list[bool],
    sizes: list[int],
    activation: str,
    dropout: float,
    loss: str,
    n_out: int,
    embedding: object,
    like: torch.Tensor,
) -> bool:
    """True for the networks ``csrc/tabm.cpp`` computes, where it is the faster step: the
    "tabm" form (r and s on every layer) no wider than :data:`MAX_WIDTH`, ReLU, no dropout,
    squared error (with row weights or without), one output, no embedding, float32 or float64
    on the CPU."""
    return (
        all(folded)
        and max(sizes) <= MAX_WIDTH
        and activation == "relu"
        and dropout == 0
        and loss == "squared_error"
        and n_out == 1
        and embedding is None
        and like.device.type == "cpu"
        and like.dtype in DTYPES
    )


def cache_dir() -> Path:
    """Where nnreg keeps what it compiles."""
    if os.environ.get("NNREG_CACHE_DIR"):
        return Path(os.environ["NNREG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nnreg"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled step's library, compiling it first if needed; None when it cannot be had
    (the reasons are in the module docstring)."""
    if os.environ.get("NNREG_NATIVE", "1") == "0":
        return None
    try:
        return _load()
    except Exception:  # noqa: BLE001 - whatever stops it (no home folder, a full disk, ...),
        return None  # the PyTorch step computes the same thing


class Kernels(NamedTuple):
    """The compiled functions for one dtype (``csrc/tabm.cpp`` documents their arguments)."""

    step: Any  # one training step: gradients of the members' mean loss; returns the loss sum
    mean_loss: Any  # the members' mean prediction's (row-weighted) sum of squared residuals


def kernels(dtype: torch.dtype) -> Kernels | None:
    """The compiled functions for ``dtype`` (float32 or float64) with their argument types,
    or None."""
    lib = library()
    if lib is None or dtype not in DTYPES:
        return None
    name, scalar = DTYPES[dtype]
    p, i = ctypes.c_void_p, ctypes.c_int
    step = getattr(lib, f"nnreg_tabm_step_{name}")
    step.argtypes = [i, i, i, i, i, p, p, p, p, scalar] + [p] * 19
    step.restype = scalar
    mean_loss = getattr(lib, f"nnreg_tabm_mean_loss_{name}")
    mean_loss.argtypes = [i, i, i, i, i, p, p, p, p] + [p] * 9
    mean_loss.restype = scalar
    return Kernels(step, mean_loss)


class Passes(NamedTuple):
    """Compiled passes of :class:`~nnreg.engine.FastTabM`'s PyTorch step (``csrc/shared.cpp``),
    for one dtype; the first argument of each is the number of threads.

    On a layer's ``(k, rows, width)`` block, with a bias per member (``(k, width)``,
    ``per_member`` 1) or shared (``(width,)``, 0), ``dropout_forward(threads, k, rows,
    width, Z, bias, per_member, A, *mask)`` writes ``A = act(Z + bias) * mask`` and
    overwrites Z with ``mask * act'(Z + bias)``; ``dropout_backward(threads, k, rows, width,
    G, Z, per_member, dbias)`` multiplies ``G`` by that in place and writes the bias's
    gradient. ``mask`` is ``(key, first, threshold, factor, activation)``: the mask is
    :class:`~nnreg.engine.kernels.CounterDropout`'s for ``key``, its units numbered from
    ``first``, and the activation's number is in :data:`DROPOUT_ACTIVATIONS`. With a
    one-output head on the layer, ``head_forward(threads, k, rows, width, Z, bias,
    per_member, head_weight, head_bias, out, *mask)`` writes the head's ``(k, rows)`` output
    and not A, and ``head_backward(threads, k, rows, width, G, Z, bias, per_member, dbias,
    head_weight, D, dhead_weight, *mask)`` writes ``G`` from the output's gradient ``D`` and
    the head weight's gradient too (A made again from Z).
    ``fold(threads, k, out, in, W, r, s, M)`` writes ``M = (s r^T) * W``; ``unfold(threads,
    k, out, in, W, r, s, dM, dW, dr, ds)`` writes the shared weight's and the adapters'
    gradients from dM."""

    dropout_forward: Any
    dropout_backward: Any
    head_forward: Any
    head_backward: Any
    fold: Any
    unfold: Any


# The activations csrc/shared.cpp computes with dropout, by its number for them.
DROPOUT_ACTIVATIONS = {"relu": 0, "silu": 1}


def passes(dtype: torch.dtype) -> Passes | None:
    """The compiled passes for ``dtype`` (float32 or float64), or None."""
    lib = library()
    if lib is None or dtype not in DTYPES:
        return None
    name, scalar = DTYPES[dtype]
    p, i, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    mask = [ctypes.c_uint64, n, i, scalar, i]  # key, first, threshold, factor, activation
    types = {
        "dropout_forward": [i, n, n, n, p, p, i, p, *mask],
        "dropout_backward": [i, n, n, n, p, p, i, p],
        "head_forward": [i, n, n, n, p, p, i, p, p, p, *mask],
        "head_backward": [i, n, n, n, p, p, p, i, p, p, p, p, *mask],
        "fold": [i, i, i, i, p, p, p, p],
        "unfold": [i, i, i, i, p, p, p, p, p, p, p],
    }
    functions = []
    for kind, argtypes in types.items():
        function = getattr(lib, f"nnreg_{kind}_{name}")
        function.argtypes, function.restype = argtypes, None
        functions.append(function)
    return Passes(*functions)


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _processor_flags() -> str:
    """What ``-march=native`` depends on: the processor's feature flags, where Linux says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _load() -> ctypes.CDLL | None:
    compiler = _compiler()
    if compiler is None:
        return None
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    sources = [source.read_bytes() for source in (*SOURCES, *HEADERS)]
    key = hashlib.sha256(
        b"\0".join(
            [*sources, version.encode(), " ".join(FLAGS).encode(), _processor_flags().encode()]
        )
    ).hexdigest()[:20]
    folder = cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _own(folder):
        return None  # another user could replace what it holds: never load code from it
    target = folder / f"tabm-{key}-{platform.machine()}.so"
    if not _intact(target):  # never compiled, or damaged (a cut copy, a crash, an edit)
        _compile(compiler, target)
        if not _intact(target):
            return None
    if not _own(target):
        return None
    lib = ctypes.CDLL(str(target))
    return lib if all(hasattr(lib, name) for name in SYMBOLS) else None


def _digest_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _intact(target: Path) -> bool:
    """Whether ``target`` is the library its compile wrote: its SHA-256 is the one recorded
    beside it then. Loading a damaged library can kill the process (SIGBUS), not raise."""
    try:
        recorded = _digest_file(target).read_text().strip()
        return hashlib.sha256(target.read_bytes()).hexdigest() == recorded
    except OSError:
        return False


def _own(path: Path) -> bool:
    """Whether ``path`` belongs to this user and no one else may write it."""
    info = path.stat()
    uid = getattr(os, "getuid", None)  # POSIX only
    mine = uid is None or info.st_uid == uid()
    return mine and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _compile(compiler: str, target: Path) -> None:
    """Compile the source into ``target`` and record its SHA-256 beside it. Both are written
    under names of this process's (:func:`nnreg.outputs.temporary_name`), flushed to disk and
    then renamed, so a process killed while compiling leaves no half-written library under
    the target's name (the next compile removes what it left), and two processes compiling at
    once each rename whole files."""
    digest = _digest_file(target)
    clean_stale(target)
    clean_stale(digest)
    partial, partial_digest = temporary_name(target), temporary_name(digest)
    try:
        for extra in ([OPENMP], []):
            done = subprocess.run(
                [compiler, *FLAGS, *extra, *map(str, SOURCES), "-o", str(partial)],
                capture_output=True,
                timeout=_COMPILE_TIMEOUT_S,
            )
            if done.returncode == 0:
                break
        else:
            raise OSError(
                f"{compiler} could not compile {[s.name for s in SOURCES]}: {done.stderr[-400:]!r}"
            )
        fsync(partial)
        partial_digest.write_text(hashlib.sha256(partial.read_bytes()).hexdigest() + "\n")
        fsync(partial_digest)
        os.replace(partial, target)
        os.replace(partial_digest, digest)
    finally:
        partial.unlink(missing_ok=True)
        partial_digest.unlink(missing_ok=True)


class NativeStep:
    """The compiled step's buffers and arguments for one batch size (``csrc/tabm.cpp``): the
    batch transposed and padded to whole 32-byte vectors, each member's activations, and
    pointers to the parameters' and gradients' views. Every pointer is fixed for the fit, so
    the arguments are made once; :meth:`load` copies each batch in."""

    def __init__(self, net: Any, rows: int) -> None:  # net: a FastTabM
        like, sizes, k = net.params, net.sizes, net.k
        lanes = 32 // like.element_size()
        padded = -(-rows // lanes) * lanes
        self.x = like.new_zeros(sizes[0], padded)  # padded rows stay zero
        self.y = like.new_zeros(rows)
        self.w = like.new_zeros(rows)  # a weighted batch's normalised row weights
        self.H = [like.new_zeros(k, w, padded) for w in sizes[1:]]
        self.threads = max(1, torch.get_num_threads())  # each thread has its own scratch
        self.D = like.new_zeros(self.threads, padded)
        self.G = [like.new_zeros(self.threads, max(sizes), padded) for _ in range(2)]
        self.losses = like.new_zeros(k)
        self.P = like.new_zeros(k, padded)  # each member's predictions (evaluation)
        layers = len(sizes) - 1
        v, g = net.view, net.grad
        expected = {f"{p}.{i}" for p in ("weights", "biases", "r", "s") for i in range(layers)}
        if set(v) != expected | {"head_weight", "head_bias"}:
            raise ValueError(f"the compiled step does not cover parameters {sorted(v)}")
        self._keep: list[object] = []

        def pointers(tensors: Sequence[torch.Tensor | None]) -> ctypes.Array[ctypes.c_void_p]:
            array = (ctypes.c_void_p * len(tensors))(*[address(t) for t in tensors])
            self._keep.append(array)
            return array

        def each(views: dict[str, torch.Tensor], name: str) -> ctypes.Array[ctypes.c_void_p]:
            return pointers([views[f"{name}.{i}"] for i in range(layers)])

        self._keep.append(sizes_array := (ctypes.c_int * len(sizes))(*sizes))
        batch = (k, padded, rows, layers, sizes_array, address(self.x), address(self.y))
        parameters = (
            *(each(v, "weights"), each(v, "biases"), each(v, "r"), each(v, "s")),
            *(address(v["head_weight"]), address(v["head_bias"])),
        )
        step = (
            *parameters,
            *(each(g, "weights"), each(g, "biases"), each(g, "r"), each(g, "s")),
            *(address(g["head_weight"]), address(g["head_bias"])),
            *(pointers(net._m), pointers(net._dm), pointers(self.H)),
            *(address(self.D), address(self.G[0]), address(self.G[1])),
            address(self.losses),
        )
        # d(loss)/d(residual) = slope * scale * residual (times the row's weight): without
        # weights the loss is a sum that FastTabM's factor 1 / (k * rows) makes a mean; the
        # weights are normalised (loss_scales) so that their loss is the mean itself.
        slope, w = net._kernel.slope, address(self.w)
        self.args = (*batch, None, slope / (k * rows), *step)
        self.weighted_args = (*batch, w, slope, *step)
        predictions = (*parameters, pointers(net._m), pointers(self.H), address(self.P))
        self.forward = (*batch, None, *predictions)
        self.weighted_forward = (*batch, w, *predictions)

    def call(self, function: Any, args: tuple[Any, ...]) -> float:
        """``function`` (a compiled one) on ``args``, on as many threads as PyTorch's setting
        allows now, but no more than this batch size's scratch was made for."""
        return float(function(min(torch.get_num_threads(), self.threads), *args))

    def load(self, X: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor | None) -> None:
        self.x[:, : X.shape[0]].copy_(X.t())
        self.y.copy_(Y.reshape(-1))
        if weights is not None:
            self.w.copy_(weights.reshape(-1))


def address(t: torch.Tensor | None) -> int:
    assert t is not None and t.is_contiguous()
    return t.data_ptr()
