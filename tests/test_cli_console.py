"""What the commands print: names from data and paths are text, never rich markup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import run


def test_column_names_and_paths_are_printed_as_given(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size[red]": rng.normal(size=40), "[bold]y": rng.normal(size=40)})
    frame.to_csv("t.csv", index=False)
    args = ["train", "t.csv", "-t", "[bold]y", "--epochs", "2", "--out", "m[bold]"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "features size[red] -> target [bold]y" in out
    assert "model folder: m[bold]" in out
    code, out, err = run(["info", "m[bold]"], capsys)
    assert code == 0, err
    assert out.startswith("m[bold]  (nnreg ") and "size[red] │ numeric" in out
