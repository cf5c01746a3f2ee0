"""Killed, interrupted and diverging runs through the command line, as separate processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from nnreg.artifact import CHECKPOINT, load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def big_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 6000
    frame = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)])
    frame["y"] = np.sin(frame["f0"]) + frame["f1"] ** 2 + 0.1 * rng.normal(size=n)
    path = tmp_path / "big.csv"
    frame.to_csv(path, index=False)
    return path


def nnreg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnreg", *args]


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        nnreg_cmd(*args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_checkpoint(path: Path, epochs: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.is_file():
            try:
                if load_checkpoint(path)[1]["trainer"]["run_epoch"] >= epochs:
                    return
            except Exception:  # noqa: BLE001 - being renamed into place; try again
                pass
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_gives_bitwise_the_uninterrupted_weights(
    tmp_path: Path, big_csv: Path
) -> None:
    common = ["train", str(big_csv), "--target", "y", "--epochs", "40", "--seed", "3", "-q"]
    full = subprocess.run(
        nnreg_cmd(*common, "--out", "full"), cwd=tmp_path, capture_output=True, text=True
    )
    assert full.returncode == 0, full.stderr
    proc = start([*common, "--out", "run", "--checkpoint-every", "5"], tmp_path)
    wait_for_checkpoint(tmp_path / "run" / CHECKPOINT, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reaps it and closes its pipes
    assert not (tmp_path / "run" / "model.json").exists()  # it really died mid-run
    resumed = subprocess.run(
        nnreg_cmd("train", "--resume", "run", "-q"), cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "full" / "weights.safetensors"))
    b = load_file(str(tmp_path / "run" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert (tmp_path / "full" / "history.csv").read_text() == (
        tmp_path / "run" / "history.csv"
    ).read_text()
    assert not (tmp_path / "run" / CHECKPOINT).exists()  # a finished run leaves no checkpoint


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_save_the_best_weights_and_exit_with_their_code(
    tmp_path: Path, big_csv: Path, sig: int, code: int
) -> None:
    proc = start(
        [
            "train",
            str(big_csv),
            "--target",
            "y",
            "--epochs",
            "400",
            "--out",
            "m",
            "--checkpoint-every",
            "1",
            "--log-every",
            "1",
        ],
        tmp_path,
    )
    wait_for_checkpoint(tmp_path / "m" / CHECKPOINT, 2, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    assert f"interrupted by {name}" in err and "Traceback" not in err
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert 2 <= doc["training"]["epochs_run"] < 400


def test_a_diverging_run_exits_1_and_keeps_the_last_finite_weights(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.linspace(0, 1e4, 50), "y": np.linspace(0, 1e8, 50)})
    frame.to_csv(tmp_path / "wild.csv", index=False)
    result = subprocess.run(
        nnreg_cmd(
            "train", "wild.csv", "--target", "y", "--preset", "seed", "--lr", "1", "--out", "m"
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    err = result.stderr.strip()
    assert err.startswith("error: training diverged") and "lower the learning rate" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    weights = load_file(str(tmp_path / "m" / "weights.safetensors"))
    assert all(np.isfinite(v).all() for v in weights.values())
    assert os.path.isfile(tmp_path / "m" / "model.json")


# Each signal, the exit code it ends a command with and what the command says.
SIGNALS = pytest.mark.parametrize(
    "signalled",
    [(signal.SIGTERM, 143, "terminated by SIGTERM"), (signal.SIGINT, 130, "interrupted")],
    ids=["SIGTERM", "SIGINT"],
)
Signalled = tuple[int, int, str]


Run = Callable[[list[str]], tuple[object, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    """``run(argv)``: the exit code of ``nnreg ARGV`` run in this process and what it wrote
    to stderr, with Python's own SIGINT handler in place, as when a command starts (an
    earlier test may have left another)."""
    from nnreg.cli import app

    def ended_by(argv: list[str]) -> tuple[object, str]:
        with pytest.raises(SystemExit) as ended:
            app.main(argv)
        return ended.value.code, capsys.readouterr().err

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield ended_by
    finally:
        signal.signal(signal.SIGINT, outer)


@SIGNALS
def test_a_signal_that_breaks_an_import_ends_the_run_as_that_signal(
    monkeypatch: pytest.MonkeyPatch, run: Run, signalled: Signalled
) -> None:
    """A SIGTERM in the first second (nnreg train importing scikit-learn) cut numpy's import
    short; the next use of the half-made module raised RecursionError, and the run ended
    with code 1 and 'a file nests too deeply' instead of 143 ('nnreg train' killed at
    0.45-0.55 s, 3 of 3 runs)."""
    sig, code, said = signalled
    from nnreg.cli import app

    def cut_short(*args: object, **kwargs: object) -> None:
        try:
            os.kill(os.getpid(), sig)  # delivered inside an import that swallows it ...
            time.sleep(5)
        except BaseException:  # noqa: BLE001 - as importlib's bookkeeping does
            pass
        raise RecursionError("maximum recursion depth exceeded")  # ... and fails later

    monkeypatch.setattr(app.cli, "main", cut_short)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    ended, err = run(["train"])
    assert ended == code and said in err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@SIGNALS
def test_a_signal_something_swallowed_still_ends_the_run_before_it_trains(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run: Run, signalled: Signalled
) -> None:
    """A SIGTERM while 'nnreg train' imported torch (0.52 s in, 1 of 40 runs) raised in an
    import lock's callback, where Python only prints the exception: the run went on, trained,
    wrote its folder and exited 0."""
    sig, code, said = signalled
    from nnreg.cli import train

    csv = tmp_path / "d.csv"
    pd.DataFrame({"x": np.arange(40.0), "y": np.arange(40.0) ** 0.5}).to_csv(csv, index=False)
    read = train.training_table

    def swallowing(*args: object, **kwargs: object) -> object:
        try:
            os.kill(os.getpid(), sig)  # delivered where the exception is only printed ...
            time.sleep(5)
        except BaseException:  # noqa: BLE001 - as an import lock's callback does
            pass
        return read(*args, **kwargs)  # ... and the command goes on

    monkeypatch.setattr(train, "training_table", swallowing)
    ended, err = run(["train", str(csv), "--target", "y", "--out", str(tmp_path / "m")])
    assert ended == code and said in err
    assert not (tmp_path / "m").exists()  # it neither trained nor wrote


@SIGNALS
def test_a_signal_during_an_import_lets_it_finish_then_ends_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run: Run, signalled: Signalled
) -> None:
    """A SIGTERM while 'nnreg train' imported torch (0.58 s in, 1 of 150 runs) raised inside
    C++ that torch's import runs (torch._C._autograd_init): std::terminate, SIGABRT, exit
    134 and a C++ message. The signal now waits for the import and then ends the run."""
    sig, code, said = signalled
    import importlib

    from nnreg.cli import app

    name = f"slow_import_{sig}"
    (tmp_path / f"{name}.py").write_text(
        f"import os, time\nos.kill(os.getpid(), {int(sig)})\ntime.sleep(0.3)\nFINISHED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    waited: list[float] = []

    def importing(*args: object, **kwargs: object) -> int:
        importlib.import_module(name)  # the signal lands in the module's body ...
        started = time.monotonic()
        try:
            time.sleep(5)  # ... and is taken again here, once the import is done
        finally:
            waited.append(time.monotonic() - started)
        return 0

    monkeypatch.setattr(app.cli, "main", importing)
    try:
        ended, err = run(["train"])
        assert ended == code and said in err
        assert sys.modules[name].FINISHED  # the import was not cut short
        assert waited and waited[0] < 4  # the signal did not wait for the command's end
    finally:
        sys.modules.pop(name, None)


def test_a_signal_during_a_csv_read_lets_it_finish_then_ends_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run: Run
) -> None:
    """A SIGTERM while 'nnreg predict' read a 90,000-row CSV unwound pandas' parallel read,
    which unmapped the file under its worker threads: SIGSEGV at exit (exit 139, 2 of 370
    runs). The signal now waits for the read (here it lands in a converter the parser calls)
    and then ends the run."""
    from nnreg.cli import app

    csv = tmp_path / "d.csv"
    pd.DataFrame({"x": np.arange(50.0)}).to_csv(csv, index=False)
    read: list[int] = []

    def signalled(value: str) -> float:
        if value == "10.0":
            os.kill(os.getpid(), signal.SIGTERM)  # lands inside the parser ...
            time.sleep(0.2)
        return float(value)

    def reading(*args: object, **kwargs: object) -> int:
        read.append(len(pd.read_csv(csv, converters={"x": signalled})))
        time.sleep(5)  # ... and is taken again here, once the read is done
        return 0

    monkeypatch.setattr(app.cli, "main", reading)
    ended, err = run(["predict"])
    assert ended == 143 and "terminated by SIGTERM" in err
    assert read == [50]  # the read was not cut short
