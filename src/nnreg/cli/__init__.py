"""The ``nnreg`` command: parses arguments, calls the public library, prints, sets exit codes.

One module per command group, beside what they share::

    app.py       the group, ``main``, and the one mapping of errors to exit codes
    options.py   shared option blocks; click parses syntax, the library checks values
    console.py   what is printed (rich): headers, progress, results, tables
    run.py       running a fit: signals, divergence, rank 0, --nproc
    tables.py    reading the rows a command works on
    train.py, sweep.py, predict.py (predict, evaluate), folder.py (info, plot, export)

Library modules are imported inside the commands, so ``nnreg --help`` never loads PyTorch.
"""

from __future__ import annotations

from .app import cli, main

__all__ = ["cli", "main"]
