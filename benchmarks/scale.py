"""Streamed training at scale: peak memory, throughput against in-memory, and processes.

Three measurements on synthetic Parquet files (8 float32 features and a float32 target,
y = sin(x0) + x1**2 / 2 + mean(x2..x7) + noise, row groups of 100,000 rows), written chunk by
chunk into a temporary folder that is deleted afterwards:

* peak resident memory of ``nnreg train FILE --target y --stream`` (one epoch, statistics
  pass and final scoring pass included) on the small and the large file, each in a fresh
  process: the large run's peak must stay within 1.2x the small run's and under 1 GB;
* throughput (rows x epochs / seconds, from the file to a trained model) of streamed
  training against in-memory training (``pandas.read_parquet`` + ``Regressor.fit``) on the
  small file, same model and batch size, best of ``--repeats``: at least 0.7x;
* rows/s of ``nnreg train --stream --nproc 1`` and ``--nproc 2`` on the small file (the
  ``seconds`` of the JSON summary: training only, process start-up excluded);
* wall time of ``nnreg sweep`` against ``nnreg sweep --nproc 2`` (configurations split
  across the processes) on a file of ``SWEEP_ROWS`` rows, start-up included, and whether
  their rankings agree.

Results go to stdout and ``benchmarks/results/scale.md``.

    python benchmarks/scale.py                        # what results/scale.md was made with
    python benchmarks/scale.py --rows 100000,1000000  # a quicker check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import nnreg
from nnreg.stream import ParquetData, fit_parquet

RESULTS = Path(__file__).parent / "results"
FEATURES = 8
GROUP = 100_000  # rows per row group, and per generated chunk
MODEL = {"hidden": (64, 64), "batch": 512}  # the recommended recipe otherwise
PEAK_RATIO, PEAK_LIMIT_MB, THROUGHPUT_RATIO = 1.2, 1024.0, 0.7
SWEEP_ROWS, SWEEP_EPOCHS = 20_000, 10
SWEEP_GRID = ["--hidden", "64,64", "--hidden", "128,128", "--lr", "1e-3,3e-3,1e-2"]
SWEEP_GRID += ["--seeds", "0,1"]  # 12 configurations, 2 architectures


def write_parquet(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` synthetic rows, generated and written one row group at a time."""
    names = [f"x{j}" for j in range(FEATURES)] + ["y"]
    schema = pa.schema([(n, pa.float32()) for n in names])
    with pq.ParquetWriter(path, schema) as writer:
        for k, lo in enumerate(range(0, rows, GROUP)):
            n = min(GROUP, rows - lo)
            rng = np.random.default_rng([seed, k])
            X = rng.normal(size=(n, FEATURES)).astype(np.float32)
            y = np.sin(X[:, 0]) + X[:, 1] ** 2 / 2 + X[:, 2:].mean(axis=1)
            y = (y + 0.1 * rng.normal(size=n)).astype(np.float32)
            columns = [pa.array(X[:, j]) for j in range(FEATURES)] + [pa.array(y)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def train_args(path: Path, out: Path, epochs: int) -> list[str]:
    hidden = ",".join(str(h) for h in MODEL["hidden"])
    return [
        "train",
        str(path),
        "--target",
        "y",
        "--stream",
        "--epochs",
        str(epochs),
        "--hidden",
        hidden,
        "--batch-size",
        str(MODEL["batch"]),
        "--out",
        str(out),
        "--json",
    ]


# Runs one command and prints the peak resident memory of it (its only child), in KiB.
PEAK_RSS = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_memory_mb(path: Path, work: Path) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of a fresh streamed-training process, one epoch."""
    command = [sys.executable, "-m", "nnreg", *train_args(path, work / "peak-model", 1)]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], check=True, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    shutil.rmtree(work / "peak-model", ignore_errors=True)
    return int(done.stdout.strip()) / 1024, seconds


def regressor(epochs: int) -> nnreg.Regressor:
    return nnreg.Regressor(
        hidden_layer_sizes=MODEL["hidden"],
        batch_size=MODEL["batch"],
        max_iter=epochs,
        random_state=0,
    )


def in_memory_seconds(path: Path, epochs: int) -> tuple[float, float]:
    started = time.perf_counter()
    frame = pd.read_parquet(path)
    reg = regressor(epochs).fit(frame.drop(columns="y"), frame["y"])
    return time.perf_counter() - started, reg.loss_curve_[-1]


def streamed_seconds(path: Path, epochs: int) -> tuple[float, float]:
    started = time.perf_counter()
    reg = fit_parquet(regressor(epochs), ParquetData(path, target="y"))
    return time.perf_counter() - started, reg.loss_curve_[-1]


def nproc_seconds(path: Path, work: Path, nproc: int, epochs: int) -> float | str:
    """Training seconds reported by ``nnreg train --stream --nproc N``, or why there are
    none (the command has no --nproc option, or failed)."""
    cli = [sys.executable, "-m", "nnreg"]
    usage = subprocess.run([*cli, "train", "--help"], capture_output=True, text=True).stdout
    if "--nproc" not in usage:
        return "this nnreg's `train` command has no `--nproc` option"
    out = work / f"nproc-{nproc}"
    done = subprocess.run(
        [*cli, *train_args(path, out, epochs), "--nproc", str(nproc)],
        capture_output=True,
        text=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        return f"`--nproc {nproc}` failed: {done.stderr.strip()}"
    return float(json.loads(done.stdout)["seconds"])


def sweep_seconds(
    path: Path, work: Path, nproc: int, epochs: int = SWEEP_EPOCHS
) -> tuple[float, pd.DataFrame]:
    """(wall seconds, ranking) of ``nnreg sweep`` on ``path`` in ``nproc`` processes."""
    out = work / f"sweep-{nproc}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "nnreg", "sweep", str(path), "--target", "y", *SWEEP_GRID]
    command += ["--epochs", str(epochs), "--out", str(out), "--quiet", "--nproc", str(nproc)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, pd.read_csv(out / "sweep.csv")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000,10000000", help="small,large row counts")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the throughput runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.md")
    args = parser.parse_args()
    small, large = (int(r) for r in args.rows.split(","))
    work = Path(tempfile.mkdtemp(prefix="nnreg-scale-"))
    try:
        lines = run(args, small, large, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


def run(args: argparse.Namespace, small: int, large: int, work: Path) -> list[str]:
    load_before = os.getloadavg()[0]
    files = {}
    for rows in (small, large):
        files[rows] = work / f"rows-{rows}.parquet"
        started = time.perf_counter()
        write_parquet(files[rows], rows)
        size = files[rows].stat().st_size / 2**20
        print(f"wrote {rows:,} rows ({size:,.0f} MB) in {time.perf_counter() - started:.1f} s")

    peaks = {rows: peak_memory_mb(files[rows], work) for rows in (small, large)}
    for rows, (mb, s) in peaks.items():
        print(f"peak RSS {rows:,} rows: {mb:,.0f} MB ({s:.1f} s)")

    memory, streamed = [], []
    for _ in range(args.repeats):  # alternate, so that both see the same machine load
        memory.append(in_memory_seconds(files[small], args.epochs))
        streamed.append(streamed_seconds(files[small], args.epochs))
    t_mem, loss_mem = min(memory)
    t_str, loss_str = min(streamed)
    work_rows = small * args.epochs
    print(f"in-memory {work_rows / t_mem:,.0f} rows/s, streamed {work_rows / t_str:,.0f} rows/s")

    procs = {n: nproc_seconds(files[small], work, n, args.epochs) for n in (1, 2)}

    sweep_file = work / "sweep.parquet"
    write_parquet(sweep_file, SWEEP_ROWS, seed=1)
    sweeps: dict[int, list[tuple[float, pd.DataFrame]]] = {1: [], 2: []}
    short: dict[int, list[float]] = {1: [], 2: []}  # one epoch: mostly everything but training
    for _ in range(args.repeats):  # alternate, so that both see the same machine load
        for n in sweeps:
            sweeps[n].append(sweep_seconds(sweep_file, work, n))
            short[n].append(sweep_seconds(sweep_file, work, n, epochs=1)[0])
    sweep_best = {n: min(t for t, _ in runs) for n, runs in sweeps.items()}
    short_best = {n: min(times) for n, times in short.items()}
    rankings = [runs[0][1] for runs in sweeps.values()]
    key = ["rank", "hidden", "lr", "weight_decay", "seed"]
    same_ranking = rankings[0][key].equals(rankings[1][key])
    gap = float((rankings[0]["val_rmse"] - rankings[1]["val_rmse"]).abs().max())
    print(f"sweep: 1 process {sweep_best[1]:.1f} s, 2 processes {sweep_best[2]:.1f} s")

    load_after = os.getloadavg()[0]
    ratio = peaks[large][0] / peaks[small][0]
    speed = t_mem / t_str
    command = "python benchmarks/scale.py" + (
        f" --rows {args.rows}" if args.rows != "1000000,10000000" else ""
    )
    hidden = "-".join(str(h) for h in MODEL["hidden"])
    lines = [
        "# Streamed training at scale",
        "",
        f"Made by `{command}` on {platform.machine()}, {os.cpu_count()} cores (1-minute load "
        f"average {load_before:.1f} at the start, {load_after:.1f} at the end; the ratios "
        "compare runs made in one sitting), "
        f"Python {platform.python_version()}, torch {torch.__version__}, pyarrow "
        f"{pa.__version__}, nnreg {nnreg.__version__}. Data: synthetic Parquet files of "
        f"{FEATURES} float32 features and a float32 target, row groups of {GROUP:,} rows. Model: "
        f"the recommended preset with {FEATURES}-{hidden}-1 SiLU layers and batches of "
        f"{MODEL['batch']} rows; streaming reads chunks of 65,536 rows and shuffles in a "
        "buffer of 65,536 rows.",
        "",
        "## Peak resident memory of streamed training",
        "",
        "`nnreg train FILE --target y --stream --epochs 1 --hidden 64,64 --batch-size 512`, "
        "each in a fresh process (statistics pass, one epoch, and the scoring pass that "
        "fills the model folder's metrics); peak RSS from `getrusage(RUSAGE_CHILDREN)`.",
        "",
        "| rows | file (MB) | peak RSS (MB) | wall time (s) |",
        "|---:|---:|---:|---:|",
    ]
    for rows in (small, large):
        mb, seconds = peaks[rows]
        size = files[rows].stat().st_size / 2**20 if files[rows].exists() else float("nan")
        lines.append(f"| {rows:,} | {size:,.0f} | {mb:,.0f} | {seconds:.1f} |")
    lines += [
        "",
        f"- {large:,} rows peak / {small:,} rows peak = {ratio:.3f} (target <= {PEAK_RATIO}): "
        f"{verdict(ratio <= PEAK_RATIO)}",
        f"- {large:,} rows peak = {peaks[large][0]:,.0f} MB (target < {PEAK_LIMIT_MB:,.0f} MB): "
        f"{verdict(peaks[large][0] < PEAK_LIMIT_MB)}",
        "",
        "## Throughput: streamed against in-memory",
        "",
        f"{small:,} rows, {args.epochs} epochs, from the Parquet file to a trained model, in "
        f"one process, best of {args.repeats} (alternating). In memory: `pandas.read_parquet` "
        "then `Regressor.fit`; streamed: `nnreg.stream.fit_parquet` (its statistics pass "
        "included). The final training losses differ because the minibatch order does.",
        "",
        "| training | time (s) | rows/s | final training loss |",
        "|---|---:|---:|---:|",
        f"| in memory | {t_mem:.2f} | {work_rows / t_mem:,.0f} | {loss_mem:.4f} |",
        f"| streamed | {t_str:.2f} | {work_rows / t_str:,.0f} | {loss_str:.4f} |",
        "",
        f"- streamed / in-memory throughput = {speed:.2f}x (target >= {THROUGHPUT_RATIO}x): "
        f"{verdict(speed >= THROUGHPUT_RATIO)}",
        "",
        "## rows/s with 1 and 2 processes",
        "",
        f"`nnreg train FILE --target y --stream --epochs {args.epochs} --hidden 64,64 "
        "--batch-size 512 --nproc N` on the "
        f"{small:,}-row file; seconds are the JSON summary's (training, statistics pass "
        "included; process start-up and the final scoring pass excluded). Each process "
        "reads every other row group and takes batches of 512 rows (a step's global batch is "
        "512 x N), with one intra-op thread per process at N = 2.",
        "",
    ]
    one = procs[1]
    lines += ["| processes | time (s) | rows/s | vs 1 process |", "|---:|---:|---:|---:|"]
    for n, seconds in procs.items():
        if isinstance(seconds, str):
            lines.append(f"| {n} | not measured: {seconds} | | |")
        else:
            vs = f"{one / seconds:.2f}x" if isinstance(one, float) else ""
            lines.append(f"| {n} | {seconds:.2f} | {work_rows / seconds:,.0f} | {vs} |")
    grid = " ".join(SWEEP_GRID)
    lines += [
        "",
        "## A sweep in 1 and 2 processes",
        "",
        f"`nnreg sweep FILE --target y {grid} --epochs {SWEEP_EPOCHS} --nproc N` (12 "
        f"configurations of 2 architectures, the recommended preset otherwise) on a "
        f"{SWEEP_ROWS:,}-row file of the same kind; wall time of the whole command (process "
        f"start-up, reading, training, gathering and writing the folder), best of "
        f"{args.repeats} (alternating). With 2 processes each trains its share, cut where the "
        "parameter counts split evenly, with one intra-op thread; with 1, one process trains "
        "all 12 with every core.",
        "",
        f"The same command with `--epochs 1` measures what does not grow with the epochs "
        f"(start-up, reading, one epoch, gathering, writing); the difference is the other "
        f"{SWEEP_EPOCHS - 1} epochs of training.",
        "",
        f"| processes | wall time (s) | vs 1 process | with --epochs 1 (s) | the other "
        f"{SWEEP_EPOCHS - 1} epochs (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, seconds in sweep_best.items():
        rest = seconds - short_best[n]
        lines.append(
            f"| {n} | {seconds:.1f} | {sweep_best[1] / seconds:.2f}x | {short_best[n]:.1f} "
            f"| {rest:.1f} |"
        )
    lines += [
        "",
        f"- the two rankings are {'the same' if same_ranking else 'DIFFERENT'}; the largest "
        f"validation RMSE difference between them is {gap:.2g}",
        f"- this machine has {os.cpu_count()} cores: a second process splits the cores that "
        "one process already used, and adds its start-up (the launcher's own, then both "
        "processes importing at once). With more free cores than processes, the training "
        "part (the last column) is what shrinks with the number of processes, the shares "
        "being cut to equal work; the rest does not.",
    ]
    return lines


if __name__ == "__main__":
    main()
