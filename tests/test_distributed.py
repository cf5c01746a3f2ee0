"""Data-parallel training: two gloo processes on loopback against one process on the global
batch, the command line under ``--nproc`` and under torchrun, and device names."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import nnreg
from nnreg.device import resolve_device
from nnreg.distributed import Group, TorchSync, current
from nnreg.engine import epoch_batches
from nnreg.exceptions import ConfigError, DataError
from nnreg.model import MLP, MLPConfig
from nnreg.train import TrainConfig, Trainer

TESTS = Path(__file__).parent
WORLD = 2
ROWS = 80  # 40 per rank for the trainer cases
# Full batch per rank with early stopping: validation rows scored whole on every rank.
REGRESSOR = {
    "hidden_layer_sizes": (16, 16),
    "dropout": 0.0,
    "batch_size": "full",
    "max_iter": 12,
    "learning_rate_init": 0.01,
    "early_stopping": True,
    "n_iter_no_change": 4,
    "random_state": 3,
}
# Minibatches of 8 rows per rank: each step's global batch is 16 rows, 8 from each shard.
TRAINERS = {
    "fast": {"optimizer": "adam", "lr": 0.01},
    "autograd": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
}
# torch.testing.assert_close's float32 tolerance (rtol 1.3e-6, atol 1e-5); the largest
# differences seen are 3e-8 (full batch) to 4e-7 (autograd, 20 minibatch steps).
TOLERANCE: dict[str, float] = {}


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(ROWS, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + np.sin(X[:, 0]) + rng.normal(0, 0.1, size=ROWS)
    return X, y


def _trainer(engine: str) -> tuple[MLP, Trainer]:
    torch.manual_seed(0)
    model = MLP(MLPConfig(n_inputs=3, hidden_sizes=(16, 16), n_outputs=1, activation="tanh"))
    config = TrainConfig(epochs=4, batch_size=8, engine=engine, **TRAINERS[engine])  # type: ignore[arg-type]
    return model, Trainer(model, config, torch.Generator().manual_seed(1))


def _tensors(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]


def _worker(folder: str) -> None:
    """One rank, run in its own process: train every case and save what it ended with."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        group = current()
        assert group is not None
        X, y = _data()
        out: dict[str, torch.Tensor] = {}
        reg = nnreg.Regressor(**REGRESSOR).fit(X, y)
        out.update({f"regressor.{k}": v for k, v in reg.model_.state_dict().items()})
        out["regressor.pred"] = torch.from_numpy(reg.predict(X))
        out["regressor.loss"] = torch.tensor(reg.loss_curve_ + reg.validation_scores_)
        unseeded = nnreg.Regressor(**{**REGRESSOR, "random_state": None, "max_iter": 2})
        out.update({f"unseeded.{k}": v for k, v in unseeded.fit(X, y).model_.state_dict().items()})
        Xt, yt = _tensors(X, y)
        rows = group.shard(len(Xt))
        for engine in TRAINERS:
            model, trainer = _trainer(engine)
            trainer.sync = TorchSync(group)
            history = trainer.run(Xt[rows], yt[rows])
            out.update({f"{engine}.{k}": v for k, v in model.state_dict().items()})
            out[f"{engine}.loss"] = torch.tensor(history.train_loss)
        save_file(
            {k: v.contiguous() for k, v in out.items()}, f"{folder}/rank{group.rank}.safetensors"
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in extra:
            env.pop(name, None)
    return env


class GlobalBatches:
    """One process's view of a two-rank run: each step's batch is both ranks' batches."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        m = X.shape[0] // WORLD
        self.shards = [(X[r * m : (r + 1) * m], y[r * m : (r + 1) * m]) for r in range(WORLD)]
        self.m, self.bounds = m, epoch_batches(m, batch)
        self.steps_per_epoch = len(self.bounds)
        self.generator = torch.Generator().manual_seed(1)  # as each rank's trainer draws

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, None]]:
        perm = torch.randperm(self.m, generator=self.generator)  # the same on every rank
        for lo, hi in self.bounds:
            idx = perm[lo:hi]
            yield (
                torch.cat([Xs[idx] for Xs, _ in self.shards]),  # (WORLD * batch, inputs)
                torch.cat([ys[idx] for _, ys in self.shards]),
                None,
            )


def run_ranks(module: str, folder: Path) -> list[dict[str, torch.Tensor]]:
    """Run ``module._worker(folder)`` as two gloo processes on loopback; what each saved."""
    port = str(_free_port())
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import {module} as t; "
    code += f"t._worker({str(folder)!r}); "
    # Once a rank has saved its results and left the group, it ends without the interpreter's
    # teardown: on a loaded machine a rank once ended there in std::terminate ("terminate
    # called without an active exception") after finishing its work.
    code += "sys.stdout.flush(); sys.stderr.flush(); import os; os._exit(0)"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=_env(
                RANK=str(r),
                LOCAL_RANK=str(r),
                WORLD_SIZE=str(WORLD),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(WORLD)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)
    return [load_file(folder / f"rank{r}.safetensors") for r in range(WORLD)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    """What each of two gloo processes on loopback ended with."""
    return run_ranks("test_distributed", tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow
def test_ranks_end_with_identical_weights(ranks: list[dict[str, torch.Tensor]]) -> None:
    assert ranks[0].keys() == ranks[1].keys()
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key  # unseeded too: rank 0's seed is shared


@pytest.mark.slow
def test_regressor_matches_one_process_on_the_global_batch(
    ranks: list[dict[str, torch.Tensor]],
) -> None:
    X, y = _data()
    reg = nnreg.Regressor(**REGRESSOR).fit(X, y)
    for k, v in reg.model_.state_dict().items():
        torch.testing.assert_close(ranks[0][f"regressor.{k}"], v, **TOLERANCE)
    # float64 predictions of weights that agree to float32's tolerance
    torch.testing.assert_close(
        ranks[0]["regressor.pred"], torch.from_numpy(reg.predict(X)), rtol=1e-5, atol=1e-6
    )
    losses = torch.tensor(reg.loss_curve_ + reg.validation_scores_)
    torch.testing.assert_close(ranks[0]["regressor.loss"], losses, **TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(TRAINERS))
def test_minibatches_match_one_process_on_the_global_batches(
    ranks: list[dict[str, torch.Tensor]], engine: str
) -> None:
    model, trainer = _trainer(engine)
    history = trainer.run(GlobalBatches(*_tensors(*_data()), batch=8))
    assert trainer.fast == (engine == "fast")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ranks[0][f"{engine}.{k}"], v, **TOLERANCE)
    torch.testing.assert_close(
        ranks[0][f"{engine}.loss"], torch.tensor(history.train_loss), **TOLERANCE
    )
    initial = _trainer(engine)[0].layers[0].weight
    assert not torch.allclose(ranks[0][f"{engine}.layers.0.weight"], initial)  # it trained


def test_shards_are_equal_ranges_without_the_remainder() -> None:
    shards = [Group(r, 3, r).shard(11) for r in range(3)]
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 6), (6, 9)]
    with pytest.raises(DataError, match="fewer processes"):
        Group(0, 4, 0).shard(3)


def test_outside_a_process_group_nothing_changes() -> None:
    assert current() is None


def _train_command(table_csv: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "nnreg",
        "train",
        str(table_csv),
        "--target",
        "y",
        "--epochs",
        "3",
        "--hidden",
        "8",
        "--seed",
        "1",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_nproc_writes_one_model_folder_and_prints_once(table_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, *_train_command(table_csv, out, "--nproc", "2", "--log-every", "1")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model folder:") == 1
    assert result.stdout.count("epoch 2/3") == 1
    reg = nnreg.load(out)
    frame = pd.read_csv(table_csv)
    assert reg.predict(frame[["a", "b", "c"]]).shape == (len(frame),)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["model"]
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["epochs_run"] == 3


@pytest.mark.slow
def test_torchrun_across_two_nodes_on_loopback(table_csv: Path, tmp_path: Path) -> None:
    """The README's several-machines command, both "machines" on this one."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=test",
                *_train_command(table_csv, tmp_path / "model", "--quiet"),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    printed = [out.strip() for out, _ in results if out.strip()]
    assert printed == [str(tmp_path / "model")]  # rank 0 alone prints
    frame = pd.read_csv(table_csv)
    assert nnreg.load(tmp_path / "model").predict(frame[["a", "b", "c"]]).shape == (len(frame),)


@pytest.mark.slow
def test_nproc_errors_are_one_line(table_csv: Path, tmp_path: Path) -> None:
    """Every process fails on the bad setting; rank 0 alone says so."""
    result = subprocess.run(
        [sys.executable, *_train_command(table_csv, tmp_path / "m", "--nproc", "2", "--lr", "-1")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid Regressor settings: --lr/learning_rate_init must be a finite number "
        "> 0, got -1.0."
    ]
    assert not (tmp_path / "m").exists()


def test_device_auto_is_the_cpu_without_cuda(seed_frame: pd.DataFrame) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert resolve_device("auto") == torch.device("cpu")
    reg = nnreg.Regressor(device="auto", max_iter=2, random_state=0)
    reg.fit(seed_frame[["x1", "x2"]], seed_frame["y"])
    assert next(reg.model_.parameters()).device == torch.device("cpu")
    cpu = nnreg.Regressor(device="cpu", max_iter=2, random_state=0)
    cpu.fit(seed_frame[["x1", "x2"]], seed_frame["y"])
    np.testing.assert_array_equal(
        reg.predict(seed_frame[["x1", "x2"]]), cpu.predict(seed_frame[["x1", "x2"]])
    )


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (
            "gpu",
            r"device must be 'auto' \(CUDA when available, else the CPU\), 'cpu', 'cuda', "
            r"'cuda:N' or 'mps', got 'gpu'",
        ),
        ("cuda:x", "got 'cuda:x'"),
    ],
)
def test_a_bad_device_is_one_sentence(seed_frame: pd.DataFrame, device: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        nnreg.Regressor(device=device).fit(seed_frame[["x1", "x2"]], seed_frame["y"])


def test_cuda_without_a_device_names_the_fix(seed_frame: pd.DataFrame) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match=r"needs a CUDA device.*use device='cpu' or 'auto'\.$"):
        nnreg.Regressor(device="cuda").fit(seed_frame[["x1", "x2"]], seed_frame["y"])


def test_cli_device_option(
    table_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_helpers import run

    args = ["train", str(table_csv), "-t", "y", "--epochs", "1", "--hidden", "4", "-q"]
    code, out, err = run([*args, "--device", "auto", "--out", str(tmp_path / "m")], capsys)
    assert code == 0, err
    assert nnreg.load(tmp_path / "m").get_params()["device"] == "cpu"  # loaded on the CPU
    assert (
        json.loads((tmp_path / "m" / "model.json").read_text())["training"]["params"]["device"]
        == "auto"
    )
    code, out, err = run(
        ["train", str(table_csv), "-t", "y", "--device", "tpu", "--out", str(tmp_path / "bad")],
        capsys,
    )
    assert code == 2
    assert err.startswith("error: invalid Regressor settings: device must be")
    assert len(err.strip().splitlines()) == 1


def _failed_launch(monkeypatch: pytest.MonkeyPatch, codes: dict[int, int]) -> None:
    """Make --nproc's launcher see its processes end with ``codes`` (rank -> exit status)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {
        rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="")
        for rank, code in codes.items()
    }

    def launcher(config: object, entry: str) -> object:
        def run(*args: str) -> None:
            raise ChildFailedError("nnreg", failures)

        return run

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", launcher)


@pytest.mark.parametrize(
    ("codes", "rank", "code"),
    [
        # rank 1 was killed; the launcher's SIGTERM reached rank 0 before the broken
        # collective did (it unwound: 143) or killed it (-15): rank 1 is named either way
        ({0: 143, 1: -9}, 1, 137),
        ({0: -15, 1: -9}, 1, 137),
        ({0: 75, 1: -9}, 1, 137),
        ({0: 75, 1: 143}, 1, 143),  # someone sent rank 1 SIGTERM itself
        ({0: 1, 1: -9}, 1, 137),  # rank 0's error came from the killed peer
        ({0: 75, 1: 1, 2: -15}, 1, 1),
    ],
)
def test_nproc_names_the_process_that_stopped_first(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    codes: dict[int, int],
    rank: int,
    code: int,
) -> None:
    from nnreg.distributed import launch

    _failed_launch(monkeypatch, codes)
    assert launch(2, ["train", "t.csv", "-o", "out", "--checkpoint-every", "2"]) == code
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: the process of rank {rank} stopped (exit code {code}")
    assert line.endswith("continue the run from its last checkpoint with --resume out.")


def test_nproc_leaves_rank_0s_own_failure_to_its_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nnreg.distributed import launch

    _failed_launch(monkeypatch, {0: 1, 1: 75})  # rank 0 printed why (a full disk, ...)
    assert launch(2, ["train", "t.csv"]) == 1
    assert capsys.readouterr().err == ""


def test_a_process_under_nproc_ends_quietly_on_sigterm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The launcher ends every process with SIGTERM when one fails, and names that one; the
    others' 'terminated by SIGTERM' would blame the wrong thing (the launcher says it when
    it was the one terminated)."""
    from nnreg.cli.app import Terminated, exit_code

    assert exit_code(Terminated(), debug=False) == 143
    assert capsys.readouterr().err.strip() == (
        "error: terminated by SIGTERM; nothing was left half-written"
    )
    monkeypatch.setenv("NNREG_LAUNCHER", "1")
    assert exit_code(Terminated(), debug=False) == 143
    assert capsys.readouterr().err == ""


def test_a_sigterm_while_the_exit_code_is_decided_does_not_replace_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under --nproc the launcher's SIGTERM can reach a process just as its own collective
    failed: it used to raise out of the error handling (a traceback, exit code 1)."""
    import os
    import signal

    from nnreg.cli import app

    def failing(*args: object, **kwargs: object) -> None:
        raise nnreg.exceptions.ProcessGroupError("another process stopped")

    decide = app.exit_code

    def signalled(exc: BaseException, debug: bool) -> int:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before this returns
        return decide(exc, debug)

    monkeypatch.setattr(app.cli, "main", failing)
    monkeypatch.setattr(app, "exit_code", signalled)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as ended:
        app.main(["train"])
    assert ended.value.code == 1  # the ProcessGroupError's own code, outside a launcher
    assert signal.getsignal(signal.SIGTERM) == previous
