"""The settings loader: preset < config file < resume checkpoint < overrides, checked once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nnreg
from cli_helpers import run
from nnreg.artifact import CHECKPOINT
from nnreg.exceptions import ConfigError
from nnreg.recipe import PRESETS
from nnreg.settings import RunSettings, load_settings, read_config


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _toml(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_without_a_preset_the_data_chooses_one() -> None:
    seed = load_settings()
    assert seed.preset == "seed" and seed.params == {**PRESETS["seed"], "random_state": 0}
    assert seed.data == {
        "source": "seed_dataset",
        "n": 100,
        "random_state": 0,
        "target": ["y"],
        "features": ["x1", "x2"],
    }
    houses = load_settings(data={"path": "houses.csv", "target": ["price"]})
    assert houses.preset == "recommended" and not houses.seed_experiment
    assert houses.params["hidden_layer_sizes"] == PRESETS["recommended"]["hidden_layer_sizes"]
    assert houses.data == {"path": "houses.csv", "target": ["price"]}


def test_preset_then_config_file_then_overrides(tmp_path: Path) -> None:
    config = _toml(
        tmp_path,
        '[data]\npath = "t.csv"\ntarget = "y"\nfeatures = "a,b"\n\n'
        "[model]\nmax_iter = 7\nlearning_rate_init = 0.05\nhidden_layer_sizes = [8, 4]\n",
    )
    s = load_settings(
        preset="seed",
        config=config,
        params={"learning_rate_init": 0.2, "momentum": None},  # None: not given
        data={"features": ["a"]},
    )
    assert s.preset == "seed"
    assert s.params["optimizer"] == "sgd" and s.params["momentum"] == 0.0  # the preset
    assert s.params["max_iter"] == 7 and s.params["hidden_layer_sizes"] == (8, 4)  # the file
    assert s.params["learning_rate_init"] == 0.2  # the override
    assert s.data == {"path": "t.csv", "target": ["y"], "features": ["a"]}
    # Without a preset, a [model] table says everything; DATA starts a new [data] table.
    s = load_settings(config=config, data={"path": "other.csv"})
    assert s.preset is None and s.data == {"path": "other.csv"}
    assert s.params == {"max_iter": 7, "learning_rate_init": 0.05, "hidden_layer_sizes": (8, 4)}


def test_a_seed_given_for_the_seed_experiment_also_draws_its_rows(tmp_path: Path) -> None:
    assert load_settings(params={"random_state": 4}).data["random_state"] == 4
    config = _toml(tmp_path, '[data]\nsource = "seed_dataset"\nn = 50\nrandom_state = 3\n')
    assert load_settings(config=config).data["random_state"] == 3
    s = load_settings(config=config, params={"random_state": 9})
    assert s.data["n"] == 50 and s.data["random_state"] == 9 and s.params["random_state"] == 9


def test_resume_takes_the_checkpoints_settings_and_flags_still_win(
    tmp_path: Path, seed_frame
) -> None:
    first = load_settings(params={"max_iter": 3, "learning_rate_init": 0.01}, checkpoint_every=1)
    folder = tmp_path / "run"
    folder.mkdir()
    nnreg.Regressor(**first.params).fit(
        seed_frame[["x1", "x2"]],
        seed_frame["y"],
        checkpoint=folder / CHECKPOINT,
        checkpoint_every=1,
        checkpoint_info=first.checkpoint_info(),
    )
    config = _toml(tmp_path, "[model]\nmax_iter = 50\noptimizer = 'adam'\n")
    resumed = load_settings(preset="recommended", config=config, resume=folder)
    assert resumed.resume == folder / CHECKPOINT and resumed.checkpoint_every == 1
    assert resumed.preset == "seed" and resumed.data == first.data  # the checkpoint's, not ours
    assert resumed.params == first.params
    flagged = load_settings(resume=folder, params={"max_iter": 9}, checkpoint_every=2)
    assert flagged.params["max_iter"] == 9 and flagged.checkpoint_every == 2
    assert flagged.params["learning_rate_init"] == 0.01


def test_a_model_folders_config_repeats_the_run(capsys, tmp_path: Path, table_csv: Path) -> None:
    flags = ["--epochs", "2", "--lr", "0.02", "--hidden", "6,3", "--seed", "7", "--impute"]
    code, _, err = run(["train", str(table_csv), "-t", "y", *flags, "--out", "m", "-q"], capsys)
    assert code == 0, err
    given = load_settings(
        data={"path": table_csv, "target": ["y"]},
        params={
            "max_iter": 2,
            "learning_rate_init": 0.02,
            "hidden_layer_sizes": (6, 3),
            "random_state": 7,
            "missing": "impute",
        },
    )
    again = load_settings(config=tmp_path / "m" / "config.toml")
    assert again.preset is None  # the file holds every parameter
    saved = json.loads((tmp_path / "m" / "model.json").read_text())["training"]["params"]
    assert again.params == {**saved, "hidden_layer_sizes": tuple(saved["hidden_layer_sizes"])}
    assert (
        nnreg.Regressor(**again.params).get_params() == nnreg.Regressor(**given.params).get_params()
    )
    assert again.data == {
        "path": str(table_csv.resolve()),
        "target": ["y"],
        "features": ["a", "b", "c"],
        "holdout": 0.2,  # the share of rows the run kept out to score: the same again
    }


def test_streamed_runs_get_the_default_shuffle_buffer() -> None:
    s = load_settings(data={"path": "parts", "target": ["y"], "stream": True})
    assert s.stream and s.data["stream"] is True and s.data["shuffle_buffer"] == 65_536
    s = load_settings(data={"path": "parts", "stream": True, "shuffle_buffer": 0})
    assert s.data["shuffle_buffer"] == 0


@pytest.mark.parametrize(
    ("flags", "toml", "named"),
    [
        (["--lr", "-1"], "learning_rate_init = -1.0", "--lr/learning_rate_init must be"),
        (["--lr", "0"], "learning_rate_init = 0.0", "--lr/learning_rate_init must be"),
        (
            ["--hidden", "20,0"],
            "hidden_layer_sizes = [20, 0]",
            "every hidden size must be at least 1, got (20, 0)",
        ),
        (["--batch-size", "0"], "batch_size = 0", "--batch-size/batch_size must be a positive"),
        (["--batch-size", "half"], 'batch_size = "half"', "got 'half'"),
        (["--activation", "swish"], 'activation = "swish"', "activation must be one of"),
        (["--epochs", "0"], "max_iter = 0", "--epochs/max_iter must be a positive integer"),
        (["--dropout", "1.5"], "dropout = 1.5", "dropout must be a number in [0, 1)"),
        (["--seed", "-1"], "random_state = -1", "--seed/random_state must be"),
    ],
)
def test_a_bad_value_reads_the_same_from_a_flag_and_a_config_file(
    capsys, tmp_path: Path, flags: list[str], toml: str, named: str
) -> None:
    _toml(tmp_path, f"[model]\n{toml}\n")
    from_flag = run(["train", *flags, "--out", "a"], capsys)
    from_file = run(["train", "--config", "c.toml", "--out", "b"], capsys)
    assert from_flag[0] == from_file[0] == 2
    assert from_flag[2] == from_file[2]  # the same one line
    err = from_file[2]
    assert err.startswith("error: invalid Regressor settings: ") and named in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "runs").exists()


def test_sweep_options_are_checked_by_the_library(capsys, table_csv: Path) -> None:
    code, _, err = run(["sweep", str(table_csv), "-t", "y", "--epochs", "0"], capsys)
    assert code == 2 and "--epochs/max_iter must be a positive integer" in err
    code, _, err = run(["sweep", str(table_csv), "-t", "y", "--hidden", "8,0"], capsys)
    assert code == 2 and "sweep's hidden (hidden_layer_sizes) values must each be" in err
    assert "got (8, 0)" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nspeed = 3\n", "unknown setting 'speed' in [model]"),
        ("[data]\ncolour = 'red'\n", "unknown setting 'colour' in [data]"),
        ("[training]\nmax_iter = 3\n", "unknown table [training]"),
        ("max_iter = 3\n", "unknown table [max_iter]"),
        ("[model\n", "is not valid TOML"),
    ],
)
def test_unknown_tables_and_keys_are_errors(
    capsys, tmp_path: Path, text: str, message: str
) -> None:
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        read_config(path)
    code, _, err = run(["train", "--config", str(path)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_run_settings_and_parameters_are_checked_with_the_callers_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint_every must be a positive integer"):
        load_settings(checkpoint_every=0)
    with pytest.raises(ConfigError, match=r"shuffle_buffer must be an integer >= 0 .*got -1"):
        load_settings(data={"path": "p", "stream": True, "shuffle_buffer": -1})
    with pytest.raises(ConfigError, match="LEARNING_RATE_INIT must be"):
        load_settings(params={"learning_rate_init": -1.0}, label=str.upper)
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        load_settings(preset="fast")
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(config=tmp_path / "missing.toml")


def test_checkpoint_info_is_what_resume_reads() -> None:
    s = RunSettings(
        params={"hidden_layer_sizes": (4,), "max_iter": 2},
        data={"path": "t.csv"},
        preset="recommended",
        checkpoint_every=5,
    )
    assert s.checkpoint_info() == {
        "settings": {
            "data": {"path": "t.csv"},
            "model": {"hidden_layer_sizes": [4], "max_iter": 2},
        },
        "preset": "recommended",
        "checkpoint_every": 5,
    }


def test_resuming_a_run_without_a_checkpoint_names_the_flag(capsys, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    code, _, err = run(["train", "--resume", "run"], capsys)
    assert code == 1 and "no checkpoint at run" in err and "--checkpoint-every" in err
