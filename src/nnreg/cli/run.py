"""Running a fit from the command line: signals stop it after the current step (exit 130 or
143), a diverging run still leaves its folder (exit 1), only rank 0 of a multi-process run
writes, and ``--nproc`` starts this same command as several processes."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..data import Table
    from ..estimator import Regressor
    from ..settings import RunSettings
    from .console import Report

# Training metrics, (predicted, actual) of row 0, and each --test file's metrics by name.
Scores = tuple[dict[str, float], tuple[float, float], dict[str, dict[str, float]]]
SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class SignalStop:
    """While the block runs, SIGINT and SIGTERM set ``event`` (so training stops after the
    current step) and are recorded in ``signal``; the previous handlers come back after.
    Outside the main thread (e.g. embedded), signals cannot be caught and are left be."""

    def __init__(self, enabled: bool = True) -> None:
        self.event = threading.Event() if enabled else None
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        if self.event is not None:
            self.event.set()

    def __enter__(self) -> SignalStop:
        if self.event is not None:
            for sig in SIGNAL_NAMES:
                with contextlib.suppress(ValueError):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def exit_if_stopped(self, stopped: bool, message: Callable[[str], str]) -> None:
        """When a signal stopped the work: print ``message(signal name)``, exit 128 + signal."""
        if stopped and self.signal is not None:
            click.echo(message(SIGNAL_NAMES.get(self.signal, str(self.signal))), err=True)
            raise click.exceptions.Exit(128 + int(self.signal))


def fit_and_save(
    reg: Regressor,
    out: Path,
    group: Any,
    report: Report,
    log_every: int | None,
    fit: Callable[[Any, Any], None],
    save: Callable[[threading.Event | None], Scores],
    log_to: str | None = None,
) -> None:
    """Run ``fit(on_epoch, stop)`` with progress, then ``save(stop)`` the model folder (after
    a divergence too, with the last finite weights), print the result, and exit 130/143 when
    a signal came. Signals are held until the folder is written: one during training ends it
    after the current step, one while scoring or saving lets the folder be completed."""
    from ..exceptions import TrainingDivergedError
    from .app import raise_if_received

    raise_if_received()  # a signal taken earlier ends the run before it starts a tracker
    started = time.perf_counter()
    log = _tracker(log_to, out, group)
    try:  # Processes of one run stop together or not at all: there, a signal ends them.
        with SignalStop(enabled=group is None) as stop:
            try:
                with report.progress(reg, log_every) as on_epoch:
                    fit(_logged(on_epoch, log), stop.event)
            except TrainingDivergedError as exc:
                if hasattr(reg, "model_"):  # a streamed run may fail before its network exists
                    save(stop.event)
                raise TrainingDivergedError(f"{exc} Model folder: {out}") from exc
            seconds = time.perf_counter() - started
            metrics, first, tests = save(stop.event)
    except BaseException:
        if log is not None:
            log.close("FAILED")  # the epochs logged before the failure stay readable
        raise
    if log is not None:
        final = {f"train_{k}": v for k, v in metrics.items()}
        final |= {f"validation_{k}": v for k, v in getattr(reg, "validation_metrics_", {}).items()}
        final |= {f"test_{k}": v for m in tests.values() for k, v in m.items()}
        ended = "KILLED" if stop.signal is not None else "FINISHED"  # a signal stopped it
        click.echo(
            log.finish(reg.history_.to_dict(), final, reg.get_params(), out, ended), err=True
        )
    report.result(out, reg, metrics, first, seconds, tests)
    stop.exit_if_stopped(
        stop.signal is not None,
        lambda name: (
            f"interrupted by {name} after epoch {reg.n_iter_ - 1}; the model folder "
            f"{out} holds the best weights so far"
            if reg.interrupted_
            else f"interrupted by {name} while saving; the model folder {out} is complete"
        ),
    )


def _tracker(log_to: str | None, out: Path, group: Any) -> Any:
    """The run's tracker (:mod:`nnreg.tracking`), on rank 0 only; None without --log."""
    if log_to is None or (group is not None and group.rank != 0):
        return None
    from ..tracking import tracker

    return tracker(log_to, out.name)


def _logged(on_epoch: Any, log: Any) -> Any:
    """The epoch callback that also sends each epoch to the tracker."""
    if log is None:
        return on_epoch

    def both(epoch: int, loss: float, val: float | None) -> None:
        if on_epoch is not None:
            on_epoch(epoch, loss, val)
        log.epoch(epoch, loss, val)

    return both


def save_model(
    reg: Regressor,
    out: Path,
    run: dict[str, Any],
    table: Table,
    y: Any,
    files: dict[str, Any] | None = None,
    tests: dict[str, Table] | None = None,
) -> Scores:
    """Score the training rows and the ``tests`` tables (name -> rows kept out of training;
    one, saved as ``test_*`` metrics), and write the model folder, with ``files`` in it (in a
    multi-process run, rank 0 alone writes)."""
    from ..distributed import current, on_rank0
    from ..metrics import regression_metrics
    from .tables import score

    pred = reg.predict(table.features)
    metrics = regression_metrics(y, pred)
    first = (float(pred.reshape(len(pred), -1)[0, 0]), float(y.reshape(len(y), -1)[0, 0]))
    scored = {name: score(reg, rows) for name, rows in (tests or {}).items()}
    saved = {"train_rows": float(len(y))} | {f"train_{k}": v for k, v in metrics.items()}
    saved |= {f"test_{k}": v for m in scored.values() for k, v in m.items()}
    on_rank0(
        current(),
        lambda: reg.save(
            out,
            metrics=saved,
            run_settings=run,
            target_names=table.target_names,
            files={**kept_checkpoint(reg, out), **(files or {})},
            protect=protected(run),
        ),
    )
    return metrics, first, scored


def kept_checkpoint(reg: Regressor, out: Path) -> dict[str, Any]:
    """An interrupted run keeps its last checkpoint in the folder it saves, so that
    ``--resume`` can still continue it; a finished run does not."""
    import shutil

    from ..checkpoint import CHECKPOINT

    source = out / CHECKPOINT
    if not (reg.interrupted_ and source.is_file()):
        return {}
    return {CHECKPOINT: lambda path: shutil.copyfile(source, path)}


def save_streamed(
    reg: Regressor,
    out: Path,
    run: dict[str, Any],
    data: Any,
    group: Any,
    stop: threading.Event | None = None,
) -> Scores:
    """Score the training data in a second streamed pass and write the model folder (rank 0
    of a distributed run only; the others report NaN). After a stop request the scoring pass
    is left out (or cut short), so that the folder is written at once."""
    from ..distributed import on_rank0
    from ..stream import evaluate_parquet

    nan = float("nan")
    found: dict[str, Any] = {
        "metrics": dict.fromkeys(("mse", "rmse", "mae", "r2"), nan),
        "first": (nan, nan),
    }

    def write() -> None:
        stopped = stop is not None and stop.is_set()
        evaluation = None if stopped else evaluate_parquet(reg, data, stop=stop)
        if evaluation is not None and evaluation.complete:
            found.update(metrics=evaluation.metrics, first=evaluation.first)
        reg.save(
            out,
            metrics={f"train_{k}": v for k, v in found["metrics"].items()},
            run_settings=run,
            target_names=data.target_names,
            files=kept_checkpoint(reg, out),
            protect=protected(run),
        )

    on_rank0(group, write)
    return found["metrics"], found["first"], {}


def prepare_output(out: Path, settings: RunSettings) -> dict[str, Any]:
    """Refuse, before any work, an output folder nnreg may not replace (one it did not
    write, or one that holds the data); return fit's checkpoint arguments (the run's
    settings travel in the checkpoint, for --resume)."""
    from ..artifact import CHECKPOINT

    check_output(out, settings.data)
    if not settings.checkpoint_every:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    return {
        "checkpoint": out / CHECKPOINT,
        "checkpoint_every": settings.checkpoint_every,
        "checkpoint_info": settings.checkpoint_info(),
    }


def check_output(out: Path, run: dict[str, Any]) -> None:
    """Refuse an output folder that nnreg did not write, or that holds the run's data."""
    from ..artifact import owned
    from ..outputs import check_replaceable

    check_replaceable(out, owned, protected(run))


def protected(run: dict[str, Any]) -> list[Path]:
    """What a run reads and its output must never replace: the data and the --test file."""
    return [Path(run[k]) for k in ("path", "test") if run.get(k)]


def join_process_group(device: str) -> Any:
    """In a process torchrun started as one of several: join its process group (left when
    the command ends) and return it; None otherwise."""
    from ..distributed import join, leave

    group = join(device)
    if group is not None:
        click.get_current_context().call_on_close(leave)
    return group


def relaunch(nproc: int) -> None:
    """Run this same command as ``nproc`` processes, and exit with their exit code."""
    from ..distributed import launch

    raise click.exceptions.Exit(launch(nproc, _without_nproc(_argv())))


def default_out(stem: str) -> Path:
    """runs/STEM, or runs/STEM-2, -3, ... when that exists: a new folder each run."""
    base = Path("runs")
    candidate, k = base / stem, 2
    while candidate.exists():
        candidate, k = base / f"{stem}-{k}", k + 1
    return candidate


def _argv() -> list[str]:
    """The command's arguments, as ``main`` received them."""
    obj = click.get_current_context().find_root().obj
    return list(obj["argv"]) if isinstance(obj, dict) and "argv" in obj else sys.argv[1:]


def _without_nproc(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept
