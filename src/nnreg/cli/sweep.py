"""`nnreg sweep`: train a grid of configurations and keep the best by validation RMSE."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import options
from .console import Report
from .run import SignalStop, check_output, default_out, join_process_group, relaunch, save_model
from .tables import target_values, test_table, training_table

if TYPE_CHECKING:
    import pandas as pd

    from ..data import Table
    from ..estimator import Regressor
    from ..sweep import Sweep, Trial


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@options.columns(target_required=True)
@options.preset(default="recommended", show_default=True, help="Settings the sweep does not vary.")
@options.hidden(
    "hidden",
    "Hidden sizes to try; repeat the option: --hidden 64,64 --hidden 128,128.",
    multiple=True,
)
@click.option("--lr", callback=options.comma_list(float), help="Learning rates, e.g. 1e-3,3e-3.")
@click.option(
    "--weight-decay", callback=options.comma_list(float), help="Weight decays, e.g. 0,0.02."
)
@click.option("--seeds", callback=options.comma_list(int), help="Seeds, e.g. 0,1,2 (default 0).")
@options.epochs
@options.batch_size
@click.option("--early-stopping", is_flag=True, default=None, help="Stop each model early.")
@click.option(
    "--validation-fraction",
    type=float,
    help="Share of rows held out to rank the configurations, in (0, 1) (default 0.1).",
)
@click.option(
    "--test",
    type=click.Path(path_type=Path),
    help="A file of rows kept out of the sweep, on which the chosen model is scored.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Save the best configuration, or the best N of its architecture as an ensemble.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Split the configurations across N processes on this machine (as torchrun would "
    "start them).",
)
@options.outputs(
    folder="Model folder for the best model (default: runs/<name>-sweep/); sweep.csv goes in it.",
    as_json="Print the ranking as JSON on stdout.",
)
def sweep(
    data: Path,
    preset: str,
    top: int,
    nproc: int | None,
    out: Path | None,
    quiet: bool,
    as_json: bool,
    **values: Any,
) -> None:
    """Train a grid of configurations on DATA and keep the best by validation RMSE.

    Every combination of --hidden, --lr, --weight-decay and --seeds trains on the same rows
    and is scored on the same held-out rows; configurations with the same hidden sizes train
    together as one batch. Prints the ranking, writes it to OUT/sweep.csv, and saves the best
    model (or, with --top N, the best N of its architecture as an ensemble) in OUT. With
    --nproc N (or under torchrun) each process trains its share of the configurations.

    \b
    Examples:
      nnreg sweep houses.csv --target price --lr 1e-3,3e-3,1e-2 --weight-decay 0,0.02
      nnreg sweep houses.csv -t price --hidden 64,64 --hidden 128,128,128 --seeds 0,1,2 --top 3
    """
    from ..estimator import Regressor
    from ..settings import load_settings
    from ..sweep import Sweep

    if nproc is not None and nproc > 1:  # this same command, as NPROC processes
        relaunch(nproc)

    lists = {name: values.pop(name) for name in ("hidden", "lr", "weight_decay", "seeds")}
    columns = options.data_settings(data, values)
    settings = load_settings(
        preset=preset,
        params=values,
        data=columns,
        label=options.flag_label(click.get_current_context().command),
    )
    base = Regressor(**settings.params | {"verbose": 0})  # the CLI prints its own progress
    trials = _grid(base, lists)
    table, source, _ = training_table(settings.data, base.max_categories)
    y = target_values(table)
    test = columns.get("test")
    tests = {test.name: test_table(test, settings.data, table)} if test is not None else {}
    runner = Sweep(base, trials)
    out = out or default_out(f"{data.stem}-sweep")
    check_output(out, settings.data)  # before any training
    report = Report(quiet=quiet, as_json=as_json)
    report.sweep_header(source, table, trials, f"preset {preset}, {_epochs(base)} epochs")
    stop = _run(runner, table, y, report)
    ranking = runner.table()
    scored = _save(runner.regressor(top=top), out, ranking, table, y, settings.data, tests)
    report.sweep_result(out, ranking, top, scored)
    stop.exit_if_stopped(
        runner.interrupted_,
        lambda name: (
            f"interrupted after {len(ranking)} of {len(trials)} configurations; "
            f"{out} holds the best so far"
        ),
    )


def _run(runner: Sweep, table: Table, y: Any, report: Report) -> SignalStop:
    """Train the sweep (its share of it, in each process of a distributed run) with
    progress; the signal handling it ran under, to exit with after saving."""
    from .app import raise_if_received

    raise_if_received()  # a signal taken earlier, swallowed where it landed, ends it here
    group = join_process_group(runner.base.device)
    if group is not None:
        report.ranks(group.world_size, sweep=True)
    # Processes of one run stop together or not at all: there, a signal ends them.
    with SignalStop(enabled=group is None) as stop:
        runner.stop = stop.event
        with report.sweep_progress() as progress:
            runner.fit(table.features, y, progress=progress)
    return stop


def _grid(base: Regressor, lists: dict[str, Any]) -> list[Trial]:
    """The configurations: every combination of the lists given, the base's value for the
    others."""
    from ..sweep import grid

    defaults: dict[str, list[Any]] = {
        "hidden": [tuple(base.hidden_layer_sizes)],
        "lr": [base.learning_rate_init],
        "weight_decay": [base.weight_decay],
        "seeds": [0],
    }
    return grid(**{name: lists[name] or defaults[name] for name in defaults})


def _save(
    reg: Regressor,
    out: Path,
    ranking: pd.DataFrame,
    table: Table,
    y: Any,
    data: dict[str, Any],
    tests: dict[str, Table],
) -> dict[str, dict[str, float]]:
    """The best model's folder, with the ranking in it (and its manifest) as sweep.csv; the
    chosen model's metrics on each --test file."""
    run = {"path": str(Path(data["path"]).resolve()), "target": table.target_names}
    run["features"] = table.feature_names
    run |= {k: data[k] for k in ("categorical", "sep", "na_values") if data.get(k)}
    if "test" in data:
        run["test"] = str(Path(data["test"]).resolve())
    ranked = {"sweep.csv": lambda tmp: ranking.to_csv(tmp, index=False)}
    return save_model(reg, out, run, table, y, files=ranked, tests=tests)[2]


def _epochs(base: Regressor) -> int:
    """The epochs each configuration trains: a sweep chooses none for max_iter='auto'."""
    from ..recipe import epochs_of

    return epochs_of(base.max_iter)
