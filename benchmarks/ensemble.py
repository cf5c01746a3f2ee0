"""Ensembles: the cost of K members trained as one batched computation, and what they buy.

Part 1, speed (one process, best of ``--repeats``): the seed experiment's network and recipe
trained as 1 member, as K=32 members batched (``Regressor(n_models=32)``), as 32 shared-weight
members (``ensemble="tabm"``, with the compiled step and with the PyTorch one, and
``"tabm-mini"``), as 32 sequential fits with the same engine, and as 32 scikit-learn
MLPRegressor fits for reference; then the achieved FLOP/s of
one training step of the recommended network as 32 TabM members, against one ``torch.mm`` of
the same total size.

Part 2, accuracy: on the accuracy panel (``benchmarks/accuracy.py``'s tables, splits and
seeds), the recommended single model against the recommended preset with ``n_models=K``,
8 shared-weight members of each form and RealMLP-TD. The ensembles (``--ensemble-states``
random states per split) are judged against the single model's expected error (its mean over
``--states`` random states per split): worse is higher by more than twice the difference's
standard error. And the empirical coverage of the ensembles' 90% prediction intervals on each
test split.

    python benchmarks/ensemble.py                 # what results/ensemble.md was made with
    python benchmarks/ensemble.py --members 4 --seeds 0 --datasets seed,mpg
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import accuracy  # noqa: E402 - the panel's datasets, splits and peers

import nnreg  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SPEED_MEMBERS = 32


@contextlib.contextmanager
def compiled_step(on: bool) -> Iterator[None]:
    """With ``on`` False, shared members train with the PyTorch step (as NNREG_NATIVE=0);
    afterwards as before."""
    from nnreg.engine import native

    before = os.environ.get("NNREG_NATIVE")
    os.environ["NNREG_NATIVE"] = "1" if on else "0"
    native.library.cache_clear()
    try:
        yield
    finally:
        if before is None:
            del os.environ["NNREG_NATIVE"]
        else:
            os.environ["NNREG_NATIVE"] = before
        native.library.cache_clear()


def compiled_note() -> str:
    from nnreg.engine import native

    lib = native.library()
    return "nnreg/engine/csrc/tabm.cpp, compiled here" if lib else "not available here"


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def best_of_both(repeats: int, first: Callable[[], Any], second: Callable[[], Any]) -> list[float]:
    """The best times of two runs measured in turns, so that a busy spell on a shared machine
    slows both alike rather than one of them."""
    best = [float("inf")] * 2
    for repeat in range(repeats + 1):  # the first turn warms both up
        for which, run in enumerate((first, second)):
            start = time.perf_counter()
            run()
            if repeat:
                best[which] = min(best[which], time.perf_counter() - start)
    return best


def speed_section(repeats: int) -> str:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    df = nnreg.seed_dataset(n=100, random_state=0)
    X, y = df[["x1", "x2"]].to_numpy(copy=True), df["y"].to_numpy(copy=True)
    K = SPEED_MEMBERS

    def one() -> None:
        nnreg.Regressor.from_preset("seed", random_state=0).fit(X, y)

    def batched() -> None:
        nnreg.Regressor.from_preset("seed", n_models=K, random_state=0).fit(X, y)

    def shared(form: str) -> Callable[[], None]:
        def run() -> None:
            nnreg.Regressor.from_preset("seed", n_models=K, ensemble=form, random_state=0).fit(X, y)

        return run

    def pytorch_step(run: Callable[[], None]) -> float:
        """``run``'s best time with the PyTorch step; the switch (which loads the compiled
        step's library again afterwards) stays outside the timings."""
        with compiled_step(False):
            return best_of(repeats, run)

    def sequential() -> None:
        for k in range(K):
            nnreg.Regressor.from_preset("seed", random_state=k).fit(X, y)

    def sklearn() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for k in range(K):
                MLPRegressor(
                    hidden_layer_sizes=(20, 20),
                    solver="sgd",
                    learning_rate_init=0.002,
                    momentum=0.0,
                    batch_size=100,
                    max_iter=500,
                    alpha=0.0,
                    tol=0.0,
                    n_iter_no_change=10**9,
                    shuffle=False,
                    random_state=k,
                ).fit(X, y)

    rows = [
        ("1 member (nnreg)", best_of(repeats, one)),
        (f"{K} members batched (nnreg, n_models={K})", best_of(repeats, batched)),
        (f"{K} sequential fits (nnreg)", best_of(repeats, sequential)),
        (f'{K} shared members (nnreg, ensemble="tabm")', best_of(repeats, shared("tabm"))),
        (
            f'{K} shared members (ensemble="tabm", PyTorch step: NNREG_NATIVE=0)',
            pytorch_step(shared("tabm")),
        ),
        (f'{K} shared members (ensemble="tabm-mini")', best_of(repeats, shared("tabm-mini"))),
        (f"{K} MLPRegressor fits (scikit-learn)", best_of(repeats, sklearn)),
    ]
    base = rows[0][1]
    n = len(y)
    cal_batched, cal_shared = (
        len(
            nnreg.Regressor.from_preset("seed", n_models=K, random_state=0, **kw)
            .fit(X, y)
            .calibrator_.scores[0]
        )
        for kw in ({}, {"ensemble": "tabm"})
    )
    lines = [
        "## Speed: the seed experiment's network, 500 full-batch SGD epochs per member",
        "",
        f"`n_models={K}` trains {K} + 2 networks in one batch: the {K} members on all {n} rows",
        f"and two helpers that each leave out half of the {cal_batched} calibration rows (as zero",
        "weights) and score them out of fold (every 4th epoch: at most 128 of them). The single",
        f"fits train on all {n} rows. Shared members train as one network (the fast engine)",
        f"on {n - cal_shared} rows and score the other {cal_shared} (their calibration rows)",
        "every 4th epoch, as the helpers do. `tabm` members train with the compiled step",
        f"({compiled_note()}); `tabm-mini` members, which it does not cover, and the",
        "`NNREG_NATIVE=0` row with the PyTorch step.",
        "",
        "| run | time (s) | time / 1 member |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t:.4f} | {t / base:.2f}x |" for name, t in rows]
    batched_t, sequential_t, tabm_t, torch_t = rows[1][1], rows[2][1], rows[3][1], rows[4][1]
    lines += [
        "",
        f"- {K} shared (tabm) members: {tabm_t / base:.2f}x the time of one member "
        f"({'PASS' if tabm_t <= 4 * base else 'FAIL'}: needs <= 4x); with the PyTorch step "
        f"{torch_t / base:.2f}x.",
        f"- {K} batched members: {batched_t / base:.2f}x the time of one member "
        f"({'PASS' if batched_t <= 4 * base else 'FAIL'}: needs <= 4x).",
        f"- {K} sequential fits take {sequential_t / batched_t:.1f}x as long as the batched "
        f"run ({'PASS' if sequential_t >= 8 * batched_t else 'FAIL'}: needs >= 8x).",
    ]
    for line in lines[-3:]:
        print(line)
    return "\n".join(lines) + "\n"


def flops_section(repeats: int, k: int = SPEED_MEMBERS, rows: int = 256, inputs: int = 32) -> str:
    """The achieved FLOP/s of one training step (forward, backward, AdamW) of the
    recommended network as ``k`` TabM members on a batch of ``rows``, against one
    ``torch.mm`` with as many multiply-adds."""
    from nnreg.model import MLPConfig
    from nnreg.tabm import TabM
    from nnreg.train import TrainConfig, make_backend

    torch.manual_seed(0)
    widths = (128, 128, 128)
    config = MLPConfig(inputs, widths, 1, "silu", dropout=0.15, ensemble="tabm", k=k)
    net = TabM(config).train()
    generator = torch.Generator().manual_seed(0)
    backend = make_backend(net, TrainConfig(optimizer="adamw", lr=1e-3), generator)
    X, y = backend.inputs(torch.randn(rows, inputs)), torch.randn(rows, 1)
    sizes = [inputs, *widths, 1]
    macs = k * rows * sum(a * b for a, b in zip(sizes, sizes[1:], strict=False))
    flops = 3 * 2 * macs  # forward; backward: the inputs' and the weights' gradients
    steps = 20

    def train() -> None:
        with backend.no_graph():
            for _ in range(steps):
                backend.step(X, y, None, None)

    A, B = torch.randn(k * rows, 128), torch.randn(128, 3 * macs // (k * rows * 128))

    def product() -> None:
        for _ in range(steps):
            torch.mm(A, B)

    step_t, mm_t = (t / steps for t in best_of_both(2 * repeats, train, product))
    step_rate, mm_rate = flops / step_t / 1e9, 2 * A.shape[0] * 128 * B.shape[1] / mm_t / 1e9
    ratio = step_rate / mm_rate
    line = (
        f"- {'PASS' if ratio >= 0.5 else 'FAIL'}: the step runs at {ratio:.2f} of the "
        "product's FLOP/s (needs >= 0.5)."
    )
    print(line)
    return (
        f"## Speed: one training step of the recommended network as {k} TabM members\n\n"
        f"{inputs} inputs, layers {list(widths)}, dropout 0.15, AdamW, a batch of {rows} rows "
        f"({'fast engine' if backend.fast else 'autograd'}). One step: {flops / 1e6:.0f} MFLOP "
        f"(3 x 2 x {macs:,} multiply-adds) in "
        f"{step_t * 1e3:.2f} ms, {step_rate:.1f} GFLOP/s; one `torch.mm` of "
        f"({A.shape[0]}, 128) @ (128, {B.shape[1]}), as many multiply-adds: "
        f"{mm_t * 1e3:.2f} ms, {mm_rate:.1f} GFLOP/s. Each the best of {2 * repeats} runs of "
        f"{steps}, the step's and the product's taken in turns.\n\n{line}\n"
    )


def fitted_error(
    name: str, make: Callable[[int], Any], split: tuple[Any, ...], state: int
) -> tuple[float, float, float | None]:
    """One fit of model ``name`` on ``split`` (X_train, X_test, y_train, y_test) with
    ``random_state=state``: its test RMSE, its training seconds and (for models with
    intervals) its 90% interval's test coverage, else None."""
    X_tr, X_te, y_tr, y_te = split
    accuracy.seed_everything(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make(state)
        start = time.perf_counter()
        model.fit(X_tr.copy(), y_tr)
        secs = time.perf_counter() - start
        error = accuracy.rmse(y_te, model.predict(X_te.copy()))
        inside = None
        if name in INTERVAL:
            lo, hi = model.predict_interval(X_te.copy(), coverage=0.9)
            inside = float(np.mean((lo <= y_te) & (y_te <= hi)))
    return error, secs, inside


INTERVAL = ("ensemble", "tabm", "tabm-mini")  # the models whose intervals are scored


class Errors:
    """Test RMSEs of one model on one table: ``per_split[i]`` holds split ``i``'s fits, one
    per random state."""

    def __init__(self) -> None:
        self.per_split: list[list[float]] = []

    @property
    def first(self) -> float:
        """The mean over the splits of each split's first fit (``random_state`` its seed)."""
        return float(np.mean([e[0] for e in self.per_split]))

    @property
    def mean(self) -> float:
        """The mean over the splits of each split's mean over its random states."""
        return float(np.mean([np.mean(e) for e in self.per_split]))

    @property
    def spread(self) -> float:
        """The standard deviation between random states (ddof 1), averaged over the splits;
        0 with one state per split."""
        return float(np.mean([np.std(e, ddof=1) if len(e) > 1 else 0.0 for e in self.per_split]))

    @property
    def variance_of_mean(self) -> float:
        """The variance of :attr:`mean` due to the random states, on these splits."""
        S = len(self.per_split)
        per = [np.var(e, ddof=1) / len(e) if len(e) > 1 else 0.0 for e in self.per_split]
        return float(np.sum(per)) / S**2


def accuracy_section(
    datasets: list[str],
    seeds: list[int],
    members: int,
    realmlp: bool,
    states: int = 5,
    ensemble_states: int = 2,
) -> str:
    models: dict[str, Callable[[int], Any]] = {
        "single": lambda s: nnreg.Regressor(random_state=s),
        "ensemble": lambda s: nnreg.Regressor(n_models=members, random_state=s),
        "tabm": lambda s: nnreg.Regressor(n_models=8, ensemble="tabm", random_state=s),
        "tabm-mini": lambda s: nnreg.Regressor(n_models=8, ensemble="tabm-mini", random_state=s),
    }
    if realmlp:
        models["realmlp"] = lambda s: accuracy.realmlp_td(s, [])
    # random states per split: the single model's mean over its states is its expected error
    runs = {m: states if m == "single" else ensemble_states if m in INTERVAL else 1 for m in models}
    errors = {(d, m): Errors() for d in datasets for m in models}
    secs = {m: 0.0 for m in models}
    extra_secs = {m: 0.0 for m in models}  # fits with random states beyond the first
    coverage: dict[tuple[str, str], list[float]] = {}
    for d in datasets:
        for s in seeds:
            data = accuracy.load_dataset(d, s)
            for name in models:
                errors[(d, name)].per_split.append([])
            for j in range(max(runs.values())):
                for name, make in models.items():
                    if j >= runs[name]:
                        continue
                    error, took, inside = fitted_error(name, make, data, s + 1000 * j)
                    errors[(d, name)].per_split[-1].append(error)
                    if j == 0:
                        secs[name] += took
                    else:
                        extra_secs[name] += took
                    if inside is not None:
                        coverage.setdefault((d, name), []).append(inside)
                    print(f"{d} seed {s} state {j} {name}: RMSE {error:.4g}", flush=True)
    return accuracy_report(
        datasets, seeds, members, list(models), runs, errors, secs, extra_secs, coverage
    )


def accuracy_report(
    datasets: list[str],
    seeds: list[int],
    members: int,
    models: list[str],
    runs: dict[str, int],
    errors: dict[tuple[str, str], Errors],
    secs: dict[str, float],
    extra_secs: dict[str, float],
    coverage: dict[tuple[str, str], list[float]],
) -> str:
    names = {
        "single": "nnreg recommended",
        "ensemble": f"nnreg recommended, n_models={members}",
        "tabm": 'nnreg, n_models=8, ensemble="tabm"',
        "tabm-mini": 'nnreg, n_models=8, ensemble="tabm-mini"',
        "realmlp": "RealMLP-TD",
    }
    n_single, n_ens = runs["single"], runs["ensemble"]
    columns = [names[m] for m in models]
    columns.insert(1, f"nnreg recommended, mean of {n_single} random states (spread)")
    for m in INTERVAL if n_ens > 1 else ():
        columns[columns.index(names[m])] += f", mean of {n_ens} random states (spread)"
    header = "| dataset | " + " | ".join(columns)
    header += " | 90% interval coverage (independent, tabm, tabm-mini) |"
    lines = [
        f"## Accuracy: test RMSE, mean over split seeds {', '.join(map(str, seeds))}",
        "",
        "The single model and RealMLP-TD are fitted once per split, with `random_state` the",
        f"split's seed; the single model also with {n_single - 1} more random states",
        f"(`seed + 1000 * j`), and each ensemble with {n_ens} in all. A model's error is its",
        "mean over the splits of each split's mean over its random states; the spread (in",
        "brackets) is the standard deviation between random states (ddof 1), averaged over",
        "the splits. One fit is one draw from that spread, which on small tables is wider than",
        "the gaps between the models, so the ensembles are compared with the single model's",
        "mean over its random states (its expected error on these splits), and a difference",
        "counts as worse when it exceeds twice its standard error (from both models' spreads",
        "between random states: a model no worse than the single one fails on a given table",
        "about 2% of the time).",
        "Coverage is the mean over the ensembles' fits.",
        "",
        header,
        "|---|" + "---:|" * (len(models) + 2),
    ]
    single = {d: errors[(d, "single")] for d in datasets}
    for d in datasets:
        values = []
        for m in models:
            e = errors[(d, m)]
            if m == "single":
                values.append(f"{e.first:.4g}")
                values.append(f"{e.mean:.4g} ({e.spread:.2g})")
            elif m in INTERVAL and n_ens > 1:
                values.append(f"{e.mean:.4g} ({e.spread:.2g})")
            else:
                values.append(f"{e.mean:.4g}")
        cells = " | ".join(values)
        cover = ", ".join(f"{np.mean(coverage[(d, m)]):.3f}" for m in INTERVAL)
        lines.append(f"| {d} | {cells} | {cover} |")
    spent = [f"{secs[m]:.1f}" for m in models]
    spent.insert(1, f"{extra_secs['single']:.1f} (the extra fits)")
    for m in INTERVAL:
        if extra_secs[m]:
            spent[models.index(m) + 1] += f" (+{extra_secs[m]:.1f}, the extra fits)"
    lines += [f"| **training time, all fits (s)** | {' | '.join(spent)} | |", ""]
    checks = len(lines)  # the PASS/FAIL lines start here
    for m in INTERVAL:
        lines += ensemble_check(names[m], datasets, single, {d: errors[(d, m)] for d in datasets})
        lucky = [d for d in datasets if errors[(d, m)].first > errors[(d, "single")].first]
        if lucky:
            lines.append(
                f"  Comparing only the fits with `random_state` the split's seed, it is worse "
                f"on {', '.join(lucky)}."
            )
    if "realmlp" in models:
        ratios = {d: errors[(d, "ensemble")].first / errors[(d, "realmlp")].first for d in datasets}
        ok = all(r <= 1.03 for r in ratios.values())
        shown = ", ".join(f"{d} {r:.3f}" for d, r in ratios.items())
        lines.append(f"- {'PASS' if ok else 'FAIL'}: within 1.03x of RealMLP-TD: {shown}.")
        faster = secs["ensemble"] < secs["realmlp"]
        lines.append(
            f"- {'PASS' if faster else 'FAIL'}: trains faster than RealMLP-TD "
            f"({secs['ensemble']:.1f} s vs {secs['realmlp']:.1f} s, one fit per split)."
        )
    for m in INTERVAL:
        inside = all(0.85 <= np.mean(coverage[(d, m)]) <= 0.95 for d in datasets)
        lines.append(
            f"- {'PASS' if inside else 'FAIL'}: {names[m]}: the 90% intervals' test coverage "
            "lies in [0.85, 0.95] on every dataset (mean over its fits)."
        )
    for line in lines[checks:]:
        print(line)
    return "\n".join(lines) + "\n"


def ensemble_check(
    name: str, datasets: list[str], single: dict[str, Errors], ensemble: dict[str, Errors]
) -> list[str]:
    """The PASS/FAIL line of "no worse than the single model's expected error on every
    table": worse means higher by more than twice the difference's standard error."""
    higher, worse = [], []
    for d in datasets:
        diff = ensemble[d].mean - single[d].mean
        se = float(np.sqrt(single[d].variance_of_mean + ensemble[d].variance_of_mean))
        if diff > 0:
            higher.append(f"{d} by {diff:.3g} (2 SE {2 * se:.2g})")
        if diff > 2 * se:
            worse.append(d)
    lower = len(datasets) - len(higher)
    verdict = "PASS" if not worse else "FAIL"
    where = f" (worse on {', '.join(worse)})" if worse else ""
    detail = f"; higher on {', '.join(higher)}" if higher else ""
    return [
        f"- {verdict}: {name}: RMSE no worse than the single model's expected RMSE on every "
        f"dataset{where}. Lower on {lower} of {len(datasets)}{detail}."
    ]


def cpu_model() -> str:
    """The processor's name as Linux reports it (products' speed depends on it), else the
    platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown processor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=4, help="K of the accuracy ensemble")
    parser.add_argument("--datasets", default=",".join(accuracy.PANEL))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--states", type=int, default=5, help="random states of the single model per split"
    )
    parser.add_argument(
        "--ensemble-states", type=int, default=2, help="random states of each ensemble per split"
    )
    parser.add_argument("--no-realmlp", action="store_true", help="skip the RealMLP-TD column")
    parser.add_argument(
        "--speed-only", action="store_true", help="the two speed sections, not the accuracy one"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ensemble.md")
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    speed = speed_section(args.repeats) + "\n" + flops_section(args.repeats)
    acc = (
        ""
        if args.speed_only
        else accuracy_section(
            datasets,
            seeds,
            args.members,
            not args.no_realmlp,
            args.states,
            args.ensemble_states,
        )
    )
    wall = time.perf_counter() - start
    command = " ".join(["python benchmarks/ensemble.py", *sys.argv[1:]])
    header = (
        "# Ensembles\n\n"
        f"Made by `{command}` on {platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"nnreg {nnreg.__version__}, in {wall / 60:.1f} min; load average "
        f"{os.getloadavg()[0]:.2f} at the end.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n" + speed + "\n" + acc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
