"""`nnreg predict` and `nnreg evaluate`: use a trained model on a table."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import options
from .console import to_json
from .tables import feature_names, model_and_table, read_data, target_values

if TYPE_CHECKING:
    import pandas as pd


PREDICTION_SUFFIXES = (".csv", ".parquet", ".pq")  # what predict -o writes


@click.command()
@options.model_and_data()
@click.option(
    "--interval",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Also write <target>_lower and <target>_upper bounds with this coverage, e.g. 0.9.",
)
@click.option(
    "--keep",
    multiple=True,
    metavar="COLUMN",
    callback=options.comma_list(),
    help="Copy this column of DATA (an id) into the output, before the predictions; "
    "repeatable, or a,b.",
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
    model_dir: Path,
    data: Path,
    interval: float | None,
    keep: list[str] | None,
    output: Path | None,
    stream: bool,
) -> None:
    """Predict DATA with the model in MODEL_DIR.

    Columns are chosen by the feature names saved with the model; other columns are ignored.
    The output has one column per target, named <target>_pred, in the rows' order; with
    --interval, also <target>_lower and <target>_upper; with --keep, the kept columns of
    DATA first.

    \b
    Examples:
      nnreg predict runs/houses new_houses.csv -o predictions.csv
      nnreg predict runs/houses new_houses.csv --keep id -o predictions.parquet
      nnreg predict runs/houses-ensemble new_houses.csv --interval 0.9 -o predictions.csv
    """
    from ..outputs import check_format, check_output_file, made_predictions, write_file_atomic

    kept = list(dict.fromkeys(keep or []))
    if output is not None:  # before any work: a format nnreg writes, never over the inputs
        check_format(output, PREDICTION_SUFFIXES, "-o/--output")  # or a file not nnreg's
        proof = functools.partial(made_predictions, keep=kept)
        check_output_file(output, proof, protect=[data, model_dir])
    if stream:
        if output is None:
            raise click.UsageError("--stream writes to a file: give -o/--output FILE.")
        if kept:
            raise click.UsageError("--keep works without --stream only.")
        _predict_streamed(model_dir, data, interval, output)
        return
    frame = _prediction_frame(model_dir, data, interval, kept)
    if output is None:
        frame.to_csv(sys.stdout, index=False)
        return
    if output.suffix.lower() in (".parquet", ".pq"):
        write_file_atomic(output, lambda p: frame.to_parquet(p, index=False))
    else:
        write_file_atomic(output, lambda p: frame.to_csv(p, index=False))
    click.echo(f"wrote {len(frame)} predictions to {output}", err=True)


def _prediction_frame(
    model_dir: Path, data: Path, interval: float | None, kept: list[str]
) -> pd.DataFrame:
    """The ``kept`` columns of ``data`` (checked before predicting), then the predictions
    of the model in ``model_dir`` (and their bounds, with ``interval``)."""
    import pandas as pd

    from ..data import table_from_frame
    from ..estimator import load
    from ..exceptions import DataError

    reg = load(model_dir, history=False)
    source, targets = read_data(model_dir, data), reg.model_info_["targets"]
    names = [f"{t}_{end}" for t in targets for end in ("pred", "lower", "upper")]
    for name in kept:
        if name not in source.columns:
            listed = ", ".join(str(c) for c in source.columns[:30])
            listed += f", ... ({len(source.columns)} in all)" if len(source.columns) > 30 else ""
            raise DataError(f"--keep column {name!r} not found in {data}; its columns: {listed}.")
        if name in names:
            raise DataError(f"--keep column {name!r} has the name of a prediction column.")
    table = table_from_frame(source, features=feature_names(reg), source=str(data))
    rows = len(table.features)
    pred = reg.predict(table.features).reshape(rows, -1).T
    columns = {f"{t}_pred": v for t, v in zip(targets, pred, strict=True)}
    if interval is not None:
        lower, upper = reg.predict_interval(table.features, coverage=interval)
        bounds = zip(targets, lower.reshape(rows, -1).T, upper.reshape(rows, -1).T, strict=True)
        for t, lo, hi in bounds:
            columns[f"{t}_lower"], columns[f"{t}_upper"] = lo, hi
    frame = source[kept].reset_index(drop=True)
    return pd.concat([frame, pd.DataFrame(columns)], axis=1)


def _predict_streamed(model_dir: Path, data: Path, interval: float | None, output: Path) -> None:
    from ..estimator import load
    from ..stream import ParquetData, predict_parquet

    reg = load(model_dir, history=False)
    rows = predict_parquet(
        reg,
        ParquetData(data, features=feature_names(reg)),
        output,
        target_names=reg.model_info_["targets"],
        interval=interval,
    )
    click.echo(f"wrote {rows} predictions to {output}", err=True)


@click.command()
@options.model_and_data()
@options.json_flag("Print the metrics as JSON.")
@click.option("--stream", is_flag=True, help="Read DATA (a Parquet file or folder) in chunks.")
def evaluate(model_dir: Path, data: Path, as_json: bool, stream: bool) -> None:
    """Score the model in MODEL_DIR on DATA, which must hold the target column(s).

    Prints MSE, RMSE, MAE and R².

    \b
    Example:
      nnreg evaluate runs/houses test.csv --json
    """
    from ..metrics import regression_metrics

    if stream:
        from ..estimator import load
        from ..stream import ParquetData, evaluate_parquet

        reg = load(model_dir, history=False)
        source = ParquetData(data, reg.model_info_["targets"], feature_names(reg))
        result = evaluate_parquet(reg, source)
        metrics, rows = result.metrics, result.rows
    else:
        reg, table = model_and_table(model_dir, data, with_target=True)
        metrics = regression_metrics(target_values(table), reg.predict(table.features))
        rows = len(table.features)
    if as_json:
        click.echo(to_json({"rows": rows, **metrics}))
        return
    click.echo(f"rows  {rows}")
    for key in ("mse", "rmse", "mae", "r2"):
        click.echo(f"{key.upper() if key != 'r2' else 'R²':<5} {metrics[key]:.6g}")


@click.command()
@options.model_and_data()
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Shuffles of each column; the spread over them is shown as std.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffles.")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help="Also draw the importances as a bar chart in this PNG file.",
)
@options.json_flag("Print the importances as JSON.")
def importance(
    model_dir: Path, data: Path, repeats: int, seed: int, output: Path | None, as_json: bool
) -> None:
    """Permutation importance of each column for the model in MODEL_DIR, on DATA.

    Shuffles one column of DATA at a time and measures how much the RMSE grows, in the
    target's units; a categorical column is shuffled as one. DATA must hold the target:
    use rows the model did not train on.

    \b
    Example:
      nnreg importance runs/houses test.csv --repeats 10 -o importance.png
    """
    from ..outputs import check_format, check_output_file, made_figure, write_file_atomic

    if output is not None:
        check_format(output, (".png",), "-o/--output")
        check_output_file(output, made_figure, protect=[data, model_dir])
    reg, table = model_and_table(model_dir, data, with_target=True)
    found = reg.feature_importances(
        table.features, target_values(table), n_repeats=repeats, random_state=seed
    )
    ranked = found.to_frame()
    if as_json:
        click.echo(to_json(found.to_dict()))
    else:
        from .console import importance_table

        click.echo(f"baseline RMSE {found.baseline_rmse:.6g} on {len(table.features)} rows")
        importance_table(ranked)
    if output is not None:
        from ..plot import importance_chart

        title = f"Permutation importance ({data.name}, {repeats} shuffles)"
        write_file_atomic(output, lambda p: importance_chart(ranked, found.baseline_rmse, p, title))
        click.echo(f"wrote {output}", err=True)
