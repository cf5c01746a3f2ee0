"""clip_predictions: predictions stay within the training target's range, everywhere a
fitted model predicts (in memory, from its folder, in ONNX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nnreg


def test_clipped_predictions_stay_in_the_training_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 2))
    y = 3 * X[:, 0] + rng.normal(0, 0.1, size=200)
    far = np.array([[5.0, 0.0], [-5.0, 0.0], [0.1, 0.2]])
    params = {"max_iter": 30, "random_state": 0}
    free = nnreg.Regressor(**params).fit(X, y).predict(far)
    reg = nnreg.Regressor(clip_predictions=True, **params).fit(X, y)
    clipped = reg.predict(far)
    assert free[0] > y.max() and free[1] < y.min()  # extrapolation, unclipped
    assert np.allclose(clipped, np.clip(free, y.min(), y.max()))
    loaded = nnreg.load(reg.save(tmp_path / "m"))
    assert np.array_equal(loaded.predict(far), clipped)
    ort = pytest.importorskip("onnxruntime")
    from nnreg.export import export_onnx, onnx_inputs

    path = export_onnx(reg, tmp_path / "m.onnx")
    out = ort.InferenceSession(str(path)).run(None, onnx_inputs(path, far))[0].ravel()
    assert np.allclose(out, clipped, rtol=1e-5, atol=1e-5)
    from nnreg.preprocess import Standardizer

    with pytest.raises(ValueError, match="range"):
        Standardizer.from_dict({**reg.y_scaler_.to_dict(), "low": [9.0], "high": [1.0]})
