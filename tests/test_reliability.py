"""Nothing lost, nothing leaked: outputs nnreg may replace, and model folders and checkpoints
read as untrusted input. Each case reproduces a way files were lost or leaked, then checks it
is handled."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
import torch

import nnreg
from nnreg import artifact, outputs
from nnreg.checkpoint import load_checkpoint, save_checkpoint
from nnreg.exceptions import DataError, ModelFileError, OutputError


@pytest.fixture
def fitted(table_frame: pd.DataFrame) -> nnreg.Regressor:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    return nnreg.Regressor(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- what may be replaced --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        # A TensorFlow.js export: it has a model.json, which used to be proof enough.
        lambda d: (d / "model.json").write_text('{"format": "layers-model"}'),
        lambda d: (d / "checkpoint.safetensors").write_text("not ours"),
        lambda d: (d / "notes.txt").write_text("precious"),
    ],
)
def test_foreign_folders_are_refused_and_left_byte_for_byte(tmp_path: Path, fitted, make) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    make(folder)
    (folder / "shard.bin").write_bytes(b"x" * 100)
    before = snapshot(folder)
    with pytest.raises(OutputError, match="not an nnreg model folder"):
        fitted.save(folder)
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_a_model_folder_with_a_foreign_or_edited_file_is_no_longer_replaced(
    tmp_path: Path, fitted
) -> None:
    folder = fitted.save(tmp_path / "m")
    fitted.save(folder)  # its own folder: replaced
    (folder / "mine.txt").write_text("added by hand")
    with pytest.raises(OutputError, match="mine.txt is not one of its files"):
        fitted.save(folder)
    (folder / "mine.txt").unlink()
    (folder / "config.toml").write_text("# edited\n")
    with pytest.raises(OutputError, match="config.toml was changed"):
        fitted.save(folder)
    assert (folder / "config.toml").read_text() == "# edited\n"


def test_the_training_data_is_never_inside_what_is_replaced(tmp_path: Path, fitted) -> None:
    folder = fitted.save(tmp_path / "m1")
    data = folder / "train.csv"
    with pytest.raises(OutputError, match="holds .*train.csv"):
        fitted.save(folder, protect=[data])
    with pytest.raises(OutputError, match="holds"):
        outputs.check_replaceable(tmp_path, artifact.owned, protect=[data])


def test_a_run_folder_that_holds_only_a_checkpoint_is_ours(tmp_path: Path, fitted) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    save_checkpoint(folder / "checkpoint.safetensors", {"w": torch.zeros(2)}, {"trainer": {}})
    assert artifact.owned(folder) is None
    fitted.save(folder)
    assert (folder / "model.json").is_file() and not (folder / "checkpoint.safetensors").exists()


def test_replacing_swaps_the_whole_folder_in_one_step(tmp_path: Path, fitted) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "f").write_text("a")
    (b / "f").write_text("b")
    if not outputs.exchange(a, b):
        pytest.skip("this file system cannot exchange two paths; the fallback is tested below")
    assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"


def test_a_kill_between_the_fallbacks_two_renames_is_repaired(tmp_path: Path, fitted) -> None:
    # Without an atomic exchange the old folder is moved aside first; a process killed there
    # leaves the name absent, and the next write to it puts the old folder back.
    folder = fitted.save(tmp_path / "m")
    before = snapshot(folder)
    aside = tmp_path / ".m.nnreg-999999999-0123abcd.old"  # a process id that is not running
    os.rename(folder, aside)
    outputs.clean_stale(folder)
    assert snapshot(folder) == before and not aside.exists()


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path, fitted) -> None:
    dead = tmp_path / ".m.nnreg-999999999-0123abcd.tmp"
    dead.mkdir()
    (dead / "weights.safetensors").write_text("half")
    alive = tmp_path / f".m.nnreg-{os.getpid()}-0123abcd.tmp"  # a write in progress
    alive.mkdir()
    other = tmp_path / ".m.something.tmp"  # not nnreg's naming: not ours to judge
    other.mkdir()
    fitted.save(tmp_path / "m")
    assert not dead.exists() and alive.exists() and other.exists()


def test_files_are_written_with_the_users_umask(tmp_path: Path, fitted) -> None:
    previous = os.umask(0o022)
    try:
        folder = fitted.save(tmp_path / "m")
        outputs.write_file_atomic(tmp_path / "p.csv", lambda p: p.write_text("x"))
    finally:
        os.umask(previous)
    assert (folder.stat().st_mode & 0o777) == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(
        sorted(p.name for p in folder.iterdir()), 0o644
    )
    assert ((tmp_path / "p.csv").stat().st_mode & 0o777) == 0o644


# -- model folders as untrusted input ---------------------------------------------------------


def test_a_symlinked_history_neither_leaks_nor_breaks_prediction(
    tmp_path: Path, fitted, table_frame: pd.DataFrame
) -> None:
    secret = tmp_path / "credentials"
    secret.write_text("epoch,train_loss\nAKIA-SECRET-KEY,1\n")
    folder = fitted.save(tmp_path / "m")
    (folder / "history.csv").unlink()
    (folder / "history.csv").symlink_to(secret)
    with pytest.raises(ModelFileError) as info:
        nnreg.load(folder)
    assert "SECRET" not in str(info.value) and "symbolic link" in str(info.value)
    X = table_frame[["a", "b", "c"]]
    np.testing.assert_array_equal(nnreg.load(folder, history=False).predict(X), fitted.predict(X))


def test_a_damaged_history_is_named_without_quoting_it(tmp_path: Path, fitted) -> None:
    folder = fitted.save(tmp_path / "m")
    (folder / "history.csv").write_text("epoch,train_loss\n0,SECRET\n")
    with pytest.raises(ModelFileError, match="history.csv does not match the SHA-256") as info:
        nnreg.load(folder)
    assert "SECRET" not in str(info.value)
    nnreg.load(folder, history=False)  # prediction does not read it


def edit_model_json(folder: Path, change) -> None:
    doc = json.loads((folder / "model.json").read_text())
    change(doc)
    (folder / "model.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["architecture"].update(hidden_sizes=[10**9]), "do not fit the architecture"),
        (lambda d: d.update(n_models=10**9), "do not fit the architecture"),
        (lambda d: d["architecture"].update(n_inputs=-1), "invalid architecture"),
        (lambda d: d["architecture"].update(activation="exec"), "invalid architecture"),
    ],
)
def test_absurd_sizes_fail_before_anything_is_allocated(
    tmp_path: Path, fitted, monkeypatch: pytest.MonkeyPatch, change, message: str
) -> None:
    folder = fitted.save(tmp_path / "m")
    edit_model_json(folder, change)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network was built from an unchecked model.json")

    monkeypatch.setattr(nnreg.model.MLP, "__init__", never)
    with pytest.raises(ModelFileError, match=message):
        nnreg.load(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["preprocessing"]["inputs"]["center"].append(1.0), "inconsistent 'center'"),
        (lambda d: d["preprocessing"]["target"].update(scale=[float("nan")]), "finite numbers"),
        (lambda d: d["preprocessing"]["target"].update(scale=[0.0]), "not positive"),
        (lambda d: d["features"].pop(), "features are not the columns"),
        (lambda d: d["training"]["params"].update(random_state=-1), "random_state must be"),
        (lambda d: d.pop("preprocessing"), "'preprocessing' is missing"),
        (
            lambda d: d["training"].update(
                epochs_cv={"epochs": 64, "folds": 3, "candidates": [32], "held_out_loss": [0.1]}
            ),
            "epochs_cv is not what nnreg writes",
        ),
        (lambda d: d["training"].update(epochs_cv=[1]), "inconsistent"),
    ],
)
def test_inconsistent_model_json_is_one_clear_error(
    tmp_path: Path, fitted, change, message: str
) -> None:
    folder = fitted.save(tmp_path / "m")
    edit_model_json(folder, change)
    with pytest.raises(ModelFileError, match=message) as info:
        nnreg.load(folder)
    assert "\n" not in str(info.value)


def _duplicate_category(d: dict) -> None:
    cats = d["preprocessing"]["inputs"]["categories"]["zone"]
    cats.append(cats[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["calibration"].update(floor=[-0.5]), "floor is not positive"),
        (lambda d: d["calibration"].update(scores=[[]]), "its held-out rows once"),
        (_duplicate_category, "inconsistent 'categories'"),
    ],
    ids=["negative-floor", "no-scores", "duplicate-category"],
)
def test_a_model_json_that_would_invert_intervals_or_repeat_a_category_is_refused(
    tmp_path: Path, change, message: str
) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=90), "zone": rng.choice(["n", "s", "e"], size=90)})
    reg = nnreg.Regressor(n_models=2, ensemble="tabm", max_iter=2, random_state=0)
    folder = reg.fit(X, X["a"] * 2).save(tmp_path / "m")
    nnreg.load(folder).predict_interval(X)  # as written, it loads and gives intervals
    edit_model_json(folder, change)
    with pytest.raises(ModelFileError, match=message) as info:
        nnreg.load(folder)
    assert "\n" not in str(info.value) and "unexpected" not in str(info.value)


def test_deeply_nested_json_is_refused(tmp_path: Path, fitted) -> None:
    folder = fitted.save(tmp_path / "m")
    (folder / "model.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelFileError, match="not valid JSON"):
        nnreg.load(folder)


def test_column_names_round_trip_through_config_toml(tmp_path: Path) -> None:
    names = ["weight [kg]", "[/x]", "emoji 😀", 'quote " back \\ slash', "tab\tnew\nline", "\x7f"]
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(40, len(names))), columns=names)
    reg = nnreg.Regressor(hidden_layer_sizes=(4,), max_iter=1, random_state=0)
    reg.fit(frame, frame[names[0]] * 2)
    folder = reg.save(tmp_path / "m", run_settings={"features": names})
    settings = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))
    assert settings["data"]["features"] == names
    assert list(nnreg.load(folder).feature_names_in_) == names


# -- checkpoints --------------------------------------------------------------------------------


def test_a_flipped_checkpoint_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"generator": torch.arange(64, dtype=torch.uint8)}, {"trainer": {}})
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the generator state
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        load_checkpoint(path)


def test_resuming_on_other_data_is_refused(tmp_path: Path, table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]], table_frame["y"]
    ckpt = tmp_path / "checkpoint.safetensors"
    params = {"hidden_layer_sizes": (8,), "max_iter": 4, "random_state": 0}
    nnreg.Regressor(**params).fit(X, y, checkpoint=ckpt, checkpoint_every=2)
    nnreg.Regressor(**params).fit(X, y, resume=ckpt)  # the same run continues
    changed = X.assign(a=X["a"] + 1.0)
    with pytest.raises(DataError, match="made from other data or settings"):
        nnreg.Regressor(**params).fit(changed, y, resume=ckpt)
    with pytest.raises(DataError, match="made from other data or settings"):
        nnreg.Regressor(**{**params, "hidden_layer_sizes": (9,)}).fit(X, y, resume=ckpt)
