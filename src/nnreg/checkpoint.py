"""Training checkpoints: the full training state in one safetensors file, hashed and tied to
the data and settings it was made from.

A checkpoint holds the trainer's tensors (weights, optimiser state, random-generator states)
and, as JSON metadata, its scalars, the SHA-256 of the tensors and a fingerprint of the run
(the training data and settings). It is untrusted input when read back: the header is
checked before anything is allocated, the tensors against their hash, and a resumed run
against the fingerprint, so that a flipped byte or changed data is refused with one line
instead of continuing to another result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import distributed
from .exceptions import ConfigError, DataError, ModelFileError
from .outputs import write_file_atomic
from .reading import read_file, read_json, safetensors_header

if TYPE_CHECKING:
    from .fitting import FitResult
    from .recipe import Recipe
    from .train import BatchSource, Trainer

__all__ = [
    "Checkpoints",
    "CHECKPOINT",
    "FORMAT",
    "attach_checkpoints",
    "check_fingerprint",
    "check_processes",
    "fingerprint",
    "is_checkpoint",
    "load_checkpoint",
    "run_fingerprint",
    "save_checkpoint",
    "tensors_digest",
]

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "nnreg-checkpoint"
# 2: the tensors' SHA-256 and the run's fingerprint are recorded; 3: the SHA-256 covers the
# metadata too (the epoch, the history, the number of processes), not only the tensors.
FORMAT_VERSION = 3


@dataclass(frozen=True)
class Checkpoints:
    """Where and how often a single-model fit writes its training state, and where a fit
    resumes from."""

    path: str | Path | None = None
    every: int = 0
    info: dict[str, Any] | None = None  # extra metadata, e.g. the command line's settings
    resume: str | Path | None = None


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_digest(tensors: Mapping[str, torch.Tensor], document: Mapping[str, Any]) -> str:
    """SHA-256 of the tensors and of the JSON metadata (but its own ``sha256``)."""
    h = hashlib.sha256(tensors_digest(tensors).encode())
    rest = {k: v for k, v in document.items() if k != "sha256"}
    h.update(json.dumps(rest, sort_keys=True).encode())
    return h.hexdigest()


def run_fingerprint(
    recipe: Recipe,
    result: FitResult,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | BatchSource,
) -> str:
    """What a checkpoint is tied to: the settings (but the device), the fitted preprocessing
    and the training rows (or, streamed, the row groups and how they are read)."""
    from .recipe import jsonable

    quiet = ("device", "verbose")  # where a run trains and what it prints change no step
    settings = {k: v for k, v in jsonable(recipe.params).items() if k not in quiet}
    if isinstance(data, tuple):
        rows: list[Any] = [t for t in data if t is not None]
    else:
        rows = [getattr(data, "describe", dict)()]
    pre = [result.preprocessor.to_dict(), result.y_scaler.to_dict()]
    return fingerprint([settings, *pre, *rows])


def fingerprint(parts: Iterable[Any]) -> str:
    """A SHA-256 of a run's data and settings: JSON-able parts, arrays and tensors."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous().numpy()
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype}|{part.shape}|".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def save_checkpoint(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Write a checkpoint atomically: the tensors, with the scalars, the tensors' hash and
    ``meta`` (its ``fingerprint`` included, if any) as JSON metadata."""
    from safetensors.torch import save_file

    document = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    document["sha256"] = checkpoint_digest(tensors, json.loads(json.dumps(document)))
    write_file_atomic(
        Path(path),
        lambda tmp: save_file(tensors, str(tmp), metadata={"nnreg": json.dumps(document)}),
    )


def _document(path: Path, data: bytes) -> dict[str, Any]:
    header = safetensors_header(data, path)
    raw = (header.get("__metadata__") or {}).get("nnreg")
    meta = read_json(raw.encode(), path) if isinstance(raw, str) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an nnreg checkpoint.")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path} is a checkpoint of a newer nnreg; upgrade nnreg to resume.")
    return meta


def is_checkpoint(path: Path) -> bool:
    """True when ``path`` is a regular file holding an nnreg checkpoint (header only)."""
    try:
        _document(path, read_file(path))
    except (ModelFileError, OSError):
        return False
    return True


def load_checkpoint(
    path: str | Path, expected_fingerprint: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its header, its
    tensors' hash and, given ``expected_fingerprint``, that it was made from the same data
    and settings. No code is ever executed."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"no checkpoint at {path}; was the run trained with checkpoints (checkpoint_every)?"
        )
    data = read_file(path)
    meta = _document(path, data)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is not a readable nnreg checkpoint ({exc}).") from exc
    version = meta.get("format_version", 1)
    digest = checkpoint_digest(tensors, meta) if version >= 3 else tensors_digest(tensors)
    if version >= 2 and digest != meta.get("sha256"):
        raise ModelFileError(
            f"{path} does not match the SHA-256 recorded in it: the checkpoint was changed or "
            "damaged; start the run anew."
        )
    check_fingerprint(path, meta, expected_fingerprint)
    return tensors, meta


def check_fingerprint(path: str | Path, meta: dict[str, Any], expected: str | None) -> None:
    """Refuse a checkpoint made from other data or settings than ``expected`` describes."""
    found = meta.get("fingerprint")
    if expected is not None and found is not None and found != expected:
        raise DataError(
            f"{path} was made from other data or settings than this run has (the training "
            "rows, their preprocessing or the network differ); resume with the same data and "
            "settings, or start a new run."
        )


def check_processes(path: str | Path, meta: dict[str, Any], processes: int) -> None:
    """Refuse to resume with another number of processes than the checkpoint's run had:
    which rows each process trains on, and so every step, depends on it."""
    saved = int(meta.get("processes", 1))
    if saved == processes:
        return
    how = "in one process (without --nproc)" if saved == 1 else f"with {saved} processes"
    launcher = "" if saved == 1 else f" (--nproc {saved}, or torchrun with {saved} in all)"
    raise ConfigError(
        f"{path} was written by a run of {saved} process{'es' if saved > 1 else ''} and this "
        f"one has {processes}; resume it {how}{launcher}: the rows each process trains on "
        "depend on their number."
    )


def attach_checkpoints(
    trainer: Trainer,
    resume: str | Path | None,
    checkpoint: str | Path | None,
    info: dict[str, Any] | None = None,
    fingerprint: str | None = None,
) -> Callable[[Trainer], None] | None:
    """Load the training state saved at ``resume`` into ``trainer`` (refused when its
    ``fingerprint`` is not this run's, or it was written by another number of processes);
    return the function that writes ``trainer``'s state (plus ``info`` and the fingerprint)
    to ``checkpoint``, or None without one.

    In a distributed run every process loads the checkpoint and takes its own random state
    from it; rank 0 writes it, with every process's random state (gathered), while the
    others wait until it is written. The weights and optimiser state are rank 0's: every
    process holds the same ones."""
    group = distributed.current()
    processes = 1 if group is None else group.world_size
    if resume is not None:
        tensors, meta = load_checkpoint(resume)
        check_processes(resume, meta, processes)
        check_fingerprint(resume, meta, fingerprint)
        if group is not None:
            tensors = _own_random_state(resume, tensors, group.rank)
        try:
            trainer.load_state_dict(tensors, meta["trainer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"{resume} does not fit this run's network and settings ({type(exc).__name__});"
                " resume with the settings and data it was made with, or start a new run."
            ) from exc
    if checkpoint is None:
        return None
    extra = {**(info or {}), "fingerprint": fingerprint, "processes": processes}

    def write(t: Trainer) -> None:
        tensors, meta = t.state_dict()
        if group is not None and "generator" in tensors:
            states = group.gather(tensors.pop("generator"))
            tensors |= {f"generator.rank{r}": state for r, state in enumerate(states)}
        distributed.on_rank0(
            group, lambda: save_checkpoint(checkpoint, tensors, {"trainer": meta, **extra})
        )

    return write


def _own_random_state(
    path: str | Path, tensors: dict[str, torch.Tensor], rank: int
) -> dict[str, torch.Tensor]:
    """A distributed checkpoint's tensors as process ``rank`` resumes them: its own
    generator state as ``generator``, the others' left out."""
    own = {k: v for k, v in tensors.items() if not k.startswith("generator.rank")}
    if f"generator.rank{rank}" not in tensors:
        raise ModelFileError(
            f"{path} holds no random state for the process of rank {rank}; it was not written "
            "by a run of this many processes. Start the run anew."
        )
    own["generator"] = tensors[f"generator.rank{rank}"]
    return own
