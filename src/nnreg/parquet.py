"""Parquet data read in bounded chunks: row groups, checked columns, shuffled minibatches.

:class:`ParquetData` is a Parquet file or a folder of them (read in name order), checked
from the metadata alone and read one row group at a time in record batches of at most
``chunk_rows`` rows. :class:`ParquetBatches` turns it into preprocessed minibatches for
:class:`nnreg.train.Trainer` (a :class:`~nnreg.train.BatchSource`): every epoch visits the
row groups in a seeded order and mixes rows across them in a bounded shuffle buffer, and in a
distributed run each rank reads its own share of the row groups. Memory is bounded by the
chunk size and the shuffle buffer, never by the number of rows.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .data import select_columns
from .exceptions import ConfigError, DataError, DataFileError
from .preprocess import TablePreprocessor
from .train import Minibatch

__all__ = [
    "CHUNK_ROWS",
    "PARQUET_SUFFIXES",
    "SHUFFLE_BUFFER",
    "Chunk",
    "ParquetBatches",
    "ParquetData",
    "RowGroup",
    "read_ahead",
]

CHUNK_ROWS = 65_536  # rows read and converted at a time
SHUFFLE_BUFFER = 65_536  # rows mixed across row groups during training
PARQUET_SUFFIXES = (".parquet", ".pq")
T = TypeVar("T")


@dataclass(frozen=True)
class RowGroup:
    """One row group of one file: the unit that is shuffled and shared between processes."""

    file: Path
    index: int
    rows: int


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of one row group: features as given, targets (rows, targets)."""

    first_row: int  # position of the first row in the data, in file order (from 0)
    features: pd.DataFrame
    y: np.ndarray | None


class ParquetData:
    """A Parquet file or a folder of Parquet files, with its columns checked.

    Only the metadata is read here: the files, their schemas (which must agree), the row
    groups and the selected columns. Without ``features`` every column but the targets is a
    feature; ``categorical`` columns are read as categories even if they hold numbers.

    Examples
    --------
    >>> import tempfile, nnreg
    >>> folder = tempfile.mkdtemp()
    >>> nnreg.seed_dataset(50).to_parquet(f"{folder}/part-0.parquet")
    >>> data = ParquetData(folder, target="y")
    >>> data.n_rows, data.feature_names
    (50, ['x1', 'x2'])
    """

    def __init__(
        self,
        path: str | Path,
        target: str | Sequence[str] | None = None,
        features: Sequence[str] | None = None,
        categorical: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.source = str(self.path)
        self.files = _parquet_files(self.path)
        self.schema, groups = _read_metadata(self.files)
        self.row_groups = [g for g in groups if g.rows > 0]
        columns = list(self.schema.names)
        feats, targets = select_columns(columns, target, features, self.source)
        for name in targets:
            kind = self.schema.field(name).type
            if not (
                pa.types.is_integer(kind)
                or pa.types.is_floating(kind)
                or pa.types.is_boolean(kind)
                or pa.types.is_decimal(kind)
            ):
                text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
                raise DataError(
                    f"target column {name!r} in {self.source} holds "
                    f"{'text' if text else f'{kind} values'}, but a "
                    "regression target must be numbers; convert it or choose another target."
                )
        for name in categorical or []:
            if name not in columns:
                raise DataError(f"categorical column {name!r} not found in {self.source}.")
        if self.n_rows == 0:
            raise DataFileError(f"{self.source} has no rows; it needs at least one.")
        self.feature_names, self.target_names = feats, targets
        self.categorical = list(categorical or [])

    @property
    def n_rows(self) -> int:
        return sum(g.rows for g in self.row_groups)

    def chunks(
        self, groups: Sequence[RowGroup] | None = None, chunk_rows: int = CHUNK_ROWS
    ) -> Generator[Chunk, None, None]:
        """The rows of ``groups`` (default: all, in file order), at most ``chunk_rows`` at a
        time; targets are checked to be finite."""
        groups = self.row_groups if groups is None else groups
        starts = self._starts()
        columns = self.feature_names + self.target_names
        reader: tuple[Path, pq.ParquetFile] | None = None
        try:
            for group in groups:
                if reader is None or reader[0] != group.file:
                    if reader is not None:
                        reader[1].close()
                    reader = (group.file, pq.ParquetFile(group.file))
                first_row = starts[(group.file, group.index)]
                batches = reader[1].iter_batches(
                    batch_size=chunk_rows,
                    row_groups=[group.index],
                    columns=columns,
                    use_threads=False,
                )
                for batch in batches:
                    yield self._chunk(batch, first_row)
                    first_row += batch.num_rows
        except (OSError, pa.ArrowException) as exc:
            where = "" if reader is None else f" ({reader[0]})"
            raise DataFileError(
                f"cannot read {self.source}{where} as PARQUET: {_first_line(exc)}"
            ) from exc
        finally:
            if reader is not None:
                reader[1].close()

    def _starts(self) -> dict[tuple[Path, int], int]:
        starts, row = {}, 0
        for g in self.row_groups:
            starts[(g.file, g.index)] = row
            row += g.rows
        return starts

    def _chunk(self, batch: pa.RecordBatch, first_row: int) -> Chunk:
        frame = batch.select(self.feature_names).to_pandas()
        for name in self.categorical:  # as the command line does for in-memory tables
            if name in self.feature_names:
                frame[name] = frame[name].astype(str).astype("category")
        y = None
        if self.target_names:
            columns = [batch.column(t).cast(pa.float64()) for t in self.target_names]
            y = np.column_stack([c.to_numpy(zero_copy_only=False) for c in columns])
            finite = np.isfinite(y)
            if not finite.all():
                row, col = map(int, np.argwhere(~finite)[0])
                kind = "missing values (NaN)" if np.isnan(y[row, col]) else "infinite values"
                raise DataError(
                    f"target column {self.target_names[col]!r} in {self.source} has {kind} "
                    f"(first at row {first_row + row}); drop those rows before training."
                )
        return Chunk(first_row, frame, y)


def _parquet_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataFileError(f"data file not found: {path}; check the path.")
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file()
            and p.suffix.lower() in PARQUET_SUFFIXES
            and not p.name.startswith(("_", "."))
        )
        if not files:
            raise DataFileError(
                f"{path} holds no Parquet files (*.parquet, *.pq); give a Parquet file or a "
                "folder of them."
            )
        return files
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        raise DataFileError(
            f"cannot stream {path}: streaming reads Parquet files (.parquet, .pq) or folders "
            "of them; convert it to Parquet, or read it into memory instead of streaming."
        )
    return [path]


def _read_metadata(files: list[Path]) -> tuple[pa.Schema, list[RowGroup]]:
    schema: pa.Schema | None = None
    groups: list[RowGroup] = []
    for file in files:
        try:
            with pq.ParquetFile(file) as reader:
                meta, this = reader.metadata, reader.schema_arrow
        except (OSError, pa.ArrowException) as exc:
            raise DataFileError(f"cannot read {file} as PARQUET: {_first_line(exc)}") from exc
        names = list(this.names)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataFileError(
                f"{file} has duplicate column names ({', '.join(dupes)}); give each column a "
                "unique name."
            )
        if schema is None:
            schema = this
        elif not this.equals(schema, check_metadata=False):
            raise DataFileError(
                f"{file} does not have the columns and types of {files[0]} "
                f"({_schema_difference(schema, this)}); every Parquet file of a folder must "
                "have the same schema."
            )
        groups += [
            RowGroup(file, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)
        ]
    assert schema is not None  # there is at least one file
    return schema, groups


def _schema_difference(a: pa.Schema, b: pa.Schema) -> str:
    for name in a.names:
        if name not in b.names:
            return f"no column {name!r}"
        if a.field(name).type != b.field(name).type:
            return f"column {name!r} is {b.field(name).type}, not {a.field(name).type}"
    extra = [n for n in b.names if n not in a.names]
    return f"an extra column {extra[0]!r}" if extra else "the columns are in another order"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ParquetBatches:
    """Preprocessed minibatches of a :class:`ParquetData`: a :class:`nnreg.train.BatchSource`.

    Each epoch visits the row groups in an order drawn from ``(seed, epoch)``, keeps this
    rank's share (every ``world_size``-th group from ``rank``), and mixes the rows in a
    buffer of ``shuffle_buffer`` rows: whenever more than that are waiting, full minibatches
    are drawn at random from them. The last minibatch of an epoch may be smaller, as in
    memory. ``shuffle_buffer=0`` keeps the file order of row groups and rows.

    With several ranks every rank yields ``steps_per_epoch`` minibatches, enough for the
    smallest share of rows any order of the row groups can give a rank; a rank's rows past
    that are skipped in that epoch (others, in another epoch's order).
    """

    def __init__(
        self,
        data: ParquetData,
        preprocessor: TablePreprocessor,
        y_scaler: Any,
        batch_size: int,
        *,
        shuffle_buffer: int = SHUFFLE_BUFFER,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}.")
        self.data, self.preprocessor, self.y_scaler = data, preprocessor, y_scaler
        self.batch_size, self.shuffle_buffer = int(batch_size), int(shuffle_buffer)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device, self.dtype, self.chunk_rows = device, dtype, chunk_rows
        sizes = sorted(g.rows for g in data.row_groups)
        share = len(sizes) // world_size  # row groups every rank gets, in any order
        fewest = sum(sizes[:share]) if world_size > 1 else sum(sizes)
        if fewest == 0:
            raise DataError(
                f"{data.source} has {len(sizes)} row groups, fewer than the {world_size} "
                "processes; write it with more, smaller row groups or use fewer processes."
            )
        self.steps_per_epoch = math.ceil(fewest / self.batch_size)

    def describe(self) -> dict[str, Any]:
        """What this source reads and how, as plain values (a resumed run must match it);
        the same for every process of a distributed run, which reads its share of it."""
        return {
            "files": [(p.name, p.stat().st_size) for p in self.data.files],
            "row_groups": [g.rows for g in self.data.row_groups],
            "columns": self.data.feature_names + self.data.target_names,
            "reading": [self.batch_size, self.shuffle_buffer, self.seed, self.chunk_rows],
            "processes": self.world_size,
        }

    def groups(self, epoch: int) -> list[RowGroup]:
        """This rank's row groups in epoch ``epoch``, in the order they are read."""
        groups = self.data.row_groups
        if self.shuffle_buffer > 0:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(groups))
            groups = [groups[i] for i in order]
        return groups[self.rank :: self.world_size]

    def epoch(self, epoch: int) -> Iterator[Minibatch]:
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        chunks = self.data.chunks(self.groups(epoch), self.chunk_rows)
        tensors = read_ahead(self._tensors(chunk) for chunk in chunks)
        with contextlib.closing(self._minibatches(tensors, rng)) as batches:
            yield from itertools.islice(batches, self.steps_per_epoch)

    def _minibatches(
        self,
        chunks: Generator[tuple[torch.Tensor, torch.Tensor], None, None],
        rng: np.random.Generator,
    ) -> Generator[Minibatch, None, None]:
        keep, batch = self.shuffle_buffer, self.batch_size
        X: torch.Tensor | None = None  # (waiting rows, inputs)
        y: torch.Tensor | None = None  # (waiting rows, targets)
        try:
            for X_chunk, y_chunk in chunks:
                if X is None or y is None:
                    X, y = X_chunk, y_chunk
                else:
                    X, y = torch.cat([X, X_chunk]), torch.cat([y, y_chunk])
                ready = max(0, (len(X) - keep) // batch) * batch  # rows that leave `keep` waiting
                if ready and keep:
                    X, y = _shuffled(X, y, rng)
                for lo in range(0, ready, batch):
                    yield X[lo : lo + batch], y[lo : lo + batch], None
                X, y = X[ready:], y[ready:]
        finally:
            chunks.close()  # stops the reading thread
        if X is None or y is None:
            return
        if keep:
            X, y = _shuffled(X, y, rng)
        for lo in range(0, len(X), batch):  # the rest; the last minibatch may be smaller
            yield X[lo : lo + batch], y[lo : lo + batch], None

    def _tensors(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        assert chunk.y is not None  # training data always has targets
        X = self.preprocessor.transform(chunk.features, chunk.first_row)  # (rows, inputs)
        y = self.y_scaler.transform(chunk.y)  # (rows, targets)
        return (
            torch.tensor(X, dtype=self.dtype, device=self.device),
            torch.tensor(y, dtype=self.dtype, device=self.device),
        )


def _shuffled(
    X: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.from_numpy(rng.permutation(len(X))).to(X.device)
    return X[perm], y[perm]


def read_ahead(items: Generator[T, None, None], depth: int = 2) -> Generator[T, None, None]:
    """The items of ``items``, computed by a background thread up to ``depth`` ahead, so that
    reading and decoding the next chunk overlaps training on this one."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    done = threading.Event()

    def put(kind: str, value: Any) -> None:
        while not done.is_set():
            try:
                ready.put((kind, value), timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put("item", item)
                if done.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put("error", exc)
        else:
            put("end", None)
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="nnreg-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        done.set()
        thread.join()
