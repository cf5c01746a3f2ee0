"""How fast does ``nnreg serve`` answer, against MLflow's model server on the same model?

Trains the recommended preset (``max_iter=20``) on scikit-learn's diabetes table (442 rows,
10 features), saves it as an nnreg model folder, and wraps the same folder as an MLflow
``pyfunc`` model (``predict`` calls ``Regressor.predict``). Then, one server at a time on a
free loopback port, it sends the same bounded load from one asyncio client with keep-alive
connections (a fixed number of requests at a fixed concurrency):

* ``nnreg serve MODEL`` (POST /predict, JSON records);
* ``mlflow models serve -m MODEL --env-manager local`` (POST /invocations,
  ``{"dataframe_records": ...}``), the reference; MLflow serves with FastAPI on uvicorn too.

Both run one process with their access logs sent to a file. For single-row and 1,000-row
requests it records requests/s, p50 and p99 latency (from sending a request to having read
its answer); an answer of each size is first compared with ``Regressor.predict``, and every
timed answer must be a 200 with JSON. Writes ``benchmarks/results/serve.md``. Targets:
nnreg's p99 for single rows under 20 ms, and at least 2x MLflow's requests/s.

    python benchmarks/serve.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).parent / "results" / "serve.md"
P99_TARGET_MS, RATIO_TARGET = 20.0, 2.0
START_TIMEOUT = 300.0


def train(folder: Path) -> tuple[Any, Any]:
    from sklearn.datasets import load_diabetes

    import nnreg

    data = load_diabetes(as_frame=True)
    X, y = data.data, data.target
    reg = nnreg.Regressor(max_iter=20, random_state=0).fit(X, y)
    reg.save(folder / "nnreg", target_names=["progression"])
    return nnreg.load(folder / "nnreg"), X


def mlflow_model(folder: Path, X: Any) -> Path:
    """The nnreg folder as an MLflow pyfunc model whose predict is Regressor.predict."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    import nnreg

    class NnregModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        def load_context(self, context):  # type: ignore[no-untyped-def]  # (no hints: MLflow
            import nnreg  # reads them as an input schema)

            self.reg = nnreg.load(context.artifacts["model"], history=False)

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return self.reg.predict(model_input)

    path = folder / "mlflow"
    pred = nnreg.load(folder / "nnreg").predict(X.iloc[:5])
    mlflow.pyfunc.save_model(
        path,
        python_model=NnregModel(),
        artifacts={"model": str(folder / "nnreg")},
        signature=infer_signature(X.iloc[:5], pred),
        pip_requirements=[],  # served from this environment (--env-manager local)
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A server command, its log in a file, ready once GET ``health`` answers 200."""

    def __init__(self, command: list[str], port: int, health: str, log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
        self.port = port
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
            try:
                status, _ = asyncio.run(one(port, "GET", health, b""))
                if status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{command} did not start")

    def rss(self) -> int:
        """Resident memory of the server and its children, bytes."""
        total = 0
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            text = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) * 1024  # type: ignore[union-attr]
        return total

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _children(k)]


async def one(port: int, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request(method, path, body))
        return await _answer(reader)
    finally:
        writer.close()


def _request(method: str, path: str, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    return status, await reader.readexactly(length)


async def load(port: int, path: str, bodies: list[bytes], concurrency: int) -> list[float]:
    """Send ``bodies`` over ``concurrency`` keep-alive connections; each latency, seconds."""
    queue = list(reversed(bodies))
    latencies: list[float] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                body = queue.pop()
                start = time.perf_counter()
                writer.write(_request("POST", path, body))
                status, answer = await _answer(reader)
                latencies.append(time.perf_counter() - start)
                check(status, answer)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies


def measure(server: Process, path: str, bodies: list[bytes], concurrency: int) -> dict[str, float]:
    asyncio.run(load(server.port, path, bodies[: max(50, len(bodies) // 10)], concurrency))
    rss_before = server.rss()
    start = time.perf_counter()
    lat = asyncio.run(load(server.port, path, bodies, concurrency))
    wall = time.perf_counter() - start
    ms = sorted(1000 * t for t in lat)
    return {
        "requests": len(lat),
        "rps": len(lat) / wall,
        "p50": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "rss_growth_mb": (server.rss() - rss_before) / 2**20,
    }


def check(status: int, answer: bytes) -> None:
    """In the timed loop: status 200 and JSON (the values are checked before it)."""
    if status != 200:
        raise AssertionError(f"status {status}: {answer[:300]!r}")
    json.loads(answer)


def check_equal(server: Process, path: str, body: bytes, key: str, expected: Any) -> None:
    """One answer, compared with Regressor.predict on the same rows."""
    status, answer = asyncio.run(one(server.port, "POST", path, body))
    check(status, answer)
    got = np.asarray(json.loads(answer)[key], dtype=float).ravel()
    np.testing.assert_allclose(got, np.asarray(expected).ravel(), rtol=1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="single-row requests")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nnreg-serve-bench-"))
    try:
        results = run(work, args.requests, args.concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write(results, args)


def run(work: Path, n_single: int, concurrency: int) -> dict[str, dict[str, dict[str, float]]]:
    import pandas as pd

    reg, X = train(work)
    mlflow_path = mlflow_model(work, X)
    big = X.sample(1000, replace=True, random_state=0)
    rows = json.loads(big.to_json(orient="records", double_precision=15))
    single = [json.dumps([r]).encode() for r in (rows * (n_single // len(rows) + 1))[:n_single]]
    thousand = [json.dumps(rows).encode()] * max(20, n_single // 20)
    frame = pd.DataFrame(rows)
    bin_dir = Path(sys.executable).parent
    servers = {
        "nnreg serve": (
            [str(bin_dir / "nnreg"), "serve", str(work / "nnreg"), "--port", "{port}"],
            "/health",
            "/predict",
            lambda b: b,
            "predictions",
        ),
        "mlflow models serve": (
            [str(bin_dir / "mlflow"), "models", "serve", "-m", str(mlflow_path)]
            + ["--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}", "-w", "1"],
            "/ping",
            "/invocations",
            lambda b: b'{"dataframe_records": ' + b + b"}",
            "predictions",
        ),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, (command, health, path, wrap, key) in servers.items():
        port = free_port()
        cmd = [c.replace("{port}", str(port)) for c in command]
        server = Process(cmd, port, health, work / f"{name.split()[0]}.log")
        try:
            for body, n in ((single[0], 1), (thousand[0], 1000)):
                check_equal(server, path, wrap(body), key, reg.predict(frame.iloc[:n]))
            results[name] = {
                "1 row": measure(server, path, [wrap(b) for b in single], concurrency),
                "1,000 rows": measure(server, path, [wrap(b) for b in thousand], concurrency),
            }
        finally:
            server.stop()
        print(name, json.dumps(results[name]), flush=True)
    return results


def write(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    import fastapi
    import mlflow
    import torch
    import uvicorn

    ours, ref = results["nnreg serve"], results["mlflow models serve"]
    lines = [
        "# Serving: `nnreg serve` against `mlflow models serve`",
        "",
        f"`python benchmarks/serve.py --requests {args.requests} --concurrency "
        f"{args.concurrency}`, one run, servers one at a time on loopback, the client in the "
        f"same machine ({os.cpu_count()} cores, {platform.processor() or platform.machine()}); "
        f"torch {torch.__version__}, FastAPI {fastapi.__version__}, uvicorn "
        f"{uvicorn.__version__}, MLflow {mlflow.__version__}. The model: the recommended "
        "preset (max_iter=20) on scikit-learn's diabetes table, 10 features; MLflow serves the "
        "same folder through a pyfunc wrapper calling `Regressor.predict`. Before the timed "
        "requests, an answer of each size was compared with `Regressor.predict`; every timed "
        "answer was checked for status 200 and JSON. On this shared machine the figures of "
        "separate runs differ by up to about a third; the ratios hold.",
        "",
        "| server | request | requests | requests/s | p50 ms | p99 ms | RSS growth MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, by_size in results.items():
        for size, r in by_size.items():
            lines.append(
                f"| {name} | {size} | {r['requests']} | {r['rps']:.0f} | {r['p50']:.2f} | "
                f"{r['p99']:.2f} | {r['rss_growth_mb']:.1f} |"
            )
    lines += ["", "| request | nnreg requests/s over MLflow's | target |", "|---|---:|---:|"]
    for size in ours:
        lines.append(f"| {size} | {ours[size]['rps'] / ref[size]['rps']:.2f}x | {RATIO_TARGET}x |")
    single_p99 = ours["1 row"]["p99"]
    verdict = "met" if single_p99 < P99_TARGET_MS else "missed"
    lines += [
        "",
        f"nnreg's single-row p99: {single_p99:.2f} ms (target under {P99_TARGET_MS:g} ms: "
        f"{verdict}).",
        "",
    ]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
