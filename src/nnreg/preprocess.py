"""Fitted input and target transforms, kept as plain JSON-able state.

:class:`TablePreprocessor` turns a table of numeric and categorical columns into the float
matrix the network sees:

* numeric columns: optional median imputation with a missing-indicator column, then
  ``"standard"`` scaling (mean/std), ``"robust"`` scaling (median/IQR followed by a smooth
  clip to about +-3, as in RealMLP), ``"quantile"`` scaling (through the column's quantiles
  to a normal, see :mod:`nnreg.quantile`) or ``"none"``;
* categorical columns (strings, objects, pandas categories): one-hot over the most frequent
  categories seen in fit; rarer ones share an ``other`` column, and so do categories first
  seen at prediction;
* date and datetime columns (datetime64, or text that is all calendar dates): numeric
  columns derived from them by
  :mod:`nnreg.dates` (days since the first date, year, day of year, day of week), which are
  then imputed and scaled like the others.

:class:`Standardizer` centres and scales targets. Statistics honour sample weights, so an
integer weight acts exactly like repeating a row.

:class:`nnreg.stats.StreamingStatistics` fits both in one pass over chunks of a table too
large for memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import quantile
from .categories import category_text, saved_categories
from .dates import expand_dates, fit_dates, is_date, looks_like_dates
from .exceptions import DataError, RowNumbers, row_number, rows_from

__all__ = [
    "SCALINGS",
    "Standardizer",
    "TablePreprocessor",
    "is_categorical",
]

SCALINGS = ("standard", "robust", "quantile", "none")
MISSING = ("error", "impute")
SMOOTH_CLIP = 3.0  # robust-scaled values are squashed smoothly towards +-3
OTHER = "__other__"
MISSING_CATEGORY = "__missing__"


def is_categorical(col: pd.Series) -> bool:
    """Strings, objects, booleans-as-objects and pandas categories are categorical."""
    return not _numeric_dtype(col.dtype)


def _numeric_dtype(dtype: Any) -> bool:
    return bool(pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def _weighted_quantiles(a: np.ndarray, q: list[float], w: np.ndarray | None) -> np.ndarray:
    # "inverted_cdf" is the method numpy supports with weights; with integer weights it gives
    # exactly what the repeated rows would.
    return np.quantile(a, q, axis=0, weights=w, method="inverted_cdf")


@dataclass
class Standardizer:
    """Per-column ``(x - mean) / scale``; a constant column gets scale 1. With ``clip``, the
    inverse transform clips to the columns' fitted range (``low``, ``high``): predictions stay
    within the training target's range."""

    enabled: bool = True
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    clip: bool = False
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)

    def fit(self, a: np.ndarray, sample_weight: np.ndarray | None = None) -> Standardizer:
        # a: (rows, columns)
        if self.clip:
            self.low, self.high = a.min(axis=0).tolist(), a.max(axis=0).tolist()
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
        out = a * np.asarray(self.scale) + np.asarray(self.mean) if self.enabled else a
        return np.clip(out, self.low, self.high) if self.clip else out

    def to_dict(self) -> dict[str, Any]:
        d = {"enabled": self.enabled, "mean": list(self.mean), "scale": list(self.scale)}
        return d | ({"low": list(self.low), "high": list(self.high)} if self.clip else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        """The state saved as ``d``, checked (ValueError): equal lengths, finite means and
        finite positive scales."""
        mean, scale = finite_floats(d.get("mean"), "mean"), finite_floats(d.get("scale"), "scale")
        if not isinstance(d.get("enabled"), bool) or len(mean) != len(scale):
            raise ValueError("the target scaling is not a list of means and scales")
        if any(v <= 0 for v in scale):
            raise ValueError("a target scale is not positive")
        if "low" not in d and "high" not in d:
            return cls(enabled=d["enabled"], mean=mean, scale=scale)
        low, high = finite_floats(d.get("low"), "low"), finite_floats(d.get("high"), "high")
        ordered = len(low) == len(high) and all(a <= b for a, b in zip(low, high, strict=True))
        if len(low) != len(mean) or not ordered:
            raise ValueError("the target range is not a low and a high per target")
        return cls(d["enabled"], mean, scale, clip=True, low=low, high=high)


def finite_floats(v: Any, name: str) -> list[float]:
    """``v`` as a list of finite floats, or ValueError naming it."""
    if not isinstance(v, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
    ):
        raise ValueError(f"{name} is not a list of finite numbers")
    return [float(x) for x in v]


def _strings(v: Any, name: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{name} is not a list of names")
    return list(v)


@dataclass
class TablePreprocessor:
    """Fitted transform from a DataFrame of raw features to a float matrix.

    Parameters
    ----------
    scaling : {'standard', 'robust', 'quantile', 'none'}
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
    # date column -> its first date and derived parts; ``numeric`` names the parts
    dates: dict[str, dict[str, Any]] = field(default_factory=dict)
    knots: quantile.Knots = field(default_factory=dict)  # scaling="quantile" only

    def fit(
        self, frame: pd.DataFrame, sample_weight: np.ndarray | None = None, rows: RowNumbers = 0
    ) -> TablePreprocessor:
        """Learn the encoding from ``frame``; ``rows`` numbers its rows for data errors (see
        :data:`~nnreg.exceptions.RowNumbers`)."""
        self.columns = [str(c) for c in frame.columns]
        self.dtypes = {c: str(frame[c].dtype) for c in self.columns}
        dates = [c for c in self.columns if is_date(frame[c]) or looks_like_dates(frame[c])]
        self.dates = fit_dates(frame, dates, rows)
        frame = expand_dates(frame, self.dates, rows)
        self.numeric = [str(c) for c in frame.columns if not is_categorical(frame[c])]
        self.categorical = [str(c) for c in frame.columns if is_categorical(frame[c])]
        for c in self.categorical:
            _refuse_stray_text(frame[c], rows)
        num = self._numeric_block(frame, rows)  # (rows, numeric)
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
        self.knots = quantile.fit_knots(num, w) if self.scaling == "quantile" else {}
        self.categories = {c: self._fit_categories(frame[c], w, rows) for c in self.categorical}
        return self

    def _fit_scaling(
        self, num: np.ndarray, w: np.ndarray | None
    ) -> tuple[list[float], list[float]]:
        d = num.shape[1]
        if self.scaling in ("none", "quantile") or d == 0:  # quantile: knots instead
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

    def _fit_categories(self, col: pd.Series, w: np.ndarray | None, rows: RowNumbers) -> list[str]:
        values = self._category_values(col, rows)
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
        frame = expand_dates(frame, self.dates, first_row)
        num = self._numeric_block(frame, first_row, fitted=True)
        nan = np.isnan(num)
        parts = []
        if self.numeric:
            z = np.where(nan, np.asarray(self.fill), num) if self.missing == "impute" else num
            if self.scaling == "quantile":
                z = quantile.transform(self.knots, z)
            elif self.scaling != "none":  # "none" keeps the raw values (center 0, scale 1)
                z = (z - np.asarray(self.center)) / np.asarray(self.scale)
            if self.scaling == "robust":
                z = z / np.sqrt(1.0 + (z / SMOOTH_CLIP) ** 2)
            parts.append(z)
        if self.indicators:
            idx = [self.numeric.index(c) for c in self.indicators]
            parts.append(nan[:, idx].astype(np.float64))
        for c in self.categorical:
            cats = self.categories[c]
            values = self._category_values(frame[c], first_row, fitted=True)
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

    def _shown(self, name: str) -> str:
        """The input column behind ``name`` (a date column for its derived columns)."""
        raw = name.rsplit(":", 1)[0]
        return raw if ":" in name and raw in self.dates else name

    def _numeric_block(
        self, frame: pd.DataFrame, first_row: RowNumbers = 0, fitted: bool = False
    ) -> np.ndarray:
        if not self.numeric:
            return np.zeros((len(frame), 0))
        columns = frame.columns.tolist()
        dtypes = dict(zip(columns, frame.dtypes.tolist(), strict=True))  # no Series per column
        for c in self.numeric:
            if not _numeric_dtype(dtypes[c]):
                raise DataError(
                    f"column {c!r} was numeric when the model was fitted but now holds text "
                    f"(e.g. {_first_text(frame[c])!r}); give it numbers."
                )
        same = columns == self.numeric  # then no copy of the frame, column by column
        block = (frame if same else frame[self.numeric]).to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(block).any():
            row, col = map(int, np.argwhere(np.isinf(block))[0])
            raise DataError(
                f"column {self._shown(self.numeric[col])!r} has infinite values (first at row "
                f"{row_number(first_row, row)}); "
                "replace or drop them."
            )
        if self.missing == "error" and np.isnan(block).any():
            row, col = map(int, np.argwhere(np.isnan(block))[0])
            count = int(np.isnan(block[:, col]).sum())
            raise DataError(
                f"column {self._shown(self.numeric[col])!r} has {count} missing values"
                f"{rows_from(first_row)} (first at row {row_number(first_row, row)}); "
                + _fill_hint(fitted, "fill them with the median and add a missing-indicator column")
            )
        return block

    def _category_values(
        self, col: pd.Series, first_row: RowNumbers = 0, fitted: bool = False
    ) -> np.ndarray:
        missing = col.isna().to_numpy()
        if missing.any() and self.missing == "error":
            row = row_number(first_row, int(np.flatnonzero(missing)[0]))
            raise DataError(
                f"categorical column {col.name!r} has {int(missing.sum())} missing values"
                f"{rows_from(first_row)} (first at row {row}); "
                + _fill_hint(fitted, "treat missing as a category of its own")
            )
        values = col.astype(object).to_numpy()
        values = np.where(missing, MISSING_CATEGORY, values)
        return np.asarray([category_text(v) for v in values], dtype=object)

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
            "dates": {k: dict(v) for k, v in self.dates.items()},
        } | (
            {"knots": {k: [list(c) for c in v] for k, v in self.knots.items()}}
            if self.scaling == "quantile"
            else {}
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TablePreprocessor:
        """The state saved as ``d``, checked for consistency (ValueError names the problem):
        it may come from a file nnreg did not write."""
        if isinstance(d, dict):  # saved before date columns or quantile scaling arrived
            d = {"dates": {}, "knots": {}, **d}
        if not isinstance(d, dict) or set(d) != set(cls.__dataclass_fields__):
            raise ValueError("the input preprocessing is not a saved TablePreprocessor")
        columns, numeric = _strings(d["columns"], "columns"), _strings(d["numeric"], "numeric")
        categorical = _strings(d["categorical"], "categorical")
        n = len(numeric)
        center, scale, fill = (finite_floats(d[k], k) for k in ("center", "scale", "fill"))
        cats = d["categories"]
        checks = {
            "scaling": d["scaling"] in SCALINGS,
            "missing": d["missing"] in MISSING,
            "columns": sorted(columns) == sorted(_raw(numeric, d["dates"]) + categorical),
            "center": len(center) == len(scale) == n and all(v > 0 for v in scale),
            "fill": len(fill) in (0, n),
            "indicators": set(_strings(d["indicators"], "indicators")) <= set(numeric),
            "categories": isinstance(cats, dict)
            and set(cats) == set(categorical)
            and all(_distinct(_strings(v, "categories")) for v in cats.values()),
            "dtypes": isinstance(d["dtypes"], dict) and set(d["dtypes"]) == set(columns),
            "dates": _valid_dates(d["dates"], numeric),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"the input preprocessing has an inconsistent {bad[0]!r}")
        knots = quantile.checked_knots(d["knots"], n, d["scaling"] == "quantile")
        # Saved before 4 and 4.0 were one category: "4.0" is read as "4" (nnreg.categories)
        d = {**d, "categories": {c: saved_categories(vs) for c, vs in cats.items()}}
        return cls(**{**d, "center": center, "scale": scale, "fill": fill, "knots": knots})


def _distinct(values: list[str]) -> bool:
    return len(set(values)) == len(values)


def _raw(numeric: list[str], dates: Any) -> list[str]:
    """The input columns behind ``numeric``: a date column once for its derived columns."""
    parts = {
        f"{name}:{p}": name
        for name, spec in (dates.items() if isinstance(dates, dict) else [])
        if isinstance(spec, dict) and isinstance(spec.get("parts"), list)
        for p in spec["parts"]
    }
    return list(dict.fromkeys(parts.get(c, c) for c in numeric))


def _valid_dates(dates: Any, numeric: list[str]) -> bool:
    from .dates import DATE_PARTS

    if not isinstance(dates, dict):
        return False
    for name, spec in dates.items():
        if not (isinstance(spec, dict) and set(spec) == {"origin", "parts", "dayfirst"}):
            return False
        if not isinstance(spec["dayfirst"], (bool, type(None))):
            return False
        parts = spec["parts"]
        if not (isinstance(parts, list) and set(parts) <= {*DATE_PARTS, "hour"} and parts):
            return False
        if not all(f"{name}:{p}" in numeric for p in parts):
            return False
        try:
            pd.Timestamp(spec["origin"])
        except (ValueError, TypeError):
            return False
    return True


def _fill_hint(fitted: bool, what: str) -> str:
    """How to get past missing values: at fit, impute; at prediction, with a model fitted
    without imputation, fill them (or fit again, imputing)."""
    if fitted:
        return (
            "this model was fitted without missing='impute', so fill or drop them, or fit it "
            f"again with missing='impute' to {what}."
        )
    return f"fill or drop them, or use missing='impute' to {what}."


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


def _refuse_stray_text(col: pd.Series, rows: RowNumbers = 0) -> None:
    """A column of numbers with a few words in it is a typo, not a categorical feature."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return
    values, text, example, at = _count_text(col)
    if text:  # at is -1 without text
        _check_stray_text(str(col.name), values, text, example, row_number(rows, at))
    from .dates import stray_value

    stray = stray_value(col)
    if stray is not None:
        raise DataError(
            f"column {str(col.name)!r} holds dates but also {stray[0]!r} at row "
            f"{row_number(rows, stray[1])}, "
            "which is not one; fix it or leave it empty, or make it categorical on purpose by "
            "storing it as pandas 'category' dtype."
        )


def _count_text(col: pd.Series) -> tuple[int, int, Any, int]:
    """(non-missing values, those that are not numbers, the first such value, its position
    in the column)."""
    values = col.dropna()
    text = pd.to_numeric(values.astype(str), errors="coerce").isna().to_numpy()
    if not text.any():
        return len(values), 0, None, -1
    first = int(np.flatnonzero(text)[0])
    position = int(np.flatnonzero(col.notna().to_numpy())[first])
    return len(values), int(text.sum()), values.iloc[first], position


def _check_stray_text(name: str, values: int, text: int, example: Any, row: int) -> None:
    if values >= 5 and 0 < text <= 0.05 * values:
        raise DataError(
            f"column {name!r} holds numbers but also text (e.g. {example!r} at row {row}); fix "
            "those entries, or make it categorical on purpose by storing it as pandas "
            "'category' dtype."
        )


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
