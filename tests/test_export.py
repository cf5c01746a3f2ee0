"""ONNX export: onnxruntime on the exported graph against ``Regressor.predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

import nnreg
from nnreg.exceptions import ConfigError, DataError, ModelFileError, NotFittedError
from nnreg.export import CATEGORICAL, NUMERIC, OUTPUT, export_onnx, onnx_inputs
from nnreg.preprocess import TablePreprocessor

# A float32 network against predict's float64 one: the difference is float32 rounding of the
# activations, a few 1e-7 of the prediction's size.
RTOL = ATOL = 1e-5


def _run(path: Path, X: Any) -> np.ndarray:
    """(rows, targets) from onnxruntime, on one thread to leave the CPU to other work."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], onnx_inputs(path, X))[0]


def _as_2d(pred: np.ndarray) -> np.ndarray:
    return pred.reshape(len(pred), -1)


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """Numeric columns with NaN, a text column and a categorical-dtype column; two targets."""
    rng = np.random.default_rng(2)
    n = 240
    a, b = rng.normal(size=n), rng.uniform(-2, 2, size=n)
    zone = rng.choice(
        ["north", "south", "east", "west", "centre"], size=n, p=[0.4, 0.3, 0.2, 0.05, 0.05]
    )
    grade = pd.Categorical(rng.choice([1, 2, 3], size=n))
    y0 = 2 * a - b + (zone == "north") + rng.normal(0, 0.05, size=n)
    y1 = 10 + 3 * b**2 - np.asarray(grade, dtype=float)
    frame = pd.DataFrame({"a": a, "zone": zone, "b": b, "grade": grade, "y0": y0, "y1": y1})
    frame.loc[::9, "a"] = np.nan  # a gets a missing-indicator column, b does not
    return frame


def _test_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows as prediction sees them: NaN, an unseen category, a missing category."""
    test = frame.drop(columns=["y0", "y1"]).iloc[:60].copy()
    test.loc[test.index[1], "a"] = np.nan
    test.loc[test.index[2], "zone"] = "atlantis"
    test.loc[test.index[3], "zone"] = None
    return test


CASES = {
    "recommended": {"max_iter": 5},
    "robust_relu": {"max_iter": 5, "scaling": "robust", "activation": "relu"},
    "quantile_silu": {"max_iter": 5, "scaling": "quantile", "activation": "silu"},
    "gelu_no_scaling": {"max_iter": 5, "activation": "gelu", "scaling": "none"},
    "tanh_few_categories": {"max_iter": 5, "activation": "tanh", "max_categories": 2},
    "unscaled_target": {"max_iter": 5, "scale_target": False, "max_categories": 3},
}


@pytest.mark.parametrize("params", list(CASES.values()), ids=list(CASES))
def test_onnx_matches_predict_on_mixed_data(
    tmp_path: Path, mixed_frame: pd.DataFrame, params: dict[str, Any]
) -> None:
    X, y = mixed_frame.drop(columns=["y0", "y1"]), mixed_frame[["y0", "y1"]]
    reg = nnreg.Regressor(missing="impute", random_state=0, **params).fit(X, y)
    path = export_onnx(reg, tmp_path / "model.onnx")
    test = _test_rows(mixed_frame)
    out = _run(path, test)  # (rows, 2)
    assert out.dtype == np.float64 and out.shape == (len(test), 2)
    np.testing.assert_allclose(out, reg.predict(test), rtol=RTOL, atol=ATOL)


def test_seed_preset_on_the_seed_data(tmp_path: Path, seed_frame: pd.DataFrame) -> None:
    X = seed_frame[["x1", "x2"]]
    reg = nnreg.Regressor.from_preset("seed", random_state=0).fit(X, seed_frame["y"])
    path = export_onnx(reg, tmp_path / "seed.onnx")
    out = _run(path, X)
    assert out.shape == (100, 1)  # always 2-D, where predict gives (rows,) for one target
    np.testing.assert_allclose(out, _as_2d(reg.predict(X)), rtol=RTOL, atol=ATOL)


def test_float64_model_is_exported_in_float64(tmp_path: Path, mixed_frame: pd.DataFrame) -> None:
    X, y = mixed_frame.drop(columns=["y0", "y1"]), mixed_frame["y0"]
    reg = nnreg.Regressor(
        missing="impute", scaling="robust", dtype="float64", max_iter=3, random_state=0
    ).fit(X, y)
    path = export_onnx(reg, tmp_path / "model.onnx")
    test = _test_rows(mixed_frame)
    np.testing.assert_allclose(_run(path, test), _as_2d(reg.predict(test)), rtol=1e-12)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["network_dtype"] == "float64"


def test_ensemble_exports_the_members_mean(tmp_path: Path, mixed_frame: pd.DataFrame) -> None:
    X, y = mixed_frame.drop(columns=["y0", "y1"]), mixed_frame[["y0", "y1"]]
    reg = nnreg.Regressor(n_models=3, missing="impute", max_iter=3, random_state=0).fit(X, y)
    path = export_onnx(reg, tmp_path / "ensemble.onnx")
    test = _test_rows(mixed_frame)
    np.testing.assert_allclose(_run(path, test), reg.predict(test), rtol=RTOL, atol=ATOL)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["n_models"] == "3"


def test_numpy_input_batches_and_opsets(tmp_path: Path, table_frame: pd.DataFrame) -> None:
    X, y = table_frame[["a", "b", "c"]].to_numpy(), table_frame["y"].to_numpy()
    reg = nnreg.Regressor(hidden_layer_sizes=(16, 8), max_iter=5, random_state=0).fit(X, y)
    expected = _as_2d(reg.predict(X))
    for opset in (13, 17, 21):
        path = export_onnx(reg, tmp_path / f"opset{opset}.onnx", opset=opset)
        assert onnx.load(str(path)).opset_import[0].version == opset
        np.testing.assert_allclose(_run(path, X), expected, rtol=RTOL, atol=ATOL)
    # The batch dimension is dynamic: one row at a time gives the same predictions.
    one_by_one = np.vstack([_run(path, X[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(one_by_one, expected[:5], rtol=RTOL, atol=ATOL)


def test_categorical_only_model_has_one_string_input(tmp_path: Path) -> None:
    frame = pd.DataFrame({"colour": ["red", "green", "blue", "red"] * 10})
    y = np.arange(40.0) % 4
    reg = nnreg.Regressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(frame, y)
    path = export_onnx(reg, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [CATEGORICAL]
    test = pd.DataFrame({"colour": ["blue", "purple", "red"]})  # purple: no column at all
    np.testing.assert_allclose(_run(path, test), _as_2d(reg.predict(test)), rtol=RTOL, atol=ATOL)


def test_export_from_a_model_folder_keeps_target_names(
    tmp_path: Path, mixed_frame: pd.DataFrame
) -> None:
    X, y = mixed_frame.drop(columns=["y0", "y1"]), mixed_frame[["y0", "y1"]]
    reg = nnreg.Regressor(missing="impute", max_iter=3, random_state=0).fit(X, y)
    folder = reg.save(tmp_path / "model", target_names=["price", "area"])
    path = export_onnx(folder, tmp_path / "from_folder.onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["targets"]) == ["price", "area"]
    test = _test_rows(mixed_frame)
    np.testing.assert_allclose(_run(path, test), reg.predict(test), rtol=RTOL, atol=ATOL)


def test_metadata_and_signature(tmp_path: Path, mixed_frame: pd.DataFrame) -> None:
    X, y = mixed_frame.drop(columns=["y0", "y1"]), mixed_frame[["y0", "y1"]]
    reg = nnreg.Regressor(missing="impute", scaling="robust", max_iter=2, random_state=0)
    reg.fit(X, y)
    model = onnx.load(str(export_onnx(reg, tmp_path / "model.onnx")))
    props = {p.key: p.value for p in model.metadata_props}
    assert sorted(props) == [
        "features",
        "inputs",
        "n_models",
        "network_dtype",
        "nnreg_version",
        "output",
        "preprocessing",
        "targets",
        "usage",
    ]
    assert props["nnreg_version"] == nnreg.__version__ == model.producer_version
    assert json.loads(props["features"]) == ["a", "zone", "b", "grade"]
    assert json.loads(props["targets"]) == ["y0", "y1"]
    inputs = json.loads(props["inputs"])
    assert inputs[NUMERIC]["columns"] == ["a", "b"]
    assert inputs[CATEGORICAL]["columns"] == ["zone", "grade"]
    assert sorted(inputs[CATEGORICAL]["categories"]["grade"]) == ["1", "2", "3"]  # str(value)
    assert "__missing__" in inputs[CATEGORICAL]["encoding"]
    assert json.loads(props["output"])["name"] == OUTPUT
    assert "'numeric'" in props["usage"] and "'categorical'" in props["usage"]
    pre = json.loads(props["preprocessing"])
    assert TablePreprocessor.from_dict(pre["inputs"]).to_dict() == reg.preprocessor_.to_dict()
    assert pre["target"] == reg.y_scaler_.to_dict()
    # Names, element types and the dynamic batch dimension of the graph's signature.
    tp = onnx.TensorProto
    signature = {}
    for v in [*model.graph.input, *model.graph.output]:
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        signature[v.name] = (v.type.tensor_type.elem_type, dims)
    assert signature == {
        NUMERIC: (tp.DOUBLE, ["batch", 2]),
        CATEGORICAL: (tp.STRING, ["batch", 2]),
        OUTPUT: (tp.DOUBLE, ["batch", 2]),
    }


def test_feeding_by_hand_from_the_metadata(tmp_path: Path, mixed_frame: pd.DataFrame) -> None:
    """What a runtime without nnreg does: follow the metadata, not onnx_inputs."""
    X, y = mixed_frame.drop(columns=["y0", "y1"]), mixed_frame["y0"]
    reg = nnreg.Regressor(missing="impute", max_iter=2, random_state=0).fit(X, y)
    path = export_onnx(reg, tmp_path / "model.onnx")
    inputs = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["inputs"])
    test = _test_rows(mixed_frame).fillna({"zone": "__missing__"})
    feeds = {
        NUMERIC: test[inputs[NUMERIC]["columns"]].to_numpy(dtype=np.float64),
        CATEGORICAL: test[inputs[CATEGORICAL]["columns"]].astype(str).to_numpy(dtype=object),
    }
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, feeds)[0]
    expected = reg.predict(_test_rows(mixed_frame))
    np.testing.assert_allclose(out[:, 0], expected, rtol=RTOL, atol=ATOL)


def test_existing_file_is_replaced_and_nothing_else_is_left(
    tmp_path: Path, table_frame: pd.DataFrame
) -> None:
    X, y = table_frame[["a", "b"]], table_frame["y"]
    reg = nnreg.Regressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
    path = tmp_path / "out" / "model.onnx"  # the folder is created
    export_onnx(reg, path)
    export_onnx(reg, path)
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]


# -- misuse ------------------------------------------------------------------------------------


@pytest.fixture
def small_fitted(table_frame: pd.DataFrame) -> nnreg.Regressor:
    X, y = table_frame[["a", "b"]], table_frame["y"]
    return nnreg.Regressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)


def test_unfitted_regressor(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match="not fitted yet"):
        export_onnx(nnreg.Regressor(), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_not_a_regressor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a fitted nnreg.Regressor or the path"):
        export_onnx(object(), tmp_path / "model.onnx")  # type: ignore[arg-type]


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="model folder not found"):
        export_onnx(tmp_path / "nowhere", tmp_path / "model.onnx")


@pytest.mark.parametrize("opset", [12, 10_000, True, "17"])
def test_bad_opset(tmp_path: Path, small_fitted: nnreg.Regressor, opset: Any) -> None:
    with pytest.raises(ConfigError, match="opset must be an integer from 13 to"):
        export_onnx(small_fitted, tmp_path / "model.onnx", opset=opset)


def test_output_path_is_a_folder(tmp_path: Path, small_fitted: nnreg.Regressor) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        export_onnx(small_fitted, tmp_path)


def test_onnx_not_installed(
    tmp_path: Path, small_fitted: nnreg.Regressor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ConfigError, match=r"install nnreg\[onnx\]"):
        export_onnx(small_fitted, tmp_path / "model.onnx")


def test_onnx_inputs_errors(tmp_path: Path, small_fitted: nnreg.Regressor) -> None:
    path = export_onnx(small_fitted, tmp_path / "model.onnx")
    with pytest.raises(DataError, match="feature column 'b' is missing"):
        onnx_inputs(path, pd.DataFrame({"a": [1.0]}))
    with pytest.raises(DataError, match=r"needs \(rows, 2\)"):
        onnx_inputs(path, np.zeros((3, 5)))
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    with pytest.raises(ModelFileError, match="not an ONNX file written by nnreg"):
        onnx_inputs(not_onnx, pd.DataFrame({"a": [1.0], "b": [2.0]}))


def test_a_whole_number_category_is_found_as_an_integer_or_a_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cyl = rng.choice([4, 6, 8], size=90)
    X = pd.DataFrame({"cyl": pd.Series(cyl, dtype=object), "w": rng.normal(size=90)})
    reg = nnreg.Regressor(max_iter=3, random_state=0).fit(X, cyl + X["w"])
    path = export_onnx(reg, tmp_path / "model.onnx")
    expected = reg.predict(X)
    as_floats = X.assign(cyl=pd.Series(cyl.astype(float), dtype=object))
    np.testing.assert_allclose(_run(path, as_floats)[:, 0], expected, rtol=RTOL, atol=ATOL)
    feeds = onnx_inputs(path, X)  # fed by hand as str() of floats: "4.0"
    feeds[CATEGORICAL] = np.asarray([[f"{v}.0"] for v in cyl], dtype=object)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds)[0][:, 0], expected, rtol=RTOL, atol=ATOL)
