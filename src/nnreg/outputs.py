"""Writing outputs without losing anything: ownership, atomic replacement, clean-up.

nnreg replaces or deletes only what it can prove it wrote. :func:`check_replaceable` decides,
before any work starts, whether a destination may be replaced: a missing path, an empty
folder, or a folder that :mod:`nnreg.artifact` recognises as its own (``owned`` says how);
anything else, and any destination that holds a protected path such as the training data,
is refused with one :class:`~nnreg.exceptions.OutputError`.

Every output is first written under a temporary sibling name that says who made it,
``.NAME.nnreg-PID-TOKEN.tmp``, then moved into place in one step:

* a file by ``rename``, which replaces the old file atomically;
* a folder by exchanging it with the old one (Linux ``renameat2(RENAME_EXCHANGE)``, macOS
  ``renamex_np(RENAME_SWAP)``), so the name always points at a complete folder, old or new;
  where no exchange exists, the old folder is first renamed to ``.NAME.nnreg-PID-TOKEN.old``
  and the next run restores it if the process died between the two renames.

Temporaries whose process has died are removed by the next write to the same destination
(:func:`clean_stale`); those of a running process are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .exceptions import OutputError

__all__ = [
    "atomic_folder",
    "check_format",
    "check_output_file",
    "made_figure",
    "made_predictions",
    "check_replaceable",
    "clean_stale",
    "exchange",
    "fsync",
    "temporary_name",
    "write_file_atomic",
]

Owned = Callable[[Path], "str | None"]  # None: nnreg wrote this folder; else why not


def temporary_name(dest: Path, kind: str = "tmp") -> Path:
    """A sibling of ``dest`` that names this process: ``.NAME.nnreg-PID-TOKEN.KIND``."""
    dest = Path(os.path.abspath(dest))  # '.' and 'a/..' have a name and a parent only so
    return dest.parent / f".{dest.name}.nnreg-{os.getpid()}-{secrets.token_hex(4)}.{kind}"


def _pattern(dest: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(dest.name)}\.nnreg-(\d+)-[0-9a-f]{{8}}\.(tmp|old)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_stale(dest: Path) -> None:
    """Remove the temporaries of writes to ``dest`` whose process has died; put back an old
    folder that a dead process had moved aside and not replaced."""
    dest = Path(os.path.abspath(dest))
    if not dest.parent.is_dir():
        return
    pattern = _pattern(dest)
    for entry in sorted(dest.parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if match.group(2) == "old" and not os.path.lexists(dest):
            with contextlib.suppress(OSError):
                os.rename(entry, dest)  # the kill fell between the two renames: restore
                continue
        _remove(entry)


def _remove(path: Path) -> None:
    """Delete ``path`` without following a link out of it."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def check_replaceable(
    dest: Path, owned: Owned | None = None, protect: Iterable[str | Path] = ()
) -> None:
    """Refuse, with one :class:`OutputError`, a ``dest`` that nnreg may not replace: one that
    exists and is not an empty folder or one that ``owned`` vouches for (``owned(dest)``
    returns None for a folder nnreg wrote, else the reason it is not), or that is or holds
    one of the ``protect`` paths."""
    dest = Path(os.path.abspath(dest))
    here = Path.cwd()
    if dest == here or dest in here.parents:
        raise OutputError(
            f"{dest} is the current folder or holds it; choose another output folder."
        )
    for path in protect:
        inside = Path(path).resolve()
        if inside == dest.resolve() or dest.resolve() in inside.parents:
            raise OutputError(
                f"{dest} holds {path}, which this run reads; choose an output folder outside it."
            )
    if not os.path.lexists(dest):
        ancestor = dest.parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputError(f"cannot create {dest}: {ancestor} is a file, not a folder.")
        return
    if dest.is_symlink():
        raise OutputError(f"{dest} is a symbolic link; give the path of a folder to write.")
    if not dest.is_dir():
        raise OutputError(f"{dest} is a file, not a folder; choose another output path.")
    if not any(dest.iterdir()):
        return
    reason = "it holds files nnreg did not write" if owned is None else owned(dest)
    if reason is not None:
        raise OutputError(
            f"{dest} exists and is not an nnreg model folder ({reason}); nnreg replaces only "
            "folders it wrote: choose another output path, or move that folder away."
        )


@contextlib.contextmanager
def atomic_folder(
    dest: Path, owned: Owned | None = None, protect: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling folder; when the block ends it replaces ``dest`` in one
    step (see the module docstring), when it raises it vanishes. ``dest`` is checked by
    :func:`check_replaceable` first, and again just before it is replaced."""
    dest = Path(os.path.abspath(dest))
    check_replaceable(dest, owned, protect)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    tmp = temporary_name(dest)
    tmp.mkdir(mode=0o777)  # an ordinary folder, as the umask has it
    try:
        probe = temporary_name(tmp / "mode")
        mode = _create(probe)  # what a new file gets in this folder
        probe.unlink()
        yield tmp
        for f in tmp.iterdir():
            if f.is_file() and not f.is_symlink():
                f.chmod(mode)  # some writers (safetensors) make private files
            fsync(f)
        fsync(tmp)
        check_replaceable(dest, owned, protect)  # nothing foreign arrived meanwhile
        _replace_folder(tmp, dest)
        fsync(dest.parent)
    except BaseException:
        _remove(tmp)
        raise


def _replace_folder(tmp: Path, dest: Path) -> None:
    """Put the complete folder ``tmp`` at ``dest``; the old ``dest`` (if any) is deleted."""
    if not os.path.lexists(dest):
        os.rename(tmp, dest)
        return
    if exchange(tmp, dest):
        _remove(tmp)  # ``tmp`` now holds the old folder
        return
    old = temporary_name(dest, "old")
    os.rename(dest, old)  # a kill right here is repaired by the next run's clean_stale
    os.rename(tmp, dest)
    _remove(old)


def check_output_file(
    dest: Path, proof: Callable[[Path], bool] | None = None, protect: Iterable[str | Path] = ()
) -> None:
    """Refuse, with one :class:`OutputError`, an output file that nnreg may not write: one of
    the ``protect`` paths (what the command reads) or a file inside one of them, a file inside
    an nnreg model folder, or an existing file that ``proof`` does not show nnreg wrote."""
    dest = Path(os.path.abspath(dest))
    for path in protect:
        inside = Path(os.path.abspath(path))
        if dest == inside or inside in dest.parents:
            raise OutputError(f"{dest} is {path}, which this command reads; write elsewhere.")
    if (dest.parent / "model.json").is_file():
        from .artifact import owned

        if owned(dest.parent) is None:
            raise OutputError(
                f"{dest} is inside the model folder {dest.parent}, which holds only nnreg's "
                "own files; write elsewhere."
            )
    if os.path.lexists(dest) and not dest.is_dir() and (proof is None or not proof(dest)):
        raise OutputError(
            f"{dest} exists and nnreg did not write it; remove it first or choose another name."
        )


def check_format(dest: Path, suffixes: Sequence[str], option: str) -> None:
    """Refuse, with one :class:`OutputError`, a file name ``dest`` whose extension is not
    one of ``suffixes`` (those of the formats the command writes, any case), before any work
    starts: nnreg writes a format only under its own extension. ``option`` names the flag or
    argument that gave the name."""
    suffix = Path(dest).suffix
    if suffix.lower() in suffixes:
        return
    found = f"not {suffix}" if suffix else "and this name has no extension"
    listed = _listed(suffixes)
    raise OutputError(
        f"cannot write {dest}: {option} takes a {listed} file, {found}; give a name ending "
        f"in {listed}."
    )


def _listed(suffixes: Sequence[str]) -> str:
    return suffixes[0] if len(suffixes) == 1 else ", ".join(suffixes[:-1]) + " or " + suffixes[-1]


def made_predictions(path: Path, keep: Sequence[str] = ()) -> bool:
    """True for a predictions file nnreg writes: CSV or Parquet whose columns are the
    ``keep`` columns (``nnreg predict --keep``), then ``<target>_pred``, ``_lower`` and
    ``_upper`` ones only."""
    names: list[str]
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            names = list(pq.read_schema(path).names)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                names = f.readline(1 << 16).rstrip("\r\n").split(",")
    except Exception:  # noqa: BLE001 - unreadable: not provably nnreg's
        return False
    if names[: len(keep)] != list(keep):
        return False
    made = names[len(keep) :]
    return bool(made) and all(n.endswith(("_pred", "_lower", "_upper")) for n in made)


def made_figure(path: Path) -> bool:
    """True for a PNG that nnreg drew (it names itself as the PNG's software)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Software\x00nnreg" in head


def write_file_atomic(dest: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``dest``; the file gets
    the permissions any new file gets there (0o666 less the umask)."""
    dest = Path(dest)
    if dest.is_dir() and not dest.is_symlink():
        raise OutputError(f"{dest} is a folder; give the path of the file to write.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    tmp = temporary_name(dest)
    mode = _create(tmp)
    try:
        write(tmp)
        tmp.chmod(mode)  # a writer may have made the file anew, private (safetensors: 0600)
        fsync(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create(path: Path) -> int:
    """Create the empty file ``path`` as programs create files, asking for 0o666, and return
    the permissions it got: the umask (and a default ACL of the folder, if any) applied by
    the kernel. Read this way, not with ``os.umask``, which reads the umask only by setting
    it: a file another thread created between the two calls would get the wrong mode; and
    not once at import, which would miss a umask the program sets later."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; a symbolic link is left alone."""
    if path.is_symlink():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- exchanging two paths in one step ---------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS sys/stdio.h


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically; False where the system cannot (then
    nothing changed)."""
    if _LIBC is None:
        return False
    fa, fb = os.fsencode(a), os.fsencode(b)
    if sys.platform.startswith("linux") and hasattr(_LIBC, "renameat2"):
        result = _LIBC.renameat2(_AT_FDCWD, fa, _AT_FDCWD, fb, _RENAME_EXCHANGE)
    elif sys.platform == "darwin" and hasattr(_LIBC, "renamex_np"):
        result = _LIBC.renamex_np(fa, fb, _RENAME_SWAP)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this file system cannot exchange: fall back to two renames
    raise OSError(code, os.strerror(code), str(b))
