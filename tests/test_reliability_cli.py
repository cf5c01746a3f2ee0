"""Nothing lost, nothing leaked, through the command line: output folders, signals while
saving, kills at random moments, hostile names and absurd settings. Each case first
reproduced a loss, a leak or an "unexpected" error; each now ends in one line or a complete
folder."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nnreg
from cli_helpers import run
from nnreg import plot as plot_module
from nnreg.reading import read_file, sha256


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line(err: str) -> bool:
    return err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_a_foreign_out_folder_is_refused_before_training(capsys, tmp_path, table_csv) -> None:
    tfjs = tmp_path / "tfjs"
    tfjs.mkdir()
    (tfjs / "model.json").write_text('{"format": "layers-model"}')
    (tfjs / "shard.bin").write_bytes(b"x")
    before = snapshot(tfjs)
    for extra in ([], ["--checkpoint-every", "1"]):
        code, out, err = run(
            ["train", str(table_csv), "-t", "y", "--out", str(tfjs), *extra], capsys
        )
        assert code == 1 and one_line(err) and "not an nnreg model folder" in err
        assert "epoch" not in out  # refused before any training
        assert snapshot(tfjs) == before
    code, _, err = run(["sweep", str(table_csv), "-t", "y", "--out", str(tfjs)], capsys)
    assert code == 1 and one_line(err) and snapshot(tfjs) == before


def test_the_training_data_inside_out_is_refused(capsys, tmp_path, table_frame) -> None:
    folder = tmp_path / "m1"
    code, _, _ = run(["train", "--epochs", "2", "--out", str(folder)], capsys)
    assert code == 0
    table_frame.to_csv(folder / "train.csv", index=False)
    args = ["train", str(folder / "train.csv"), "-t", "y", "--epochs", "2", "--out", str(folder)]
    code, _, err = run(args, capsys)
    assert code == 1 and one_line(err) and "which this run reads" in err
    assert (folder / "train.csv").is_file()


def test_out_dot_in_a_folder_nnreg_did_not_write(capsys, tmp_path, table_csv, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "notes.txt").write_text("mine")
    for extra in ([], ["--checkpoint-every", "1"]):
        args = ["train", str(table_csv), "-t", "y", "--epochs", "2", "--out", ".", *extra]
        code, out, err = run(args, capsys)
        assert code == 1 and one_line(err) and "is the current folder" in err
        assert "epoch" not in out
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]  # nothing left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    code, out, err = run(["train", str(table_csv), "-t", "y", "--out", "."], capsys)
    assert code == 1 and "is the current folder" in err and list(empty.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("moment", ["scoring", "saving"])
def test_a_signal_while_scoring_or_saving_leaves_a_complete_folder(
    capsys, tmp_path, table_csv, monkeypatch, signum: int, moment: str
) -> None:
    sent = []

    def send() -> None:
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)

    if moment == "saving":  # the loss curve is drawn inside the folder being written
        curve = plot_module.loss_curve

        def loss_curve(*args, **kwargs):
            send()
            return curve(*args, **kwargs)

        monkeypatch.setattr(plot_module, "loss_curve", loss_curve)
    else:
        predict = nnreg.Regressor.predict

        def scored(self, *args, **kwargs):
            send()
            return predict(self, *args, **kwargs)

        monkeypatch.setattr(nnreg.Regressor, "predict", scored)
    out = tmp_path / "m"
    code, _, err = run(
        ["train", str(table_csv), "-t", "y", "--epochs", "3", "--out", str(out)], capsys
    )
    assert sent and code == 128 + signum
    assert "is complete" in err
    assert nnreg.load(out).n_iter_ == 3  # the whole run, saved


def test_evaluate_json_is_json_even_when_a_metric_is_undefined(capsys, tmp_path, table_csv) -> None:
    out = tmp_path / "m"
    assert (
        run(["train", str(table_csv), "-t", "y", "--epochs", "2", "--out", str(out)], capsys)[0]
        == 0
    )
    huge = pd.read_csv(table_csv).assign(y=1e200)  # squared errors overflow to infinity
    huge.to_csv(tmp_path / "c.csv", index=False)
    code, stdout, _ = run(["evaluate", str(out), str(tmp_path / "c.csv"), "--json"], capsys)
    assert code == 0
    found = json.loads(stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert found["mse"] is None and found["mae"] == pytest.approx(1e200)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--target", "y,y"], 1, "given twice"),
        (["--hidden", "1000000,1000000"], 1, "not enough memory"),
        (["--out", "{csv}/inside"], 1, "is a file"),
    ],
)
def test_absurd_settings_are_one_line(capsys, table_csv, args, code, message) -> None:
    args = [a.replace("{csv}", str(table_csv)) for a in args]
    base = ["train", str(table_csv), "--epochs", "1"]
    if "--target" not in args:
        base += ["-t", "y"]
    found, _, err = run([*base, *args], capsys)
    assert found == code and one_line(err) and message in err and "unexpected" not in err


def test_deeply_nested_config_is_a_settings_error(capsys, tmp_path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("[model]\nmax_iter = " + "[" * 100_000 + "]" * 100_000 + "\n")
    code, _, err = run(["train", "--config", str(path)], capsys)
    assert code == 2 and one_line(err) and "nests too deeply" in err


def test_resume_with_other_hidden_sizes_is_one_line(
    capsys, tmp_path, table_csv, monkeypatch
) -> None:
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the run dies before its final save: a checkpoint remains

    out = tmp_path / "run"
    args = ["train", str(table_csv), "-t", "y", "--epochs", "4", "--out", str(out)]
    with monkeypatch.context() as patch:
        patch.setattr(nnreg.Regressor, "save", killed)
        assert run([*args, "--checkpoint-every", "2"], capsys)[0] == 130
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors"]
    code, _, err = run(["train", "--resume", str(out), "--hidden", "9"], capsys)
    assert code == 1 and one_line(err) and "made from other data or settings" in err
    assert run(["train", "--resume", str(out)], capsys)[0] == 0  # unchanged: it resumes


def test_column_names_with_markup_and_emoji_train_and_repeat(capsys, tmp_path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["[/x]", "weight [kg]", "😀 score"])
    frame["y"] = frame.sum(axis=1)
    frame.to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "m"
    code, stdout, err = run(
        ["train", str(tmp_path / "d.csv"), "-t", "y", "--epochs", "2", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "weight [kg]" in stdout and "[/x]" in stdout
    again = tmp_path / "again"
    code, _, err = run(["train", "--config", str(out / "config.toml"), "--out", str(again)], capsys)
    assert code == 0, err
    assert read_file(again / "weights.safetensors") == read_file(out / "weights.safetensors")
    # The figures draw the emoji as a box, without a warning per missing glyph.
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        figure = tmp_path / "importance.png"
        args = ["importance", str(out), str(tmp_path / "d.csv"), "-o", str(figure)]
        code, _, err = run(args, capsys)
        assert code == 0 and figure.stat().st_size > 0, err
        data = str(tmp_path / "d.csv")
        for args in (
            ["info", str(out)],
            ["evaluate", str(out), data],
            ["plot", str(out), data, "--out-dir", str(tmp_path / "figures")],
            ["report", str(out), data, "-o", str(tmp_path / "report.html")],
            ["predict", str(out), data, "-o", str(tmp_path / "p.csv")],
        ):
            code, _, err = run(args, capsys)  # names with markup are shown as written
            assert code == 0, (args, err)
    assert not [w for w in said if "Glyph" in str(w.message)]


def test_plot_into_the_model_folder_keeps_it_nnregs(capsys, tmp_path, table_csv) -> None:
    out = tmp_path / "m"
    args = ["train", str(table_csv), "-t", "y", "--epochs", "2", "--out", str(out)]
    assert run(args, capsys)[0] == 0
    assert run(["plot", str(out), str(table_csv)], capsys)[0] == 0
    assert (out / "pred_vs_actual.png").is_file()
    assert run(args, capsys)[0] == 0  # still a folder nnreg may replace
    assert not (out / "pred_vs_actual.png").exists()


def test_outputs_never_overwrite_the_inputs_or_files_nnreg_did_not_write(
    capsys, tmp_path, table_csv
) -> None:
    model = tmp_path / "m"
    assert (
        run(["train", str(table_csv), "-t", "y", "--epochs", "2", "--out", str(model)], capsys)[0]
        == 0
    )
    before, data = snapshot(model), table_csv.read_bytes()
    mine = tmp_path / "mine.csv"
    mine.write_text("my,own\n1,2\n")
    figure = tmp_path / "figs" / "loss.png"
    figure.parent.mkdir()
    figure.write_bytes(b"\x89PNG my own drawing")
    attempts = [
        ["predict", str(model), str(table_csv), "-o", str(model / "model.json")],
        ["predict", str(model), str(table_csv), "-o", str(model / "new.csv")],
        ["predict", str(model), str(table_csv), "-o", str(table_csv)],
        ["predict", str(model), str(table_csv), "-o", str(mine)],
        ["export", str(model), str(table_csv)],
        ["export", str(model), str(model / "model.json")],
        ["plot", str(model), "--out-dir", str(figure.parent)],
    ]
    for args in attempts:
        code, _, err = run(args, capsys)
        assert code == 1 and one_line(err), (args, err)
    assert snapshot(model) == before and table_csv.read_bytes() == data
    assert mine.read_text() == "my,own\n1,2\n" and figure.read_bytes() == b"\x89PNG my own drawing"
    preds = tmp_path / "preds.csv"  # nnreg's own outputs are replaced as before
    for _ in range(2):
        assert run(["predict", str(model), str(table_csv), "-o", str(preds)], capsys)[0] == 0
    for _ in range(2):
        assert run(["plot", str(model), "--out-dir", str(tmp_path / "mine-figs")], capsys)[0] == 0


def test_a_folder_entry_named_like_a_temporary_is_not_taken_for_one(
    capsys, tmp_path, table_csv
) -> None:
    model = tmp_path / "m"
    args = ["train", str(table_csv), "-t", "y", "--epochs", "2", "--out", str(model)]
    assert run(args, capsys)[0] == 0
    precious = model / ".precious.nnreg-1-deadbeef.tmp"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    code, _, err = run(args, capsys)
    assert code == 1 and "not one of its files" in err
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_resume_elsewhere_is_refused(capsys, tmp_path) -> None:
    code, _, err = run(
        ["train", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")], capsys
    )
    assert code == 2 and "leave out --out" in err


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(calibration=[1]),
        lambda d: d.pop("target_1d"),
        lambda d: d.pop("targets"),
        lambda d: d.update(targets=["y", "z"]),
        lambda d: d.update(targets=[1]),
        lambda d: d.update(features=["a", "b", "c"]),
        lambda d: d.update(training=[1]),
        lambda d: d.update(metrics={"train_mse": "x"}),
    ],
)
def test_an_edited_model_json_is_one_line_for_every_command(
    capsys, tmp_path, table_csv, change
) -> None:
    model = tmp_path / "m"
    assert (
        run(["train", str(table_csv), "-t", "y", "--epochs", "2", "--out", str(model)], capsys)[0]
        == 0
    )
    doc = json.loads((model / "model.json").read_text())
    change(doc)
    (model / "model.json").write_text(json.dumps(doc))
    for args in (["info", str(model)], ["predict", str(model), str(table_csv)]):
        code, _, err = run(args, capsys)
        assert code == 1 and one_line(err) and "unexpected" not in err, (args, err)


@pytest.mark.parametrize("flags", [["--n-models", "2"], ["--early-stopping"]])
def test_a_folder_trained_with_a_holdout_and_calibration_rows_loads(
    capsys, tmp_path, table_csv, flags
) -> None:
    """The CLI's --holdout rows are scored as validation_*, so their count is not the
    calibration's; a load check that compared them refused every such folder."""
    model = tmp_path / "m"
    args = ["train", str(table_csv), "-t", "y", "--epochs", "2", "--holdout", "0.2"]
    assert run([*args, *flags, "--out", str(model)], capsys)[0] == 0
    for command in (["info", str(model)], ["predict", str(model), str(table_csv)]):
        code, _, err = run(command, capsys)
        assert code == 0, (command, err)


def test_model_json_is_strict_json_when_a_metric_is_undefined(capsys, tmp_path) -> None:
    """One held-out row has no R²: model.json says null (not NaN, which is not JSON), and
    nnreg reads it back as NaN."""
    frame = pd.DataFrame({"a": np.arange(12.0), "y": np.arange(12.0) ** 2})
    frame.to_csv(tmp_path / "d.csv", index=False)
    model = tmp_path / "m"
    args = ["train", str(tmp_path / "d.csv"), "-t", "y", "--epochs", "2", "--early-stopping"]
    assert run([*args, "--validation-fraction", "0.05", "--out", str(model)], capsys)[0] == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"model.json holds {name}")

    doc = json.loads((model / "model.json").read_text(), parse_constant=refuse)
    assert doc["metrics"]["validation_r2"] is None
    assert np.isnan(nnreg.load(model).validation_metrics_["r2"])
    assert run(["info", str(model)], capsys)[0] == 0


def test_a_padded_weights_file_is_refused_before_it_is_read(capsys, tmp_path, table_csv) -> None:
    model = tmp_path / "m"
    assert (
        run(["train", str(table_csv), "-t", "y", "--epochs", "2", "--out", str(model)], capsys)[0]
        == 0
    )
    with open(model / "weights.safetensors", "ab") as f:
        f.truncate(1 << 30)  # a sparse gigabyte: reading it would cost a gigabyte of memory
    code, _, err = run(["info", str(model)], capsys)
    assert code == 1 and "not the size its header describes" in err


def test_an_interrupted_run_keeps_its_checkpoint_and_resumes_to_the_same_weights(
    capsys, tmp_path, table_csv, monkeypatch
) -> None:
    from nnreg import checkpoint

    args = ["train", str(table_csv), "-t", "y", "--epochs", "6", "--checkpoint-every", "1"]
    assert run([*args, "--out", str(tmp_path / "ref")], capsys)[0] == 0
    written = []
    save = checkpoint.save_checkpoint

    def save_then_interrupt(*a, **k):
        save(*a, **k)
        written.append(1)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "m"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save_checkpoint", save_then_interrupt)
        code, _, err = run([*args, "--out", str(out)], capsys)
    assert code == 130 and "best weights so far" in err
    assert (out / "checkpoint.safetensors").is_file() and nnreg.load(out).n_iter_ < 6
    assert run(["train", "--resume", str(out)], capsys)[0] == 0
    assert weights_hash(out) == weights_hash(tmp_path / "ref")
    assert not (out / "checkpoint.safetensors").exists()  # a finished run keeps none


# -- kills at random moments ----------------------------------------------------------------


def weights_hash(folder: Path) -> str:
    return sha256(read_file(folder / "weights.safetensors"))


def wait_for_save(
    proc: subprocess.Popen, parent: Path, name: str, limit: float, gone: bool = False
) -> float:
    """Poll until ``proc`` starts writing ``parent/name`` (its temporary sibling appears),
    or with ``gone`` until it has put it in place (the sibling is gone), or ends; the seconds
    waited."""
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < limit:
        if any(p.name.startswith(f".{name}.nnreg-") for p in parent.iterdir()) != gone:
            break
        time.sleep(0.002)
    return time.monotonic() - started


# Each kill costs a process start (about 4 s here): half land at any moment, half aimed at
# the save, which is where a half-written folder would show.
KILLS = 24


@pytest.mark.slow
def test_kill_9_at_random_moments_never_loses_the_model(tmp_path: Path, table_csv: Path) -> None:
    out = tmp_path / "m"
    command = [sys.executable, "-m", "nnreg", "train", str(table_csv), "-t", "y", "--quiet"]
    command += ["--epochs", "3", "--out", str(out)]
    subprocess.run([*command, "--seed", "0"], check=True, capture_output=True)
    old = weights_hash(out)
    proc = subprocess.Popen([*command, "--seed", "1"], stdout=subprocess.DEVNULL)
    started = time.monotonic()
    until_save = wait_for_save(proc, tmp_path, "m", 600)
    assert proc.wait() == 0
    duration = time.monotonic() - started
    saving = duration - until_save  # the save, then the interpreter's exit
    new = weights_hash(out)
    subprocess.run([*command, "--seed", "0"], check=True, capture_output=True)
    assert old != new and weights_hash(out) == old
    rng = random.Random(0)
    seen = set()
    for k in range(KILLS):
        proc = subprocess.Popen(
            [*command, "--seed", str(k % 2)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if k % 4 < 2:  # any moment, mostly late: loading, training and saving
            time.sleep(rng.uniform(0.2, 1.1) * duration)
        elif k % 8 == 7:  # just after the folder was replaced, however busy the machine is
            wait_for_save(proc, tmp_path, "m", 10 * duration)
            wait_for_save(proc, tmp_path, "m", 10 * duration, gone=True)
        else:  # aimed at the save, however slow the start was: before, during and after it
            wait_for_save(proc, tmp_path, "m", 10 * duration)
            time.sleep(rng.uniform(0, 1.2) * saving)
        proc.kill()
        proc.wait()
        assert out.is_dir(), f"kill {k} left no model folder"
        loaded = nnreg.load(out)  # a complete folder, every hash valid
        seen.add(weights_hash(out))
        assert seen <= {old, new} and loaded.n_iter_ == 3
    subprocess.run([*command, "--seed", "0"], check=True, capture_output=True)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [] and [p for p in out.iterdir() if p.name.startswith(".")] == []
    assert len(seen) == 2  # both the old and the new model survived some kills
