"""What trains on one process trains on many: ensembles, sample weights, checkpoints and
sweeps, with two gloo processes on loopback against one process on the same global batches
(or a plain PyTorch loop), and the command line under ``--nproc 2``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import nnreg
from nnreg.distributed import TorchSync, current
from nnreg.engine import epoch_batches
from nnreg.ensemble import EnsembleTrainer
from nnreg.model import MLP, MLPConfig
from nnreg.train import TrainConfig, Trainer
from test_distributed import WORLD, _env, run_ranks

TESTS = Path(__file__).parent
ROWS = 80  # 40 per process
# Full batch per process, no dropout: the global batch is every row, as in one process.
ENSEMBLE = {
    "hidden_layer_sizes": (16, 16),
    "dropout": 0.0,
    "batch_size": "full",
    "max_iter": 10,
    "learning_rate_init": 0.01,
    "n_models": 3,
    "random_state": 4,
}
WEIGHTED = {**ENSEMBLE, "n_models": 1, "early_stopping": True, "n_iter_no_change": 4}
# Shared-weight members with the default embedding: one network on the fast engine, its
# calibration rows held out, the rest split between the processes.
SHARED = {**ENSEMBLE, "n_models": 4, "ensemble": "tabm"}
# The epochs chosen by cross-validation on every row (each process), then trained
# data-parallel.
AUTO = {
    **ENSEMBLE,
    "n_models": 1,
    "hidden_layer_sizes": (8,),
    "max_iter": "auto",
    "dtype": "float64",
}
# Shared members whose epochs the search chose: every row trains, calibrated out of fold.
SHARED_AUTO = {**AUTO, "n_models": 2, "ensemble": "tabm"}
# Under the search's sizes: the default count, every row trains, helpers calibrate.
HELPED = 60
MEMBER_SEEDS = [11, 12]
BATCH = 8  # rows per process per step
EPOCHS = 150  # of the command-line runs: enough that a kill after a checkpoint lands mid-run


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(ROWS, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + np.cos(X[:, 1]) + rng.normal(0, 0.1, size=ROWS)
    w = rng.uniform(0.2, 3.0, size=ROWS)  # unequal per process: the global sum matters
    return X, y, w


def _auto_data() -> tuple[np.ndarray, np.ndarray]:
    """Enough rows (60 per process) for max_iter='auto' to cross-validate."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(120, 3))
    return X, X @ np.array([1.0, -2.0, 0.5]) + np.cos(X[:, 1]) + rng.normal(0, 0.1, size=120)


def _members() -> list[MLP]:
    members = []
    for s in MEMBER_SEEDS:
        torch.manual_seed(s)
        members.append(MLP(MLPConfig(n_inputs=3, hidden_sizes=(12,), n_outputs=1)))
    return members


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    X, y, w = _data()
    f = torch.float32
    return torch.tensor(X, dtype=f), torch.tensor(y, dtype=f)[:, None], torch.tensor(w, dtype=f)


ADAM = TrainConfig(epochs=3, batch_size=BATCH, optimizer="adam", lr=0.01)
AUTOGRAD = TrainConfig(epochs=3, batch_size=BATCH, optimizer="adam", lr=0.01, engine="autograd")


def _worker(folder: str) -> None:
    """One rank, run in its own process: train every case and save what it ended with."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        group = current()
        assert group is not None
        X, y, w = _data()
        out: dict[str, torch.Tensor] = {}
        ens = nnreg.Regressor(**ENSEMBLE).fit(X, y)
        out["ensemble.pred"], out["ensemble.std"] = map(
            torch.from_numpy, ens.predict(X, return_std=True)
        )
        out["ensemble.interval"] = torch.from_numpy(np.stack(ens.predict_interval(X)))
        out["ensemble.loss"] = torch.tensor(ens.loss_curve_)
        shared = nnreg.Regressor(**SHARED).fit(X, y)
        out["shared.pred"], out["shared.std"] = map(
            torch.from_numpy, shared.predict(X, return_std=True)
        )
        out["shared.interval"] = torch.from_numpy(np.stack(shared.predict_interval(X)))
        out["shared.loss"] = torch.tensor(shared.loss_curve_ + list(shared.history_.val_loss))
        Xa, ya = _auto_data()
        auto = nnreg.Regressor(**AUTO).fit(Xa, ya)  # each process chooses; rank 0's holds
        out["auto.epochs"] = torch.tensor(auto.epochs_cv_["epochs"])
        out["auto.cv"] = torch.tensor(auto.epochs_cv_["held_out_loss"])
        out["auto.pred"] = torch.from_numpy(auto.predict(Xa))
        shared_auto = nnreg.Regressor(**SHARED_AUTO).fit(Xa, ya)
        out["shared_auto.interval"] = torch.from_numpy(np.stack(shared_auto.predict_interval(Xa)))
        out["shared_auto.scores"] = torch.tensor(shared_auto.calibrator_.scores)
        helped = nnreg.Regressor(**SHARED_AUTO).fit(Xa[:HELPED], ya[:HELPED])
        out["helped.interval"] = torch.from_numpy(np.stack(helped.predict_interval(Xa)))
        out["helped.scores"] = torch.tensor(helped.calibrator_.scores)
        weighted = nnreg.Regressor(**WEIGHTED).fit(X, y, sample_weight=w)
        out["weighted.pred"] = torch.from_numpy(weighted.predict(X))
        out["weighted.loss"] = torch.tensor(weighted.loss_curve_ + weighted.validation_scores_)
        # Minibatches: each member shuffles this process's shard with its own generator.
        Xt, yt, wt = _tensors()
        rows = group.shard(ROWS)
        trainer = EnsembleTrainer(_members(), ADAM, MEMBER_SEEDS)
        trainer.sync = TorchSync(group)
        history = trainer.run(Xt[rows], yt[rows], wt[rows])
        out["members.params"] = trainer.net.params.clone()
        out["members.loss"] = torch.tensor(history.train_loss)
        for name, config in (("single", ADAM), ("autograd", AUTOGRAD)):  # the two engines
            torch.manual_seed(0)
            single = MLP(MLPConfig(n_inputs=3, hidden_sizes=(12,), n_outputs=1))
            trainer_one = Trainer(single, config, torch.Generator().manual_seed(5))
            trainer_one.sync = TorchSync(group)
            losses = trainer_one.run(Xt[rows], yt[rows], wt[rows]).train_loss
            out[f"{name}.loss"] = torch.tensor(losses)
            out.update({f"{name}.{k}": v for k, v in single.state_dict().items()})
        save_file(
            {k: v.contiguous() for k, v in out.items()}, f"{folder}/rank{group.rank}.safetensors"
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, torch.Tensor]]:
    """What each of two gloo processes on loopback ended with."""
    return run_ranks("test_distributed_runs", tmp_path_factory.mktemp("ddp-runs"))


def _global_batches(
    generator: torch.Generator, epochs: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The global batches of a two-process run on ``_tensors()``: each step, rows of both
    shards at the positions one shared permutation (drawn from ``generator``) gives."""
    X, y, w = _tensors()
    m = ROWS // WORLD
    shards = [slice(r * m, (r + 1) * m) for r in range(WORLD)]
    batches = []
    for _ in range(epochs):
        perm = torch.randperm(m, generator=generator)
        for lo, hi in epoch_batches(m, BATCH):
            idx = [torch.arange(ROWS)[s][perm[lo:hi]] for s in shards]
            rows = torch.cat(idx)  # (WORLD * batch,)
            batches.append((X[rows], y[rows], w[rows]))
    return batches


def _plain_loop(model: MLP, batches: list[tuple[torch.Tensor, ...]]) -> list[float]:
    """The reference: autograd and torch.optim.Adam, the weighted mean squared error of each
    global batch; the epochs' mean losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=ADAM.lr)
    losses = []
    for X, y, w in batches:
        loss = (((model(X) - y) ** 2).mean(dim=1) * w).sum() / w.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    steps = len(batches) // ADAM.epochs
    return [float(np.mean(losses[e * steps : (e + 1) * steps])) for e in range(ADAM.epochs)]


@pytest.mark.slow
def test_processes_end_with_identical_state(ranks: list[dict[str, torch.Tensor]]) -> None:
    assert ranks[0].keys() == ranks[1].keys()
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key


@pytest.mark.slow
def test_an_ensemble_matches_one_process(ranks: list[dict[str, torch.Tensor]]) -> None:
    """Members, helpers, calibration and intervals: the global batch is every row."""
    X, y, _ = _data()
    ens = nnreg.Regressor(**ENSEMBLE).fit(X, y)
    pred, std = ens.predict(X, return_std=True)
    torch.testing.assert_close(ranks[0]["ensemble.pred"], torch.from_numpy(pred))
    torch.testing.assert_close(ranks[0]["ensemble.std"], torch.from_numpy(std))
    interval = torch.from_numpy(np.stack(ens.predict_interval(X)))
    torch.testing.assert_close(ranks[0]["ensemble.interval"], interval)
    torch.testing.assert_close(ranks[0]["ensemble.loss"], torch.tensor(ens.loss_curve_))
    assert float(std.mean()) > 0  # the members differ


@pytest.mark.slow
def test_shared_members_match_one_process(ranks: list[dict[str, torch.Tensor]]) -> None:
    """TabM members (piecewise-linear embeddings, folded adapters): the global batch is every
    training row, and the held-out calibration rows are scored whole by each process."""
    X, y, _ = _data()
    shared = nnreg.Regressor(**SHARED).fit(X, y)
    assert shared.model_.config.embedding == "piecewise"
    pred, std = shared.predict(X, return_std=True)
    torch.testing.assert_close(ranks[0]["shared.pred"], torch.from_numpy(pred))
    torch.testing.assert_close(ranks[0]["shared.std"], torch.from_numpy(std))
    interval = torch.from_numpy(np.stack(shared.predict_interval(X)))
    torch.testing.assert_close(ranks[0]["shared.interval"], interval)
    curves = torch.tensor(shared.loss_curve_ + list(shared.history_.val_loss))
    torch.testing.assert_close(ranks[0]["shared.loss"], curves)
    assert float(std.mean()) > 0


@pytest.mark.slow
def test_epochs_chosen_by_cross_validation_match_one_process(
    ranks: list[dict[str, torch.Tensor]],
) -> None:
    X, y = _auto_data()
    reg = nnreg.Regressor(**AUTO).fit(X, y)
    assert int(ranks[0]["auto.epochs"]) == reg.epochs_cv_["epochs"] == reg.n_iter_
    torch.testing.assert_close(ranks[0]["auto.cv"], torch.tensor(reg.epochs_cv_["held_out_loss"]))
    torch.testing.assert_close(ranks[0]["auto.pred"], torch.from_numpy(reg.predict(X)))


@pytest.mark.slow
def test_shared_members_calibrated_by_helpers_match_one_process(
    ranks: list[dict[str, torch.Tensor]],
) -> None:
    """Helpers trained data-parallel after the members (full batches: the global batch is
    every row) calibrate as in one process."""
    X, y = _auto_data()
    reg = nnreg.Regressor(**SHARED_AUTO).fit(X[:HELPED], y[:HELPED])
    assert len(reg.calibrator_.scores[0]) == HELPED // 3
    for rank in ranks:
        torch.testing.assert_close(rank["helped.scores"], torch.tensor(reg.calibrator_.scores))
        interval = torch.from_numpy(np.stack(reg.predict_interval(X)))
        torch.testing.assert_close(rank["helped.interval"], interval)


@pytest.mark.slow
def test_shared_members_calibrated_out_of_fold_match_one_process(
    ranks: list[dict[str, torch.Tensor]],
) -> None:
    """The trials' out-of-fold predictions reach every process with their losses, so each
    calibrates on every row as one process does."""
    X, y = _auto_data()
    reg = nnreg.Regressor(**SHARED_AUTO).fit(X, y)
    assert len(reg.calibrator_.scores[0]) == len(y)
    torch.testing.assert_close(ranks[0]["shared_auto.scores"], torch.tensor(reg.calibrator_.scores))
    interval = torch.from_numpy(np.stack(reg.predict_interval(X)))
    torch.testing.assert_close(ranks[0]["shared_auto.interval"], interval)


@pytest.mark.slow
def test_weighted_training_matches_one_process(ranks: list[dict[str, torch.Tensor]]) -> None:
    X, y, w = _data()
    reg = nnreg.Regressor(**WEIGHTED).fit(X, y, sample_weight=w)
    torch.testing.assert_close(ranks[0]["weighted.pred"], torch.from_numpy(reg.predict(X)))
    losses = torch.tensor(reg.loss_curve_ + reg.validation_scores_)
    torch.testing.assert_close(ranks[0]["weighted.loss"], losses)
    # Normalising by each process's own weight sum would end elsewhere.
    unweighted = nnreg.Regressor(**WEIGHTED).fit(X, y)
    assert not np.allclose(unweighted.predict(X), reg.predict(X), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["single", "autograd"])
def test_weighted_minibatches_match_a_plain_loop(
    ranks: list[dict[str, torch.Tensor]], engine: str
) -> None:
    """One network, weighted minibatches, on the fast engine and on autograd: each step's
    loss is the global batch's weighted mean (weights summed over both processes), as a
    plain loop computes it on that batch."""
    torch.manual_seed(0)
    model = MLP(MLPConfig(n_inputs=3, hidden_sizes=(12,), n_outputs=1))
    losses = _plain_loop(model, _global_batches(torch.Generator().manual_seed(5), ADAM.epochs))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ranks[0][f"{engine}.{k}"], v)
    expected = torch.tensor(losses, dtype=torch.float32)
    torch.testing.assert_close(ranks[0][f"{engine}.loss"], expected)


@pytest.mark.slow
def test_ensemble_minibatches_match_a_plain_loop(ranks: list[dict[str, torch.Tensor]]) -> None:
    """Each member of a two-process ensemble trains as a plain PyTorch loop does on its
    global batches (its own shuffle of each shard, weights summed over both processes)."""
    members = _members()
    curves = []
    for member, seed in zip(members, MEMBER_SEEDS, strict=True):
        generator = torch.Generator().manual_seed(seed + 1)  # as EnsembleTrainer seeds it
        curves.append(_plain_loop(member, _global_batches(generator, ADAM.epochs)))
    reference = EnsembleTrainer(members, ADAM, MEMBER_SEEDS).net.params  # packs the weights
    torch.testing.assert_close(ranks[0]["members.params"], reference, rtol=1e-5, atol=2e-5)
    mean_curve = torch.tensor(np.mean(curves, axis=0), dtype=torch.float32)
    torch.testing.assert_close(ranks[0]["members.loss"], mean_curve, rtol=1e-5, atol=2e-5)


# -- the command line ----------------------------------------------------------------------------


def _nnreg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nnreg", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _train_args(data: Path, out: Path) -> list[str]:
    return [
        "train",
        str(data),
        "-t",
        "y",
        "--epochs",
        str(EPOCHS),
        "--hidden",
        "16,16",
        "--batch-size",
        "16",
        "--seed",
        "2",
        "--checkpoint-every",
        "2",
        "--nproc",
        "2",
        "--out",
        str(out),
        "-q",
    ]


def _rank_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the processes ``launcher`` started (read from /proc)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if parent == launcher and rank:
            found[int(rank[0][5:])] = int(proc.name)
    return found


def _start_until_checkpoint(
    args: list[str], out: Path
) -> tuple[subprocess.Popen[str], dict[int, int]]:
    """Start ``nnreg ARGS`` (a --nproc 2 run) and wait for its first checkpoint in ``out``;
    the launcher and its processes' pids by rank."""
    run = subprocess.Popen(
        [sys.executable, "-m", "nnreg", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.safetensors").is_file() and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pids = _rank_pids(run.pid)
    assert sorted(pids) == [0, 1], "the run ended before its first checkpoint was read"
    return run, pids


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "streamed"])
def test_a_killed_rank_stops_the_run_and_resuming_ends_bitwise_equal(
    table_frame: pd.DataFrame, tmp_path: Path, stream: bool
) -> None:
    data = tmp_path / ("table.parquet" if stream else "table.csv")
    if stream:  # row groups of 25 rows: each process reads every other one
        table_frame.to_parquet(data, row_group_size=25)
    else:
        table_frame.to_csv(data, index=False)
    extra = ["--stream"] if stream else []
    whole = _nnreg(*_train_args(data, tmp_path / "whole"), *extra)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    run, pids = _start_until_checkpoint([*_train_args(data, out), *extra], out)
    torch_meta = json.loads(
        json.loads(_safetensors_metadata(out / "checkpoint.safetensors"))["nnreg"]
    )
    assert torch_meta["processes"] == 2
    assert {"generator.rank0", "generator.rank1"} <= set(load_file(out / "checkpoint.safetensors"))
    os.kill(pids[1], signal.SIGKILL)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 137
    assert err.strip().splitlines() == [
        "error: the process of rank 1 stopped (exit code 137, SIGKILL) and every process of "
        f"the run ended; continue the run from its last checkpoint with --resume {out}."
    ]
    assert not (out / "weights.safetensors").exists()  # nothing half-written
    if not stream:  # the same check either way
        elsewhere = _nnreg("train", "--resume", str(out))  # in one process
        assert elsewhere.returncode == 2
        assert elsewhere.stderr.strip().splitlines() == [
            f"error: {out / 'checkpoint.safetensors'} was written by a run of 2 processes and "
            "this one has 1; resume it with 2 processes (--nproc 2, or torchrun with 2 in "
            "all): the rows each process trains on depend on their number."
        ]
    resumed = _nnreg("train", "--nproc", "2", "--resume", str(out), "-q", *extra)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (
        load_file(tmp_path / "whole" / "weights.safetensors"),
        load_file(out / "weights.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = pd.read_csv(out / "history.csv")
    assert len(history) == EPOCHS
    pd.testing.assert_frame_equal(history, pd.read_csv(tmp_path / "whole" / "history.csv"))


@pytest.mark.slow
def test_sigterm_to_the_launcher_ends_every_process_in_one_line(
    table_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run, pids = _start_until_checkpoint(_train_args(table_csv, out), out)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143
    # rank 0 unwinds quietly; the launcher speaks for the run
    assert err.strip().splitlines() == [
        "error: terminated by SIGTERM; nothing was left half-written"
    ]
    assert not (out / "weights.safetensors").exists()
    for pid in pids.values():  # every process has ended
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def _safetensors_metadata(path: Path) -> str:
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.dumps(json.loads(data[8 : 8 + size])["__metadata__"])


def test_resuming_with_another_number_of_processes_is_refused(tmp_path: Path) -> None:
    from nnreg.checkpoint import check_processes
    from nnreg.exceptions import ConfigError

    check_processes("c", {}, 1)  # a checkpoint from before processes were recorded: one
    check_processes("c", {"processes": 2}, 2)
    with pytest.raises(ConfigError, match=r"in one process \(without --nproc\)"):
        check_processes("c", {"processes": 1}, 2)
    with pytest.raises(ConfigError, match=r"with 2 processes \(--nproc 2, or torchrun"):
        check_processes("c", {"processes": 2}, 1)


@pytest.mark.slow
def test_sweep_splits_its_configurations_and_ranks_as_one_process(
    table_csv: Path, tmp_path: Path
) -> None:
    """The default preset has dropout: the split batches draw the masks of the whole one."""
    grid = ["--lr", "1e-3,1e-2", "--seeds", "0,1", "--hidden", "8", "--hidden", "16,16"]
    args = ["sweep", str(table_csv), "-t", "y", *grid, "--epochs", "6", "--early-stopping"]
    one = _nnreg(*args, "--out", str(tmp_path / "one"), "--json")
    two = _nnreg(*args, "--out", str(tmp_path / "two"), "--json", "--nproc", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = pd.read_csv(tmp_path / "one" / "sweep.csv"), pd.read_csv(tmp_path / "two" / "sweep.csv")
    assert len(a) == 8
    columns = ["rank", "hidden", "lr", "weight_decay", "seed", "epochs", "best_epoch"]
    pd.testing.assert_frame_equal(a[columns], b[columns])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)
    assert json.loads(two.stdout)["ranking"][0] == json.loads(one.stdout)["ranking"][0]
    frame = pd.read_csv(table_csv)
    np.testing.assert_allclose(
        nnreg.load(tmp_path / "two").predict(frame[["a", "b", "c"]]),
        nnreg.load(tmp_path / "one").predict(frame[["a", "b", "c"]]),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.slow
def test_an_ensemble_trains_under_nproc(table_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "ens"
    done = _nnreg(
        "train",
        str(table_csv),
        "-t",
        "y",
        "--epochs",
        "4",
        "--hidden",
        "8",
        "--n-models",
        "3",
        "--nproc",
        "2",
        "--out",
        str(out),
        "-q",
    )
    assert done.returncode == 0, done.stderr
    reg = nnreg.load(out)
    frame = pd.read_csv(table_csv)
    lower, upper = reg.predict_interval(frame[["a", "b", "c"]])
    assert (lower <= upper).all() and len(reg.model_.members) == 3


def test_sweep_shares_are_contiguous_and_split_the_work_evenly() -> None:
    from nnreg.distributed import Group
    from nnreg.sweep import _share, grid

    trials = grid([(64, 64), (128, 128)], [1e-3, 3e-3, 1e-2], [0.0], [0, 1])  # 6 small, 6 big
    # 8-64-64-1 and 8-128-128-1 networks: their parameter counts, by hand.
    params = {(64, 64): 9 * 64 + 65 * 64 + 65, (128, 128): 9 * 128 + 129 * 128 + 129}
    costs = [params[t.hidden] for t in trials]
    shares = [_share(trials, Group(r, 2, r), costs) for r in range(2)]
    assert shares[0] + shares[1] == trials  # every configuration once, in the grid's order
    assert [len(s) for s in shares] == [8, 4]  # the 6 small ones and 2 big / 4 big
    assert _share(trials, None, costs) == trials
    assert sum(map(len, (_share(trials[:1], Group(r, 3, r), costs[:1]) for r in range(3)))) == 1


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting to be reaped, has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_processes_end_with_a_killed_launcher(table_csv: Path, tmp_path: Path) -> None:
    """SIGKILL to `nnreg train --nproc 2` leaves no rank training on, orphaned."""
    out = tmp_path / "run"
    args = _train_args(table_csv, out)
    args[args.index(str(EPOCHS))] = "4000"
    run = subprocess.Popen(
        [sys.executable, "-m", "nnreg", *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.safetensors").is_file():  # both ranks are training
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    pids = _rank_pids(run.pid)
    assert sorted(pids) == [0, 1]
    run.kill()
    run.wait()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids.values())
    assert not (out / "weights.safetensors").exists()
