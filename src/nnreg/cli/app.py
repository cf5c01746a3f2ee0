"""The ``nnreg`` command group and its entry point, the one place errors become exit codes.

Every error a user can cause is printed once, as ``error: ...``: exit code 2 for usage errors
(a click usage error or a :class:`~nnreg.exceptions.ConfigError`), 1 for any other failure,
130 for Ctrl-C; ``--debug`` shows the traceback. Library messages name parameters; here they
also name the flags that set them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
import warnings
from types import FrameType
from typing import Any

import click

from .._version import __version__
from .folder import export, info, plot
from .predict import evaluate, importance, predict
from .report import report
from .serve import serve
from .sweep import sweep
from .train import train

OTHER_RANK_GRACE = 2.0  # seconds a failing rank other than 0 waits before it exits
# Library messages name parameters; on the command line, the flags that set them.
FLAG_HINTS = (
    (
        "make it categorical on purpose by storing it as pandas 'category' dtype",
        "make it categorical on purpose with --categorical COLUMN",
    ),
    (
        "predict_interval needs rows held out during fit: use",
        "--interval needs a model that calibrated on rows it held out, and this one did not: "
        "train it with",
    ),
    ("with checkpoints (checkpoint_every)", "with --checkpoint-every"),
    ("checkpoints and resuming are", "checkpoints and --resume are"),
    ("read it into memory instead of streaming", "read it into memory (without --stream)"),
)
# Rules the library states in Python's terms, in terms that serve a flag and a config file.
RULE_HINTS = {
    "hidden_layer_sizes": "layer sizes like --hidden 64,64 or hidden_layer_sizes = [64, 64] "
    "(none or []: a linear model); every hidden size must be at least 1",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nnreg")
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
def cli(debug: bool) -> None:
    """Train neural-network regressors on tables (CSV or Parquet) with PyTorch.

    Run `nnreg train` with no arguments to reproduce the seed experiment.
    """


for command in (train, predict, evaluate, importance, report, info, sweep, plot, export, serve):
    cli.add_command(command)


class Terminated(BaseException):
    """SIGTERM outside training: unwinds like Ctrl-C, so that temporaries are removed."""


_RECEIVED: list[int] = []  # the signals this run took; what fails after one, fails by it


_REDELIVERY = 0.05  # seconds until a signal that came at an unsafe moment is taken again
_PENDING: list[threading.Timer] = []  # those redeliveries; main cancels any left
# Code an exception must not cut short (by the file its frames run): an import, and pandas'
# CSV reader, whose worker threads parse a memory map that an unwinding read unmaps.
_UNSAFE = ("<frozen importlib", os.path.join("pandas", "io", "parsers", ""))


def _terminate(signum: int, frame: FrameType | None) -> None:
    _take(signum, frame, Terminated)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _take(signum, frame, KeyboardInterrupt)


def _take(signum: int, frame: FrameType | None, kind: type[BaseException]) -> None:
    """Record ``signum`` and unwind with ``kind``; but inside an import or a CSV read, let
    it finish and take the signal again moments later. An exception there is not safe:
    torch's import runs C++ that calls back into Python, and an exception in it ends the
    process in std::terminate ('nnreg train' killed 0.3 to 2.5 s in: SIGABRT, exit 134, 2
    of 250 runs); a CSV read that unwinds unmaps the file under its worker threads ('nnreg
    predict' on 90,000 rows killed 0.3 to 3 s in: SIGSEGV, exit 139, 2 of 370 runs); and an
    import cut short breaks its module (see :func:`_as_received`)."""
    _RECEIVED.append(signum)
    if not _unsafe(frame):
        raise kind
    _PENDING[:] = [t for t in _PENDING if not t.finished.is_set()]
    timer = threading.Timer(_REDELIVERY, os.kill, (os.getpid(), signum))
    timer.daemon = True
    _PENDING.append(timer)
    timer.start()


def _unsafe(frame: FrameType | None) -> bool:
    """True when ``frame`` runs inside code of :data:`_UNSAFE` (an import, a CSV read)."""
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _UNSAFE):
            return True
        frame = frame.f_back
    return False


def raise_if_received() -> None:
    """Unwind now for a signal whose exception was swallowed where it landed: Python only
    prints an exception raised in an import lock's callback or a ``__del__``, and some
    libraries catch everything. A run that went on after one must not train, serve or
    write: ``fit_and_save``, ``sweep`` and ``serve`` call this before they begin, and
    :func:`main` when the command returns."""
    if _RECEIVED:
        raise _signal_exception()


def _unraisable(hook: Any) -> Any:
    """``sys.unraisablehook`` that says nothing of our own signal's exception where Python
    could not raise it (the run ends by the signal anyway: :func:`raise_if_received`), and
    hands everything else to ``hook``."""

    def quiet(info: Any) -> None:
        if not (_RECEIVED and isinstance(info.exc_value, (KeyboardInterrupt, Terminated))):
            hook(info)

    return quiet


def _as_received(exc: BaseException) -> BaseException:
    """``exc``, or the signal it followed. A signal can break what was under way so that it
    fails later with another error (a module whose import it cut short raises RecursionError
    when next used); the run then ends as the signal's, with its exit code."""
    if not _RECEIVED or isinstance(exc, (KeyboardInterrupt, Terminated, click.exceptions.Abort)):
        return exc
    return _signal_exception()


def _signal_exception() -> BaseException:
    """The exception the last signal taken unwinds with (Ctrl-C's or SIGTERM's)."""
    return KeyboardInterrupt() if _RECEIVED[-1] == signal.SIGINT else Terminated()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nnreg`` command."""
    args = sys.argv[1:] if argv is None else argv
    debug, args = _debug_anywhere(list(args))
    if not debug and _other_rank():
        _silence()  # one process of a multi-process run speaks for all: rank 0
    _RECEIVED.clear()
    # A column named with characters matplotlib's font lacks (emoji, many scripts) is drawn
    # as boxes in the figures; the command says nothing about each missing glyph.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
    previous = _on_sigterm(_terminate)
    previous_int = _on_sigint()
    previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    try:
        if _under_launcher():  # started by --nproc: end with it
            from ..distributed import end_with_launcher

            end_with_launcher()
        code = cli.main(
            args=args, prog_name="nnreg", standalone_mode=False, obj={"argv": list(args)}
        )
        raise_if_received()  # swallowed on the way, but the run still ends as the signal's
    except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 - the one place
        # A SIGTERM now (under --nproc, the launcher ending every process after another one
        # failed) must not replace the exit code being decided with a traceback and code 1.
        _on_sigterm(signal.SIG_IGN)
        code = exit_code(_as_received(exc), debug)
    finally:
        for timer in _PENDING:  # the run has ended; a signal it deferred must not outlive it
            timer.cancel()
        _PENDING.clear()
        sys.unraisablehook = previous_hook
        _on_sigterm(previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
    if code and _other_rank():
        time.sleep(OTHER_RANK_GRACE)  # when rank 0 fails too, its message is the one shown
    sys.exit(code if isinstance(code, int) else 0)


def exit_code(exc: BaseException, debug: bool) -> int:
    """Print ``exc`` as one line, ``error: ...``, and return the exit code it means."""
    if isinstance(exc, click.ClickException):
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)):
        click.echo("error: interrupted", err=True)
        return 130
    if isinstance(exc, Terminated):
        if not _under_launcher():  # --nproc's launcher says why its processes ended
            click.echo("error: terminated by SIGTERM; nothing was left half-written", err=True)
        return 143
    if debug:
        traceback.print_exception(exc)
    from ..exceptions import ConfigError, NnregError, ProcessGroupError  # imports scikit-learn

    if isinstance(exc, ProcessGroupError) and not debug:
        from ..distributed import PEER_STOPPED_EXIT

        if _under_launcher():  # --nproc's launcher names the process that stopped first
            return PEER_STOPPED_EXIT
    if isinstance(exc, NnregError):
        usage = isinstance(exc, ConfigError)
        click.echo(f"error: {with_flags(with_rules(str(exc)) if usage else str(exc))}", err=True)
        return 2 if usage else 1
    known = known_failure(exc)
    if known is not None:
        click.echo(f"error: {known}", err=True)
        return 1
    click.echo(
        f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
        err=True,
    )
    return 1


def known_failure(exc: BaseException) -> str | None:
    """One sentence, problem and fix, for the failures of the machine rather than of nnreg:
    a full or read-only disk, a missing permission, memory that cannot be had."""
    import errno

    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" {exc.filename}" if exc.filename else ""
        fixes = {
            errno.ENOSPC: "free some space or write elsewhere (--out, -o)",
            errno.EDQUOT: "free some space or write elsewhere (--out, -o)",
            errno.EROFS: "the file system is read-only: write elsewhere (--out, -o)",
            errno.EACCES: "check the permissions, or write elsewhere (--out, -o)",
            errno.EPERM: "check the permissions, or write elsewhere (--out, -o)",
        }
        fix = fixes.get(exc.errno, "check the path and the disk")
        return f"cannot access{where}: {exc.strerror}; {fix}."
    memory = isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "allocate" in str(exc).lower()
    )
    if memory:
        return (
            "not enough memory for this run; use fewer or smaller hidden layers, a smaller "
            "--batch-size, fewer --n-models, or --stream for data larger than memory."
        )
    if isinstance(exc, RecursionError):
        return "a file nests too deeply to be read; it is not one nnreg wrote or reads."
    return None


def with_flags(message: str) -> str:
    """A library message with the command-line flags named where it names a parameter, and
    rows counted from 1 (the first row under a file's header), as a spreadsheet shows them."""
    from .vocabulary import flags_of
    from .vocabulary import with_flags as in_flags

    for said, flagged in FLAG_HINTS:
        message = message.replace(said, flagged)
    return in_flags(message, flags_of(cli.commands.values()), rows_in_file=True)


def _debug_anywhere(args: list[str]) -> tuple[bool, list[str]]:
    """(whether --debug is on the line, before any ``--``; the line with it first), so that
    ``nnreg train --debug`` works as ``nnreg --debug train`` does."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return False, args
    rest = [a for i, a in enumerate(args) if not (a == "--debug" and i < end)]
    return True, ["--debug", *rest]


def with_rules(message: str) -> str:
    """A parameter error with the rules of RULE_HINTS restated for the command line."""
    from ..recipe import PARAMETER_RULES

    for name, restated in RULE_HINTS.items():
        message = message.replace(
            f" must be {PARAMETER_RULES[name][1]}, got", f" must be {restated}, got"
        )
    return message


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM and return the previous one (None where signals
    cannot be handled: outside the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, TypeError):
        return None


def _on_sigint() -> Any:
    """Install :func:`_interrupt` for SIGINT where Python's own handler (KeyboardInterrupt)
    is, and return that one; None where SIGINT is ignored or someone else's."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None
    try:
        return signal.signal(signal.SIGINT, _interrupt)
    except ValueError:  # not the main thread
        return None


def _under_launcher() -> bool:
    """True in a process that ``--nproc`` started (``nnreg.distributed.under_launcher``,
    without importing torch)."""
    return os.environ.get("NNREG_LAUNCHER") == "1"


def _other_rank() -> bool:
    """True in a process that torchrun started as one of several, other than rank 0."""
    return os.environ.get("RANK", "0") != "0" and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _silence() -> None:
    """Send this process's output, its file descriptors included, to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
