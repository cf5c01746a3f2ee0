"""Library messages in the command line's words.

The library names its parameters as Python does (``missing='impute'``, ``n_models > 1``,
``early_stopping=True``); a command-line user needs the flag that sets them. :func:`with_flags`
rewrites every such mention for the flags of the commands in the ``nnreg`` group, and row
numbers (counted from 0 in the library, as pandas does) as the data rows of the file, from 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import click

__all__ = ["flags_of", "with_flags"]

# name=value, name=True/False, and name > N (or >=, <, <=), for a known parameter name.
_ASSIGNED = re.compile(r"\b([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|True|False|-?[\d.e+-]+\b)")
_COMPARED = re.compile(r"\b([a-z][a-z0-9_]*) (>=|<=|>|<) (-?\d[\d.]*)")
_WORDS = {">": "above", ">=": "of at least", "<": "below", "<=": "of at most"}
_ROW = re.compile(r"\b(at row|rows from) (\d+)\b")
# A quoted name (a column's, a file's), as repr() quotes it: a quote that follows neither a
# word (an apostrophe: "the model's") nor "=" (a quoted value: missing='impute'). What it
# holds is the user's text, never rewritten: a column may be called "batch_size=5".
_QUOTED = re.compile(r"""(?<![\w=])('[^']*'|"[^"]*")""")


def flags_of(commands: Iterable[click.Command]) -> dict[str, click.Option]:
    """Parameter name -> the option that sets it, over ``commands``."""
    found: dict[str, click.Option] = {}
    for command in commands:
        for p in command.params:
            if isinstance(p, click.Option) and p.name and p.name not in found:
                found[p.name] = p
    return found


def _flag(option: click.Option) -> str:
    return max(option.opts, key=len)


def with_flags(message: str, options: dict[str, click.Option], rows_in_file: bool) -> str:
    """``message`` with each ``name=value`` and ``name > N`` of a parameter that a flag
    sets said as that flag; with ``rows_in_file``, rows numbered from 1 (the first data row
    of a file, under its header). Quoted names are left as they are."""

    def assigned(m: re.Match[str]) -> str:
        option = options.get(m.group(1))
        if option is None:
            return m.group(0)
        value = m.group(2).strip("'\"")
        if option.is_flag:
            on = option.flag_value if not isinstance(option.flag_value, bool) else True
            wanted = value == str(on) or value == "True"
            if option.secondary_opts and value == "False":
                return option.secondary_opts[0]
            return _flag(option) if wanted else f"without {_flag(option)}"
        return f"{_flag(option)} {value}"

    def compared(m: re.Match[str]) -> str:
        option = options.get(m.group(1))
        if option is None or option.is_flag:
            return m.group(0)
        return f"{_flag(option)} {_WORDS[m.group(2)]} {m.group(3)}"

    def rewrite(text: str) -> str:
        text = _COMPARED.sub(compared, _ASSIGNED.sub(assigned, text))
        if rows_in_file:
            text = _ROW.sub(lambda m: f"{m.group(1)} {int(m.group(2)) + 1}", text)
        return text

    parts, end = [], 0
    for quoted in _QUOTED.finditer(message):  # rewrite only what lies between quoted names
        parts += [rewrite(message[end : quoted.start()]), quoted.group(0)]
        end = quoted.end()
    return "".join([*parts, rewrite(message[end:])])
