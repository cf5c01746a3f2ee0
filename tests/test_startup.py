"""A command line that starts at once: help, usage errors and option lists never import
PyTorch (nor scikit-learn), and the torch-free lists of names agree with the library's.

Each check runs ``nnreg`` in a fresh interpreter and reads ``sys.modules`` after it; how long
anything takes is for ``benchmarks/startup.py``, never for a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import nnreg.names
from nnreg.cli import cli

HEAVY = ("torch", "sklearn", "matplotlib", "pandas")

# Runs ``nnreg`` once for each argument list given as JSON, in this one interpreter, and
# prints, for each, its exit code and the heavy packages imported by then.
PROBE = f"""
import json, sys
from nnreg.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit as exit:
        code = exit.code
    heavy = [m for m in {HEAVY!r} if m in sys.modules]
    print(json.dumps({{"args": args, "code": code, "imported": heavy}}))
"""


def probe(*commands: list[str], cwd: Path | None = None) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_no_help_of_any_command_imports_torch() -> None:
    helps = [["--help"], ["--version"], *([name, "--help"] for name in sorted(cli.commands))]
    found = probe(*helps)
    assert [r["args"] for r in found] == helps
    for result in found:  # the first one that imports something names the culprit
        assert result["code"] == 0 and result["imported"] == [], result


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--epochs", "abc"],
        ["train", "--preset", "fastest"],
        ["train", "--activation"],
        ["predict"],
        ["predict", "m", "data.csv", "--interval", "2"],
        ["sweep", "--no-such-flag"],
        ["nonsense"],
    ],
)
def test_an_argument_error_does_not_import_torch(args: list[str]) -> None:
    (result,) = probe(args)
    assert result["code"] == 2 and result["imported"] == [], result


@pytest.mark.xfail(
    strict=True,
    reason="info checks the folder as predict does (nnreg.restore), and that check lives in "
    "modules that import torch (recipe, train, ensemble)",
)
def test_info_does_not_import_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_helpers import run

    assert run(["train", "--epochs", "1", "-q", "--out", str(tmp_path / "m")], capsys)[0] == 0
    (result,) = probe(["info", str(tmp_path / "m")])
    assert result["code"] == 0 and "torch" not in result["imported"], result  # type: ignore[operator]


def test_the_names_the_command_line_lists_are_the_librarys() -> None:
    from nnreg import model, preprocess, recipe, train

    assert tuple(model.ACTIVATIONS) == nnreg.names.ACTIVATIONS
    assert tuple(train.OPTIMIZERS) == nnreg.names.OPTIMIZERS
    assert tuple(train.LOSSES) == nnreg.names.LOSSES
    assert tuple(train.SCHEDULES) == nnreg.names.SCHEDULES
    assert tuple(preprocess.SCALINGS) == nnreg.names.SCALINGS
    assert tuple(recipe.EMBEDDINGS) == nnreg.names.EMBEDDINGS
    assert tuple(recipe.ENSEMBLES) == nnreg.names.ENSEMBLES


def test_train_help_lists_the_choices() -> None:
    from click.testing import CliRunner

    shown = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    assert "[relu|gelu|silu|tanh]" in shown and "[seed|recommended|plain]" in shown
