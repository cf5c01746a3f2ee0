"""Errors raised by nnreg.

Every failure a user can cause raises one of these, with a message that names the problem
and the fix. Each also subclasses the matching built-in, so callers that already catch
``ValueError`` or ``FileNotFoundError`` keep working::

    NnregError                                 anything nnreg raises on purpose
    ├── ConfigError(ValueError)                a setting is invalid (a usage error)
    ├── DataError(ValueError)                  a table or array cannot be used as given
    │   ├── DataTypeError(TypeError)           values of a type nnreg cannot read (dict, ...)
    │   └── DataFileError(FileNotFoundError)   a data file is missing, unreadable, unknown
    ├── ModelFileError(ValueError)             a model folder is missing, corrupt or too new
    │   └── OutputError                        an output path nnreg must not replace
    ├── NotFittedError(sklearn's)              predict or save before fit
    ├── TrainingDivergedError(FloatingPointError)
    │                                          the loss became NaN or infinite
    └── ProcessGroupError(RuntimeError)        another process of a distributed run stopped

Soft problems are reported with :mod:`warnings`, never printed.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

__all__ = [
    "ConfigError",
    "DataError",
    "DataFileError",
    "DataTypeError",
    "ModelFileError",
    "NnregError",
    "NotFittedError",
    "OutputError",
    "ProcessGroupError",
    "TrainingDivergedError",
    "RowNumbers",
    "row_number",
    "rows_from",
]

# How a data error names rows: a block's rows are numbered from an offset (a chunk of a
# larger table; 0 for the whole table), or each row carries its number in the table as the
# user gave it (the rows a fit kept after dropping those of weight 0).
RowNumbers: TypeAlias = "int | np.ndarray"


def row_number(rows: RowNumbers, i: int) -> int:
    """The number, in the user's table (from 0), of a block's row ``i``."""
    return int(rows[i]) if isinstance(rows, np.ndarray) else int(rows) + i


def rows_from(rows: RowNumbers) -> str:
    """`` in rows from N`` for a chunk that starts at row N > 0, else nothing: a count of
    a chunk's values is not the table's."""
    return "" if isinstance(rows, np.ndarray) or not rows else f" in rows from {int(rows)}"


class NnregError(Exception):
    """Base class of every error nnreg raises on purpose."""


class ConfigError(NnregError, ValueError):
    """A setting (hyperparameter, command-line option, config file entry) is invalid."""


class DataError(NnregError, ValueError):
    """Input data cannot be used: wrong shape, missing column, text, NaN, empty, ..."""


class DataTypeError(DataError, TypeError):
    """Input holds values of a type that cannot be turned into numbers or categories."""


class DataFileError(DataError, FileNotFoundError):
    """A data file is missing, unreadable, empty or of a format nnreg does not read."""


class ModelFileError(NnregError, ValueError):
    """A model folder is missing, corrupt, tampered with or written by a newer nnreg."""


class MissingExtraError(NnregError, ImportError):
    """An optional dependency of a feature is not installed (the message names the extra)."""


class NotFittedError(NnregError, _SklearnNotFittedError):
    """The estimator is used before ``fit`` was called."""


class OutputError(ModelFileError):
    """An output path that nnreg may not write: a folder it did not write, a file where a
    folder goes, a destination that holds the data being read."""


class TrainingDivergedError(NnregError, FloatingPointError):
    """The training loss became NaN or infinite.

    ``partial``, when set, is what the fit produced up to the last finite epoch (a
    :class:`nnreg.fitting.FitResult`), so that the estimator keeps those weights.
    """

    partial: Any = None


class ProcessGroupError(NnregError, RuntimeError):
    """A collective across the processes of a distributed run failed: another one stopped."""
