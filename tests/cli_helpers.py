"""Running the ``nnreg`` command in-process, as the CLI tests do."""

from __future__ import annotations

import pytest

from nnreg.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Invoke ``nnreg ARGS``; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err
