"""One-pass statistics: the preprocessing fitted over chunks of a table too large for memory.

:class:`StreamingStatistics` fits a :class:`~nnreg.preprocess.TablePreprocessor` and a target
:class:`~nnreg.preprocess.Standardizer` chunk by chunk (see :mod:`nnreg.stream`): exact means,
standard deviations and category counts, and medians, quartiles and quantile knots from a
bounded, seeded sample of rows. The result equals a fit on the whole table wherever it is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .dates import is_date, looks_like_dates
from .exceptions import DataError
from .preprocess import (
    OTHER,
    Standardizer,
    TablePreprocessor,
    _check_stray_text,
    _count_text,
    _nonzero_scale,
    _robust_spread,
    _weighted_quantiles,
    is_categorical,
)
from .quantile import fit_knots

__all__ = ["SAMPLE_ROWS", "StreamingStatistics"]

SAMPLE_ROWS = 100_000  # rows a streamed fit keeps for medians and quartiles


class StreamingStatistics:
    """Fits a :class:`TablePreprocessor` and a target :class:`Standardizer` in one pass over
    chunks of a table, in memory that does not grow with the number of rows.

    Means, standard deviations, minima and maxima, missing-value counts and category counts
    are exact (float64, merged chunk by chunk). Medians (for ``missing='impute'``), quartiles
    (for ``scaling='robust'``) and quantile knots (for ``scaling='quantile'``) come from a
    uniform sample of at most ``sample_rows`` rows drawn by a reservoir seeded with ``seed``:
    exact whenever the table has no more rows than that, an estimate otherwise. Sample
    weights are not supported.

    Parameters
    ----------
    preprocessor : TablePreprocessor
        An unfitted one: its ``scaling``, ``missing`` and ``max_categories`` are used.
    scale_target : bool, default=True
    sample_rows : int, default=100_000
    seed : int, default=0

    Examples
    --------
    >>> import pandas as pd
    >>> stats = StreamingStatistics(TablePreprocessor())
    >>> stats.update(pd.DataFrame({"a": [1.0, 2.0]}), np.array([[0.0], [1.0]]))
    >>> stats.update(pd.DataFrame({"a": [3.0]}), np.array([[2.0]]))
    >>> pre, y_scaler = stats.finish()
    >>> pre.center, y_scaler.mean
    ([2.0], [1.0])
    """

    def __init__(
        self,
        preprocessor: TablePreprocessor,
        scale_target: bool = True,
        sample_rows: int = SAMPLE_ROWS,
        seed: int = 0,
    ) -> None:
        self.pre = TablePreprocessor(
            preprocessor.scaling, preprocessor.missing, preprocessor.max_categories
        )
        self.scale_target = scale_target
        self.sample_rows, self.seed = sample_rows, seed
        self.rows = 0
        self.started = False

    def _start(self, frame: pd.DataFrame) -> None:
        pre = self.pre
        pre.columns = [str(c) for c in frame.columns]
        pre.dtypes = {c: str(frame[c].dtype) for c in pre.columns}
        dates = [c for c in pre.columns if is_date(frame[c]) or looks_like_dates(frame[c])]
        if dates:  # their first date is known only after the last chunk
            raise DataError(
                f"column {dates[0]!r} holds dates, which streamed training does not read yet; "
                "train without --stream, or store the date as numbers (or as a category)."
            )
        pre.numeric = [c for c in pre.columns if not is_categorical(frame[c])]
        pre.categorical = [c for c in pre.columns if is_categorical(frame[c])]
        d = len(pre.numeric)
        self.moments = _Moments(d)
        self.nan_count = np.zeros(d, dtype=np.int64)
        self.lo, self.hi = np.full(d, np.inf), np.full(d, -np.inf)
        needs_sample = pre.missing == "impute" or pre.scaling in ("robust", "quantile")
        self.sample = _Reservoir(self.sample_rows, self.seed) if needs_sample and d else None
        self.counts: dict[str, dict[str, int]] = {c: {} for c in pre.categorical}
        self.text = {c: _TextCount() for c in pre.categorical}
        self.y_moments: _Moments | None = None
        self.started = True

    def update(self, frame: pd.DataFrame, y: np.ndarray | None = None) -> None:
        """Add a chunk: ``frame`` (rows, features) and, optionally, targets (rows, targets)."""
        if not self.started:
            self._start(frame)
        pre, first_row = self.pre, self.rows
        for c in pre.numeric:  # integers in one chunk may come with missing values in another
            if str(frame[c].dtype) != pre.dtypes[c]:
                pre.dtypes[c] = "float64"
        # (rows, numeric); refuses infinities, and NaN unless imputing
        num = pre._numeric_block(frame, first_row)
        nan = np.isnan(num)
        self.nan_count += nan.sum(axis=0)
        self.moments.update(num)
        if len(num):
            self.lo = np.fmin(self.lo, np.nanmin(np.where(nan, np.inf, num), axis=0))
            self.hi = np.fmax(self.hi, np.nanmax(np.where(nan, -np.inf, num), axis=0))
        if self.sample is not None:
            self.sample.update(num)
        for c in pre.categorical:
            col = frame[c]
            if not isinstance(col.dtype, pd.CategoricalDtype):
                values, text, example, row = _count_text(col)
                seen = self.text[c]
                if text and not seen.text:
                    seen.example, seen.row = example, first_row + row
                seen.values, seen.text = seen.values + values, seen.text + text
            names, counts = np.unique(pre._category_values(col, first_row), return_counts=True)
            tally = self.counts[c]
            for name, count in zip(names.tolist(), counts.tolist(), strict=True):
                tally[name] = tally.get(name, 0) + count
        if y is not None:
            if self.y_moments is None:
                self.y_moments = _Moments(y.shape[1])
            self.y_moments.update(y)
        self.rows += len(frame)

    def finish(self) -> tuple[TablePreprocessor, Standardizer]:
        """The fitted preprocessor and target scaler (scale 1, mean 0 without targets)."""
        if not self.started or self.rows == 0:
            raise DataError("no rows were given to fit the preprocessing; it needs at least one.")
        pre = self.pre
        for c in pre.categorical:
            seen = self.text[c]
            _check_stray_text(c, seen.values, seen.text, seen.example, seen.row)
        has_nan = self.nan_count > 0
        pre.indicators = [c for c, has in zip(pre.numeric, has_nan, strict=True) if has]
        fill = np.zeros(len(pre.numeric))
        moments = self.moments
        if pre.missing == "impute" and self.sample is not None:
            fill = self._medians()
            moments = moments.merged(self.nan_count, fill)  # the filled columns' moments
        pre.fill = fill.tolist()
        pre.center, pre.scale = self._scaling(moments, fill, has_nan)
        for c in pre.categorical:
            tally = self.counts[c]
            order = sorted(tally, key=lambda v: (-tally[v], v))  # as TablePreprocessor.fit
            kept = order[: pre.max_categories]
            pre.categories[c] = kept + ([OTHER] if len(order) > len(kept) else [])
        y_scaler = Standardizer(self.scale_target)
        if self.y_moments is not None:
            n_targets = len(self.y_moments.n)
            if self.scale_target:
                mean, std = self.y_moments.mean, self.y_moments.std()
                y_scaler.mean, y_scaler.scale = mean.tolist(), _nonzero_scale(mean, std).tolist()
            else:
                y_scaler.mean, y_scaler.scale = [0.0] * n_targets, [1.0] * n_targets
        return pre, y_scaler

    def _medians(self) -> np.ndarray:
        """Each numeric column's median from the sample; its exact mean if the sample holds
        none of its values, and 0 for a column with no values at all."""
        assert self.sample is not None
        sample = self.sample.values()  # (sample rows, numeric)
        fill = np.zeros(sample.shape[1])
        for j in range(sample.shape[1]):
            ok = sample[~np.isnan(sample[:, j]), j]
            if len(ok):
                fill[j] = float(_weighted_quantiles(ok, [0.5], None)[0])
            elif self.moments.n[j] > 0:
                fill[j] = self.moments.mean[j]
        return fill

    def _scaling(
        self, moments: _Moments, fill: np.ndarray, has_nan: np.ndarray
    ) -> tuple[list[float], list[float]]:
        d = len(self.pre.numeric)
        if self.pre.scaling == "quantile":  # as TablePreprocessor.fit: of the filled columns
            self.pre.knots = fit_knots(self._filled_sample(fill))
        if self.pre.scaling in ("none", "quantile") or d == 0:
            return [0.0] * d, [1.0] * d
        std = moments.std()
        if self.pre.scaling == "standard":
            return moments.mean.tolist(), _nonzero_scale(moments.mean, std).tolist()
        sample = self._filled_sample(fill)
        q25, q50, q75 = _weighted_quantiles(sample, [0.25, 0.5, 0.75], None)
        lo = np.where(has_nan, np.fmin(self.lo, fill), self.lo)
        hi = np.where(has_nan, np.fmax(self.hi, fill), self.hi)
        peak = np.maximum(hi - q50, q50 - lo)
        return q50.tolist(), _robust_spread(q25, q75, std, peak).tolist()

    def _filled_sample(self, fill: np.ndarray) -> np.ndarray:
        """The sample (rows, numeric), missing values filled when imputing."""
        sample = np.zeros((0, len(fill))) if self.sample is None else self.sample.values()
        if self.pre.missing == "impute":
            sample = np.where(np.isnan(sample), fill, sample)
        return sample


@dataclass
class _TextCount:
    """A categorical column's values so far, those that are not numbers, and the first."""

    values: int = 0
    text: int = 0
    example: Any = None
    row: int = -1


class _Moments:
    """Count, mean and sum of squared deviations per column, merged chunk by chunk (Chan,
    Golub and LeVeque); missing values (NaN) are skipped. The sum of squares is kept in units
    of the largest deviation seen, so that huge values do not overflow."""

    def __init__(self, d: int) -> None:
        self.n = np.zeros(d)
        self.mean = np.zeros(d)
        self.m2 = np.zeros(d)  # in units of self.unit**2
        self.unit = np.zeros(d)

    def update(self, a: np.ndarray) -> None:
        # a: (rows, columns)
        ok = ~np.isnan(a)
        n = ok.sum(axis=0).astype(np.float64)
        mean = np.divide(np.where(ok, a, 0.0).sum(axis=0), n, out=np.zeros_like(n), where=n > 0)
        centered = np.where(ok, a - mean, 0.0)
        unit = np.max(np.abs(centered), axis=0) if len(a) else np.zeros_like(n)
        scaled = np.divide(centered, unit, out=np.zeros_like(centered), where=unit > 0)
        self._merge(n, mean, np.sum(scaled**2, axis=0), unit)

    def merged(self, n: np.ndarray, value: np.ndarray) -> _Moments:
        """A copy with ``n[j]`` more values equal to ``value[j]`` in each column ``j``."""
        out = _Moments(len(self.n))
        out.n, out.mean, out.m2, out.unit = self.n.copy(), self.mean, self.m2, self.unit
        out._merge(n.astype(np.float64), value, np.zeros_like(value), np.zeros_like(value))
        return out

    def _merge(self, n: np.ndarray, mean: np.ndarray, m2: np.ndarray, unit: np.ndarray) -> None:
        total = self.n + n
        delta = mean - self.mean
        share = np.divide(n, total, out=np.zeros_like(n), where=total > 0)
        new_unit = np.maximum(np.maximum(self.unit, unit), np.abs(delta))
        pos = new_unit > 0
        safe = np.where(pos, new_unit, 1.0)
        m2 = (
            self.m2 * (self.unit / safe) ** 2
            + m2 * (unit / safe) ** 2
            + (delta / safe) ** 2 * self.n * share
        )
        self.m2 = np.where(pos, m2, 0.0)
        self.mean = self.mean + delta * share
        self.n, self.unit = total, new_unit

    def std(self) -> np.ndarray:
        """Population standard deviation (0 for a column without values)."""
        var = np.divide(self.m2, self.n, out=np.zeros_like(self.m2), where=self.n > 0)
        return self.unit * np.sqrt(var)


class _Reservoir:
    """A uniform random sample of at most ``size`` rows of a stream (Vitter's algorithm R),
    drawn with a seeded generator; the first ``size`` rows are kept whole and in order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seen = size, 0
        self.rng = np.random.default_rng(seed)
        self.parts: list[np.ndarray] = []  # while filling
        self.full: np.ndarray | None = None

    def update(self, a: np.ndarray) -> None:
        # a: (rows, columns)
        free = self.size - self.seen if self.full is None else 0
        if free > 0:
            self.parts.append(a[:free].copy())
            if self.seen + len(a) >= self.size:
                self.full = np.concatenate(self.parts)
                self.parts = []
        rest = a[max(free, 0) :]
        if len(rest) and self.full is not None:
            position = self.seen + max(free, 0) + np.arange(len(rest))  # of each row in the stream
            slot = self.rng.integers(0, position + 1)  # uniform in [0, position]
            hit = np.flatnonzero(slot < self.size)
            # A later row replaces an earlier one in the same slot: keep each slot's last hit.
            slots, last = np.unique(slot[hit][::-1], return_index=True)
            self.full[slots] = rest[hit[::-1][last]]
        self.seen += len(a)

    def values(self) -> np.ndarray:
        if self.full is not None:
            return self.full
        return np.concatenate(self.parts) if self.parts else np.zeros((0, 0))
