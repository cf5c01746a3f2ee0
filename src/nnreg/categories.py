"""The string a categorical entry is compared as, in fit, prediction and the ONNX graph.

An entry is read as ``str(value)``, except that a whole number written as a float (``4.0``,
or the text ``"4.0"``) is read as the integer (``"4"``). A column of numbers coded as
categories turns from integers to floats when one value goes missing (a CSV column with an
empty cell is read as float), and its categories must stay the same: ``4`` and ``4.0`` are
one category, as they are one number.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

__all__ = ["category_text", "float_spellings", "saved_categories"]

_WHOLE = re.compile(r"-?\d+\.0")  # how str() writes a whole float below 1e16
_INTEGER = re.compile(r"-?\d+")


def category_text(value: Any) -> str:
    """``str(value)``, a whole number written as a float written as the integer."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        return str(int(value))  # also 1e16, which str() writes as '1e+16'
    text = str(value)
    return text[:-2] if text.endswith(".0") and _WHOLE.fullmatch(text) else text


def saved_categories(categories: list[str]) -> list[str]:
    """A saved column's categories as they are compared now: each through
    :func:`category_text`, unless two would then be one (a folder saved when "1" and "1.0"
    were two categories keeps its strings, and "1.0" entries count as "1")."""
    read = [category_text(c) for c in categories]
    return read if len(set(read)) == len(read) else list(categories)


def float_spellings(category: str) -> list[str]:
    """The other strings that read as ``category``: ``"4.0"`` for ``"4"`` (what ``str`` of
    the float gives), so that a runtime fed ``str(value)`` of a float column finds it."""
    return [category + ".0"] if _INTEGER.fullmatch(category) else []
