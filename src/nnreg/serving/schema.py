"""The request contract of a served model, derived from its own feature list.

A request body is JSON: a list of records (``[{"x1": 0.1, "x2": 1.3}, ...]``) or an object of
columns (``{"x1": [...], "x2": [...]}``). :meth:`Contract.frame` turns it into the DataFrame
that :meth:`nnreg.Regressor.predict` reads, with the dtypes the model was fitted on, or raises
:class:`RequestError` with the HTTP status and one sentence naming the first problem: a
missing or unknown feature, text where a number was fitted, null without imputation, too many
rows. :meth:`Contract.openapi` is the same contract as JSON Schema, for the OpenAPI document.

Numbers are JSON numbers (true/false also for a feature fitted as booleans); a categorical
feature takes text (integers and booleans are read as their text, as a CSV column would be);
null is a missing value, accepted only from a model trained with ``missing='impute'``. Values
are addressed in messages as ``body[3]["x1"]`` (records) or ``body["x1"][3]`` (columns),
counting from 0 as JSON does.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ..estimator import Regressor

__all__ = ["Contract", "Feature", "RequestError", "Rows", "parse_json"]

NUMBER, BOOLEAN, TEXT = "number", "boolean", "text"
NUMBERS = {int, float}  # the Python types of JSON numbers
SHOWN_CATEGORIES = 50  # categories listed in the OpenAPI schema per feature


class RequestError(Exception):
    """A request that cannot be answered: ``status`` (4xx) and one sentence, ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Feature:
    """One input column as a client must send it."""

    name: str
    kind: str  # NUMBER, BOOLEAN or TEXT
    dtype: str  # the pandas dtype it had in fit
    nullable: bool  # null (missing) is accepted: the model imputes
    categories: tuple[str, ...] = ()  # TEXT: the categories seen in fit

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "dtype": self.dtype}
        out["nullable"] = self.nullable
        if self.kind == TEXT:
            out["categories"] = list(self.categories)
        return out

    def json_schema(self) -> dict[str, Any]:
        types = {NUMBER: ["number"], BOOLEAN: ["boolean", "number"], TEXT: ["string", "integer"]}
        kinds = types[self.kind] + (["null"] if self.nullable else [])
        schema: dict[str, Any] = {"type": kinds if len(kinds) > 1 else kinds[0]}
        if self.kind == TEXT and self.dtype.startswith("datetime"):
            schema["description"] = "A date or date and time, e.g. 2024-05-01 or 2024-05-01T13:30."
        if self.kind == TEXT and self.categories:
            shown = list(self.categories[:SHOWN_CATEGORIES])
            schema["examples"] = shown[:3]
            schema["description"] = (
                "Categories seen in training: "
                + ", ".join(shown)
                + (", ..." if len(self.categories) > SHOWN_CATEGORIES else "")
            )
        return schema

    def column(self, values: list[Any], where: Callable[[int], str]) -> np.ndarray:
        """``values`` (one per row) as the array the model reads; ``where(i)`` names row i."""
        if self.kind == TEXT:
            return self._text(values, where)
        kinds = set(map(type, values))
        allowed = {int, float, bool} if self.kind == BOOLEAN else {int, float}
        if kinds <= allowed:
            try:
                arr = np.asarray(values, dtype=np.float64)
            except OverflowError:  # an integer beyond float64
                arr = np.asarray([_float(v) for v in values])
        else:
            arr = np.asarray([self._number(v, where(i)) for i, v in enumerate(values)])
        bad = np.isinf(arr) if self.nullable else ~np.isfinite(arr)  # NaN: a null, if any
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise RequestError(422, f"{where(i)}: the number is too large for float64.")
        return arr

    def _number(self, v: Any, at: str) -> float:
        if v is None:
            if not self.nullable:
                raise RequestError(422, f"{at} is null: {NO_IMPUTATION}")
            return math.nan
        if isinstance(v, bool) and self.kind == BOOLEAN:
            return float(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return _float(v)
        raise RequestError(
            422, f"{at}: expected a number, got {_shown(v)}; {self.name!r} was numeric in fit."
        )

    def _text(self, values: list[Any], where: Callable[[int], str]) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            if isinstance(v, str):
                out[i] = v
            elif v is None:
                if not self.nullable:
                    raise RequestError(422, f"{where(i)} is null: {NO_IMPUTATION}")
                out[i] = None
            elif isinstance(v, int):  # bool too: read as its text, like a CSV column
                out[i] = str(v)
            else:
                raise RequestError(
                    422,
                    f"{where(i)}: expected text (a category), got {_shown(v)}; "
                    f"{self.name!r} was categorical in fit.",
                )
        return out


NO_IMPUTATION = "this model was trained without missing='impute', so every feature needs a value."


def _key(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


def _in_records(name: str) -> Callable[[int], str]:
    return lambda i: f"body[{i}][{_key(name)}]"  # (made only for a message)


def _in_columns(name: str) -> Callable[[int], str]:
    return lambda i: f"body[{_key(name)}][{i}]"


def _float(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf


def _shown(v: Any) -> str:
    if isinstance(v, str):
        return f"the text {json.dumps(v[:40])}" + ("..." if len(v) > 40 else "")
    if isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (list, dict)):
        return "a list" if isinstance(v, list) else "an object"
    return json.dumps(v)


@dataclass
class Rows:
    """One request's checked rows: ``n`` rows as a (rows, features) float block, or as one
    array per feature."""

    n: int
    block: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)


class Contract:
    """What a model accepts: its features, in order, and the row limit."""

    def __init__(self, features: list[Feature], max_rows: int) -> None:
        self.features, self.max_rows = features, max_rows
        self.names = [f.name for f in features]
        self._keys = set(self.names)
        self._all_numbers = all(f.kind == NUMBER for f in features)
        # Built once, of Python strings: pandas checks given columns slowly, and reads the
        # names of an Arrow-backed index back slowly.
        self._index = pd.Index(self.names, dtype=object)

    @classmethod
    def of(cls, reg: Regressor, max_rows: int) -> Contract:
        from ..preprocess import OTHER

        pre = reg.preprocessor_
        features = []
        for name in pre.columns:
            dtype = pre.dtypes[name]
            if name in pre.categorical:
                kind, cats = TEXT, tuple(c for c in pre.categories[name] if c != OTHER)
            elif name in pre.dates:  # sent as text, e.g. "2024-05-01", parsed by the model
                kind, cats = TEXT, ()
            else:
                kind, cats = (BOOLEAN if dtype == "bool" else NUMBER), ()
            features.append(Feature(name, kind, dtype, pre.missing == "impute", cats))
        return cls(features, max_rows)

    def frame(self, body: Any) -> pd.DataFrame:
        """The request's rows as a DataFrame of the model's features, in its column order."""
        return self.frame_of([self.rows(body)])

    def rows(self, body: Any) -> Rows:
        """The request's rows, checked: a float block when every value is a number, else a
        column per feature."""
        if isinstance(body, list):
            block = self._number_records(body)
            if block is not None:
                return Rows(len(block), block=block)
            columns = self._records(body)
        elif isinstance(body, dict):
            columns = self._columns(body)
        else:
            raise RequestError(
                400,
                "the body must be a JSON list of records ([{feature: value, ...}, ...]) or an "
                "object of columns ({feature: [values], ...}).",
            )
        return Rows(len(next(iter(columns.values()))) if columns else 0, columns=columns)

    def frame_of(self, parts: list[Rows]) -> pd.DataFrame:
        """One DataFrame of the rows of one or several requests, in their order."""
        if all(p.block is not None for p in parts):  # one float block: built at once
            blocks = [p.block for p in parts if p.block is not None]
            block = blocks[0] if len(blocks) == 1 else np.vstack(blocks)
            return pd.DataFrame(block, columns=self._index, copy=False)
        columns = {}
        for j, name in enumerate(self.names):
            pieces = [p.block[:, j] if p.block is not None else p.columns[name] for p in parts]
            columns[name] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if all(f.kind != TEXT for f in self.features):
            block = np.column_stack([columns[n] for n in self.names])
            return pd.DataFrame(block, columns=self._index, copy=False)
        return pd.DataFrame(columns, columns=self._index, copy=False)

    def _rows(self, n: int) -> None:
        if n == 0:
            raise RequestError(422, "the request has no rows.")
        if n > self.max_rows:
            raise RequestError(
                413, f"the request has {n} rows; at most {self.max_rows} are taken at once."
            )

    def _number_records(self, body: list[Any]) -> np.ndarray | None:
        """The common case at once: records of exactly the features, all numeric and given
        as numbers. None for anything else, which :meth:`_records` checks value by value
        (and words the error for)."""
        if not self._all_numbers or not 0 < len(body) <= self.max_rows:
            return None
        names, keys = self.names, self._keys
        try:
            rows = [[r[n] for n in names] for r in body if r.keys() == keys]
        except (AttributeError, TypeError):  # a record that is not an object
            return None
        if len(rows) != len(body) or not set(map(type, chain.from_iterable(rows))) <= NUMBERS:
            return None
        try:
            block = np.array(rows, dtype=np.float64)
        except OverflowError:
            return None
        return block if np.isfinite(block).all() else None

    def _records(self, body: list[Any]) -> dict[str, np.ndarray]:
        self._rows(len(body))
        for i, record in enumerate(body):
            if not isinstance(record, dict):
                raise RequestError(400, f"body[{i}] is {_shown(record)}, not a record (object).")
            if record.keys() != self._keys:
                raise RequestError(422, f"body[{i}]: {self._mismatch(record.keys())}")
        return {
            f.name: f.column([r[f.name] for r in body], _in_records(f.name)) for f in self.features
        }

    def _columns(self, body: dict[str, Any]) -> dict[str, np.ndarray]:
        if body.keys() != self._keys:
            raise RequestError(422, f"the columns do not match the model: {self._mismatch(body)}")
        lengths = set()
        for name in self.names:
            if not isinstance(body[name], list):
                raise RequestError(
                    400, f"body[{_key(name)}] is {_shown(body[name])}, not a list of values."
                )
            lengths.add(len(body[name]))
        if len(lengths) > 1:
            counts = ", ".join(f"{n!r}: {len(body[n])}" for n in self.names)
            raise RequestError(422, f"the columns have different lengths ({counts}).")
        self._rows(lengths.pop())
        return {f.name: f.column(body[f.name], _in_columns(f.name)) for f in self.features}

    def _mismatch(self, keys: Any) -> str:
        missing = [n for n in self.names if n not in keys]
        unknown = sorted(str(k) for k in keys if k not in self._keys)
        parts = []
        if missing:
            parts.append("missing feature" + _plural(missing))
        if unknown:
            parts.append("unknown feature" + _plural(unknown))
        return "; ".join(parts) + f" (the model reads {_names(self.names)})."

    def openapi(self) -> dict[str, Any]:
        """The request body as JSON Schema: records or columns of the model's features."""
        props = {f.name: f.json_schema() for f in self.features}
        record = {
            "type": "object",
            "properties": props,
            "required": self.names,
            "additionalProperties": False,
        }
        columns = {
            "type": "object",
            "properties": {n: {"type": "array", "items": s} for n, s in props.items()},
            "required": self.names,
            "additionalProperties": False,
        }
        records = {"type": "array", "items": record, "minItems": 1, "maxItems": self.max_rows}
        return {"oneOf": [records, columns]}


def _plural(names: list[str]) -> str:
    return (
        ("s " if len(names) > 1 else " ")
        + ", ".join(repr(n) for n in names[:20])
        + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    )


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")


def parse_json(body: bytes) -> Any:
    """``body`` as JSON, strictly (orjson): UTF-8, no NaN or Infinity (send null for a missing
    value), numbers within float64; raises :class:`RequestError` (400) with the reason."""
    import orjson

    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if re.search(rb"\b(NaN|-?Infinity)\b", body):
            hint = " (NaN and Infinity are not JSON numbers: send null for a missing value)"
        raise RequestError(400, f"the body is not valid JSON: {exc}{hint}.") from None
