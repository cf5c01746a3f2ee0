"""`nnreg report`: one HTML page that shows a model folder (and how it does on DATA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import options
from .tables import model_and_table, target_values

REPORT_HTML = "report.html"


@click.command()
@options.model_and_data(data_required=False)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help=f"HTML file to write (default: {REPORT_HTML} in MODEL_DIR).",
)
@click.option(
    "--repeats",
    type=click.IntRange(0),
    default=5,
    show_default=True,
    help="Shuffles of each column for the importance on DATA; 0 leaves importance out.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffles.")
def report(
    model_dir: Path, data: Path | None, output: Path | None, repeats: int, seed: int
) -> None:
    """Write an HTML report of the model in MODEL_DIR, and of how it does on DATA.

    One self-contained file (figures inside, nothing fetched when it is opened): the run's
    settings, the columns and their roles, metrics on the training and held-out rows, the
    loss curves with the epoch the weights come from marked and, with DATA (which holds
    the target; use rows the model did not train on), its metrics there, predicted against
    actual values, residuals and permutation importance.

    \b
    Examples:
      nnreg report runs/houses
      nnreg report runs/houses test.csv -o houses.html
    """
    from ..artifact import add_files
    from ..outputs import check_format, check_output_file, write_file_atomic
    from ..report import made_report

    data_paths = [] if data is None else [data]
    inside = output is None or output.resolve() == (model_dir / REPORT_HTML).resolve()
    if not inside:
        assert output is not None
        check_format(output, (".html", ".htm"), "-o/--output")
        check_output_file(output, made_report, protect=[model_dir, *data_paths])
    page = _page(model_dir, data, repeats, seed)

    def write(path: Path) -> None:
        path.write_text(page, encoding="utf-8")

    if inside:
        output = model_dir / REPORT_HTML
        add_files(model_dir, {REPORT_HTML: write})  # listed in the folder's manifest
    else:
        assert output is not None
        write_file_atomic(output, write)
    click.echo(f"wrote {output}")


def _page(model_dir: Path, data: Path | None, repeats: int, seed: int) -> str:
    from ..estimator import load
    from ..report import render, score

    scored = None
    if data is None:
        reg = load(model_dir)
    else:
        reg, table = model_and_table(model_dir, data, with_target=True, history=True)
        y = target_values(table)
        scored = score(reg, table.features, y, data.name, repeats=repeats, seed=seed)
    return render(reg, f"nnreg report: {model_dir.name}", scored, _run_settings(model_dir))


def _run_settings(model_dir: Path) -> dict[str, Any]:
    """The ``[data]`` table of the folder's config.toml (its data file, target, columns)."""
    from ..exceptions import ConfigError
    from ..settings import read_config

    try:
        return dict(read_config(model_dir / "config.toml").get("data", {}))
    except ConfigError:  # an older folder, or one without the file: the rest still shows
        return {}
