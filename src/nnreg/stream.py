"""Training, prediction and evaluation on Parquet data larger than memory.

The data is a Parquet file or a folder of them (read in name order), always read one row
group at a time, in record batches of at most ``chunk_rows`` rows, so memory is bounded by
the chunk size, the shuffle buffer and the statistics' sample, not by the number of rows:

1. :class:`~nnreg.parquet.ParquetData` checks the files, their schemas and the columns
   from the metadata alone.
2. :func:`fit_parquet` computes the preprocessing statistics in one pass
   (:class:`nnreg.preprocess.StreamingStatistics`), then trains with
   :class:`nnreg.train.Trainer` on a :class:`~nnreg.parquet.ParquetBatches` source: every
   epoch visits the row groups in a seeded order and mixes rows across them in a bounded
   shuffle buffer. ``shuffle_buffer=0`` reads rows in file order, which trains exactly
   like in-memory training on unshuffled minibatches. The result is an ordinary fitted
   :class:`~nnreg.estimator.Regressor`, saved and loaded like any other.
3. :func:`predict_parquet` writes predictions chunk by chunk (CSV or Parquet, atomically);
   :func:`evaluate_parquet` accumulates exact metrics chunk by chunk.

Distributed runs (see :mod:`nnreg.distributed`) give each process its ``rank`` and
``world_size``: after the seeded per-epoch shuffle of the row groups, rank ``r`` reads every
``world_size``-th of them, and every rank takes the same number of steps per epoch, computed
from the metadata, so none waits for the others in a collective. Every rank computes the
same preprocessing statistics from the whole data set (they are deterministic), so no
broadcast is needed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import fitting
from .exceptions import ConfigError, NotFittedError, TrainingDivergedError
from .metrics import RunningMetrics
from .model import predict_moments
from .parquet import (
    CHUNK_ROWS,
    PARQUET_SUFFIXES,
    SHUFFLE_BUFFER,
    Chunk,
    ParquetBatches,
    ParquetData,
    RowGroup,
    read_ahead,
)
from .recipe import Recipe
from .stats import SAMPLE_ROWS, StreamingStatistics
from .train import EpochCallback, GradientSync, History

if TYPE_CHECKING:
    from .estimator import Regressor

__all__ = [
    "CHUNK_ROWS",
    "SHUFFLE_BUFFER",
    "Chunk",
    "Evaluation",
    "ParquetBatches",
    "ParquetData",
    "RowGroup",
    "check_streamable",
    "evaluate_parquet",
    "fit_parquet",
    "predict_parquet",
]


def fit_parquet(
    reg: Regressor,
    data: ParquetData,
    *,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    chunk_rows: int = CHUNK_ROWS,
    sample_rows: int = SAMPLE_ROWS,
    rank: int = 0,
    world_size: int = 1,
    sync: GradientSync | None = None,
    callback: EpochCallback | None = None,
    stop: threading.Event | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    checkpoint_info: dict[str, Any] | None = None,
    resume: str | Path | None = None,
    on_start: fitting.StartCallback | None = None,
) -> Regressor:
    """Fit ``reg`` (its parameters, not its state) on streamed Parquet ``data``; returns it.

    The preprocessing is fitted in one pass (:class:`nnreg.preprocess.StreamingStatistics`:
    exact means, standard deviations and categories; medians and quartiles from a seeded
    sample of ``sample_rows`` rows), then the network trains on :class:`ParquetBatches`
    (``shuffle_buffer`` rows mixed across row groups; 0: file order). ``rank``,
    ``world_size`` and ``sync`` (which averages gradients) make this one process of a
    distributed run; ``callback``, ``stop``, ``checkpoint``, ``checkpoint_every``,
    ``checkpoint_info``, ``resume`` and ``on_start`` work as in :meth:`Regressor.fit`.

    Some parameters are refused (see :func:`check_streamable`); there are no sample weights.

    Examples
    --------
    >>> import tempfile, nnreg
    >>> path = f"{tempfile.mkdtemp()}/seed.parquet"
    >>> nnreg.seed_dataset(200).to_parquet(path, row_group_size=64)
    >>> reg = nnreg.Regressor(max_iter=3, random_state=0)
    >>> reg = fit_parquet(reg, ParquetData(path, target="y"))
    >>> reg.predict(nnreg.seed_dataset(5)[["x1", "x2"]]).shape
    (5,)
    """
    recipe = check_streamable(reg, world_size)
    result = _start_streamed(recipe, data, chunk_rows, sample_rows)
    if on_start is not None:
        on_start(result.model.config)
    config = recipe.train_config(data.n_rows)
    assert config.batch_size is not None  # 'full' is refused above
    shares = {"rank": rank, "world_size": world_size, "chunk_rows": chunk_rows}
    source = _batches(recipe, data, result, config.batch_size, shuffle_buffer, shares)
    checkpoints = fitting.Checkpoints(checkpoint, checkpoint_every, checkpoint_info, resume)
    try:
        fitting.train_single(
            recipe, result, source, config, None, callback, stop, checkpoints, sync
        )
    except TrainingDivergedError as exc:
        if exc.partial is not None:  # the last finite weights stay usable
            reg.adopt(exc.partial)
        raise
    result.interrupted = stop is not None and stop.is_set()
    return reg.adopt(result)


def _batches(
    recipe: Recipe,
    data: ParquetData,
    result: fitting.FitResult,
    batch_size: int,
    shuffle_buffer: int,
    shares: dict[str, int],
) -> ParquetBatches:
    """The preprocessed minibatches this process trains on."""
    return ParquetBatches(
        data,
        result.preprocessor,
        result.y_scaler,
        batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=recipe.seed,
        device=recipe.device,
        dtype=recipe.dtype,
        **shares,
    )


def _start_streamed(
    recipe: Recipe, data: ParquetData, chunk_rows: int, sample_rows: int
) -> fitting.FitResult:
    """The preprocessing fitted in one pass over ``data``, and the initial network."""
    if not data.target_names:
        raise ConfigError("streamed training needs a target column; give target=...")
    stats = StreamingStatistics(
        recipe.preprocessor(),
        scale_target=bool(recipe["scale_target"]),
        sample_rows=sample_rows,
        seed=recipe.seed,
    )
    for chunk in read_ahead(data.chunks(chunk_rows=chunk_rows)):
        stats.update(chunk.features, chunk.y)
    preprocessor, y_scaler = stats.finish()
    n_outputs = len(data.target_names)
    config = recipe.model_config(len(preprocessor.output_names), n_outputs)
    return fitting.FitResult(
        model=recipe.model(config),
        history=History(),
        preprocessor=preprocessor,
        y_scaler=y_scaler,
        seed=recipe.seed,
        n_features=len(data.feature_names),
        feature_names=list(data.feature_names),
        n_outputs=n_outputs,
        y_1d=n_outputs == 1,
    )


def check_streamable(reg: Regressor, world_size: int = 1) -> Recipe:
    """Check ``reg``'s parameters and return its recipe; refuse with a :class:`ConfigError`
    what streamed training does not support: ``n_models > 1``, ``early_stopping`` (it needs
    held-out rows in memory), ``warm_start``, ``batch_size='full'``, and with
    ``world_size > 1`` a ``random_state`` that is not an integer (every process must draw
    the same weights and row-group order)."""
    params = reg.get_params()
    recipe = Recipe.from_params(params)
    problems = {
        "n_models > 1 (ensembles)": recipe.n_models > 1,
        "early_stopping (it holds out validation rows in memory)": bool(params["early_stopping"]),
        "warm_start (streamed training always starts anew)": bool(params["warm_start"]),
        "batch_size='full' (one step over every row at once)": params["batch_size"] == "full",
        "numeric embeddings (their bins are fitted on rows in memory)": params["embedding"]
        not in ("none", "auto"),
        "clip_predictions (the target's range is fitted in memory)": bool(
            params["clip_predictions"]
        ),
    }
    if world_size > 1:  # every process must draw the same weights and row-group order
        rs = params["random_state"]
        problems["random_state=None with several processes (give an integer seed)"] = (
            rs is None or isinstance(rs, np.random.RandomState)
        )
    refused = [name for name, bad in problems.items() if bad]
    if refused:
        raise ConfigError(
            f"streamed training does not support {refused[0]}; change that setting, or train "
            "in memory without streaming."
        )
    return recipe


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_parquet` found: metrics, row count and the first row's values."""

    metrics: dict[str, float]
    rows: int
    first: tuple[float, float]  # (predicted, actual) of the first row's first target
    complete: bool = True  # False: stopped before the last chunk


def evaluate_parquet(
    reg: Regressor,
    data: ParquetData,
    chunk_rows: int = CHUNK_ROWS,
    stop: threading.Event | None = None,
) -> Evaluation:
    """MSE, RMSE, MAE and R² of ``reg`` on ``data`` (which names its targets), computed chunk
    by chunk; equal to :func:`nnreg.metrics.regression_metrics` up to rounding. Setting
    ``stop`` ends the pass after the current chunk (``complete`` is then False)."""
    _require_fitted(reg)
    if not data.target_names:
        raise ConfigError("evaluation needs the target column(s); give target=...")
    metrics = RunningMetrics()
    first = (math.nan, math.nan)
    for chunk in read_ahead(data.chunks(chunk_rows=chunk_rows)):
        assert chunk.y is not None  # data with targets
        pred, _, _ = _predict_chunk(reg, chunk)
        if metrics.rows == 0:
            first = (float(pred[0, 0]), float(chunk.y[0, 0]))
        metrics.update(chunk.y, pred)
        if stop is not None and stop.is_set():
            return Evaluation(metrics.result(), metrics.rows, first, complete=False)
    return Evaluation(metrics.result(), metrics.rows, first)


def predict_parquet(
    reg: Regressor,
    data: ParquetData,
    output: str | Path,
    *,
    target_names: Sequence[str] | None = None,
    interval: float | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """Write ``reg``'s predictions for ``data`` to ``output`` (.csv, or .parquet/.pq) chunk by
    chunk; returns the number of rows.

    Columns are ``<target>_pred`` (and ``<target>_lower``/``<target>_upper`` with
    ``interval``, a coverage in (0, 1)), rows in file order, as ``nnreg predict`` writes
    them. The file is written under a temporary name and renamed when complete.
    """
    from .outputs import check_output_file, made_predictions, write_file_atomic

    _require_fitted(reg)
    output = Path(output)
    check_output_file(output, made_predictions, protect=[data.path])
    n_out = int(reg.n_outputs_)
    targets = list(target_names or (["y"] if n_out == 1 else [f"y{j}" for j in range(n_out)]))
    if interval is not None and not hasattr(reg, "calibrator_"):
        raise ConfigError(
            "predict_interval needs rows held out during fit: use n_models > 1 or "
            "early_stopping=True."
        )
    parquet = output.suffix.lower() in PARQUET_SUFFIXES
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        writer: pq.ParquetWriter | None = None
        try:
            with open(tmp, "w", newline="") as text:
                for chunk in read_ahead(data.chunks(chunk_rows=chunk_rows)):
                    frame = _prediction_frame(reg, chunk, targets, interval)
                    if parquet:
                        table = pa.Table.from_pandas(frame, preserve_index=False)
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table)
                    else:
                        frame.to_csv(text, index=False, header=rows == 0)
                    rows += len(frame)
        finally:
            if writer is not None:
                writer.close()

    write_file_atomic(output, write)
    return rows


def _prediction_frame(
    reg: Regressor, chunk: Chunk, targets: list[str], interval: float | None
) -> pd.DataFrame:
    pred, mean, std = _predict_chunk(reg, chunk)
    columns = {f"{t}_pred": pred[:, j] for j, t in enumerate(targets)}
    if interval is not None:
        lower, upper = fitting.prediction_interval(
            reg.calibrator_, reg.y_scaler_, mean, std, float(interval)
        )
        for j, t in enumerate(targets):
            columns[f"{t}_lower"], columns[f"{t}_upper"] = lower[:, j], upper[:, j]
    return pd.DataFrame(columns)


def _require_fitted(reg: Regressor) -> None:
    if not hasattr(reg, "model_"):  # what Regressor's own fitted check looks for
        raise NotFittedError("this Regressor is not fitted yet; fit it before predicting.")


def _predict_chunk(reg: Regressor, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predictions in the target's units, mean and spread in standardised units), each
    (rows, targets), as :meth:`Regressor.predict` computes them."""
    Z = torch.from_numpy(reg.preprocessor_.transform(chunk.features, chunk.first_row))
    device = next(reg.model_.parameters()).device  # where it was trained; CPU once loaded
    mean, std = predict_moments(reg.model_, Z.to(device))
    return reg.y_scaler_.inverse_transform(mean), mean, std
