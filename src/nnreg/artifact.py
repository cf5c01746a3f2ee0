"""The model folder: save and load a trained model as safetensors + JSON, never pickle.

A folder holds::

    model.json          format, versions, architecture, preprocessing, features and targets,
                        training settings, metrics, and the manifest: the SHA-256 of every
                        other file of the folder
    weights.safetensors the network's tensors
    history.csv         one row per epoch
    loss.png            the loss curve
    config.toml         the fully resolved settings: ``nnreg train --config config.toml``

Writing goes through :mod:`nnreg.outputs`: the folder is built as a temporary sibling and
swapped into place in one step, and an existing folder is replaced only when :func:`owned`
proves nnreg wrote it (its ``model.json`` and a manifest that lists every file, each with its
hash unchanged, or nothing but an nnreg checkpoint of a run in progress).

Loading treats the folder as untrusted input (:mod:`nnreg.reading`): only regular files of the
folder itself are read, each within a size limit and against the manifest's hash; the
architecture in ``model.json`` must match the tensors' shapes in the weights file's header
before anything is allocated; no code from the folder ever runs.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .checkpoint import CHECKPOINT, is_checkpoint, load_checkpoint, save_checkpoint
from .embeddings import BIN_BUFFERS
from .exceptions import ModelFileError
from .model import MLPConfig, state_shapes
from .outputs import atomic_folder, write_file_atomic
from .reading import (
    MAX_JSON_BYTES,
    MAX_TEXT_BYTES,
    read_file,
    read_json,
    safetensors_size,
    sha256,
)
from .reading import safetensors_header as _header

__all__ = [
    "CHECKPOINT",
    "FORMAT_VERSION",
    "MODEL_JSON",
    "SavedModel",
    "add_files",
    "atomic_folder",
    "load",
    "load_checkpoint",
    "owned",
    "save",
    "save_checkpoint",
    "write_file_atomic",
]

FORMAT = "nnreg-model"
FORMAT_VERSION = 2  # 2: the manifest of every file's SHA-256
WEIGHTS = "weights.safetensors"
MODEL_JSON = "model.json"
HISTORY = "history.csv"
CONFIG = "config.toml"
LOSS_PNG = "loss.png"
V1_FILES = (WEIGHTS, HISTORY, CONFIG, LOSS_PNG)  # a version-1 folder's files (no manifest)
# What nnreg's own writes inside a folder leave while they run (outputs.temporary_name): a
# file named after one of the folder's files. Anything else, however named, is not nnreg's.
TEMPORARY = re.compile(
    r"\.(checkpoint\.safetensors|model\.json|[\w-]+\.png)\.nnreg-\d+-[0-9a-f]{8}\.tmp"
)

Writer = Callable[[Path], Any]  # writes a file at the path it is given


@dataclass
class SavedModel:
    """What a model folder holds, as read back: everything but the files' bytes."""

    path: Path
    config: MLPConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    history: dict[str, list[Any]]


# A piecewise embedding's bins: saved tensors, but fitted, not trained parameters.
_BINS = re.compile(rf"(^|\.)embedding\.({'|'.join(BIN_BUFFERS)})$")


def save(
    path: str | Path,
    *,
    config: MLPConfig,
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any],
    history: dict[str, list[Any]],
    settings: dict[str, Any],
    extra: dict[str, Writer] | None = None,
    protect: Iterable[str | Path] = (),
) -> Path:
    """Write a model folder at ``path`` in one step; ``extra`` files (name -> writer) join
    it and its manifest. An existing folder is replaced only if nnreg wrote it, and never
    when it holds a ``protect`` path."""
    from safetensors.torch import save_file

    from .plot import loss_curve

    path = Path(path)
    with atomic_folder(path, owned, protect) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS))
        _write_history(tmp / HISTORY, history)
        (tmp / CONFIG).write_text(to_toml(settings), encoding="utf-8")
        loss_curve(history, tmp / LOSS_PNG, **loss_labels(meta))
        for name, write in (extra or {}).items():
            write(tmp / name)
        files = {f.name: sha256(read_file(f)) for f in sorted(tmp.iterdir())}
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "nnreg_version": __version__,
            "torch_version": torch.__version__.split("+")[0],
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "architecture": config.to_dict(),
            "n_parameters": sum(t.numel() for k, t in tensors.items() if not _BINS.search(k)),
            **meta,
            "weights": {"file": WEIGHTS, "sha256": files[WEIGHTS]},
            "files": files,
        }
        _write_json(tmp / MODEL_JSON, document)
    return path


def loss_labels(meta: dict[str, Any]) -> dict[str, Any]:
    """What the loss figure of a model with this metadata marks and says: the epoch its
    weights come from, and the loss and units it was trained on."""
    training = meta.get("training") or {}
    params = training.get("params") or {}
    loss = str(params.get("loss", "squared_error")).replace("_", " ")
    targets = meta.get("targets") or ["y"]
    units = "standardised target" if params.get("scale_target", True) else ", ".join(targets)
    best = training.get("best_epoch")
    return {"best_epoch": best if isinstance(best, int) else None, "ylabel": f"{loss} ({units})"}


def _write_json(path: Path, document: dict[str, Any]) -> None:
    """``document`` as strict JSON: a metric that is not a finite number (R² of one row, an
    infinite error) is written as null, which :func:`load` reads back as NaN."""
    if isinstance(document.get("metrics"), dict):
        document = {
            **document,
            "metrics": {k: _finite_or_none(v) for k, v in document["metrics"].items()},
        }
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def add_files(folder: str | Path, files: dict[str, Writer]) -> None:
    """Write ``files`` (name -> writer) into the model folder ``folder`` (each atomically)
    and record them in its manifest, so that the folder stays one nnreg can replace."""
    folder = Path(folder)
    reason = owned(folder)
    if reason is not None:
        raise ModelFileError(f"{folder} is not an nnreg model folder ({reason}).")
    document = _document(folder)
    manifest = _manifest(document)
    if any(n in (MODEL_JSON, WEIGHTS) or "/" in n or n.startswith(".") for n in files):
        raise ModelFileError("a model folder's own files cannot be replaced that way.")
    for name, write in files.items():
        write_file_atomic(folder / name, write)
        manifest[name] = sha256(read_file(folder / name))
    if document.get("format_version") == 1:
        document["format_version"] = 2  # a version-1 folder gains its manifest
        for name in V1_FILES:
            if name not in manifest and (folder / name).is_file():
                manifest[name] = sha256(read_file(folder / name))
    document["files"] = dict(sorted(manifest.items()))
    write_file_atomic(folder / MODEL_JSON, lambda tmp: _write_json(tmp, document))


def owned(folder: Path) -> str | None:
    """None when nnreg wrote ``folder`` (see the module docstring), else why it cannot tell."""
    names = {p.name for p in Path(folder).iterdir() if not _temporary(p)}
    if MODEL_JSON not in names:
        if names == {CHECKPOINT} and is_checkpoint(folder / CHECKPOINT):
            return None  # a run that has only checkpointed so far
        return f"it has no {MODEL_JSON} written by nnreg"
    try:
        manifest = _manifest(_document(folder))
    except ModelFileError:
        return f"its {MODEL_JSON} is not an nnreg model description"
    for name in sorted(names - {MODEL_JSON}):
        path = folder / name
        if name == CHECKPOINT and is_checkpoint(path):
            continue
        if name not in manifest:
            return f"{name} is not one of its files"
        if path.is_symlink() or not path.is_file():
            return f"{name} is not a file nnreg wrote"
        expected = manifest[name]
        if expected is not None and sha256(read_file(path)) != expected:
            return f"{name} was changed after nnreg wrote it"
    return None


def _temporary(path: Path) -> bool:
    """A temporary file that one of nnreg's writes into the folder leaves while it runs."""
    return bool(TEMPORARY.fullmatch(path.name)) and path.is_file() and not path.is_symlink()


def _document(path: Path) -> dict[str, Any]:
    """``model.json``, read within its limit and checked to be an nnreg model description
    of a format version this nnreg reads."""
    doc_path = path / MODEL_JSON
    if not doc_path.is_file():
        raise ModelFileError(f"{path} is not an nnreg model folder: it has no {MODEL_JSON}.")
    doc = read_json(read_file(doc_path, MAX_JSON_BYTES), doc_path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{doc_path} is not an nnreg model description.")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version!r}, newer than this nnreg "
            f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade nnreg to load it."
        )
    return doc


def _manifest(doc: dict[str, Any]) -> dict[str, str | None]:
    """File name -> SHA-256 (None: a version-1 file that has no hash)."""
    if doc["format_version"] >= 2:
        files = doc.get("files")
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise ModelFileError(f"the manifest in {MODEL_JSON} is not a list of file hashes.")
        return dict(files)
    weights = doc.get("weights")
    digest = weights.get("sha256") if isinstance(weights, dict) else None
    return {**dict.fromkeys(V1_FILES), WEIGHTS: digest if isinstance(digest, str) else ""}


def load(path: str | Path, *, history: bool = True) -> SavedModel:
    """Read a model folder, checking its format, its files against their hashes and the
    architecture against the weights; never runs code. ``history=False`` leaves
    ``history.csv`` unread (prediction does not need it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(
            f"model folder not found: {path}; give the folder `nnreg train` wrote."
        )
    doc = _document(path)
    manifest = _manifest(doc)
    weights = path / WEIGHTS
    data = _checked(path, WEIGHTS, manifest, limit=None, expect=safetensors_size(weights))
    expected = (doc.get("weights") or {}).get("sha256")
    if sha256(data) != expected:
        raise ModelFileError(
            f"{weights} does not match the SHA-256 recorded in {MODEL_JSON}: the weights were "
            "changed or corrupted; retrain or restore the folder."
        )
    config = _config(doc, path)
    _check_shapes(_header(data, weights), config, _n_models(doc, path), path)
    try:
        state_dict = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{weights} is corrupt: {exc}") from exc
    hist = _read_history(path, manifest) if history else {"epoch": [], "train_loss": []}
    meta = {k: v for k, v in doc.items() if k not in ("architecture", "weights", "files")}
    if isinstance(meta.get("metrics"), dict):  # null: a metric that was not a finite number
        meta["metrics"] = {k: math.nan if v is None else v for k, v in meta["metrics"].items()}
    meta["weights_sha256"] = expected  # checked above: the hash of the weights in use
    return SavedModel(path=path, config=config, state_dict=state_dict, meta=meta, history=hist)


def _checked(
    folder: Path,
    name: str,
    manifest: dict[str, str | None],
    limit: int | None,
    expect: Any = None,
) -> bytes:
    """The bytes of ``folder/name``, which must match the manifest's hash."""
    path = folder / name
    if name not in manifest:
        raise ModelFileError(f"{path} is not listed in {MODEL_JSON}; the folder is corrupt.")
    if not path.exists() and not path.is_symlink():
        raise ModelFileError(f"{folder} has no {name}; the folder is incomplete.")
    data = read_file(path, limit, expect)
    expected = manifest[name]
    if expected is not None and name != WEIGHTS and sha256(data) != expected:
        raise ModelFileError(
            f"{path} does not match the SHA-256 recorded in {MODEL_JSON}: it was changed or "
            "damaged; restore the folder or retrain."
        )
    return data


def _config(doc: dict[str, Any], path: Path) -> MLPConfig:
    try:
        return MLPConfig.from_dict(doc["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}/{MODEL_JSON} has an invalid architecture ({exc}).") from exc


def _n_models(doc: dict[str, Any], path: Path) -> int:
    n = doc.get("n_models", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ModelFileError(f"{path}/{MODEL_JSON} has an invalid n_models ({n!r}).")
    return n


def _check_shapes(header: dict[str, Any], config: MLPConfig, n_models: int, path: Path) -> None:
    """The weights file must hold exactly the tensors the architecture describes; the
    tensors are counted before their shapes are listed, so no absurd size is ever built."""
    found = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    if config.ensemble != "none":  # one network holds the members
        n_models = 1
    count = n_models * len(state_shapes(config))  # one network's keys: at most ~2 per layer
    expected = state_shapes(config, n_models) if count == len(found) else {}
    if not expected or any(found.get(k) != s for k, s in expected.items()):
        wrong = sorted(k for k in expected if found.get(k) != expected[k])
        what = f"e.g. {wrong[0]}" if wrong else f"{len(found)} tensors for {count}"
        raise ModelFileError(
            f"{path}: the weights do not fit the architecture in {MODEL_JSON} ({what}); the "
            "folder is corrupt or was edited."
        )


MAX_HISTORY_BYTES = min(MAX_TEXT_BYTES, 16 << 20)  # about 250,000 epochs


def _read_history(path: Path, manifest: dict[str, str | None]) -> dict[str, list[Any]]:
    if HISTORY not in manifest or not (path / HISTORY).exists():
        return {"epoch": [], "train_loss": []}
    text = _checked(path, HISTORY, manifest, MAX_HISTORY_BYTES).decode("utf-8", "replace")
    lines = text.splitlines()
    columns = lines[0].split(",") if lines else []
    if not columns or columns[0] != "epoch" or "train_loss" not in columns:
        raise ModelFileError(f"{path / HISTORY} is not an nnreg history; the folder is corrupt.")
    out: dict[str, list[Any]] = {c: [] for c in columns}
    for number, line in enumerate(lines[1:], start=2):
        values = line.split(",")
        try:
            if len(values) != len(columns):
                raise ValueError
            for c, v in zip(columns, values, strict=True):
                out[c].append(int(v) if c == "epoch" else float(v))
        except ValueError:  # the line itself is not quoted: it may be anything
            raise ModelFileError(
                f"{path / HISTORY} line {number} is not a row of numbers; the folder is corrupt."
            ) from None
    return out


def _write_history(path: Path, history: dict[str, list[Any]]) -> None:
    columns = list(history)
    lines = [",".join(columns)]
    lines += [
        ",".join(repr(history[c][i]) for c in columns) for i in range(len(history[columns[0]]))
    ]
    path.write_text("\n".join(lines) + "\n")


def to_toml(settings: dict[str, Any]) -> str:
    """A TOML document of tables of scalars and lists (None values are left out); every
    string, a column name from the data included, is written so that it reads back equal."""
    out = ["# nnreg settings; repeat this run with: nnreg train --config config.toml"]
    for table, values in settings.items():
        out.append(f"\n[{table}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(out) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return "nan" if v != v else ("inf" if v > 0 else "-inf")
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, everything
    else (emoji included) as it is; a lone surrogate, which no TOML file can hold, as U+FFFD."""
    out = []
    for ch in s:
        code = ord(ch)
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
