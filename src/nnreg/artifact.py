"""The model folder: save and load a trained model as safetensors + JSON, never pickle.

A folder holds::

    model.json          format version, nnreg/torch versions, architecture, preprocessing,
                        features and targets, training settings, metrics, SHA-256 of the weights
    weights.safetensors the network's tensors
    history.csv         one row per epoch
    loss.png            the loss curve
    config.toml         the fully resolved settings: ``nnreg train --config config.toml``

It is written into a temporary sibling folder and renamed into place, so a crash never leaves
a half-written model. Loading reads only JSON and safetensors, and checks the format version
and the weights' hash before anything else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .exceptions import ModelFileError
from .model import MLPConfig

__all__ = [
    "CHECKPOINT",
    "FORMAT_VERSION",
    "SavedModel",
    "atomic_folder",
    "load",
    "load_checkpoint",
    "save",
    "save_checkpoint",
    "write_file_atomic",
]

CHECKPOINT = "checkpoint.safetensors"

FORMAT = "nnreg-model"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
MODEL_JSON = "model.json"


@dataclass
class SavedModel:
    """What a model folder holds, as read back: everything but the files' bytes."""

    path: Path
    config: MLPConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    history: dict[str, list[Any]]


def save(
    path: str | Path,
    *,
    config: MLPConfig,
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    history: dict[str, list[Any]],
    settings: dict[str, Any],
) -> Path:
    """Write a model folder at ``path`` atomically; an existing model folder there is replaced."""
    from safetensors.torch import save_file

    from .plot import loss_curve

    path = Path(path)
    with atomic_folder(path) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS))
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "nnreg_version": __version__,
            "torch_version": torch.__version__.split("+")[0],
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "architecture": config.to_dict(),
            "n_parameters": sum(t.numel() for t in tensors.values()),
            **meta,
            "weights": {"file": WEIGHTS, "sha256": _sha256(tmp / WEIGHTS)},
        }
        (tmp / MODEL_JSON).write_text(json.dumps(document, indent=2) + "\n")
        _write_history(tmp / "history.csv", history)
        (tmp / "config.toml").write_text(to_toml(settings))
        loss_curve(history, tmp / "loss.png")
    return path


def load(path: str | Path) -> SavedModel:
    """Read a model folder, checking its format version and weights hash; never runs code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(
            f"model folder not found: {path}; give the folder `nnreg train` wrote."
        )
    doc_path = path / MODEL_JSON
    if not doc_path.is_file():
        raise ModelFileError(f"{path} is not an nnreg model folder: it has no {MODEL_JSON}.")
    try:
        doc = json.loads(doc_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{doc_path} is not valid JSON ({exc}); the folder is corrupt."
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{doc_path} is not an nnreg model description.")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version!r}, newer than this nnreg "
            f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade nnreg to load it."
        )
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ModelFileError(f"{path} has no {WEIGHTS}; the folder is incomplete.")
    expected = doc.get("weights", {}).get("sha256")
    if _sha256(weights) != expected:
        raise ModelFileError(
            f"{weights} does not match the SHA-256 recorded in {MODEL_JSON}: the weights were "
            "changed or corrupted; retrain or restore the folder."
        )
    try:
        state_dict = load_file(str(weights))
        config = MLPConfig.from_dict(doc["architecture"])
    except (SafetensorError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} is corrupt: {exc}") from exc
    history = _read_history(path / "history.csv")
    meta = {k: v for k, v in doc.items() if k not in ("architecture", "weights")}
    return SavedModel(path=path, config=config, state_dict=state_dict, meta=meta, history=history)


def save_checkpoint(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Write a training checkpoint atomically: safetensors, with the scalars as JSON metadata."""
    from safetensors.torch import save_file

    document = {"format": "nnreg-checkpoint", "format_version": FORMAT_VERSION, **meta}
    write_file_atomic(
        Path(path),
        lambda tmp: save_file(tensors, str(tmp), metadata={"nnreg": json.dumps(document)}),
    )


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (no code is ever executed)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"no checkpoint at {path}; was the run trained with checkpoints (checkpoint_every)?"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["nnreg"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable nnreg checkpoint ({exc}).") from exc
    if meta.get("format") != "nnreg-checkpoint" or meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} is not a checkpoint this nnreg can read.")
    return tensors, meta


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_history(path: Path, history: dict[str, list[Any]]) -> None:
    columns = list(history)
    lines = [",".join(columns)]
    lines += [
        ",".join(repr(history[c][i]) for c in columns) for i in range(len(history[columns[0]]))
    ]
    path.write_text("\n".join(lines) + "\n")


def _read_history(path: Path) -> dict[str, list[Any]]:
    if not path.is_file():
        return {"epoch": [], "train_loss": []}
    lines = path.read_text().splitlines()
    columns = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:] if line]
    return {
        c: [int(r[j]) if c == "epoch" else float(r[j]) for r in rows] for j, c in enumerate(columns)
    }


def to_toml(settings: dict[str, Any]) -> str:
    """A TOML document of tables of scalars and lists (None values are left out)."""
    out = ["# nnreg settings; repeat this run with: nnreg train --config config.toml"]
    for table, values in settings.items():
        out.append(f"\n[{table}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(out) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


@contextlib.contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``dest``, on error it vanishes.

    An existing ``dest`` is replaced only if it is empty or an nnreg model folder, so a typo
    in ``--out`` cannot delete unrelated files.
    """
    dest = Path(dest)
    ours = (MODEL_JSON, CHECKPOINT)  # a model folder, or a run that has only checkpointed
    if dest.exists() and not (
        dest.is_dir() and (not any(dest.iterdir()) or any((dest / f).is_file() for f in ours))
    ):
        raise ModelFileError(
            f"{dest} exists and is not an nnreg model folder; choose another output path."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a model folder is an ordinary folder
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync(f)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        _fsync(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_file_atomic(dest: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
