"""Fitted input and target transforms, kept as plain JSON-able state.

:class:`TablePreprocessor` turns a table of numeric and categorical columns into the float
matrix the network sees:

* numeric columns: optional median imputation with a missing-indicator column, then
  ``"standard"`` scaling (mean/std), ``"robust"`` scaling (median/IQR followed by a smooth
  clip to about +-3, as in RealMLP) or ``"none"``;
* categorical columns (strings, objects, pandas categories): one-hot over the most frequent
  categories seen in fit; rarer ones share an ``other`` column, and so do categories first
  seen at prediction.

:class:`Standardizer` centres and scales targets. Statistics honour sample weights, so an
integer weight acts exactly like repeating a row.

:class:`StreamingStatistics` fits both in one pass over chunks of a table too large for memory
(see :mod:`nnreg.stream`): exact means, standard deviations and category counts, and medians
and quartiles from a bounded, seeded sample of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import DataError

__all__ = [
    "SCALINGS",
    "Standardizer",
    "StreamingStatistics",
    "TablePreprocessor",
    "is_categorical",
]

SCALINGS = ("standard", "robust", "none")
MISSING = ("error", "impute")
SMOOTH_CLIP = 3.0  # robust-scaled values are squashed smoothly towards +-3
OTHER = "__other__"
MISSING_CATEGORY = "__missing__"


def is_categorical(col: pd.Series) -> bool:
    """Strings, objects, booleans-as-objects and pandas categories are categorical."""
    return not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col))


def _weighted_quantiles(a: np.ndarray, q: list[float], w: np.ndarray | None) -> np.ndarray:
    # "inverted_cdf" is the method numpy supports with weights; with integer weights it gives
    # exactly what the repeated rows would.
    return np.quantile(a, q, axis=0, weights=w, method="inverted_cdf")


@dataclass
class Standardizer:
    """Per-column ``(x - mean) / scale``; a constant column gets scale 1."""

    enabled: bool = True
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)

    def fit(self, a: np.ndarray, sample_weight: np.ndarray | None = None) -> Standardizer:
        # a: (rows, columns)
        if not self.enabled:
            self.mean, self.scale = [0.0] * a.shape[1], [1.0] * a.shape[1]
            return self
        mean = np.average(a, axis=0, weights=sample_weight)
        std = _spread(a, mean, sample_weight)
        self.mean, self.scale = mean.tolist(), _nonzero_scale(mean, std).tolist()
        return self

    def transform(self, a: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return a
        return (a - np.asarray(self.mean)) / np.asarray(self.scale)

    def inverse_transform(self, a: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return a
        return a * np.asarray(self.scale) + np.asarray(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "mean": list(self.mean), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        return cls(enabled=bool(d["enabled"]), mean=list(d["mean"]), scale=list(d["scale"]))


@dataclass
class TablePreprocessor:
    """Fitted transform from a DataFrame of raw features to a float matrix.

    Parameters
    ----------
    scaling : {'standard', 'robust', 'none'}
    missing : {'error', 'impute'}
        What to do with NaN (numeric) or missing (categorical) entries: raise a
        :class:`DataError` that names the column, or fill numeric ones with the median plus a
        0/1 indicator column, and treat categorical ones as a category of their own.
    max_categories : int
        One-hot columns per categorical feature, most frequent first; the rest share one.
    """

    scaling: str = "standard"
    missing: str = "error"
    max_categories: int = 32
    columns: list[str] = field(default_factory=list)  # as given to fit, in order
    dtypes: dict[str, str] = field(default_factory=dict)
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    center: list[float] = field(default_factory=list)  # per numeric column
    scale: list[float] = field(default_factory=list)
    fill: list[float] = field(default_factory=list)  # median of each numeric column
    indicators: list[str] = field(default_factory=list)  # numeric columns with NaN in fit
    categories: dict[str, list[str]] = field(default_factory=dict)

    def fit(
        self, frame: pd.DataFrame, sample_weight: np.ndarray | None = None
    ) -> TablePreprocessor:
        self.columns = [str(c) for c in frame.columns]
        self.dtypes = {c: str(frame[c].dtype) for c in self.columns}
        self.numeric = [c for c in self.columns if not is_categorical(frame[c])]
        self.categorical = [c for c in self.columns if is_categorical(frame[c])]
        for c in self.categorical:
            _refuse_stray_text(frame[c])
        num = self._numeric_block(frame)  # (rows, numeric)
        w = sample_weight
        nan = np.isnan(num)
        self.indicators = [c for c, has in zip(self.numeric, nan.any(axis=0), strict=True) if has]
        fill = []
        for j in range(num.shape[1]):
            ok = ~nan[:, j]
            if self.missing != "impute":  # NaN is refused before it could need a fill
                fill.append(0.0)
                continue
            col_w = None if w is None else w[ok]
            if not ok.any() or (col_w is not None and col_w.sum() <= 0):
                fill.append(0.0)
            else:
                fill.append(float(_weighted_quantiles(num[ok, j], [0.5], col_w)[0]))
        self.fill = fill
        if self.missing == "impute":
            num = np.where(nan, np.asarray(fill), num)
        self.center, self.scale = self._fit_scaling(num, w)
        self.categories = {c: self._fit_categories(frame[c], w) for c in self.categorical}
        return self

    def _fit_scaling(
        self, num: np.ndarray, w: np.ndarray | None
    ) -> tuple[list[float], list[float]]:
        d = num.shape[1]
        if self.scaling == "none" or d == 0:
            return [0.0] * d, [1.0] * d
        if self.scaling == "standard":
            st = Standardizer().fit(num, w)
            return st.mean, st.scale
        q25, q50, q75 = _weighted_quantiles(num, [0.25, 0.5, 0.75], w)
        flat = q75 <= q25
        std = np.zeros(d)  # needed only where the quartiles coincide
        if flat.any():
            std[flat] = _spread(num[:, flat], np.average(num[:, flat], axis=0, weights=w), w)
        peak = np.max(np.abs(num - q50), axis=0)
        return q50.tolist(), _robust_spread(q25, q75, std, peak).tolist()

    def _fit_categories(self, col: pd.Series, w: np.ndarray | None) -> list[str]:
        values = self._category_values(col)
        weights = np.ones(len(values)) if w is None else w
        counts = pd.Series(weights).groupby(values).sum()
        # Most frequent first, ties by name, so the encoding does not depend on row order.
        order = sorted(counts.index, key=lambda v: (-counts[v], v))
        kept = order[: self.max_categories]
        return kept + ([OTHER] if len(order) > len(kept) else [])

    def transform(self, frame: pd.DataFrame, first_row: int = 0) -> np.ndarray:
        """(rows, features) raw -> (rows, n_outputs) float64.

        ``first_row`` is the number of the frame's first row in a larger table, for errors
        about chunks of one (rows are numbered from 0).
        """
        num = self._numeric_block(frame, first_row)
        nan = np.isnan(num)
        parts = []
        if self.numeric:
            z = np.where(nan, np.asarray(self.fill), num) if self.missing == "impute" else num
            if self.scaling != "none":  # "none" keeps the raw values (center 0, scale 1)
                z = (z - np.asarray(self.center)) / np.asarray(self.scale)
            if self.scaling == "robust":
                z = z / np.sqrt(1.0 + (z / SMOOTH_CLIP) ** 2)
            parts.append(z)
        if self.indicators:
            idx = [self.numeric.index(c) for c in self.indicators]
            parts.append(nan[:, idx].astype(np.float64))
        for c in self.categorical:
            cats = self.categories[c]
            values = self._category_values(frame[c], first_row)
            codes = pd.Index(cats).get_indexer(values)  # -1: not among cats
            if OTHER in cats:
                codes = np.where(codes < 0, cats.index(OTHER), codes)
            onehot = np.zeros((len(values), len(cats)))
            rows = np.flatnonzero(codes >= 0)
            onehot[rows, codes[rows]] = 1.0
            parts.append(onehot)
        return np.hstack(parts) if parts else np.zeros((len(frame), 0))

    @property
    def output_names(self) -> list[str]:
        names = list(self.numeric) + [f"{c}__missing" for c in self.indicators]
        for c in self.categorical:
            names += [f"{c}={v}" for v in self.categories[c]]
        return names

    def _numeric_block(self, frame: pd.DataFrame, first_row: int = 0) -> np.ndarray:
        if not self.numeric:
            return np.zeros((len(frame), 0))
        for c in self.numeric:
            if is_categorical(frame[c]):
                raise DataError(
                    f"column {c!r} was numeric when the model was fitted but now holds text "
                    f"(e.g. {_first_text(frame[c])!r}); give it numbers."
                )
        block = frame[self.numeric].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(block).any():
            row, col = map(int, np.argwhere(np.isinf(block))[0])
            raise DataError(
                f"column {self.numeric[col]!r} has infinite values (first at row "
                f"{first_row + row}); "
                "replace or drop them."
            )
        if self.missing == "error" and np.isnan(block).any():
            row, col = map(int, np.argwhere(np.isnan(block))[0])
            count = int(np.isnan(block[:, col]).sum())
            where = "" if first_row == 0 else f" in rows from {first_row}"
            raise DataError(
                f"column {self.numeric[col]!r} has {count} missing values{where} (first at row "
                f"{first_row + row}); "
                "fill or drop them, or use missing='impute' to fill "
                "them with the median and add a missing-indicator column."
            )
        return block

    def _category_values(self, col: pd.Series, first_row: int = 0) -> np.ndarray:
        missing = col.isna().to_numpy()
        if missing.any() and self.missing == "error":
            row = first_row + int(np.flatnonzero(missing)[0])
            where = "" if first_row == 0 else f" in rows from {first_row}"
            raise DataError(
                f"categorical column {col.name!r} has {int(missing.sum())} missing values"
                f"{where} (first at row {row}); fill them, or use missing='impute' to treat "
                "missing as a category of its own."
            )
        values = col.astype(object).to_numpy()
        values = np.where(missing, MISSING_CATEGORY, values)
        return np.asarray([str(v) for v in values], dtype=object)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scaling": self.scaling,
            "missing": self.missing,
            "max_categories": self.max_categories,
            "columns": list(self.columns),
            "dtypes": dict(self.dtypes),
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "center": list(self.center),
            "scale": list(self.scale),
            "fill": list(self.fill),
            "indicators": list(self.indicators),
            "categories": {k: list(v) for k, v in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TablePreprocessor:
        return cls(**d)


def _spread(a: np.ndarray, mean: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Weighted standard deviation per column, computed without overflow for huge values."""
    centered = a - mean  # (rows, columns)
    peak = np.max(np.abs(centered), axis=0) if len(a) else np.zeros(a.shape[1])
    unit = np.where(peak > 0, peak, 1.0)
    return unit * np.sqrt(np.average((centered / unit) ** 2, axis=0, weights=w))


def _first_text(col: pd.Series) -> Any:
    values = col.dropna()
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[numbers.isna()]
    return bad.iloc[0] if len(bad) else (values.iloc[0] if len(values) else None)


def _refuse_stray_text(col: pd.Series) -> None:
    """A column of numbers with a few words in it is a typo, not a categorical feature."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return
    values, text, example, row = _count_text(col)
    _check_stray_text(str(col.name), values, text, example, row)


def _count_text(col: pd.Series) -> tuple[int, int, Any, int]:
    """(non-missing values, those that are not numbers, the first such value, its position
    among the non-missing values)."""
    values = col.dropna()
    text = pd.to_numeric(values.astype(str), errors="coerce").isna().to_numpy()
    if not text.any():
        return len(values), 0, None, -1
    first = int(np.flatnonzero(text)[0])
    return len(values), int(text.sum()), values.iloc[first], first


def _check_stray_text(name: str, values: int, text: int, example: Any, row: int) -> None:
    if values >= 5 and 0 < text <= 0.05 * values:
        raise DataError(
            f"column {name!r} holds numbers but also text (e.g. {example!r} at row {row}); fix "
            "those entries, or make it categorical on purpose by storing it as pandas "
            "'category' dtype."
        )


SAMPLE_ROWS = 100_000  # rows a streamed fit keeps for medians and quartiles


class StreamingStatistics:
    """Fits a :class:`TablePreprocessor` and a target :class:`Standardizer` in one pass over
    chunks of a table, in memory that does not grow with the number of rows.

    Means, standard deviations, minima and maxima, missing-value counts and category counts
    are exact (float64, merged chunk by chunk). Medians (for ``missing='impute'``) and
    quartiles (for ``scaling='robust'``) come from a uniform sample of at most ``sample_rows``
    rows drawn by a reservoir seeded with ``seed``: exact whenever the table has no more rows
    than that, an estimate otherwise. Sample weights are not supported.

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
        pre.numeric = [c for c in pre.columns if not is_categorical(frame[c])]
        pre.categorical = [c for c in pre.columns if is_categorical(frame[c])]
        d = len(pre.numeric)
        self.moments = _Moments(d)
        self.nan_count = np.zeros(d, dtype=np.int64)
        self.lo, self.hi = np.full(d, np.inf), np.full(d, -np.inf)
        needs_sample = pre.missing == "impute" or pre.scaling == "robust"
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
                    seen.example, seen.row = example, seen.values + row
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
        if self.pre.scaling == "none" or d == 0:
            return [0.0] * d, [1.0] * d
        std = moments.std()
        if self.pre.scaling == "standard":
            return moments.mean.tolist(), _nonzero_scale(moments.mean, std).tolist()
        assert self.sample is not None
        sample = self.sample.values()
        if self.pre.missing == "impute":
            sample = np.where(np.isnan(sample), fill, sample)
        q25, q50, q75 = _weighted_quantiles(sample, [0.25, 0.5, 0.75], None)
        lo = np.where(has_nan, np.fmin(self.lo, fill), self.lo)
        hi = np.where(has_nan, np.fmax(self.hi, fill), self.hi)
        peak = np.maximum(hi - q50, q50 - lo)
        return q50.tolist(), _robust_spread(q25, q75, std, peak).tolist()


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


def _nonzero_scale(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``std``, with 1 for (numerically) constant columns."""
    return np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)


def _robust_spread(
    q25: np.ndarray, q75: np.ndarray, std: np.ndarray, peak: np.ndarray
) -> np.ndarray:
    """Robust scale from the quartiles; ``std`` where they coincide, then 1."""
    spread = (q75 - q25) / 1.349  # the IQR of a normal distribution is 1.349 sigma
    flat = spread <= 0
    # More than half the values equal: fall back to the std, then to 1.
    spread[flat] = np.where(std[flat] > 0, std[flat], 1.0)
    # A spread tiny next to the data's range would scale outliers past float64's range;
    # bounding |z| by 1e12 keeps the smooth clip finite (it maps them to ~3 anyway).
    return np.maximum(spread, 1e-12 * peak)
