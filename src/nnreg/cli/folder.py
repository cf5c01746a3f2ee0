"""`nnreg info`, `nnreg plot` and `nnreg export`: describe, draw and convert a model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import options
from .console import print_info, to_json
from .tables import model_and_table, target_values


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@options.json_flag("Print model.json as it is.")
def info(model_dir: Path, as_json: bool) -> None:
    """Describe the model in MODEL_DIR: features, layers, settings, metrics.

    \b
    Example:
      nnreg info runs/seed
    """
    from ..estimator import load
    from ..model import summary

    reg = load(model_dir, history=False)  # every part of the folder checked, as for predict
    meta, config = reg.model_info_, reg.model_.config
    if as_json:
        click.echo(to_json({**meta, "architecture": config.to_dict()}))
        return
    print_info(model_dir, meta, summary(config))


@click.command()
@options.model_and_data(data_required=False)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    help="Folder for the PNG files (default: MODEL_DIR).",
)
def plot(model_dir: Path, data: Path | None, out_dir: Path | None) -> None:
    """Draw the loss curve of MODEL_DIR, and predicted against actual values on DATA.

    Writes loss.png (the epoch the weights come from marked), and with DATA (which holds
    the target) pred_vs_actual.png and residuals.png, with RMSE and R² on DATA and, for a
    model with intervals, each row's 90% interval.

    \b
    Example:
      nnreg plot runs/houses test.csv --out-dir figures
    """
    from ..artifact import add_files, load, loss_labels, write_file_atomic
    from ..outputs import check_output_file, made_figure
    from ..plot import loss_curve

    data_paths = [] if data is None else [data]
    out_dir = out_dir or model_dir
    if data is not None:
        reg, table = model_and_table(model_dir, data, with_target=True, history=True)
        history, meta = reg.history_.to_dict(), reg.model_info_
    else:
        saved = load(model_dir)
        history, meta = saved.history, saved.meta
    labels = loss_labels(meta)
    figures: dict[str, Any] = {"loss.png": lambda p: loss_curve(history, p, **labels)}
    if data is not None:
        figures.update(_data_figures(reg, table, data.name))
    if out_dir.resolve() == Path(model_dir).resolve():
        add_files(model_dir, figures)  # the folder's manifest lists them: still nnreg's own
    else:
        for name in figures:  # all checked before any is written
            check_output_file(out_dir / name, made_figure, protect=[model_dir, *data_paths])
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, write in figures.items():
            write_file_atomic(out_dir / name, write)
    for name in figures:
        click.echo(f"wrote {out_dir / name}")


def _data_figures(reg: Any, table: Any, name: str) -> dict[str, Any]:
    """pred_vs_actual.png and residuals.png of ``reg`` on ``table``: writers by file name."""
    from ..plot import predicted_vs_actual, residuals
    from ..report import COVERAGE, intervals

    y, pred = target_values(table), reg.predict(table.features)
    target = ", ".join(reg.model_info_["targets"])
    extra: dict[str, Any] = {"target": target}
    bounds = intervals(reg, table.features)
    if bounds is not None:
        extra.update(bounds=bounds, coverage=COVERAGE)
    return {
        "pred_vs_actual.png": lambda p: predicted_vs_actual(
            y, pred, p, title=f"Predicted vs actual ({name})", **extra
        ),
        "residuals.png": lambda p: residuals(y, pred, p, title=f"Residuals ({name})", **extra),
    }


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option(
    "--opset",
    type=click.IntRange(13, 25),
    default=17,
    show_default=True,
    help="ONNX operator set version to write (older runtimes need lower ones).",
)
def export(model_dir: Path, output: Path, opset: int) -> None:
    """Write the model in MODEL_DIR as an ONNX file, preprocessing included (needs nnreg[onnx]).

    The graph takes `numeric` (float64) and `categorical` (string) inputs and returns
    `predictions` in the target's units; the file's metadata says how to feed it.

    \b
    Example:
      nnreg export runs/houses houses.onnx
    """
    from ..outputs import check_format

    check_format(output, (".onnx",), "OUTPUT")  # before the model, and PyTorch, are loaded
    from ..export import export_onnx

    path = export_onnx(model_dir, output, opset=opset)
    click.echo(f"wrote {path}")
