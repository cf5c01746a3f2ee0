"""Does nnreg train on CUDA as it does on the CPU, and how fast? One short script.

On the same synthetic data and seed it trains on CUDA and on the CPU and compares:

* exactness: the fast engine (the seed recipe: full-batch SGD; and full-batch Adam with
  SiLU) and the autograd engine, in float64, where the two devices must agree to rounding;
  then the fast engine in float32, where they agree to float32 rounding over many steps;
* the default ``Regressor`` (minibatches, dropout), and an ensemble (the batched engine) with
  early stopping: minibatch order and dropout masks come from each device's own random
  generator, so these are compared by test RMSE, not weights;
* throughput: rows per second of training for the default ``Regressor`` at batch sizes 256
  and 8192, on CUDA and on the CPU.

It writes ``benchmarks/results/gpu_check.md``. Without a CUDA device it says so and exits
with code 0, writing nothing. ``--dry-run`` runs every step with the CPU standing in for CUDA
and prints the report instead of writing it (a check of the script itself).

    python benchmarks/gpu_check.py            # on a machine with a CUDA device
    python benchmarks/gpu_check.py --dry-run  # anywhere
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nnreg
from nnreg.model import MLP, MLPConfig
from nnreg.train import TrainConfig, Trainer

OUT = Path(__file__).parent / "results" / "gpu_check.md"
FLOAT64 = {"rtol": 1e-9, "atol": 1e-10}  # two devices, same float64 arithmetic, other order
FLOAT32 = {"rtol": 2e-3, "atol": 1e-4}  # float32 rounding, compounded over the steps


def synthetic(rows: int, features: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = sin(x0) + x1 * x2 + 0.5 * x3**2 + noise; the other features are noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, features))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + 0.5 * X[:, 3] ** 2 + rng.normal(0, 0.1, rows)
    return X, y


def weights(reg: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().double() for k, v in reg.model_.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def agree(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: dict[str, float]) -> bool:
    return all(torch.allclose(a[k], b[k], **tol) for k in a)


def check_regressor_exact(device: str, dtype: str, preset: str, **params: Any) -> dict[str, Any]:
    """Full-batch training without dropout: no random draws after the (CPU) initialisation."""
    df = nnreg.seed_dataset(n=1000, random_state=0)
    X, y = df[["x1", "x2"]], df["y"]
    fits = {}
    for where in ("cpu", device):
        reg = nnreg.Regressor.from_preset(
            preset, dtype=dtype, random_state=0, device=where, **params
        )
        fits[where] = reg.fit(X, y)
    cpu, dev = fits["cpu"], fits[device]
    tol = FLOAT64 if dtype == "float64" else FLOAT32
    pred_cpu, pred_dev = cpu.predict(X), dev.predict(X)
    loss_cpu, loss_dev = np.array(cpu.loss_curve_), np.array(dev.loss_curve_)
    ok = (
        agree(weights(cpu), weights(dev), tol)
        and np.allclose(pred_cpu, pred_dev, **tol)
        and np.allclose(loss_cpu, loss_dev, **tol)
    )
    return {
        "max |weight difference|": max_difference(weights(cpu), weights(dev)),
        "max |prediction difference|": float(np.abs(pred_cpu - pred_dev).max()),
        "final loss (CPU, device)": f"{loss_cpu[-1]:.6g}, {loss_dev[-1]:.6g}",
        "epochs": len(loss_cpu),
        "ok": ok,
        "tolerance": tol,
    }


def check_autograd_exact(device: str) -> dict[str, Any]:
    """The autograd engine (forced), float64, full batch, Adam."""
    X, y = synthetic(2000, seed=1)
    results = {}
    for where in ("cpu", device):
        torch.manual_seed(0)
        model = MLP(MLPConfig(n_inputs=X.shape[1], hidden_sizes=(64, 64), activation="tanh"))
        model = model.to(device=where, dtype=torch.float64)
        config = TrainConfig(epochs=100, lr=1e-3, optimizer="adam", engine="autograd")
        trainer = Trainer(model, config)
        Xt = torch.tensor(X, dtype=torch.float64, device=where)
        yt = torch.tensor(y, dtype=torch.float64, device=where)[:, None]
        history = trainer.run(Xt, yt)
        assert not trainer.fast
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        results[where] = (state, history.train_loss)
    (w_cpu, l_cpu), (w_dev, l_dev) = results["cpu"], results[device]
    ok = agree(w_cpu, w_dev, FLOAT64) and np.allclose(l_cpu, l_dev, **FLOAT64)
    return {
        "max |weight difference|": max_difference(w_cpu, w_dev),
        "final loss (CPU, device)": f"{l_cpu[-1]:.6g}, {l_dev[-1]:.6g}",
        "epochs": len(l_cpu),
        "ok": ok,
        "tolerance": FLOAT64,
    }


def check_default_accuracy(device: str, **params: Any) -> dict[str, Any]:
    """The default Regressor: minibatches and dropout, compared by held-out RMSE."""
    X, y = synthetic(24_000, seed=2)
    X_train, y_train, X_test, y_test = X[:20_000], y[:20_000], X[20_000:], y[20_000:]
    rmse = {}
    for where in ("cpu", device):
        reg = nnreg.Regressor(random_state=0, device=where, **params).fit(X_train, y_train)
        rmse[where] = float(np.sqrt(np.mean((reg.predict(X_test) - y_test) ** 2)))
    ratio = rmse[device] / rmse["cpu"]
    return {
        "test RMSE, CPU": rmse["cpu"],
        "test RMSE, device": rmse[device],
        "ratio": ratio,
        "ok": 0.8 < ratio < 1.25,
        "tolerance": "ratio within (0.8, 1.25)",
    }


def rows_per_second(device: str, batch: int, rows: int, epochs: int) -> float:
    X, y = synthetic(rows, seed=3)
    best = float("inf")
    for attempt in range(3):  # the first one also warms up (CUDA context, kernels)
        reg = nnreg.Regressor(max_iter=epochs, batch_size=batch, random_state=0, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        reg.fit(X, y)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if attempt:
            best = min(best, time.perf_counter() - start)
    return rows * epochs / best


def run(name: str, check: Callable[[], dict[str, Any]], failures: list[str]) -> list[str]:
    """One check as Markdown lines; an exception is reported, not raised."""
    lines = [f"### {name}", ""]
    try:
        result = check()
    except Exception as exc:  # noqa: BLE001 - the report says what failed and goes on
        failures.append(name)
        tb = traceback.format_exc(limit=3).strip().splitlines()
        return [
            *lines,
            f"**FAILED** with {type(exc).__name__}: {exc}",
            "",
            "```",
            *tb[-6:],
            "```",
            "",
        ]
    if not result.pop("ok"):
        failures.append(name)
        lines.append("**MISMATCH** (outside the tolerance)")
    else:
        lines.append("agrees (within the tolerance)")
    lines.append("")
    lines += [f"- {key}: {_fmt(value)}" for key, value in result.items()]
    return [*lines, ""]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:g}" for k, v in value.items())
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU stands in for CUDA")
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the throughput")
    parser.add_argument("--epochs", type=int, default=2, help="epochs for the throughput")
    args = parser.parse_args()
    if args.dry_run:
        device, device_name = "cpu", "the CPU standing in for CUDA (--dry-run)"
    elif not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device is available to this PyTorch ({torch.__version__}); "
            "nothing was measured or written. Run it on a machine with a CUDA GPU.",
            file=sys.stderr,
        )
        return 0
    else:
        device, device_name = "cuda", torch.cuda.get_device_name(0)
    failures: list[str] = []
    lines = [
        "# CUDA against the CPU",
        "",
        f"Made by `python benchmarks/gpu_check.py` on {device_name}, {os.cpu_count()} CPU "
        f"cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"nnreg {nnreg.__version__}, {time.strftime('%Y-%m-%d')}. The initial weights are "
        "drawn on the CPU for both devices, so the runs start from the same point.",
        "",
        "## Same results",
        "",
    ]
    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        (
            "Fast engine, seed recipe (full-batch SGD, 500 epochs), float64",
            lambda: check_regressor_exact(device, "float64", "seed"),
        ),
        (
            "Fast engine, full-batch AdamW, SiLU, scaled data, 100 epochs, float64",
            lambda: check_regressor_exact(
                device, "float64", "recommended", dropout=0.0, batch_size="full", max_iter=100
            ),
        ),
        (
            "Fast engine, seed recipe, float32",
            lambda: check_regressor_exact(device, "float32", "seed"),
        ),
        (
            "Autograd engine, full-batch Adam, tanh, 100 epochs, float64",
            lambda: check_autograd_exact(device),
        ),
        (
            "Default Regressor (minibatches of 256, dropout), 20 epochs on 20,000 rows",
            lambda: check_default_accuracy(device, max_iter=20),
        ),
        (
            "Ensemble of 4 (batched engine) with early stopping, at most 10 epochs",
            lambda: check_default_accuracy(device, max_iter=10, n_models=4, early_stopping=True),
        ),
    ]
    for name, check in checks:
        lines += run(name, check, failures)
        print(f"{name}: {'FAILED' if name in failures else 'ok'}", file=sys.stderr)
    lines += [
        "## Throughput",
        "",
        f"Default `Regressor` (three SiLU layers of 128, AdamW, dropout), {args.rows:,} rows x "
        f"8 features, {args.epochs} epochs, best of 2 after a warm-up; rows per second of "
        "training (preprocessing included).",
        "",
        "| batch | CPU rows/s | device rows/s | device / CPU |",
        "|---:|---:|---:|---:|",
    ]
    for batch in (256, 8192):
        try:
            cpu = rows_per_second("cpu", batch, args.rows, args.epochs)
            dev = rows_per_second(device, batch, args.rows, args.epochs)
            lines.append(f"| {batch} | {cpu:,.0f} | {dev:,.0f} | {dev / cpu:.2f}x |")
        except Exception as exc:  # noqa: BLE001
            failures.append(f"throughput at batch {batch}")
            lines.append(f"| {batch} | FAILED: {type(exc).__name__}: {exc} | | |")
        print(f"throughput at batch {batch}: {lines[-1]}", file=sys.stderr)
    verdict = "every check agrees" if not failures else "failed: " + "; ".join(failures)
    lines += ["", f"Result: {verdict}.", ""]
    text = "\n".join(lines)
    if args.dry_run:
        print(text)
    else:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
        print(f"wrote {OUT}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
