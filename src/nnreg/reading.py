"""Reading files nnreg did not necessarily write: bounded, never through a link.

A model folder or a checkpoint is untrusted input. Every file is read here: opened without
following a symbolic link, refused unless it is a regular file no larger than its limit, and
read whole so that its hash and its contents are of the same bytes. JSON is parsed with its
nesting bounded, and a safetensors header is parsed (and its tensors' shapes and offsets
checked) before a single tensor is allocated.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .exceptions import ModelFileError

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_TEXT_BYTES",
    "read_file",
    "read_json",
    "safetensors_header",
    "safetensors_size",
    "sha256",
]

MAX_JSON_BYTES = 16 << 20  # model.json: settings, preprocessing, calibration scores
MAX_TEXT_BYTES = 64 << 20  # history.csv, config.toml
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(
    path: Path, limit: int | None = None, expect: Callable[[int, int], None] | None = None
) -> bytes:
    """The bytes of the regular file ``path``, opened without following a link; refused
    when larger than ``limit``, or by ``expect(fd, size)``, before the file is read."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if Path(path).is_symlink():
            raise ModelFileError(
                f"{path} is a symbolic link; nnreg reads only the files of the folder itself."
            ) from exc
        raise ModelFileError(f"cannot read {path}: {exc.strerror}.") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelFileError(f"{path} is not a regular file; the folder is corrupt.")
        if limit is not None and info.st_size > limit:
            raise ModelFileError(
                f"{path} is {info.st_size:,} bytes, more than the {limit:,} nnreg reads for "
                "it; the folder is corrupt or not nnreg's."
            )
        if expect is not None:
            expect(fd, info.st_size)
        with os.fdopen(os.dup(fd), "rb") as f:  # one buffer of the file's size, read once
            return f.read()
    finally:
        os.close(fd)


def read_json(data: bytes, where: Path) -> Any:
    """Parse JSON, refusing nesting deep enough to exhaust the parser's recursion."""
    try:
        text = data.decode("utf-8")
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{where} is not valid JSON ({exc}); the folder is corrupt.") from exc


def safetensors_size(where: Path) -> Callable[[int, int], None]:
    """An ``expect`` for :func:`read_file`: the file must be as long as its safetensors header
    says (checked from the header alone, so a padded or truncated file is never read)."""

    def check(fd: int, size: int) -> None:
        head = os.pread(fd, 8, 0)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or n > min(size - 8, MAX_JSON_BYTES):
            raise ModelFileError(f"{where} is not a safetensors file; it is corrupt.")
        header = read_json(os.pread(fd, n, 8), where)
        ends = [
            e["data_offsets"][1]
            for k, e in (header.items() if isinstance(header, dict) else [])
            if k != "__metadata__" and isinstance(e, dict) and len(e.get("data_offsets", [])) == 2
        ]
        if not all(isinstance(e, int) for e in ends) or size != 8 + n + max(ends, default=0):
            raise ModelFileError(
                f"{where} is {size:,} bytes, not the size its header describes; it is corrupt."
            )

    return check


def safetensors_header(data: bytes, where: Path) -> dict[str, Any]:
    """The header of a safetensors file held in ``data``: tensor name -> (dtype, shape),
    plus ``__metadata__``; every tensor's offsets are checked against its shape and the
    file's size, so that loading allocates no more than the file holds."""
    if len(data) < 8:
        raise ModelFileError(f"{where} is too short to be a safetensors file.")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ModelFileError(f"{where} has a header larger than the file; it is corrupt.")
    header = read_json(data[8 : 8 + n], where)
    if not isinstance(header, dict):
        raise ModelFileError(f"{where} has no safetensors header; it is corrupt.")
    body = len(data) - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        _check_entry(name, entry, body, where)
    return header


def _check_entry(name: str, entry: Any, body: int, where: Path) -> None:
    ok = isinstance(entry, dict) and entry.get("dtype") in DTYPE_BYTES
    shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
    ok = (
        ok
        and isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
    )
    if ok:
        assert isinstance(shape, list) and isinstance(offsets, list)
        size = math.prod(shape) * DTYPE_BYTES[entry["dtype"]]
        ok = 0 <= offsets[0] <= offsets[1] <= body and offsets[1] - offsets[0] == size
    if not ok:
        raise ModelFileError(f"{where}: tensor {name!r} has an invalid header entry; corrupt.")
