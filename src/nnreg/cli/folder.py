"""`nnreg info`, `nnreg plot` and `nnreg export`: describe, draw and convert a model folder."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import options
from .console import print_info
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
    from ..artifact import load
    from ..model import summary

    saved = load(model_dir)
    if as_json:
        click.echo(json.dumps({**saved.meta, "architecture": saved.config.to_dict()}, indent=2))
        return
    print_info(model_dir, saved.meta, summary(saved.config))


@click.command()
@options.model_and_data(data_required=False)
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
    from ..artifact import load, write_file_atomic
    from ..plot import loss_curve, predicted_vs_actual

    out_dir = out_dir or model_dir
    if data is not None:
        reg, table = model_and_table(model_dir, data, with_target=True)
        history = reg.history_.to_dict()
    else:
        history = load(model_dir).history
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "loss.png"]
    write_file_atomic(written[0], lambda p: loss_curve(history, p))
    if data is not None:
        pred, title = reg.predict(table.features), f"Predicted vs actual ({data.name})"
        written.append(out_dir / "pred_vs_actual.png")
        write_file_atomic(
            written[1],
            lambda p: predicted_vs_actual(target_values(table), pred, p, title=title),
        )
    for path in written:
        click.echo(f"wrote {path}")


@click.command()
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
    from ..export import export_onnx

    path = export_onnx(model_dir, output, opset=opset)
    click.echo(f"wrote {path}")
