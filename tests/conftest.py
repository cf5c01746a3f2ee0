"""Seeded fixtures shared by the tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import nnreg

# What nnreg compiles on first use (nnreg.engine.native) goes to a folder of this test run's
# own, which the commands the tests start inherit; it is removed when the run ends.
_CACHE = tempfile.TemporaryDirectory(prefix="nnreg-test-cache-")
os.environ["NNREG_CACHE_DIR"] = _CACHE.name


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    np.random.seed(0)  # noqa: NPY002 - random_state=None draws from the global RNG
    torch.manual_seed(0)


@pytest.fixture
def seed_frame() -> pd.DataFrame:
    return nnreg.seed_dataset(n=100, random_state=0)


@pytest.fixture
def table_frame() -> pd.DataFrame:
    """A small numeric table with a known smooth target: y = 2a - b + 0.5 c**2 + noise."""
    rng = np.random.default_rng(1)
    n = 300
    a, b, c = rng.normal(size=n), rng.uniform(-2, 2, size=n), rng.normal(1, 0.5, size=n)
    y = 2 * a - b + 0.5 * c**2 + rng.normal(0, 0.05, size=n)
    return pd.DataFrame({"a": a, "b": b, "c": c, "y": y})


@pytest.fixture
def table_csv(tmp_path: Path, table_frame: pd.DataFrame) -> Path:
    path = tmp_path / "table.csv"
    table_frame.to_csv(path, index=False)
    return path
