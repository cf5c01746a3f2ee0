"""Date and datetime columns as numeric features.

A date column is a datetime64 column, or text whose every value is a calendar date
(``2021-03-01``, ``2021/3/1``, ``01.03.2021``, ``3/1/2021``, with or without a time); a
pandas ``category`` column stays categorical. Whether ``01.03.2021`` is the 1st of March or
the 3rd of January is decided once, in fit, from the column's values (a first field above 12
means day first, a second field above 12 month first; when neither says, ``.`` and ``-``
dates are read day first and ``/`` dates month first), and kept, so that prediction reads a
single row the same way. Year-first text (``2021-03-01``) is never read day first.

A date column becomes a few numbers the network can use: the days since the first date seen
in fit (the trend), the year, the day of the year and the day of the week (season and week),
and the hour of the day for a column whose values carry times. The derived columns are then
scaled like any numeric column. Text that parses as dates (a CSV's ``2021-03-01``) is read as
dates at prediction too, so a model folder predicts from the file as it was written.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from .exceptions import DataError, RowNumbers, row_number

__all__ = [
    "DATE_PARTS",
    "date_parts",
    "day_first",
    "expand_dates",
    "fit_dates",
    "is_date",
    "is_text",
    "looks_like_dates",
    "parse",
    "stray_value",
]

DATE_PARTS = ("days", "year", "dayofyear", "dayofweek")  # and "hour" for datetimes
# Text that looks like a calendar date: 2021-03-01, 2021/3/1, 01.03.2021, 3/1/2021, each
# optionally followed by a time. Plain numbers (20210301) are left as numbers.
_DATE_TEXT = re.compile(
    r"^\s*(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})"
    r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?\s*$"
)


def is_date(col: pd.Series) -> bool:
    """A column of datetime64 values (with or without a time zone)."""
    return bool(pd.api.types.is_datetime64_any_dtype(col.dtype))


def is_text(col: pd.Series) -> bool:
    """A column of objects or strings (as a CSV's text columns are read)."""
    return bool(pd.api.types.is_object_dtype(col.dtype) or pd.api.types.is_string_dtype(col.dtype))


def looks_like_dates(col: pd.Series) -> bool:
    """Text whose every non-missing value is a calendar date (at least one value)."""
    if not is_text(col):
        return False
    values = col.dropna()
    first = values.iloc[0] if len(values) else None
    if not isinstance(first, str) or not _DATE_TEXT.match(first):
        return False  # the first value tells most columns apart at once
    if not all(isinstance(v, str) for v in values) or not values.str.match(_DATE_TEXT).all():
        return False
    try:
        parse(values, str(col.name), dayfirst=day_first(values))
    except DataError:
        return False
    return True


_DAY_MONTH = re.compile(r"^\s*(\d{1,2})([-/.])(\d{1,2})[-/.]\d{4}")


def day_first(values: pd.Series) -> bool | None:
    """Whether the day-month-year dates among ``values`` (text) put the day first: True
    when a first field is above 12, False when a second one is, None when they do not say
    (then ``/`` dates are read month first, ``.`` and ``-`` dates day first)."""
    parts = values.astype(str).str.extract(_DAY_MONTH).dropna()
    if parts.empty:
        return None
    first, second = parts[0].astype(int), parts[2].astype(int)
    if (first > 12).any():
        return True
    if (second > 12).any():
        return False
    return None


def stray_value(col: pd.Series) -> tuple[object, int] | None:
    """(the first value that is not a date, its position) for text that is dates but for a
    few values (at most 10% of at least 5): a typo, not a categorical column. A value shaped
    like a date that is none (2021-02-30) counts as a typo too."""
    if not is_text(col):
        return None
    values = col.dropna()
    if len(values) < 5 or not all(isinstance(v, str) for v in values):
        return None
    dates = values.str.match(_DATE_TEXT).to_numpy()
    if dates.mean() < 0.9:
        return None
    text = values.astype(object)
    parsed = _to_datetime(text, day_first(text[dates])).notna().to_numpy() & dates
    if parsed.mean() < 0.9 or parsed.all():
        return None
    at = int(np.flatnonzero(~parsed)[0])
    return values.iloc[at], int(np.flatnonzero(col.notna().to_numpy())[at])


def _to_datetime(text: pd.Series, dayfirst: bool | None) -> pd.Series:
    """Dates of ``text`` (NaT where a value is not one): year-first text as it is, and
    day-month-year text day first as ``dayfirst`` says (None: by its separator)."""
    text = text.astype(object)
    shown = text.astype(str)
    dmy = shown.str.match(_DAY_MONTH).to_numpy() & text.notna().to_numpy()
    slash = shown.str.match(r"^\s*\d{1,2}/").to_numpy()
    groups = [(~dmy, False)]
    if dayfirst is None:
        groups += [(dmy & slash, False), (dmy & ~slash, True)]
    else:
        groups += [(dmy, dayfirst)]
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    for rows, first in groups:
        if rows.any():
            part = pd.to_datetime(
                text[rows], format="mixed", dayfirst=first, utc=True, errors="coerce"
            )
            out[rows] = part.astype(out.dtype)
    return out


def parse(
    col: pd.Series, name: str, first_row: RowNumbers = 0, dayfirst: bool | None = None
) -> pd.Series:
    """``col`` as timezone-naive datetime64 (UTC for zoned values); text that is not a date,
    or numbers, are a :class:`DataError` naming the column (and the row)."""
    if is_date(col):
        out = col
    elif pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise DataError(
            f"column {name!r} held dates when the model was fitted but now holds numbers "
            f"(e.g. {col.dropna().iloc[0] if col.notna().any() else None}); give it dates, "
            "such as 2021-03-01."
        )
    else:
        try:
            out = _to_datetime(col, dayfirst)
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataError(f"column {name!r} should hold dates: {exc}.") from exc
        bad = out.isna().to_numpy() & col.notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"column {name!r} holds dates, but {col.iloc[row]!r} at row "
                f"{row_number(first_row, row)} "
                "is not one; fix it or leave it empty."
            )
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out


def date_parts(col: pd.Series) -> list[str]:
    """The derived columns of a date column: with ``hour`` when any value has a time."""
    times = col.dropna()
    has_time = bool(len(times)) and bool((times != times.dt.normalize()).any())
    return [*DATE_PARTS, "hour"] if has_time else list(DATE_PARTS)


def expand_dates(
    frame: pd.DataFrame, dates: dict[str, dict[str, Any]], first_row: RowNumbers = 0
) -> pd.DataFrame:
    """``frame`` with each date column replaced, in place, by its derived numeric columns
    (``name:days``, ``name:year``, ...); a missing date is NaN in each of them."""
    if not dates:
        return frame
    parts: dict[str, pd.Series] = {}
    for name in frame.columns:
        if name not in dates:
            parts[name] = frame[name]
            continue
        when = parse(frame[name], name, first_row, dates[name].get("dayfirst"))
        origin = pd.Timestamp(dates[name]["origin"])
        derived = {
            "days": (when - origin) / pd.Timedelta(days=1),
            "year": when.dt.year,
            "dayofyear": when.dt.day_of_year,
            "dayofweek": when.dt.day_of_week,
            "hour": when.dt.hour + when.dt.minute / 60 + when.dt.second / 3600,
        }
        for part in dates[name]["parts"]:
            parts[f"{name}:{part}"] = derived[part].astype(np.float64)
    return pd.DataFrame(parts, index=frame.index)


def fit_dates(
    frame: pd.DataFrame, names: list[str], rows: RowNumbers = 0
) -> dict[str, dict[str, Any]]:
    """What :func:`expand_dates` needs for each date column: its first date and its parts."""
    out = {}
    for name in names:
        text = not is_date(frame[name])
        dayfirst = day_first(frame[name].dropna()) if text else None
        when = parse(frame[name], name, rows, dayfirst=dayfirst)
        first = when.min()
        if pd.isna(first):
            raise DataError(f"date column {name!r} has no dates; drop it or fill it.")
        out[name] = {"origin": first.isoformat(), "parts": date_parts(when), "dayfirst": dayfirst}
        clash = [f"{name}:{p}" for p in out[name]["parts"] if f"{name}:{p}" in frame.columns]
        if clash:
            raise DataError(
                f"column {clash[0]!r} has the name of a feature derived from the date column "
                f"{name!r}; rename it."
            )
    return out
