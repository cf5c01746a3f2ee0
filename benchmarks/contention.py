"""Does an ordinary fit stay fast on a busy machine? Measured, idle and with one core taken.

Trains the recommended preset (``Regressor(max_iter=20)``) on 4,000 rows x 8 features, in a
fresh process each time (OpenMP reads its settings when torch loads), first on an idle
machine and then while another process keeps one core busy (``while True: pass``), under
four thread settings:

* ``nnreg``: what nnreg does by itself: torch's thread count for steps this large, but no
  more threads than the cores other processes leave free (``nnreg.device.thread_policy``);
* ``fixed``: torch's thread count throughout, as nnreg did before it watched the machine;
* ``passive``: the same, with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep);
* ``one thread``: ``OMP_NUM_THREADS=1``.

Writes ``benchmarks/results/contention.md``: seconds per fit (median of the repeats) and the
busy/idle ratio of each. The target is nnreg's ratio at most 2.5 (with one of two cores
taken, a fair share is 2x).

    python benchmarks/contention.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "contention.md"
TARGET = 2.5

FIT = """
import json, sys, time
import numpy as np
import nnreg
import nnreg.device
if sys.argv[2] == "fixed":  # no look at the machine: the thread count stays as torch has it
    nnreg.device._busy_seconds = lambda cores: None
rng = np.random.default_rng(0)
X = rng.normal(size=(4000, 8))
y = np.sin(X[:, 0]) + X[:, 1] ** 2 + 0.1 * rng.normal(size=4000)
nnreg.Regressor(max_iter=1, random_state=0).fit(X[:500], y[:500])  # warm-up
times = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    nnreg.Regressor(max_iter=20, random_state=0).fit(X, y)
    times.append(time.perf_counter() - start)
import torch
print(json.dumps({"times": times, "threads": torch.get_num_threads()}))
"""

SETTINGS = {  # name -> (environment, nnreg watches the machine)
    "nnreg": ({}, True),
    "fixed": ({}, False),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "one thread": ({"OMP_NUM_THREADS": "1"}, False),
}


def fit_seconds(extra_env: dict[str, str], watch: bool, repeats: int) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(extra_env)
    done = subprocess.run(
        [sys.executable, "-c", FIT, str(repeats), "watch" if watch else "fixed"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return statistics.median(found["times"]), found["threads"]


def busy_core() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for name, (env, watch) in SETTINGS.items():
        idle, threads = fit_seconds(env, watch, args.repeats)
        hog = busy_core()
        try:
            time.sleep(0.5)  # let the scheduler settle on the busy process
            busy, _ = fit_seconds(env, watch, args.repeats)
        finally:
            hog.kill()
            hog.wait()
        rows.append((name, threads, idle, busy, busy / idle))
        print(f"{name:9s} idle {idle:.3f} s  busy {busy:.3f} s  ratio {busy / idle:.2f}")
    write(rows, args.repeats)


def write(rows: list[tuple[str, int, float, float, float]], repeats: int) -> None:
    import torch

    import nnreg

    ours = next(r for r in rows if r[0] == "nnreg")
    verdict = "PASS" if ours[4] <= TARGET else "FAIL"
    lines = [
        "# A fit on a busy machine",
        "",
        f"Made by `python benchmarks/contention.py --repeats {repeats}` on {os.cpu_count()} "
        f"cores ({platform.machine()}), Python {platform.python_version()}, torch "
        f"{torch.__version__}, nnreg {nnreg.__version__}. `Regressor(max_iter=20)` (the "
        "recommended preset, 20 epochs) on 4,000 rows x 8 features; median of the repeats, "
        "each setting in fresh processes, idle and then beside a process that keeps one core "
        "busy.",
        "",
        "| threads | torch threads at start | idle s | one core busy s | busy / idle |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {t} | {i:.3f} | {b:.3f} | {r:.2f} |" for n, t, i, b, r in rows]
    lines += [
        "",
        f"{verdict}: nnreg's busy/idle ratio is {ours[4]:.2f} (target at most {TARGET}).",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
