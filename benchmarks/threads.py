"""How many intra-op threads should nnreg's engine use? Measured, not guessed.

Trains one epoch over the same rows with one thread and with torch's default, for a grid of
batch sizes and layer widths (two hidden layers, Adam), and writes
``benchmarks/results/threads.md``. ``nnreg.device.ONE_THREAD_MAX_WORK`` is set from it: the
largest ``batch x width**2`` (a step's arithmetic) at which one thread is still as fast.

    python benchmarks/threads.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import nnreg
from nnreg.device import ONE_THREAD_MAX_WORK
from nnreg.model import MLP, MLPConfig
from nnreg.train import TrainConfig, fit

OUT = Path(__file__).parent / "results" / "threads.md"


def seconds(X: torch.Tensor, y: torch.Tensor, width: int, batch: int, threads: int) -> float:
    config = TrainConfig(epochs=1, lr=1e-3, optimizer="adam", batch_size=batch, threads=threads)
    best = float("inf")
    for _ in range(3):
        torch.manual_seed(0)
        net = MLP(MLPConfig(n_inputs=X.shape[1], hidden_sizes=(width, width)))
        start = time.perf_counter()
        fit(net, X, y, config, generator=torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    default = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    rows = 32_768
    X = torch.randn(rows, 8, generator=g)
    y = X[:, :1].sin() + 0.1 * torch.randn(rows, 1, generator=g)
    fit(MLP(MLPConfig(n_inputs=8)), X[:1024], y[:1024], TrainConfig(epochs=1, batch_size=64))
    lines = [
        "# Intra-op threads for the engine",
        "",
        f"Made by `python benchmarks/threads.py` on {os.cpu_count()} cores, torch "
        f"{torch.__version__}, nnreg {nnreg.__version__}: one epoch over {rows:,} rows x 8 "
        "features, two hidden layers of the given width, Adam; best of 3. The engine uses one "
        f"thread while batch x width² <= {ONE_THREAD_MAX_WORK:,} "
        "(`nnreg.device.ONE_THREAD_MAX_WORK`).",
        "",
        f"| batch | width | batch x width² | 1 thread (s) | {default} threads (s) | faster |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for width in (32, 128, 512):
        for batch in (64, 256, 1024, 4096):
            one = seconds(X, y, width, batch, 1)
            many = seconds(X, y, width, batch, default)
            faster = "1 thread" if one < many else f"{default} threads"
            work = batch * width**2
            row = f"| {batch} | {width} | {work:,} | {one:.4f} | {many:.4f} | {faster} |"
            print(row, flush=True)
            lines.append(row)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
