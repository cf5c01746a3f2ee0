"""The ``nnreg`` command: parses arguments, calls the public library, prints, sets exit codes.

Library modules are imported inside the commands, so ``nnreg --help`` never loads PyTorch.
Every error a user can cause is printed once, as ``error: ...``, with exit code 2 for usage
errors and 1 otherwise; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._version import __version__

if TYPE_CHECKING:
    import pandas as pd

    from .data import Table
    from .estimator import Regressor

# Command-line option -> Regressor parameter.
OPTION_TO_PARAM = {
    "epochs": "max_iter",
    "lr": "learning_rate_init",
    "hidden": "hidden_layer_sizes",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "activation": "activation",
    "loss": "loss",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "dropout": "dropout",
    "schedule": "learning_rate",
    "early_stopping": "early_stopping",
    "validation_fraction": "validation_fraction",
    "patience": "n_iter_no_change",
    "scaling": "scaling",
    "n_models": "n_models",
    "seed": "random_state",
    "device": "device",
}


def _parse_hidden(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers like 20,20, got {value!r}"
        ) from None
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"every hidden size must be at least 1, got {value!r}")
    return sizes


def _parse_batch(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None or value in ("auto", "full"):
        return value
    try:
        size = int(value)
    except ValueError:
        raise click.BadParameter(
            f"expected a positive integer, 'auto' or 'full', got {value!r}"
        ) from None
    if size < 1:
        raise click.BadParameter(f"must be at least 1, got {size}")
    return size


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nnreg")
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
def cli(debug: bool) -> None:
    """Train neural-network regressors on tables (CSV or Parquet) with PyTorch.

    Run `nnreg train` with no arguments to reproduce the seed experiment.
    """


@cli.command()
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--target", "-t", help="Target column (several: a,b).")
@click.option("--features", help="Feature columns, comma-separated (default: all but the target).")
@click.option(
    "--preset",
    type=click.Choice(["seed", "recommended"]),
    help="Base settings (default: seed without DATA, recommended with it).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Number of epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate.")
@click.option("--hidden", callback=_parse_hidden, help="Hidden layer sizes, e.g. 20,20.")
@click.option("--batch-size", callback=_parse_batch, help="Rows per step, 'auto' or 'full'.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]))
@click.option("--activation", type=click.Choice(["relu", "gelu", "silu", "tanh"]))
@click.option("--loss", type=click.Choice(["squared_error", "absolute_error", "huber"]))
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), help="SGD momentum.")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Weight decay.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Dropout rate.")
@click.option(
    "--schedule",
    type=click.Choice(["constant", "cosine", "plateau"]),
    help="Learning-rate schedule.",
)
@click.option(
    "--early-stopping/--no-early-stopping",
    default=None,
    help="Hold out --validation-fraction of the rows; stop when their loss stalls.",
)
@click.option("--validation-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--patience", type=click.IntRange(min=1), help="Epochs without improvement.")
@click.option("--scaling", type=click.Choice(["standard", "robust", "none"]))
@click.option(
    "--n-models",
    type=click.IntRange(min=1),
    help="Train an ensemble of N members at once (mean prediction, calibrated intervals).",
)
@click.option(
    "--impute",
    is_flag=True,
    default=None,
    help="Fill missing values (median + indicator; a category for text) instead of failing.",
)
@click.option(
    "--categorical",
    help="Columns to treat as categorical even if they hold numbers, comma-separated.",
)
@click.option(
    "--stream",
    is_flag=True,
    default=None,
    help="Read DATA (a Parquet file or folder) in chunks instead of loading it into memory.",
)
@click.option(
    "--shuffle-buffer",
    type=click.IntRange(min=0),
    help="With --stream: rows mixed across row groups (default 65536; 0: file order).",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    help="Random seed of the weights and batches (and the seed data). Default 0.",
)
@click.option("--device", help="Where to train: auto (CUDA if available), cpu, cuda, cuda:N.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train data-parallel in N processes on this machine (as torchrun would start them).",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    help="Model folder to write (default: runs/<name>/, a new one each run).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="TOML settings file, e.g. a model folder's config.toml; flags override it.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    help="Write the full training state to OUT/checkpoint.safetensors every N epochs.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    help="Continue the run whose folder holds a checkpoint (same data and settings).",
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    help="Print a progress line every N epochs (when not on a terminal).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the model folder's path.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def train(
    data: Path | None,
    target: str | None,
    features: str | None,
    categorical: str | None,
    impute: bool | None,
    preset: str | None,
    config_path: Path | None,
    out: Path | None,
    checkpoint_every: int | None,
    resume: Path | None,
    log_every: int | None,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train a model on DATA (CSV or Parquet) and write a model folder.

    Without DATA, runs the seed experiment: 100 rows of y = sin(x1) + x2**2, a 2-20-20-1
    ReLU network, full-batch SGD with learning rate 0.001 for 500 epochs.

    \b
    Examples:
      nnreg train
      nnreg train houses.csv --target price --epochs 100 --out runs/houses
      nnreg train --config runs/houses/config.toml
    """
    from .artifact import CHECKPOINT
    from .estimator import PRESETS, Regressor

    if (options["nproc"] or 1) > 1:  # this same command, as NPROC processes
        from .distributed import launch

        raise click.exceptions.Exit(launch(options["nproc"], _without_nproc(_argv())))
    file_settings = _read_config(config_path) if config_path else {}
    checkpoint_every = checkpoint_every or 0
    if resume is not None:
        from .artifact import load_checkpoint

        saved = load_checkpoint(resume / CHECKPOINT)[1]
        file_settings, preset = saved["settings"], saved["preset"]
        checkpoint_every = checkpoint_every or int(saved["checkpoint_every"])
        out = resume
    run = dict(file_settings.get("data", {}))
    if data is not None:
        run = {"path": str(data)}
    if target is not None:
        run["target"] = target.split(",")
    if features is not None:
        run["features"] = features.split(",")
    if categorical is not None:
        run["categorical"] = categorical.split(",")
    if options["seed"] is not None and run.get("source") == "seed_dataset":
        run["random_state"] = options["seed"]
    seed_experiment = "path" not in run

    params: dict[str, Any]
    if preset is not None or "model" not in file_settings:
        preset = preset or ("seed" if seed_experiment else "recommended")
        params = {**PRESETS[preset], "random_state": 0, **file_settings.get("model", {})}
    else:
        params = dict(file_settings["model"])
    for option, param in OPTION_TO_PARAM.items():
        if options[option] is not None:
            params[param] = options[option]
    if impute:
        params["missing"] = "impute"
    if "hidden_layer_sizes" in params:
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    stream, shuffle_buffer = options.pop("stream"), options.pop("shuffle_buffer")
    if stream or run.get("stream"):
        _train_streamed(
            run,
            params,
            preset,
            out,
            shuffle_buffer,
            checkpoint_every,
            resume,
            log_every,
            _Report(quiet=quiet, as_json=as_json),
        )
        return
    if shuffle_buffer is not None:
        raise click.UsageError("--shuffle-buffer works with --stream only.")

    if seed_experiment:
        frame, run, source = _seed_frame(run, params.get("random_state"))
    else:
        frame, source = _read_frame(Path(run["path"]))
        run["path"] = str(Path(run["path"]).resolve())
        if "target" not in run:
            raise click.UsageError("DATA needs --target COLUMN (the column to predict).")
    table = _table(frame, run["target"], run.get("features"), source, run.get("categorical"))
    run["features"] = table.feature_names

    y = _target_values(table)
    reg = Regressor(**params)
    out = out or _default_out(Path(run["path"]).stem if "path" in run else "seed")
    checkpointing = _checkpointing(out, checkpoint_every, run, params, preset)
    report = _Report(quiet=quiet, as_json=as_json)
    report.header(source, table, preset or "config", reg)
    group = _join_process_group(reg.device)
    if group is not None and report.show:
        report.out.print(
            f"ranks   {group.world_size} processes, data-parallel: each trains on "
            f"1/{group.world_size} of the training rows"
        )

    def fit(on_epoch: Any, stop: Any) -> None:
        reg.fit(
            table.features,
            y,
            callback=on_epoch,
            on_start=report.network,
            stop=stop,
            resume=None if resume is None else out / CHECKPOINT,
            **checkpointing,
        )

    _fit_and_save(reg, out, group, report, log_every, fit, lambda: _save(reg, out, run, table, y))


def _train_streamed(
    run: dict[str, Any],
    params: dict[str, Any],
    preset: str | None,
    out: Path | None,
    shuffle_buffer: int | None,
    checkpoint_every: int,
    resume: Path | None,
    log_every: int | None,
    report: _Report,
) -> None:
    """`nnreg train --stream`: train on Parquet data read in chunks (see nnreg.stream)."""
    from .artifact import CHECKPOINT
    from .distributed import TorchSync, refuse_unsupported
    from .estimator import Regressor
    from .stream import SHUFFLE_BUFFER, ParquetData, check_streamable, fit_parquet

    if "path" not in run:
        raise click.UsageError("--stream needs DATA: a Parquet file or a folder of them.")
    if "target" not in run:
        raise click.UsageError("DATA needs --target COLUMN (the column to predict).")
    data = ParquetData(run["path"], run["target"], run.get("features"), run.get("categorical"))
    if shuffle_buffer is None:
        shuffle_buffer = int(run.get("shuffle_buffer", SHUFFLE_BUFFER))
    run.update(
        path=str(Path(run["path"]).resolve()),
        features=data.feature_names,
        stream=True,
        shuffle_buffer=shuffle_buffer,
    )
    reg = Regressor(**params)
    check_streamable(reg)
    out = out or _default_out(Path(run["path"]).stem)
    checkpointing = _checkpointing(out, checkpoint_every, run, params, preset)
    report.data_header(
        data.source, data.n_rows, data.feature_names, data.target_names, preset or "config", reg
    )
    group = _join_process_group(reg.device)
    ranks: dict[str, Any] = {}
    if group is not None:
        refuse_unsupported(
            group,
            sample_weight=False,
            n_models=int(reg.n_models),
            checkpoint=bool(checkpointing) or resume is not None,
        )
        ranks = {"rank": group.rank, "world_size": group.world_size, "sync": TorchSync(group)}

    def fit(on_epoch: Any, stop: Any) -> None:
        fit_parquet(
            reg,
            data,
            shuffle_buffer=shuffle_buffer,
            callback=on_epoch,
            on_start=report.network,
            stop=stop,
            resume=None if resume is None else out / CHECKPOINT,
            **checkpointing,
            **ranks,
        )

    _fit_and_save(
        reg, out, group, report, log_every, fit, lambda: _save_streamed(reg, out, run, data, group)
    )


def _fit_and_save(
    reg: Regressor,
    out: Path,
    group: Any,
    report: _Report,
    log_every: int | None,
    fit: Callable[[Any, Any], None],
    save: Callable[[], tuple[dict[str, float], tuple[float, float]]],
) -> None:
    """Run ``fit(on_epoch, stop)`` with progress and SIGINT/SIGTERM handling, then ``save()``
    the model folder (after a divergence too, with the last finite weights), print the
    result, and exit 130/143 when a signal ended training."""
    from .exceptions import TrainingDivergedError

    started = time.perf_counter()
    # Processes of one run stop together or not at all: there, a signal simply ends them.
    stop, received = _stop_on_signals() if group is None else (None, {"previous": {}})
    try:
        with report.progress(reg, log_every) as on_epoch:
            fit(on_epoch, stop)
    except TrainingDivergedError as exc:
        if hasattr(reg, "model_"):  # a streamed run may fail before its network exists
            save()
        raise TrainingDivergedError(f"{exc} Model folder: {out}") from exc
    finally:
        _restore_signals(received)
    seconds = time.perf_counter() - started
    metrics, first = save()
    report.result(out, reg, metrics, first, seconds)
    _exit_if_interrupted(reg, received, out)


def _save_streamed(
    reg: Regressor, out: Path, run: dict[str, Any], data: Any, group: Any
) -> tuple[dict[str, float], tuple[float, float]]:
    """Score the training data in a second streamed pass and write the model folder (rank 0
    of a distributed run only; the others report NaN)."""
    from .distributed import on_rank0
    from .stream import evaluate_parquet

    nan = float("nan")
    found: dict[str, Any] = {
        "metrics": dict.fromkeys(("mse", "rmse", "mae", "r2"), nan),
        "first": (nan, nan),
    }

    def write() -> None:
        evaluation = evaluate_parquet(reg, data)
        found.update(metrics=evaluation.metrics, first=evaluation.first)
        reg.save(
            out,
            metrics={f"train_{k}": v for k, v in evaluation.metrics.items()},
            run_settings=run,
            target_names=data.target_names,
        )

    on_rank0(group, write)
    return found["metrics"], found["first"]


def _exit_if_interrupted(reg: Regressor, received: dict[str, Any], out: Path) -> None:
    if reg.interrupted_:
        signum = received["signal"]
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
        click.echo(
            f"interrupted by {name} after epoch {reg.n_iter_ - 1}; the model folder "
            f"{out} holds the best weights so far",
            err=True,
        )
        raise click.exceptions.Exit(128 + int(signum))


def _save(
    reg: Regressor, out: Path, run: dict[str, Any], table: Table, y: Any
) -> tuple[dict[str, float], tuple[float, float]]:
    from .metrics import regression_metrics

    pred = reg.predict(table.features)
    metrics = regression_metrics(y, pred)
    first = (float(pred.reshape(len(pred), -1)[0, 0]), float(y.reshape(len(y), -1)[0, 0]))
    from .distributed import current, on_rank0

    on_rank0(  # in a multi-process run only rank 0 writes
        current(),
        lambda: reg.save(
            out,
            metrics={f"train_{k}": v for k, v in metrics.items()},
            run_settings=run,
            target_names=table.target_names,
        ),
    )
    return metrics, first


def _join_process_group(device: str) -> Any:
    """In a process torchrun started as one of several: join its process group (left when
    the command ends) and return it; None otherwise."""
    from .distributed import join, leave

    group = join(device)
    if group is not None:
        click.get_current_context().call_on_close(leave)
    return group


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


def _checkpointing(
    out: Path, every: int, run: dict[str, Any], params: dict[str, Any], preset: str | None
) -> dict[str, Any]:
    """fit's checkpoint arguments; the run's settings travel in the file, for --resume."""
    if not every:
        return {}
    from .artifact import CHECKPOINT, MODEL_JSON
    from .recipe import jsonable as _jsonable

    if (
        out.exists()
        and any(out.iterdir())
        and not any((out / f).is_file() for f in (MODEL_JSON, CHECKPOINT))
    ):
        raise click.UsageError(
            f"{out} exists and is not an nnreg run folder; choose another --out."
        )
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "settings": {"data": run, "model": _jsonable(params)},
        "preset": preset,
        "checkpoint_every": every,
    }
    return {"checkpoint": out / CHECKPOINT, "checkpoint_every": every, "checkpoint_info": info}


def _stop_on_signals() -> tuple[Any, dict[str, Any]]:
    """An event that SIGINT and SIGTERM set, so training stops after the current step."""
    import threading

    stop = threading.Event()
    received: dict[str, Any] = {"previous": {}}

    def handler(signum: int, frame: Any) -> None:
        received["signal"] = signum
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        # Outside the main thread (e.g. embedded) signals cannot be caught: leave them be.
        with contextlib.suppress(ValueError):
            received["previous"][sig] = signal.signal(sig, handler)
    return stop, received


def _restore_signals(received: dict[str, Any]) -> None:
    for sig, previous in received["previous"].items():
        signal.signal(sig, previous)


def _seed_frame(run: dict[str, Any], seed: Any) -> tuple[pd.DataFrame, dict[str, Any], str]:
    from .data import seed_dataset

    n = int(run.get("n", 100))
    data_seed = int(run.get("random_state", seed if isinstance(seed, int) else 0))
    run = {
        "source": "seed_dataset",
        "n": n,
        "random_state": data_seed,
        "target": ["y"],
        "features": run.get("features", ["x1", "x2"]),
    }
    source = f"seed experiment: seed_dataset(n={n}, random_state={data_seed})"
    return seed_dataset(n=n, random_state=data_seed), run, source


def _read_frame(path: Path) -> tuple[pd.DataFrame, str]:
    from .data import read_table

    return read_table(path), str(path)


def _table(
    frame: pd.DataFrame, target: Any, features: Any, source: str, categorical: Any = None
) -> Table:
    from .data import table_from_frame
    from .exceptions import DataError

    for name in categorical or []:
        if name not in frame.columns:
            raise DataError(f"--categorical column {name!r} not found in {source}.")
        frame = frame.assign(**{name: frame[name].astype(str).astype("category")})
    return table_from_frame(frame, target=target, features=features, source=source)


def _target_values(table: Table) -> Any:
    """The target as a 1-D array for one column, else 2-D (rows, targets)."""
    assert table.y is not None  # tables built with a target always have y
    return table.y[:, 0] if table.y.shape[1] == 1 else table.y


def _default_out(stem: str) -> Path:
    base = Path("runs")
    candidate, k = base / stem, 2
    while candidate.exists():
        candidate, k = base / f"{stem}-{k}", k + 1
    return candidate


def _read_config(path: Path) -> dict[str, Any]:
    from .estimator import Regressor
    from .exceptions import ConfigError

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; check the path.")
    try:
        settings = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from exc
    allowed = {
        "data": {"path", "source", "n", "random_state", "target", "features", "categorical"}
        | {"stream", "shuffle_buffer"},
        "model": set(Regressor().get_params()),
    }
    for table, values in settings.items():
        if table not in allowed or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown table [{table}]; use [data] and [model].")
        unknown = sorted(set(values) - allowed[table])
        if unknown:
            raise ConfigError(
                f"{path}: unknown setting {unknown[0]!r} in [{table}]; allowed: "
                f"{', '.join(sorted(allowed[table]))}."
            )
    data = settings.get("data", {})
    for key in ("target", "features", "categorical"):
        if isinstance(data.get(key), str):
            data[key] = data[key].split(",")
    return settings


class _Report:
    """What `nnreg train` prints: a header, progress, and the result (or JSON)."""

    def __init__(self, quiet: bool, as_json: bool) -> None:
        from rich.console import Console

        self.quiet, self.as_json = quiet, as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        # Progress goes to stderr when stdout carries JSON.
        self.progress_console = self.err if as_json else self.out
        self.show = not (quiet or as_json)

    def header(self, source: str, table: Table, preset: str, reg: Regressor) -> None:
        self.data_header(
            source, len(table.features), table.feature_names, table.target_names, preset, reg
        )

    def data_header(
        self,
        source: str,
        rows: int,
        feature_names: list[str],
        target_names: list[str],
        preset: str,
        reg: Regressor,
    ) -> None:
        if not self.show:
            return
        batch = {"full": "full batch", "auto": "batch auto"}.get(
            str(reg.batch_size), f"batch {reg.batch_size}"
        )
        self.out.print(f"[bold]nnreg {__version__}[/bold] · train")
        self.out.print(
            f"data    {source}: {rows} rows, "
            f"features {', '.join(feature_names)} -> "
            f"target {', '.join(target_names)}"
        )
        self.out.print(
            f"preset  {preset}: {reg.optimizer}, lr {reg.learning_rate_init:g}, "
            f"{batch}, {reg.max_iter} epochs, {reg.loss} loss, seed {reg.random_state}"
        )

    def network(self, config: Any) -> None:
        """Told the network's architecture once the fit has built it (its input width
        depends on the fitted encoding of categorical columns)."""
        self.config = config

    def layers(self, reg: Regressor) -> None:
        """The layer table of the network the fit built."""
        from rich.table import Table as RichTable

        from .model import summary

        if self.show and getattr(self, "config", None) is not None:
            self.out.print(_layer_table(RichTable, summary(self.config)))

    def progress(self, reg: Regressor, log_every: int | None) -> Any:
        import contextlib

        epochs = reg.max_iter
        console = self.progress_console
        if self.quiet or (self.as_json and not console.is_terminal):
            return contextlib.nullcontext(None)
        if console.is_terminal and log_every is None:
            return _bar(console, epochs, lambda: self.layers(reg))
        every = log_every or max(1, epochs // 10)

        @contextlib.contextmanager
        def lines() -> Any:
            width = len(str(epochs))

            def on_epoch(epoch: int, loss: float, val: float | None) -> None:
                if epoch == 0:
                    self.layers(reg)
                if epoch % every == 0 or epoch == epochs - 1:
                    extra = "" if val is None else f"  val {val:.6g}"
                    console.print(f"epoch {epoch:>{width}}/{epochs}  loss {loss:.6g}{extra}")

            yield on_epoch

        return lines()

    def result(
        self,
        out: Path,
        reg: Regressor,
        metrics: dict[str, float],
        first: tuple[float, float],
        seconds: float,
    ) -> None:
        if self.as_json:
            summary = {
                "model_dir": str(out),
                "n_parameters": reg.n_parameters(),
                "epochs": reg.n_iter_,
                "final_train_loss": reg.loss_curve_[-1],
                "train_metrics": metrics,
                "first_observation": {"predicted": first[0], "actual": first[1]},
                "seconds": round(seconds, 4),
            }
            print(json.dumps(summary, indent=2))
            return
        if self.quiet:
            print(out)
            return
        self.out.print(
            f"final training MSE: {metrics['mse']:.6g} (RMSE {metrics['rmse']:.4g}, "
            f"R² {metrics['r2']:.4f}) after {reg.n_iter_} epochs in {seconds:.2f} s"
        )
        self.out.print(f"first observation: predicted {first[0]:.6g}, actual {first[1]:.6g}")
        self.out.print(f"model folder: {out}")


def _layer_table(table_cls: Any, rows: list[dict[str, Any]]) -> Any:
    t = table_cls(title=None, show_edge=False, pad_edge=False)
    for col, justify in (
        ("layer", "left"),
        ("shape", "right"),
        ("weights", "right"),
        ("biases", "right"),
        ("params", "right"),
    ):
        t.add_column(col, justify=justify)
    for r in rows:
        t.add_row(
            r["layer"],
            f"{r['in']} -> {r['out']}",
            str(r["weights"]),
            str(r["biases"]),
            str(r["params"]),
        )
    t.add_row(
        "total",
        "",
        str(sum(r["weights"] for r in rows)),
        str(sum(r["biases"] for r in rows)),
        str(sum(r["params"] for r in rows)),
        style="bold",
    )
    return t


def _bar(console: Any, epochs: int, before: Any) -> Any:
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def bar() -> Any:
        columns = (
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("train", total=epochs, loss="-")

            def on_epoch(epoch: int, loss: float, val: float | None) -> None:
                if epoch == 0:
                    before()
                shown = f"{loss:.6g}" if val is None else f"{loss:.6g}  val {val:.6g}"
                progress.update(task, completed=epoch + 1, loss=shown)

            yield on_epoch

    return bar()


def _parse_numbers(kind: type) -> Any:
    """A callback parsing comma-separated numbers of ``kind`` (int or float)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return [kind(v) for v in value.split(",")]
        except ValueError:
            noun = "integers" if kind is int else "numbers"
            raise click.BadParameter(
                f"expected comma-separated {noun} like {'0,1,2' if kind is int else '1e-3,3e-3'}"
                f", got {value!r}"
            ) from None

    return parse


def _parse_hidden_list(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    return [_parse_hidden(ctx, param, v) for v in value] or None


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="Target column (several: a,b).")
@click.option("--features", help="Feature columns, comma-separated (default: all but the target).")
@click.option("--categorical", help="Columns to treat as categorical, comma-separated.")
@click.option("--impute", is_flag=True, help="Fill missing values instead of failing.")
@click.option(
    "--preset",
    type=click.Choice(["seed", "recommended"]),
    default="recommended",
    show_default=True,
    help="Settings the sweep does not vary.",
)
@click.option(
    "--hidden",
    multiple=True,
    callback=_parse_hidden_list,
    help="Hidden sizes to try; repeat the option: --hidden 64,64 --hidden 128,128.",
)
@click.option("--lr", callback=_parse_numbers(float), help="Learning rates, e.g. 1e-3,3e-3.")
@click.option("--weight-decay", callback=_parse_numbers(float), help="Weight decays, e.g. 0,0.02.")
@click.option("--seeds", callback=_parse_numbers(int), help="Seeds, e.g. 0,1,2 (default 0).")
@click.option("--epochs", type=click.IntRange(min=1), help="Number of epochs.")
@click.option("--batch-size", callback=_parse_batch, help="Rows per step, 'auto' or 'full'.")
@click.option("--early-stopping", is_flag=True, default=None, help="Stop each model early.")
@click.option(
    "--validation-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of rows held out to rank the configurations (default 0.1).",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Save the best configuration, or the best N of its architecture as an ensemble.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    help="Model folder for the best model (default: runs/<name>-sweep/); sweep.csv goes in it.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the model folder's path.")
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON on stdout.")
def sweep(
    data: Path,
    target: str,
    features: str | None,
    categorical: str | None,
    impute: bool,
    preset: str,
    hidden: list[tuple[int, ...]] | None,
    lr: list[float] | None,
    weight_decay: list[float] | None,
    seeds: list[int] | None,
    epochs: int | None,
    batch_size: Any,
    early_stopping: bool | None,
    validation_fraction: float | None,
    top: int,
    out: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train a grid of configurations on DATA and keep the best by validation RMSE.

    Every combination of --hidden, --lr, --weight-decay and --seeds trains on the same rows
    and is scored on the same held-out rows; configurations with the same hidden sizes train
    together as one batch. Prints the ranking, writes it to OUT/sweep.csv, and saves the best
    model (or, with --top N, the best N of its architecture as an ensemble) in OUT.

    \b
    Examples:
      nnreg sweep houses.csv --target price --lr 1e-3,3e-3,1e-2 --weight-decay 0,0.02
      nnreg sweep houses.csv -t price --hidden 64,64 --hidden 128,128,128 --seeds 0,1,2 --top 3
    """
    from .artifact import write_file_atomic
    from .estimator import PRESETS, Regressor
    from .sweep import Sweep, grid

    params: dict[str, Any] = {**PRESETS[preset], "random_state": 0}
    for param, value in (
        ("max_iter", epochs),
        ("batch_size", batch_size),
        ("early_stopping", early_stopping),
        ("validation_fraction", validation_fraction),
    ):
        if value is not None:
            params[param] = value
    if impute:
        params["missing"] = "impute"
    base = Regressor(**params)
    trials = grid(
        hidden=hidden or [tuple(base.hidden_layer_sizes)],
        lr=lr or [base.learning_rate_init],
        weight_decay=weight_decay or [base.weight_decay],
        seeds=seeds or [0],
    )
    frame, source = _read_frame(data)
    table = _table(
        frame,
        target.split(","),
        features.split(",") if features else None,
        source,
        categorical.split(",") if categorical else None,
    )
    y = _target_values(table)
    runner = Sweep(base, trials)
    report = _Report(quiet=quiet, as_json=as_json)
    if report.show:
        n_arch = len({t.hidden for t in trials})
        report.out.print(f"[bold]nnreg {__version__}[/bold] · sweep")
        report.out.print(
            f"data    {source}: {len(table.features)} rows, features "
            f"{', '.join(table.feature_names)} -> target {', '.join(table.target_names)}"
        )
        report.out.print(
            f"grid    {len(trials)} configurations in {n_arch} batch{'es' if n_arch > 1 else ''}"
            f" (one per architecture), preset {preset}, {base.max_iter} epochs"
        )
    stop, received = _stop_on_signals()
    runner.stop = stop
    try:
        with _sweep_progress(report) as progress:
            runner.fit(table.features, y, progress=progress)
    finally:
        _restore_signals(received)
    ranking = runner.table()
    reg = runner.regressor(top=top)
    out = out or _default_out(f"{data.stem}-sweep")
    run = {
        "path": str(data.resolve()),
        "target": table.target_names,
        "features": table.feature_names,
    }
    if categorical:
        run["categorical"] = categorical.split(",")
    _save(reg, out, run, table, y)
    write_file_atomic(out / "sweep.csv", lambda tmp: ranking.to_csv(tmp, index=False))
    if as_json:
        print(
            json.dumps(
                {"model_dir": str(out), "ranking": ranking.to_dict(orient="records")}, indent=2
            )
        )
    elif quiet:
        print(out)
    else:
        report.out.print(_ranking_table(ranking))
        kept = "the best configuration" if top == 1 else f"the best {top} as an ensemble"
        report.out.print(f"model folder: {out} ({kept}); ranking: {out / 'sweep.csv'}")
    if runner.interrupted_:
        signum = received["signal"]
        click.echo(
            f"interrupted after {len(ranking)} of {len(trials)} configurations; "
            f"{out} holds the best so far",
            err=True,
        )
        raise click.exceptions.Exit(128 + int(signum))


SWEEP_ROWS_SHOWN = 20


def _sweep_progress(report: _Report) -> Any:
    import contextlib

    console = report.progress_console

    @contextlib.contextmanager
    def bar() -> Any:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("sweeping"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("sweep", total=None)

            def update(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            yield update

    if report.show and console.is_terminal:
        return bar()
    return contextlib.nullcontext(None)


def _ranking_table(ranking: pd.DataFrame) -> Any:
    from rich.table import Table as RichTable

    t = RichTable(show_edge=False, pad_edge=False)
    for col in ("rank", "hidden", "lr", "weight decay", "seed", "val RMSE", "val MAE", "epochs"):
        t.add_column(col, justify="left" if col == "hidden" else "right")
    for r in ranking.head(SWEEP_ROWS_SHOWN).itertuples():
        t.add_row(
            str(r.rank),
            r.hidden,
            f"{r.lr:g}",
            f"{r.weight_decay:g}",
            str(r.seed),
            f"{r.val_rmse:.5g}",
            f"{r.val_mae:.5g}",
            str(r.epochs),
        )
    if len(ranking) > SWEEP_ROWS_SHOWN:
        t.caption = f"{len(ranking) - SWEEP_ROWS_SHOWN} more rows in sweep.csv"
    return t


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--interval",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Also write <target>_lower and <target>_upper bounds with this coverage, e.g. 0.9.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help="File to write (.csv or .parquet); default: CSV on stdout.",
)
@click.option(
    "--stream",
    is_flag=True,
    help="Read DATA (a Parquet file or folder) and write the output in chunks; needs -o.",
)
def predict(
    model_dir: Path, data: Path, interval: float | None, output: Path | None, stream: bool
) -> None:
    """Predict DATA with the model in MODEL_DIR.

    Columns are chosen by the feature names saved with the model; other columns are ignored.
    The output has one column per target, named <target>_pred, in the rows' order; with
    --interval, also <target>_lower and <target>_upper.

    \b
    Examples:
      nnreg predict runs/houses new_houses.csv -o predictions.csv
      nnreg predict runs/houses-ensemble new_houses.csv --interval 0.9 -o predictions.csv
    """
    import pandas as pd

    if stream:
        if output is None:
            raise click.UsageError("--stream writes to a file: give -o/--output FILE.")
        _predict_streamed(model_dir, data, interval, output)
        return
    reg, table = _model_and_table(model_dir, data, with_target=False)
    rows = len(table.features)
    targets = reg.model_info_["targets"]
    columns = {
        f"{t}_pred": v
        for t, v in zip(targets, reg.predict(table.features).reshape(rows, -1).T, strict=True)
    }
    if interval is not None:
        lower, upper = reg.predict_interval(table.features, coverage=interval)
        for t, lo, hi in zip(
            targets, lower.reshape(rows, -1).T, upper.reshape(rows, -1).T, strict=True
        ):
            columns[f"{t}_lower"], columns[f"{t}_upper"] = lo, hi
    frame = pd.DataFrame(columns)
    if output is None:
        frame.to_csv(sys.stdout, index=False)
        return
    from .artifact import write_file_atomic

    if output.suffix.lower() in (".parquet", ".pq"):
        write_file_atomic(output, lambda p: frame.to_parquet(p, index=False))
    else:
        write_file_atomic(output, lambda p: frame.to_csv(p, index=False))
    click.echo(f"wrote {len(frame)} predictions to {output}", err=True)


def _predict_streamed(model_dir: Path, data: Path, interval: float | None, output: Path) -> None:
    from .estimator import load
    from .stream import ParquetData, predict_parquet

    reg = load(model_dir)
    features = [f["name"] for f in reg.model_info_["features"]]
    rows = predict_parquet(
        reg,
        ParquetData(data, features=features),
        output,
        target_names=reg.model_info_["targets"],
        interval=interval,
    )
    click.echo(f"wrote {rows} predictions to {output}", err=True)


def _model_and_table(model_dir: Path, data: Path, with_target: bool) -> tuple[Regressor, Table]:
    from .data import read_table, table_from_frame
    from .estimator import load

    reg = load(model_dir)
    frame = read_table(data)
    features = [f["name"] for f in reg.model_info_["features"]]
    table = table_from_frame(
        frame,
        target=reg.model_info_["targets"] if with_target else None,
        features=features,
        source=str(data),
    )
    return reg, table


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--stream", is_flag=True, help="Read DATA (a Parquet file or folder) in chunks.")
def evaluate(model_dir: Path, data: Path, as_json: bool, stream: bool) -> None:
    """Score the model in MODEL_DIR on DATA, which must hold the target column(s).

    Prints MSE, RMSE, MAE and R².

    \b
    Example:
      nnreg evaluate runs/houses test.csv --json
    """
    from .metrics import regression_metrics

    if stream:
        from .estimator import load
        from .stream import ParquetData, evaluate_parquet

        reg = load(model_dir)
        features = [f["name"] for f in reg.model_info_["features"]]
        result = evaluate_parquet(reg, ParquetData(data, reg.model_info_["targets"], features))
        metrics, rows = result.metrics, result.rows
    else:
        reg, table = _model_and_table(model_dir, data, with_target=True)
        metrics = regression_metrics(_target_values(table), reg.predict(table.features))
        rows = len(table.features)
    if as_json:
        click.echo(json.dumps({"rows": rows, **metrics}, indent=2))
        return
    click.echo(f"rows  {rows}")
    for key in ("mse", "rmse", "mae", "r2"):
        click.echo(f"{key.upper() if key != 'r2' else 'R²':<5} {metrics[key]:.6g}")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print model.json as it is.")
def info(model_dir: Path, as_json: bool) -> None:
    """Describe the model in MODEL_DIR: features, layers, settings, metrics.

    \b
    Example:
      nnreg info runs/seed
    """
    from rich.console import Console
    from rich.table import Table as RichTable

    from .artifact import load
    from .model import summary

    saved = load(model_dir)
    meta = saved.meta
    if as_json:
        click.echo(json.dumps({**meta, "architecture": saved.config.to_dict()}, indent=2))
        return
    out = Console(highlight=False, soft_wrap=True)
    out.print(
        f"[bold]{model_dir}[/bold]  (nnreg {meta['nnreg_version']}, "
        f"torch {meta['torch_version']}, created {meta['created']})"
    )
    out.print("features  " + ", ".join(f"{f['name']} ({f['dtype']})" for f in meta["features"]))
    out.print("targets   " + ", ".join(meta["targets"]))
    out.print(_layer_table(RichTable, summary(saved.config)))
    params = meta["training"]["params"]
    out.print("training  " + ", ".join(f"{k}={v}" for k, v in params.items()))
    out.print(f"epochs    {meta['training']['epochs_run']}")
    out.print("metrics   " + ", ".join(f"{k}={v:.6g}" for k, v in meta["metrics"].items()))


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    help="Folder for the PNG files (default: MODEL_DIR).",
)
def plot(model_dir: Path, data: Path | None, out_dir: Path | None) -> None:
    """Draw the loss curve of MODEL_DIR, and predicted against actual values on DATA.

    Writes loss.png, and pred_vs_actual.png when DATA (with the target) is given.

    \b
    Example:
      nnreg plot runs/houses test.csv --out-dir figures
    """
    from .artifact import load, write_file_atomic
    from .plot import loss_curve, predicted_vs_actual

    out_dir = out_dir or model_dir
    if data is not None:
        reg, table = _model_and_table(model_dir, data, with_target=True)
        saved_history = reg.history_.to_dict()
    else:
        saved_history = load(model_dir).history
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "loss.png"]
    write_file_atomic(written[0], lambda p: loss_curve(saved_history, p))
    if data is not None:
        pred = reg.predict(table.features)
        written.append(out_dir / "pred_vs_actual.png")
        write_file_atomic(
            written[1],
            lambda p: predicted_vs_actual(
                _target_values(table), pred, p, title=f"Predicted vs actual ({data.name})"
            ),
        )
    for path in written:
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--opset", type=click.IntRange(13, 25), default=17, show_default=True)
def export(model_dir: Path, output: Path, opset: int) -> None:
    """Write the model in MODEL_DIR as an ONNX file, preprocessing included (needs nnreg[onnx]).

    The graph takes `numeric` (float64) and `categorical` (string) inputs and returns
    `predictions` in the target's units; the file's metadata says how to feed it.

    \b
    Example:
      nnreg export runs/houses houses.onnx
    """
    from .export import export_onnx

    path = export_onnx(model_dir, output, opset=opset)
    click.echo(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nnreg`` command."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if not debug and _other_rank():
        _silence()  # one process of a multi-process run speaks for all: rank 0
    try:
        code = cli.main(
            args=args, prog_name="nnreg", standalone_mode=False, obj={"argv": list(args)}
        )
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        code = exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("error: interrupted", err=True)
        code = 130
    except Exception as exc:  # noqa: BLE001 - the one place errors become messages
        from .exceptions import ConfigError, NnregError

        if debug:
            traceback.print_exc()
        if isinstance(exc, NnregError):
            click.echo(f"error: {exc}", err=True)
            code = 2 if isinstance(exc, ConfigError) else 1
        else:
            click.echo(
                f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug "
                "for the traceback)",
                err=True,
            )
            code = 1
    if code and _other_rank():
        time.sleep(OTHER_RANK_GRACE)  # when rank 0 fails too, its message is the one shown
    sys.exit(code if isinstance(code, int) else 0)


OTHER_RANK_GRACE = 2.0  # seconds a failing rank other than 0 waits before it exits


def _other_rank() -> bool:
    """True in a process that torchrun started as one of several, other than rank 0."""
    return os.environ.get("RANK", "0") != "0" and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _silence() -> None:
    """Send this process's output, its file descriptors included, to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
