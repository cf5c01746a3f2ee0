"""Training speed of nnreg against its peers, in one process, on the same data and settings.

Two jobs:

* seed: the seed experiment (100 rows, 2-20-20-1 ReLU, full-batch SGD lr 0.001, 500 epochs);
* minibatch: ROWS x FEATURES synthetic rows, FEATURES-64-64-1 ReLU, Adam lr 0.001, batch 256,
  EPOCHS epochs.

Every peer trains the same architecture with the same optimiser on the same tensors; imports
and one warm-up run happen before the timings, and each time is the best of ``--repeats``
runs. Each row reports its final training loss (mean squared error), so a reader sees that
every peer did the same work. Results go to stdout and ``benchmarks/results/speed.md``.

    python benchmarks/speed.py                      # what results/speed.md was made with
    python benchmarks/speed.py --rows 50000 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import nnreg

RESULTS = Path(__file__).parent / "results"


@dataclass
class Job:
    name: str
    X: np.ndarray  # (rows, features) float32
    y: np.ndarray  # (rows,) float32
    hidden: tuple[int, ...]
    optimizer: str  # "sgd" or "adam"
    lr: float
    batch: int
    epochs: int


@dataclass
class Row:
    peer: str
    seconds: float
    final_loss: float
    note: str = ""


def seed_job() -> Job:
    df = nnreg.seed_dataset(n=100, random_state=0)
    X = df[["x1", "x2"]].to_numpy(np.float32, copy=True)
    return Job("seed", X, df["y"].to_numpy(np.float32, copy=True), (20, 20), "sgd", 0.001, 100, 500)


def minibatch_job(rows: int, features: int, epochs: int) -> Job:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    y = np.sin(X[:, 0]) + X[:, 1] ** 2 / 2 + X[:, 2:].sum(axis=1) / features
    y = (y + 0.1 * rng.normal(size=rows)).astype(np.float32)
    return Job("minibatch", X, y, (64, 64), "adam", 0.001, 256, epochs)


def torch_net(job: Job) -> nn.Sequential:
    sizes = [job.X.shape[1], *job.hidden, 1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            nn.init.xavier_uniform_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def torch_optimizer(job: Job, params) -> torch.optim.Optimizer:
    if job.optimizer == "sgd":
        return torch.optim.SGD(params, lr=job.lr)
    return torch.optim.Adam(params, lr=job.lr)


def mse(predict: Callable[[np.ndarray], np.ndarray], job: Job) -> float:
    return float(np.mean((np.asarray(predict(job.X)).reshape(-1) - job.y) ** 2))


# -- peers: each trains and returns a predict function ------------------------------------


def run_nnreg(job: Job) -> Callable:
    # The seed preset (ReLU, no dropout, no weight decay, constant rate, raw inputs) with the
    # job's architecture and optimiser; Adam with torch's default betas, as the peers use.
    reg = nnreg.Regressor.from_preset(
        "seed",
        hidden_layer_sizes=job.hidden,
        optimizer=job.optimizer,
        learning_rate_init=job.lr,
        beta_2=0.999,
        batch_size="full" if job.batch >= len(job.X) else job.batch,
        max_iter=job.epochs,
        random_state=0,
    )
    reg.fit(job.X, job.y)
    return reg.predict


def run_original_loop(job: Job) -> Callable:
    """The seed experiment's loop as originally written (full batch, loss read every epoch)."""
    X, y = torch.from_numpy(job.X), torch.from_numpy(job.y)[:, None]
    net = torch_net(job)
    loss_fn, opt = nn.MSELoss(), torch_optimizer(job, net.parameters())
    net.train()
    for _ in range(job.epochs):
        loss = loss_fn(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
    return lambda a: net(torch.from_numpy(a)).detach().numpy()


def run_slicing_loop(job: Job) -> Callable:
    """A careful plain loop: tensors in memory, minibatches sliced from a permutation."""
    X, y = torch.from_numpy(job.X), torch.from_numpy(job.y)[:, None]
    net = torch_net(job)
    loss_fn, opt = nn.MSELoss(), torch_optimizer(job, net.parameters())
    n = len(X)
    for _ in range(job.epochs):
        perm = torch.randperm(n)
        for s in range(0, n, job.batch):
            idx = perm[s : s + job.batch]
            loss = loss_fn(net(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lambda a: net(torch.from_numpy(a)).detach().numpy()


def run_dataloader_loop(job: Job) -> Callable:
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.from_numpy(job.X), torch.from_numpy(job.y)[:, None])
    loader = DataLoader(data, batch_size=job.batch, shuffle=True)
    net = torch_net(job)
    loss_fn, opt = nn.MSELoss(), torch_optimizer(job, net.parameters())
    for _ in range(job.epochs):
        for xb, yb in loader:
            loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lambda a: net(torch.from_numpy(a)).detach().numpy()


def run_sklearn(job: Job) -> Callable:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    # scikit-learn minimises half the squared error, so lr x2 makes the very same updates.
    reg = MLPRegressor(
        hidden_layer_sizes=job.hidden,
        solver=job.optimizer,
        learning_rate_init=job.lr * (2 if job.optimizer == "sgd" else 1),
        momentum=0.0,
        nesterovs_momentum=False,
        batch_size=job.batch,
        max_iter=job.epochs,
        alpha=0.0,
        tol=0.0,
        n_iter_no_change=10**9,
        shuffle=job.batch < len(job.X),
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(job.X, job.y)
    return reg.predict


def run_skorch(job: Job) -> Callable:
    from skorch import NeuralNetRegressor

    net = NeuralNetRegressor(
        torch_net(job),
        max_epochs=job.epochs,
        lr=job.lr,
        batch_size=job.batch,
        optimizer=torch.optim.SGD if job.optimizer == "sgd" else torch.optim.Adam,
        train_split=None,
        verbose=0,
        iterator_train__shuffle=True,
    )
    net.fit(job.X, job.y[:, None])
    return net.predict


def run_lightning(job: Job) -> Callable:
    import logging

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no banner per run

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch_net(job)

        def training_step(self, batch, _):
            xb, yb = batch
            return nn.functional.mse_loss(self.net(xb), yb)

        def configure_optimizers(self):
            return torch_optimizer(job, self.parameters())

    data = TensorDataset(torch.from_numpy(job.X), torch.from_numpy(job.y)[:, None])
    module = Module()
    trainer = L.Trainer(
        max_epochs=job.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no validation loader", "few workers", ...
        trainer.fit(module, DataLoader(data, batch_size=job.batch, shuffle=True))
    return lambda a: module.net(torch.from_numpy(a)).detach().numpy()


def one_thread(run: Callable[[Job], Callable]) -> Callable[[Job], Callable]:
    def wrapped(job: Job) -> Callable:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run(job)
        finally:
            torch.set_num_threads(before)

    return wrapped


PEERS: dict[str, Callable[[Job], Callable]] = {
    "nnreg": run_nnreg,
    "original plain loop": run_original_loop,
    "plain slicing loop": run_slicing_loop,
    "plain slicing loop (1 thread)": one_thread(run_slicing_loop),
    "DataLoader loop": run_dataloader_loop,
    "scikit-learn MLPRegressor": run_sklearn,
    "skorch NeuralNetRegressor": run_skorch,
    "Lightning Trainer": run_lightning,
}
SEED_ONLY = {"original plain loop"}


def measure(peer: str, job: Job, repeats: int) -> Row:
    run = PEERS[peer]
    torch.manual_seed(0)
    run(job)  # warm-up: lazy imports, first-call costs, allocator
    best, predict = float("inf"), None
    for r in range(repeats):
        torch.manual_seed(r)
        start = time.perf_counter()
        predict = run(job)
        best = min(best, time.perf_counter() - start)
    with torch.no_grad():
        return Row(peer, best, mse(predict, job))


def help_seconds(repeats: int = 5) -> float:
    exe = Path(sys.executable).with_name("nnreg")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "nnreg", "--help"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def table(job: Job, rows: list[Row]) -> str:
    base = next(r for r in rows if r.peer == "nnreg").seconds
    n = len(job.X) * job.epochs
    lines = [
        "| peer | time (s) | rows/s | time / nnreg's | final training MSE |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.peer} | {r.seconds:.4f} | {n / r.seconds:,.0f} | {r.seconds / base:.2f}x "
            f"| {r.final_loss:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the minibatch job")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "speed.md")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]

    jobs = [seed_job(), minibatch_job(args.rows, args.features, args.epochs)]
    sections = []
    # Peer by peer, every job: heavy frameworks leave the process slower for whoever runs
    # after them (thread pools, allocator state), so no peer runs in another's wake twice.
    rows: dict[str, list[Row]] = {job.name: [] for job in jobs}
    for peer in peers:
        for job in jobs:
            if job.name != "seed" and peer in SEED_ONLY:
                continue
            row = measure(peer, job, args.repeats)
            print(
                f"{job.name:9s} {peer:30s} {row.seconds:8.4f} s  loss {row.final_loss:.4f}",
                flush=True,
            )
            rows[job.name].append(row)
    for job in jobs:
        desc = (
            f"{len(job.X):,} rows x {job.X.shape[1]} features, "
            f"{'-'.join(map(str, [job.X.shape[1], *job.hidden, 1]))} ReLU, "
            f"{job.optimizer} lr {job.lr}, batch {job.batch}, {job.epochs} epoch(s)"
        )
        sections.append(f"## {job.name} job\n\n{desc}\n\n{table(job, rows[job.name])}\n")
    help_s = help_seconds()
    print(f"nnreg --help: {help_s:.3f} s")

    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    header = (
        "# Training speed\n\n"
        f"Made by `{command.strip()}` on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"nnreg {nnreg.__version__}; best of {args.repeats} runs after a warm-up, "
        "all peers in one process on the same data, peer by peer (nnreg first). Every peer "
        "uses torch's default thread "
        "count except the row marked 1 thread; nnreg picks its own (one thread for small "
        "matrices). scikit-learn minimises half the squared error, so it runs with twice the "
        "SGD learning rate to make the same updates.\n"
    )
    footer = f"\n## Start-up\n\n`nnreg --help`: {help_s:.3f} s wall time (best of 5).\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n" + "\n".join(sections) + footer)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
