"""The compiled step for shared-weight members (``nnreg/engine/csrc/tabm.cpp``): against
autograd in float64 and the PyTorch step in float32, the same bits on any thread count, and
every way it can be missing (no compiler, a folder others may write, ``NNREG_NATIVE=0``, a
source that does not compile) falls back to the PyTorch step with the same results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import nnreg
from nnreg.engine import FastTabM, native
from nnreg.model import MLPConfig
from nnreg.tabm import TabM

needs_compiler = pytest.mark.skipif(
    native.library() is None, reason="no C++ compiler here: the PyTorch step runs instead"
)


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache folder, and the loader's memory of the library forgotten (before and
    after, so that other tests load the session's library again)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("NNREG_CACHE_DIR", str(folder))
    native.library.cache_clear()
    yield folder
    native.library.cache_clear()


def _net(hidden: tuple[int, ...], k: int, dtype: torch.dtype, inputs: int = 3) -> TabM:
    config = MLPConfig(n_inputs=inputs, hidden_sizes=hidden, ensemble="tabm", k=k)
    net = TabM(config).to(dtype)
    with torch.no_grad():  # move every adapter and bias off its initial value
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def _torch_step(net: TabM) -> FastTabM:
    fast = FastTabM(net, "relu", "squared_error")
    fast.native = None  # the PyTorch step, which the compiled one replaces
    return fast


SHAPES = [  # hidden sizes, rows, members: whole and partial vectors and register blocks
    ((20, 20), 100, 32),
    ((7, 13, 5), 37, 3),
    ((9,), 8, 2),
    ((40, 3), 1, 5),
    ((16, 8), 64, 4),
]


def _row_weights(rows: int, weighted: bool, dtype: torch.dtype) -> torch.Tensor | None:
    if not weighted:
        return None
    w = torch.rand(rows, dtype=dtype) + 0.2  # one per row, as the trainer passes them
    w[::3] = 0.0  # rows of weight 0 count for nothing
    w[-1] = 1.0  # at least one row counts
    return w


Shape = tuple[tuple[int, ...], int, int]  # hidden sizes, rows, members
Case = tuple[TabM, torch.Tensor, torch.Tensor, torch.Tensor | None]
each_case = pytest.mark.parametrize(
    ("shape", "weighted"), [(shape, weighted) for shape in SHAPES for weighted in (False, True)]
)


def _case(shape: Shape, weighted: bool, dtype: torch.dtype) -> Case:
    """A network moved off its initial values, and a batch: inputs, targets, row weights."""
    hidden, rows, k = shape
    x, y = torch.randn(rows, 3, dtype=dtype), torch.randn(rows, 1, dtype=dtype)
    return _net(hidden, k, dtype), x, y, _row_weights(rows, weighted, dtype)


@needs_compiler
@each_case
def test_step_matches_autograd_in_float64(shape: Shape, weighted: bool) -> None:
    net, x, y, w = _case(shape, weighted, torch.float64)
    rows, k = shape[1], shape[2]
    fast = FastTabM(net, "relu", "squared_error")
    assert fast.native is not None
    batch = fast.prepare(x, y, w)
    assert batch.native is not None
    loss = fast.loss_and_grad(batch) * batch.factor

    net.zero_grad()
    squares = (net(x) - y) ** 2  # (members, rows, 1)
    weights = torch.ones(rows, dtype=torch.float64) if w is None else w
    # the mean over members of their (weighted) mean loss
    reference = (squares * weights[:, None]).sum() / (weights.sum() * k)
    reference.backward()
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=0)
    for name, p in net.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(fast.grad[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


@needs_compiler
@each_case
def test_step_and_validation_match_the_pytorch_step_in_float32(
    shape: Shape, weighted: bool
) -> None:
    net, x, y, w = _case(shape, weighted, torch.float32)
    compiled, reference = FastTabM(net, "relu", "squared_error"), _torch_step(net)
    losses = [f.loss_and_grad(f.prepare(x, y, w)) for f in (compiled, reference)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    scale = reference.grads.abs().max()
    torch.testing.assert_close(compiled.grads / scale, reference.grads / scale, rtol=0, atol=1e-5)
    held = [f.evaluate(f.prepare(x, y, w, train=False)) for f in (compiled, reference)]
    torch.testing.assert_close(held[0], held[1], rtol=1e-5, atol=1e-6)


@needs_compiler
def test_gradients_are_the_same_bits_on_one_and_two_threads() -> None:
    """Each member's work is its own whatever thread runs it, and the sums over members run
    in one order after the threads join."""
    net = _net((20, 20), 32, torch.float32)
    fast = FastTabM(net, "relu", "squared_error")
    batch = fast.prepare(torch.randn(100, 3), torch.randn(100, 1), None)
    assert fast.native is not None and batch.native is not None
    results = []
    for threads in (1, 2):
        loss = fast.native.step(threads, *batch.native.args)
        results.append((loss, fast.grads.clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_covers_only_what_it_computes() -> None:
    like = torch.zeros(1)
    covered = ([True, True], [3, 64, 8], "relu", 0.0, "squared_error", 1, None, like)
    assert native.covers(*covered)
    for i, other in [
        (0, [True, False]),  # a "tabm-mini" layer
        (1, [3, 128, 8]),  # wider than the compiled step is faster at
        (2, "silu"),
        (3, 0.1),
        (4, "huber"),
        (5, 2),
        (6, object()),  # an embedding
        (7, torch.zeros(1, dtype=torch.float16)),
    ]:
        changed = list(covered)
        changed[i] = other
        assert not native.covers(*changed)  # type: ignore[arg-type]


def _seed_fit() -> np.ndarray:
    df = nnreg.seed_dataset(n=100, random_state=0)
    X, y = df[["x1", "x2"]].to_numpy(), df["y"].to_numpy()
    model = nnreg.Regressor.from_preset("seed", n_models=8, ensemble="tabm", random_state=0)
    return np.asarray(model.fit(X, y).predict(X))


@needs_compiler
def test_a_fit_with_the_compiled_step_follows_the_pytorch_step(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = _seed_fit()
    assert native.library() is not None and any(fresh_cache.glob("tabm-*.so"))
    monkeypatch.setenv("NNREG_NATIVE", "0")
    native.library.cache_clear()
    assert native.library() is None
    np.testing.assert_allclose(compiled, _seed_fit(), rtol=1e-4, atol=1e-5)


def test_no_compiler_falls_back_to_the_pytorch_step(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", str(fresh_cache))  # nothing to run there
    assert native.library() is None
    assert FastTabM(_net((4,), 2, torch.float32), "relu", "squared_error").native is None
    assert np.isfinite(_seed_fit()).all()
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_cache_folder_others_may_write_is_never_loaded_from(fresh_cache: Path) -> None:
    fresh_cache.mkdir(mode=0o700)
    fresh_cache.chmod(0o777)
    assert native.library() is None
    assert not any(fresh_cache.iterdir())  # nothing compiled into it either


@needs_compiler
def test_a_source_that_does_not_compile_leaves_nothing_behind(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "tabm.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCES", (broken,))
    assert native.library() is None
    assert list(fresh_cache.iterdir()) == []  # no partial library, no temporary file


@needs_compiler
def test_a_second_process_loads_the_compiled_library(fresh_cache: Path) -> None:
    first = native.library()
    assert first is not None
    (built,) = fresh_cache.glob("tabm-*.so")
    stamp = built.stat().st_mtime_ns
    native.library.cache_clear()
    assert native.library() is not None
    assert built.stat().st_mtime_ns == stamp  # loaded, not compiled again


@needs_compiler
def test_the_compiled_step_splits_members_between_threads_sooner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """32 seed networks on 100 rows (1.3M multiply-adds a layer) stay on one thread for
    PyTorch's products, but the compiled step's members share nothing until its end."""
    from nnreg import device, train

    seen: list[int] = []
    policy = train.thread_policy

    def recorded(batch: int, widest: int, threads: int | None, limit: int) -> object:
        seen.append(limit)
        return policy(batch, widest, threads, limit)

    monkeypatch.setattr(train, "thread_policy", recorded)
    _seed_fit()
    assert seen[-1] == native.ONE_THREAD_MAX_WORK < 8 * 100 * 20**2 < device.ONE_THREAD_MAX_WORK


@needs_compiler
def test_a_kill_while_compiling_leaves_no_library_and_the_next_run_cleans_up(
    fresh_cache: Path,
) -> None:
    """SIGKILL a process (and its compiler) once its temporary appears: no library is left
    under the target's name, and the next compile removes the dead process's temporary."""
    env = {**os.environ, "NNREG_CACHE_DIR": str(fresh_cache)}
    code = "from nnreg.engine import native; native.library()"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not list(fresh_cache.glob(".tabm-*.tmp")):
            assert child.poll() is None and time.monotonic() < deadline, "no compile seen"
            time.sleep(0.005)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert not list(fresh_cache.glob("tabm-*.so"))
    (left,) = fresh_cache.glob(".tabm-*.tmp")
    live = left.with_name(left.name.replace(f"-{child.pid}-", f"-{os.getppid()}-"))
    live.write_bytes(b"another process's compile, still running")
    assert native.library() is not None
    assert not left.exists() and live.exists()  # only the dead process's is removed


@needs_compiler
@pytest.mark.parametrize("where", ["weights.1", "input"])
def test_a_nan_reaches_the_loss_as_in_pytorch(where: str) -> None:
    """ReLU keeps a NaN, as PyTorch's does, so that the loss (which the divergence check
    reads) is NaN too instead of a finite number over NaN gradients."""
    net = _net((6, 5), 3, torch.float32)
    x, y = torch.randn(9, 3), torch.randn(9, 1)
    if where == "input":
        x[4, 1] = float("nan")
    else:
        with torch.no_grad():
            net.weights[1][2, 3] = float("nan")
    compiled, reference = FastTabM(net, "relu", "squared_error"), _torch_step(net)
    for fast in (compiled, reference):
        assert torch.isnan(fast.loss_and_grad(fast.prepare(x, y, None)))
        assert torch.isnan(fast.evaluate(fast.prepare(x, y, None, train=False)))


@needs_compiler
def test_a_damaged_library_is_compiled_again_not_loaded(fresh_cache: Path) -> None:
    """A library cut short (a crash before it reached the disk, a partial copy of the cache)
    would kill the process that loads it (SIGBUS): its SHA-256 no longer matches the one
    recorded beside it, so it is compiled again. Compiled and loaded in child processes,
    which are what would die (this one never maps the file it damages)."""
    env = {**os.environ, "NNREG_CACHE_DIR": str(fresh_cache)}
    code = "from nnreg.engine import native; print(native.library() is not None)"

    def load() -> None:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr[-2000:]

    load()
    (built,) = fresh_cache.glob("tabm-*.so")
    whole = built.read_bytes()
    built.unlink()  # a new file under the name, as a copy would leave it
    built.write_bytes(whole[:20000])
    load()
    assert native._intact(built) and len(built.read_bytes()) >= len(whole) // 2
    assert not list(fresh_cache.glob(".*.tmp"))


def test_no_home_folder_falls_back_to_the_pytorch_step(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's user with no home folder and no cache variables."""

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("NNREG_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", no_home)
    assert native.library() is None
    assert np.isfinite(_seed_fit()).all()
