"""The compiled step for shared-weight members against the PyTorch step, by width.

One training step (forward, backward, every gradient) of ``"tabm"`` members with ReLU, no
dropout and squared error (what ``nnreg/engine/csrc/tabm.cpp`` covers), on one and on two
threads, each the best of ``--repeats`` timings of ``--steps`` steps on the same network and
batch: the seed network's widths on its 100 rows, then 256-row batches of wider layers. The
compiled step takes layers up to ``nnreg.engine.native.MAX_WIDTH`` wide; the widest row
here is past it (the comparison that set it).

    python benchmarks/native.py        # what results/native.md was made with
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

import nnreg
from nnreg.engine import FastTabM, native
from nnreg.model import MLPConfig
from nnreg.tabm import TabM

sys.path.insert(0, str(Path(__file__).parent))
from ensemble import cpu_model  # noqa: E402 - the processor's name, as ensemble.md gives it

RESULTS = Path(__file__).parent / "results"
SHAPES = [  # (hidden sizes, rows, members, inputs)
    ((20, 20), 100, 32, 2),
    ((32, 32), 256, 32, 8),
    ((64, 64), 256, 32, 8),
    ((128, 128), 256, 8, 8),
    ((128, 128, 128), 256, 32, 8),
    ((256, 256), 256, 32, 8),
    ((512, 512), 256, 32, 8),
]


def step_time(fast: FastTabM, x: torch.Tensor, y: torch.Tensor, steps: int, repeats: int) -> float:
    batch = fast.prepare(x, y, None)
    for _ in range(3):
        fast.loss_and_grad(batch)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fast.loss_and_grad(batch)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "native.md")
    args = parser.parse_args()
    if native.library() is None:
        sys.exit("no compiled step here (no C++ compiler, or NNREG_NATIVE=0): nothing to compare")
    torch.manual_seed(0)
    before = torch.get_num_threads()
    lines = [
        "| threads | hidden | rows | members | compiled (ms) | PyTorch (ms) | PyTorch / compiled |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    began = time.perf_counter()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for hidden, rows, k, inputs in SHAPES:
            net = TabM(MLPConfig(n_inputs=inputs, hidden_sizes=hidden, ensemble="tabm", k=k))
            x, y = torch.randn(rows, inputs), torch.randn(rows, 1)
            compiled = FastTabM(net, "relu", "squared_error")
            compiled.native = native.kernels(torch.float32)  # also past MAX_WIDTH
            reference = FastTabM(net, "relu", "squared_error")
            reference.native = None
            work = k * rows * sum(a * b for a, b in zip((inputs, *hidden), hidden, strict=False))
            steps = max(5, min(1000, int(3e9 / work)))
            t_c = step_time(compiled, x, y, steps, args.repeats)
            t_p = step_time(reference, x, y, steps, args.repeats)
            lines.append(
                f"| {threads} | {list(hidden)} | {rows} | {k} | {t_c * 1e3:.3f} | "
                f"{t_p * 1e3:.3f} | {t_p / t_c:.2f}x |"
            )
            print(lines[-1], flush=True)
    torch.set_num_threads(before)
    cpu = f"{platform.machine()} ({cpu_model()})"
    header = [
        "# The compiled step for shared-weight members",
        "",
        f"Made by `python benchmarks/native.py` on {cpu}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}, nnreg {nnreg.__version__}, in "
        f"{(time.perf_counter() - began) / 60:.1f} min. One training step of `tabm` members "
        "(ReLU, squared error, one output), best of "
        f"{args.repeats} timings; the compiled step takes layers up to "
        f"{native.MAX_WIDTH} wide.",
        "",
    ]
    args.out.write_text("\n".join(header + lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
