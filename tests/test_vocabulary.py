"""The command line speaks its own words: flags for the library's parameters, rows counted as
a file's rows, --debug anywhere on the line."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pandas as pd
import pytest

from cli_helpers import run
from nnreg.cli.app import cli
from nnreg.cli.vocabulary import flags_of, with_flags

FLAGS = flags_of(cli.commands.values())


@pytest.mark.parametrize(
    ("said", "meant"),
    [
        ("use n_models > 1 or early_stopping=True.", "use --n-models above 1 or --early-stopping."),
        ("use missing='impute' to fill them", "use --impute to fill them"),
        ("with early_stopping=False", "with --no-early-stopping"),
        ("learning_rate_init=0.1 diverged", "--lr 0.1 diverged"),
        ("batch_size >= 2", "--batch-size of at least 2"),
        ("column 'city=Oslo' and foo=3 stay", "column 'city=Oslo' and foo=3 stay"),
        ("first at row 0); in rows from 100", "first at row 1); in rows from 101"),
        # quoted names are the user's text: columns called like parameters or row phrases
        ("column 'batch_size=5' at row 2", "column 'batch_size=5' at row 3"),
        (
            'column "it\'s max_iter=3", use max_iter=3',
            'column "it\'s max_iter=3", use --epochs 3',
        ),
        (
            "the model's columns 'at row 7', 'n_models > 1'",
            "the model's columns 'at row 7', 'n_models > 1'",
        ),
    ],
)
def test_parameters_are_said_as_their_flags(said: str, meant: str) -> None:
    assert with_flags(said, FLAGS, rows_in_file=True) == meant


def table(tmp_path: Path, name: str = "t.csv", n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=n), "city": rng.choice(["a", "b"], n)})
    frame["y"] = frame["x"] * 2
    frame.loc[6, "city"] = None  # the 7th row under the header
    frame.to_csv(tmp_path / name, index=False)
    return tmp_path / name


def test_training_errors_name_the_flag_and_the_files_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        ["train", str(table(tmp_path)), "-t", "y", "-o", str(tmp_path / "m")], capsys
    )
    assert code == 1
    assert "(first at row 7)" in err and "use --impute to treat missing" in err
    assert "missing=" not in err and len(err.strip().splitlines()) == 1


def test_prediction_errors_say_how_the_model_was_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = table(tmp_path)
    frame = pd.read_csv(data).dropna()
    frame.to_csv(tmp_path / "full.csv", index=False)
    args = [
        "train",
        str(tmp_path / "full.csv"),
        "-t",
        "y",
        "--epochs",
        "2",
        "-o",
        str(tmp_path / "m"),
    ]
    assert run(args, capsys)[0] == 0
    code, _, err = run(
        ["predict", str(tmp_path / "m"), str(data), "-o", str(tmp_path / "p.csv")], capsys
    )
    assert code == 1 and "fitted without --impute" in err and "again with --impute" in err
    args = ["predict", str(tmp_path / "m"), str(tmp_path / "full.csv"), "--interval", "0.9"]
    code, _, err = run([*args, "-o", str(tmp_path / "q.csv")], capsys)
    assert code != 0 and "--interval needs a model" in err
    assert "--n-models above 1 or --early-stopping" in err and "predict_interval" not in err


def test_a_stray_word_in_numbers_names_the_categorical_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = "".join(f"{i},{i}\n" for i in range(30))
    (tmp_path / "t.csv").write_text("a,y\n" + lines + "oops,3\n")
    code, _, err = run(
        ["train", str(tmp_path / "t.csv"), "-t", "y", "-o", str(tmp_path / "m")], capsys
    )
    assert code == 1 and "'oops' at row 31" in err and "--categorical COLUMN" in err


def test_debug_works_anywhere_on_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(table(tmp_path))
    code, _, err = run(["train", data, "-t", "y", "--debug", "-o", str(tmp_path / "m")], capsys)
    assert code == 1 and "Traceback" in err and "DataError" in err
    code, _, err = run(["train", data, "-t", "y", "-o", str(tmp_path / "m")], capsys)
    assert code == 1 and "Traceback" not in err


def test_every_option_says_what_it_does_and_train_help_shows_the_presets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, command in cli.commands.items():
        quiet = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
        assert quiet == [], f"nnreg {name}: options without help text: {quiet}"
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())  # as one line: click wraps help text
    for shown in (
        "[seed 0.001; recommended 0.003; plain 0.003]",
        "[seed 20,20; recommended 128,128,128; plain 128,128,128]",
        "[seed sgd; recommended adamw; plain adamw]",
        "[seed 500; recommended auto; plain 128]",
        "[seed none; recommended standard; plain standard]",
        "[seed none; recommended auto; plain none]",
    ):
        assert shown in text
