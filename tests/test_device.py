"""Devices and threads: the thread count follows the free cores and never changes a result."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import nnreg
from nnreg import device


@pytest.mark.parametrize(("others", "threads"), [(0.0, 2), (0.3, 2), (1.0, 1), (1.9, 1)])
def test_the_governor_leaves_the_cores_other_processes_use(
    monkeypatch: pytest.MonkeyPatch, others: float, threads: int
) -> None:
    clock = {"wall": 0.0, "own": 0.0}
    monkeypatch.setattr(device.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(device.time, "process_time", lambda: clock["own"])
    busy = {"total": 0.0}

    def busy_seconds(cores: list[int]) -> float:
        return busy["total"]

    monkeypatch.setattr(device, "_busy_seconds", busy_seconds)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    governor = device._Governor(2)
    before = torch.get_num_threads()
    try:
        for _ in range(3):  # one second of training: this process busy on 1.5 cores
            clock["wall"] += 1.0
            clock["own"] += 1.5
            busy["total"] += 1.5 + others
            governor.check()
        assert governor.current == threads
    finally:
        torch.set_num_threads(before)


def test_without_proc_stat_the_thread_count_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "_busy_seconds", lambda cores: None)
    governor = device._Governor(2)
    governor.check()
    assert governor.current == 2


def test_matrix_products_do_not_depend_on_the_thread_count() -> None:
    """A weight gradient's reduction over a long batch: MKL splits it across threads on
    some processors unless nnreg's reproducibility setting (MKL_CBWR) is in force."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 2700, generator=generator), torch.randn(2700, 129, generator=generator)
    before = torch.get_num_threads()
    try:
        products = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            products.append(torch.mm(a, b))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(products[0], products[1])


def test_the_thread_count_does_not_change_the_fit() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8))
    y = np.sin(X[:, 0]) + X[:, 1] ** 2
    digests = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with device.thread_policy(10**9, 10**9, threads):  # forced, as TrainConfig.threads
                reg = nnreg.Regressor(max_iter=3, random_state=0).fit(X, y)
            digests.append(hashlib.sha256(reg.predict(X).tobytes()).hexdigest())
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]


def test_weights_are_the_same_bits_and_predictions_agree_to_float64_rounding() -> None:
    """The trained weights do not depend on the thread count. The float64 predictions from
    them may differ in the last bits: with MKL's strict mode some processors split a
    float64 product of some shapes (89 rows through a 160-wide embedding) across threads."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(350, 10))
    y = X[:, 0] - 2 * X[:, 1] ** 2 + rng.normal(0, 0.1, size=350)
    fits, predictions = [], []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with device.thread_policy(10**9, 10**9, threads):
                fits.append(nnreg.Regressor(max_iter=5, random_state=0).fit(X, y))
            predictions.append(fits[0].predict(X[:89]))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(fits[0].model_.parameters(), fits[1].model_.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_allclose(predictions[0], predictions[1], rtol=1e-13, atol=0)
