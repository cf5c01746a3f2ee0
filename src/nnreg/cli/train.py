"""`nnreg train`: fit a model on a file, a folder of Parquet files or the seed data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import options
from .console import Report
from .run import (
    default_out,
    fit_and_save,
    join_process_group,
    prepare_output,
    relaunch,
    save_model,
    save_streamed,
)
from .tables import (
    DEFAULT_HOLDOUT,
    holdout_share,
    score,
    split_table,
    target_values,
    test_table,
    training_table,
)

if TYPE_CHECKING:
    from ..data import Table
    from ..estimator import Regressor
    from ..settings import RunSettings


@click.command()
@click.argument("data", required=False, type=click.Path(path_type=Path))
@options.columns()
@click.option(
    "--test",
    type=click.Path(path_type=Path),
    help="A file of rows kept out of training, scored after it (then no rows of DATA are "
    "held out).",
)
@click.option(
    "--holdout",
    type=float,
    help="Share of DATA's rows held out of training and scored after it, in [0, 1) "
    f"(default {DEFAULT_HOLDOUT} for a single model; an ensemble or --early-stopping holds "
    "out its own rows; 0 trains on every row).",
)
@click.option(
    "--stream",
    is_flag=True,
    default=None,
    help="Read DATA (a Parquet file or folder) in chunks instead of loading it into memory.",
)
@click.option(
    "--shuffle-buffer",
    type=int,
    help="With --stream: rows mixed across row groups (default 65536; 0: file order).",
)
@options.preset(help="Base settings (default: seed without DATA, recommended with it).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="TOML settings file, e.g. a model folder's config.toml; flags override it.",
)
@options.estimator_parameters()
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train data-parallel in N processes on this machine (as torchrun would start them).",
)
@click.option(
    "--checkpoint-every",
    type=int,
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
@click.option(
    "--log",
    "log_to",
    metavar="tensorboard[:DIR]",
    help="Also log the run for TensorBoard, under DIR (default tensorboard/); needs "
    "nnreg[tensorboard].",
)
@options.outputs(
    folder="Model folder to write (default: runs/<name>/, a new one each run).",
    as_json="Print a JSON summary on stdout.",
)
def train(
    data: Path | None,
    stream: bool | None,
    shuffle_buffer: int | None,
    preset: str | None,
    config_path: Path | None,
    nproc: int | None,
    checkpoint_every: int | None,
    resume: Path | None,
    log_every: int | None,
    log_to: str | None,
    out: Path | None,
    quiet: bool,
    as_json: bool,
    **params: Any,
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
    from ..settings import load_settings

    if nproc is not None and nproc > 1:  # this same command, as NPROC processes
        relaunch(nproc)
    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise click.UsageError(
            "--resume continues the run in its own folder; leave out --out (or give that folder)."
        )
    columns = options.data_settings(data, params)
    settings = load_settings(
        preset=preset,
        config=config_path,
        resume=resume,
        params=params,
        data={**columns, "stream": stream, "shuffle_buffer": shuffle_buffer},
        checkpoint_every=checkpoint_every,
        label=options.flag_label(click.get_current_context().command),
    )
    if shuffle_buffer is not None and not settings.stream:
        raise click.UsageError("--shuffle-buffer works with --stream only.")
    in_memory = ("test", "holdout", "drop", "sep", "na_values")
    given = ["--" + k.replace("_", "-") for k in in_memory if columns.get(k) is not None]
    if settings.stream and given:
        raise click.UsageError(f"{given[0]} works without --stream only.")
    if log_to is not None:
        from ..tracking import check

        check(log_to)  # before any work: a wrong kind or a missing extra is one line
    fit = _train_streamed if settings.stream else _train_in_memory
    fit(settings, resume or out, log_every, Report(quiet=quiet, as_json=as_json), log_to)


def _train_in_memory(
    settings: RunSettings,
    out: Path | None,
    log_every: int | None,
    report: Report,
    log_to: str | None = None,
) -> None:
    from ..estimator import Regressor

    reg = Regressor(**settings.params | {"verbose": 0})  # the CLI prints its own progress
    whole, source, roles = training_table(settings.data, reg.max_categories)
    run, tests = _scoring(settings, reg, whole)
    settings = replace(settings, data=run)
    table, held = split_table(whole, run.get("holdout", 0.0), reg.random_state)
    y = target_values(table)
    out = out or default_out("seed" if settings.seed_experiment else Path(run["path"]).stem)
    fit_args = prepare_output(out, settings)
    rows = len(whole.features)
    preset = settings.preset or "config"
    report.header(source, rows, table.feature_names, table.target_names, preset, reg)
    if not settings.seed_experiment:
        report.columns(roles, len(table.features), held)
    group = join_process_group(reg.device)
    if group is not None:
        report.ranks(group.world_size)

    def fit(on_epoch: Any, stop: Any) -> None:
        reg.fit(
            table.features,
            y,
            callback=on_epoch,
            on_start=report.network,
            stop=stop,
            resume=settings.resume,
            **fit_args,
        )
        if held is not None:  # rows the CLI kept out: the fit's held-out score
            reg.validation_metrics_ = score(reg, held)

    fit_and_save(
        reg,
        out,
        group,
        report,
        log_every,
        fit,
        lambda stop: save_model(reg, out, run, table, y, tests=tests),
        log_to=log_to,
    )


def _scoring(settings: RunSettings, reg: Regressor, whole: Table) -> tuple[dict[str, Any], Any]:
    """The run's [data] settings as saved (paths resolved, the held-out share decided, the
    features listed) and the --test file's rows, read before training (a file that does not
    fit fails at once). A table to split is checked whole first, so errors name its rows."""
    run, tests = dict(settings.data), {}
    if not settings.seed_experiment:
        run["path"] = str(Path(run["path"]).resolve())
        run["holdout"] = holdout_share(run, reg, len(whole.features))
        if "test" in run:
            run["test"] = str(Path(run["test"]).resolve())
            tests = {Path(run["test"]).name: test_table(Path(run["test"]), run, whole)}
    run["features"] = whole.feature_names
    if run.get("holdout"):
        from ..preprocess import TablePreprocessor

        TablePreprocessor(missing=reg.missing).fit(whole.features)
    return run, tests


def _train_streamed(
    settings: RunSettings,
    out: Path | None,
    log_every: int | None,
    report: Report,
    log_to: str | None = None,
) -> None:
    """`nnreg train --stream`: train on Parquet data read in chunks (see nnreg.stream)."""
    from ..distributed import TorchSync
    from ..estimator import Regressor
    from ..stream import ParquetData, check_streamable, fit_parquet

    run = dict(settings.data)
    if "path" not in run:
        raise click.UsageError("--stream needs DATA: a Parquet file or a folder of them.")
    if "target" not in run:
        raise click.UsageError("DATA needs --target COLUMN (the column to predict).")
    data = ParquetData(run["path"], run["target"], run.get("features"), run.get("categorical"))
    run.update(path=str(Path(run["path"]).resolve()), features=data.feature_names)
    settings = replace(settings, data=run)
    reg = Regressor(**settings.params | {"verbose": 0})  # the CLI prints its own progress
    check_streamable(reg)
    out = out or default_out(Path(run["path"]).stem)
    fit_args = prepare_output(out, settings)
    names = (data.feature_names, data.target_names)
    report.header(data.source, data.n_rows, *names, settings.preset or "config", reg)
    group = join_process_group(reg.device)
    ranks: dict[str, Any] = {}
    if group is not None:
        ranks = {"rank": group.rank, "world_size": group.world_size, "sync": TorchSync(group)}

    def fit(on_epoch: Any, stop: Any) -> None:
        fit_parquet(
            reg,
            data,
            shuffle_buffer=run["shuffle_buffer"],
            callback=on_epoch,
            on_start=report.network,
            stop=stop,
            resume=settings.resume,
            **fit_args,
            **ranks,
        )

    fit_and_save(
        reg,
        out,
        group,
        report,
        log_every,
        fit,
        lambda stop: save_streamed(reg, out, run, data, group, stop),
        log_to=log_to,
    )
