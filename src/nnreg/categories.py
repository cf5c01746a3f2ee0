"""The string a categorical entry is compared as, in fit, prediction and the ONNX graph.

An entry is read as ``str(value)``, except that a whole number written as a float (``4.0``,
or the text ``"4.0"``) is read as the integer (``"4"``). A column of numbers coded as
categories turns from integers to floats when one value goes missing (a CSV column with an
empty cell is read as float), and its categories must stay the same: ``4`` and ``4.0`` are
one category, as they are one number.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["category_text", "distinct", "float_spellings"]

_WHOLE = re.compile(r"-?\d+\.0")  # how str() writes a whole float below 1e16
_INTEGER = re.compile(r"-?\d+")


def category_text(value: Any) -> str:
    """``str(value)``, a whole number written as a float written as the integer."""
    text = str(value)
    return text[:-2] if text.endswith(".0") and _WHOLE.fullmatch(text) else text


def float_spellings(category: str) -> list[str]:
    """The other strings that read as ``category``: ``"4.0"`` for ``"4"`` (what ``str`` of
    the float gives), so that a runtime fed ``str(value)`` of a float column finds it."""
    return [category + ".0"] if _INTEGER.fullmatch(category) else []


def distinct(categories: list[str]) -> bool:
    """True when no two of ``categories`` read as the same category."""
    return len({category_text(c) for c in categories}) == len(categories)
