"""How the command line reads a table's columns, and what it tells the user it did.

Each column gets a role: the target, a numeric, categorical or date feature, an id (left out:
unique per row or a row number, such as the unnamed first column R writes), or dropped (by
``--drop``). Text whose every value is a calendar date is read as dates. A categorical
column with more distinct values than the model one-hot encodes is reported as capped.
Nothing is guessed silently: the roles are the table the run header prints, and
:func:`saved_roles` the one ``nnreg info`` prints.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .data import _require_columns
from .dates import is_date, is_text, looks_like_dates, stray_value
from .exceptions import DataError
from .preprocess import _refuse_stray_text

__all__ = ["Role", "read_roles", "saved_roles"]

ROW_NAME = re.compile(r"^(Unnamed: \d+|rownames|row\.names|index|)$", re.IGNORECASE)
MIN_ID_ROWS = 20  # fewer rows: a unique column may be a real feature of a tiny table


@dataclass(frozen=True)
class Role:
    """One column: ``role`` is target, numeric, categorical, date, id or dropped."""

    name: str
    role: str
    note: str = ""


def read_roles(
    frame: pd.DataFrame,
    targets: Sequence[str],
    features: Sequence[str] | None,
    categorical: Sequence[str] = (),
    drop: Sequence[str] = (),
    max_categories: int = 32,
    source: str = "the data",
) -> tuple[list[str], list[Role]]:
    """(the feature columns, every column's role).

    Without ``features``, every column but the targets, the ``drop`` columns and id-like
    columns is a feature; given ``features`` are used as they are (no id is left out).
    """
    columns = [str(c) for c in frame.columns]
    _require_columns(list(targets), columns, source, what="target")
    if features is not None:
        _require_columns(list(features), columns, source, what="feature")
    for flag, names, clash in (
        ("--categorical", categorical, targets),
        ("--drop", drop, targets),
        ("--drop", drop, features or ()),
    ):
        both = [n for n in names if n in clash]
        if both:
            what = "the target" if clash is targets else "a feature --features names"
            raise DataError(f"{flag} names {what}, {both[0]!r}; name it in one place only.")
    _require_columns(list(drop), columns, source, what="--drop")
    given = features is not None
    roles: dict[str, Role] = {t: Role(t, "target") for t in targets}
    for name in drop:
        roles[name] = Role(name, "dropped", "--drop")
    kept = list(features) if features is not None else [c for c in frame.columns if c not in roles]
    feats = []
    for name in kept:
        why = None if given or name in categorical else id_reason(frame[name])
        if why is not None:
            roles[name] = Role(name, "id", f"{why}: left out")
            continue
        feats.append(name)
        if name not in categorical and is_text(frame[name]):
            _refuse_stray_text(frame[name])  # on every row, held-out ones included
        roles[name] = _feature_role(frame[name], name in categorical, max_categories)
    ids = [r.name for r in roles.values() if r.role == "id"]
    if ids and not feats:
        raise DataError(
            f"every column but the target looks like an id ({', '.join(ids)}); name the "
            "features with --features."
        )
    order = {c: i for i, c in enumerate(frame.columns)}
    return feats, sorted(roles.values(), key=lambda r: order.get(r.name, len(order)))


def id_reason(col: pd.Series) -> str | None:
    """Why ``col`` looks like an id rather than a feature, or None."""
    n = len(col)
    values = col.dropna()
    if n < MIN_ID_ROWS or len(values) < n or values.nunique() < n:
        return None  # ids are unique per row, and never missing
    if pd.api.types.is_integer_dtype(col.dtype):
        start = int(values.iloc[0])
        if start in (0, 1) and values.tolist() == list(range(start, start + n)):
            return "row numbers" + (", unnamed" if ROW_NAME.match(str(col.name)) else "")
        return None
    if is_text(col):
        numbers = pd.to_numeric(values.astype(str), errors="coerce").notna().mean()
        if looks_like_dates(col) or stray_value(col) is not None or numbers >= 0.5:
            return None  # one date per row is a time series; numbers are numbers, typos aside
        return "text unique per row"
    return None


def _feature_role(col: pd.Series, as_category: bool, max_categories: int) -> Role:
    name = str(col.name)
    if not as_category and (is_date(col) or looks_like_dates(col)):
        return Role(name, "date", "as days since the first, year, day of year, day of week")
    if not as_category and (
        pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype)
    ):
        return Role(name, "numeric")
    n = int(col.nunique(dropna=True))
    note = f"{n} values"
    if n > max_categories:
        note += f"; the {max_categories} commonest kept, the other {n - max_categories} share one"
    return Role(name, "categorical", note)


def saved_roles(meta: dict) -> list[Role]:
    """The roles of a model folder's columns, from its model.json (``meta``): what the model
    reads, as it was fitted."""
    pre = meta["preprocessing"]["inputs"]
    roles = []
    for f in meta["features"]:
        name = f["name"]
        if name in pre.get("dates", {}):
            roles.append(Role(name, "date", "as " + ", ".join(pre["dates"][name]["parts"])))
        elif name in pre["categorical"]:
            cats = pre["categories"][name]
            other = "; rarer ones share one column" if "__other__" in cats else ""
            kept = len([c for c in cats if c != "__other__"])
            roles.append(Role(name, "categorical", f"{kept} categories one-hot{other}"))
        else:
            roles.append(Role(name, "numeric", f"{f['dtype']}"))
    return roles + [Role(t, "target") for t in meta["targets"]]
