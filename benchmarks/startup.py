"""How long does the ``nnreg`` command take to start, next to ``import torch`` alone?

Runs each command in a fresh subprocess ``--runs`` times (default 5) and takes the median
wall time: ``python -c "import torch"``, ``nnreg --help``, ``nnreg train --help``,
``nnreg info MODEL``, an argument error (``nnreg train --epochs abc``) and
``nnreg train`` on a 100-row CSV with ``--epochs 1``. The table goes into
``benchmarks/results/startup.md`` as a section headed by ``--label`` (e.g. ``before`` or
``after`` a change); sections with other labels are kept, so the file shows both.

    python benchmarks/startup.py --label after
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "startup.md"
HEADER = "## "


def nnreg_command() -> list[str]:
    """The installed ``nnreg`` script beside this Python, else ``python -m nnreg``."""
    script = Path(sys.executable).with_name("nnreg")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nnreg"]


def wall(args: list[str], runs: int, expect: int = 0, cwd: Path | None = None) -> float:
    """Median wall time of ``args`` in a fresh process; its exit code must be ``expect``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != expect:
            raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-400:]}")
    return statistics.median(times)


def measure(runs: int) -> list[tuple[str, float]]:
    nnreg = nnreg_command()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_csv = "import nnreg; nnreg.seed_dataset(100).to_csv('data.csv', index=False)"
        subprocess.run([sys.executable, "-c", make_csv], cwd=work, check=True)
        train = [*nnreg, "train", "data.csv", "--target", "y", "--epochs", "1", "-q"]
        subprocess.run([*train, "--out", "model"], cwd=work, check=True, capture_output=True)
        floor = "import torch, sklearn.base, pandas"
        cases = [
            ('python -c "import torch"', [sys.executable, "-c", "import torch"], 0),
            (f'python -c "{floor}"', [sys.executable, "-c", floor], 0),
            (
                f'python -c "{floor}, matplotlib.figure"',
                [sys.executable, "-c", f"{floor}, matplotlib.figure"],
                0,
            ),
            ("nnreg --help", [*nnreg, "--help"], 0),
            ("nnreg train --help", [*nnreg, "train", "--help"], 0),
            ("nnreg info MODEL", [*nnreg, "info", "model"], 0),
            ("nnreg train --epochs abc (argument error)", [*nnreg, "train", "--epochs", "abc"], 2),
            ("nnreg train (100 rows, --epochs 1)", [*train, "--out", "run"], 0),
        ]
        return [(name, wall(args, runs, expect, cwd=work)) for name, args, expect in cases]


def section(label: str, results: list[tuple[str, float]], runs: int) -> str:
    torch_s = results[0][1]
    import torch

    import nnreg

    lines = [
        f"{HEADER}{label}",
        "",
        f"nnreg {nnreg.__version__}, torch {torch.__version__}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores; median of {runs} runs each, "
        f"every run a fresh process ({time.strftime('%Y-%m-%d')}).",
        "",
        "| command | seconds | x `import torch` |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{name}` | {s:.2f} | {s / torch_s:.2f} |" for name, s in results]
    return "\n".join(lines) + "\n"


def write(label: str, text: str) -> None:
    """Put the section ``label`` into OUT, replacing one of the same label, keeping others."""
    sections: dict[str, str] = {}
    if OUT.is_file():
        current = None
        for line in OUT.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.startswith(HEADER):
                current = line[len(HEADER) :].strip()
                sections[current] = ""
            if current is not None:
                sections[current] += line
    sections[label] = text
    intro = (
        "# Start-up time of the nnreg command\n\n"
        "Made by `python benchmarks/startup.py --label LABEL`: wall time of each command in a "
        'fresh subprocess, and its ratio to `python -c "import torch"` measured in the same '
        "run (the floor of any command that trains or predicts).\n\n"
        "Training needs more than PyTorch: the estimator's scikit-learn base classes (which "
        "import SciPy and pandas) and, for the folder's loss.png, matplotlib; the two "
        "`python -c` rows below `import torch` measure those imports alone, the floor of "
        "`nnreg train`. Help and argument errors import none of them.\n\n"
    )
    body = "\n".join(s.rstrip("\n") + "\n" for s in sections.values())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(intro + body, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="the section's heading")
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (median)")
    args = parser.parse_args()
    results = measure(args.runs)
    text = section(args.label, results, args.runs)
    write(args.label, text)
    print(text)


if __name__ == "__main__":
    main()
