"""Export a fitted model to ONNX, preprocessing and target scaling included.

The graph maps raw features to predictions in the target's own units, like
:meth:`Regressor.predict`, so a runtime without Python or nnreg (onnxruntime, ONNX.js, a C++
service) needs nothing else. It has up to two inputs and one output, all with a dynamic batch
dimension::

    numeric       float64 (batch, n_numeric)      the numeric features, in ``numeric`` order
    categorical   string  (batch, n_categorical)  ``str(value)`` of each categorical feature
    predictions   float64 (batch, n_targets)      always 2-D, also for a single target

An input is left out when the model has no feature of that kind. Inside the graph:

* numeric columns: NaN replaced by the fitted median and 0/1 missing-indicator columns added
  (``missing="impute"`` only; otherwise NaN flows through to the predictions), then standard
  scaling, robust scaling with its smooth clip, or quantile scaling (the piecewise-linear map
  through the fitted knots, :func:`nnreg.quantile.onnx_transform`), all in float64;
* categorical columns: an ``ai.onnx.ml`` LabelEncoder maps each string to its one-hot position
  (a whole number as ``"4"`` or ``"4.0"``: one category, see :mod:`nnreg.categories`),
  unseen (and rare) categories to the shared ``__other__`` column when there is one, else to
  no column, exactly as :class:`~nnreg.preprocess.TablePreprocessor` does; a missing value is
  fed as the string ``"__missing__"``;
* the network, in the precision it was trained in (float32 by default); for an ensemble
  (``n_models > 1``) every member, and the mean of their outputs, as ``predict`` gives (the
  members' spread and ``predict_interval`` are not exported);
* the target de-standardisation, in float64.

The model's ``metadata_props`` describe all of this (keys ``inputs``, ``output``, ``usage``,
``features``, ``targets``, ``preprocessing``, ``nnreg_version``, ``network_dtype``,
``n_models``), and :func:`onnx_inputs`
builds the input dictionary from a DataFrame.

Needs the ``onnx`` package (``pip install 'nnreg[onnx]'``), and only at export time; reading
the metadata back in :func:`onnx_inputs` needs it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch

from ._version import __version__
from .categories import category_text, float_spellings
from .exceptions import ConfigError, DataError, ModelFileError, NotFittedError
from .model import MLP, MLPEnsemble, n_members
from .onnx_graph import Graph, network
from .outputs import check_output_file, write_file_atomic
from .preprocess import MISSING_CATEGORY, OTHER, SMOOTH_CLIP, TablePreprocessor
from .quantile import onnx_transform

if TYPE_CHECKING:
    from .estimator import Regressor

__all__ = ["CATEGORICAL", "MIN_OPSET", "NUMERIC", "OUTPUT", "export_onnx", "onnx_inputs"]

NUMERIC = "numeric"
CATEGORICAL = "categorical"
OUTPUT = "predictions"
MIN_OPSET = 13  # the oldest the tests run; every operator used here exists since opset 12
ML_OPSET = 3  # ai.onnx.ml: LabelEncoder with keys_strings/values_int64s (since version 2)
_INSTALL = "install nnreg[onnx] (pip install 'nnreg[onnx]')"


def export_onnx(model: Regressor | str | Path, path: str | Path, *, opset: int = 17) -> Path:
    """Write a fitted Regressor as an ONNX file that maps raw features to predictions.

    Parameters
    ----------
    model : Regressor or path-like
        A fitted :class:`~nnreg.Regressor`, or the path of a model folder (read with
        :func:`nnreg.load`).
    path : path-like
        The ``.onnx`` file to write (returned); it is written to a temporary file and renamed
        into place, and an existing file is replaced.
    opset : int, default=17
        ONNX operator-set version of the default domain; 13 up to what the installed ``onnx``
        knows.

    Raises
    ------
    NotFittedError
        ``model`` is an unfitted Regressor.
    ModelFileError
        ``model`` is a path that is not a valid model folder.
    ConfigError
        ``onnx`` is not installed, ``opset`` is out of range, or ``path`` is a folder.

    Notes
    -----
    Inputs ``numeric`` (float64, batch x numeric features) and ``categorical`` (string, batch x
    categorical features), output ``predictions`` (float64, batch x targets); see the module
    docstring. Run it with :func:`onnx_inputs`::

        session = onnxruntime.InferenceSession(path)
        session.run(["predictions"], onnx_inputs(path, frame))[0]

    Examples
    --------
    >>> import nnreg, tempfile, pathlib
    >>> from nnreg.export import export_onnx
    >>> df = nnreg.seed_dataset(n=50)
    >>> reg = nnreg.Regressor(max_iter=2, random_state=0).fit(df[["x1", "x2"]], df["y"])
    >>> export_onnx(reg, pathlib.Path(tempfile.mkdtemp()) / "model.onnx").suffix
    '.onnx'
    """
    onnx = _import_onnx()
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the path of the .onnx file to write.")
    reads = [model] if isinstance(model, (str, Path)) else []
    check_output_file(path, lambda p: _made_onnx(onnx, p), protect=reads)
    reg = _fitted_regressor(model)
    _refuse_dates(reg)
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ConfigError(
            f"opset must be an integer from {MIN_OPSET} to {max_opset} (what the installed onnx "
            f"knows), got {opset!r}."
        )
    proto = _build_model(onnx, reg, opset)
    onnx.checker.check_model(proto, full_check=True)  # types and shapes agree end to end
    write_file_atomic(path, lambda tmp: onnx.save_model(proto, str(tmp)))
    return path


def _made_onnx(onnx: Any, path: Path) -> bool:
    """True for an ONNX file that nnreg exported (its producer is nnreg)."""
    try:
        return onnx.load(str(path), load_external_data=False).producer_name == "nnreg"
    except Exception:  # noqa: BLE001 - unreadable: not provably nnreg's
        return False


def onnx_inputs(path: str | Path, X: Any) -> dict[str, np.ndarray]:
    """The input dictionary for an exported model, built from raw features.

    Parameters
    ----------
    path : path-like
        An ONNX file written by :func:`export_onnx`; its ``inputs`` metadata says which
        columns go where.
    X : DataFrame or array-like of shape (rows, features)
        Raw features as :meth:`Regressor.predict` takes them; columns are chosen by name (a
        DataFrame) or position (an array), extra DataFrame columns are ignored.

    Returns
    -------
    dict of str to ndarray
        ``{"numeric": float64 (rows, n_numeric), "categorical": object (rows, n_categorical)}``,
        each present only when the model has such features.
    """
    onnx = _import_onnx()
    from google.protobuf.message import DecodeError  # onnx's own dependency

    try:
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        spec = json.loads(props["inputs"])
        features = json.loads(props["features"])
    except (OSError, KeyError, ValueError, DecodeError) as e:
        raise ModelFileError(
            f"{path} is not an ONNX file written by nnreg's export_onnx ({e}); export it again."
        ) from e
    frame = X if isinstance(X, pd.DataFrame) else _array_frame(X, features)
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(
            f"feature column {missing[0]!r} is missing; the model needs columns {features}."
        )
    feeds: dict[str, np.ndarray] = {}
    if NUMERIC in spec:
        cols = spec[NUMERIC]["columns"]
        # (rows, n_numeric); pandas' nullable NA becomes NaN, which the graph imputes.
        feeds[NUMERIC] = frame[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    if CATEGORICAL in spec:
        cols = spec[CATEGORICAL]["columns"]
        block = np.empty((len(frame), len(cols)), dtype=object)  # (rows, n_categorical)
        for j, c in enumerate(cols):
            col = frame[c]
            values = col.astype(object).to_numpy()
            # The same strings TablePreprocessor compares (nnreg.categories), missing as one.
            missing_rows = col.isna().to_numpy()
            block[:, j] = [
                MISSING_CATEGORY if m else category_text(v)
                for v, m in zip(values, missing_rows, strict=True)
            ]
        feeds[CATEGORICAL] = block
    return feeds


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(f"exporting to ONNX needs the onnx package; {_INSTALL}.") from exc
    return onnx


def _fitted_regressor(model: Any) -> Regressor:
    from .estimator import Regressor, load

    if isinstance(model, (str, Path)):
        return load(model, history=False)
    if not isinstance(model, Regressor):
        raise ConfigError(
            "export_onnx needs a fitted nnreg.Regressor or the path of a model folder, got "
            f"{type(model).__name__}."
        )
    if not model.__sklearn_is_fitted__():
        raise NotFittedError("this Regressor is not fitted yet; call fit(X, y) before exporting.")
    return model


def _refuse_dates(reg: Regressor) -> None:
    dates = list(reg.preprocessor_.dates)
    if dates:  # the graph would need a date parser
        raise ConfigError(
            f"the model reads the date column {dates[0]!r}, which ONNX export does not "
            "support yet; store the date as numbers to export the model."
        )


def _array_frame(X: Any, features: list[str]) -> pd.DataFrame:
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[1] != len(features):
        raise DataError(
            f"X has shape {arr.shape}, but the model needs (rows, {len(features)}): one column "
            f"per feature {features}."
        )
    return pd.DataFrame(arr, columns=features)


def _build_model(onnx: Any, reg: Regressor, opset: int) -> Any:
    """The ModelProto: preprocessing -> network -> target scaling, with its metadata."""
    helper, tp = onnx.helper, onnx.TensorProto
    pre: TablePreprocessor = reg.preprocessor_
    model = reg.model_
    members = cast(list[MLP], list(model.members)) if isinstance(model, MLPEnsemble) else [model]
    net_dtype = np.float64 if next(model.parameters()).dtype == torch.float64 else np.float32
    net_type = helper.np_dtype_to_tensor_dtype(np.dtype(net_dtype))
    g = Graph(onnx)
    inputs, parts = [], []
    if pre.numeric:
        doc = f"raw numeric features {pre.numeric}, NaN for missing"
        shape = ["batch", len(pre.numeric)]
        inputs.append(helper.make_tensor_value_info(NUMERIC, tp.DOUBLE, shape, doc))
        parts += _numeric_parts(g, pre, net_type)
    if pre.categorical:
        doc = f"str(value) of the categorical features {pre.categorical}"
        doc += f", {MISSING_CATEGORY!r} for missing"
        shape = ["batch", len(pre.categorical)]
        inputs.append(helper.make_tensor_value_info(CATEGORICAL, tp.STRING, shape, doc))
        parts += _categorical_parts(g, pre, net_type)
    h = parts[0] if len(parts) == 1 else g.op("Concat", parts, "encoded", axis=1)
    # Each member: (batch, n_targets) in standardised units; an ensemble predicts their mean.
    outs = [g.op("Cast", [network(g, m, h, net_dtype)], "member", to=tp.DOUBLE) for m in members]
    if len(outs) > 1:  # Sum and Div: onnxruntime has no float64 Mean
        total = g.op("Sum", outs, "ensemble_sum")
        outs = [g.op("Div", [total, g.const("n_models", len(outs), np.float64)], "ensemble_mean")]
    h = outs[0]
    scaler = reg.y_scaler_
    if scaler.enabled:
        h = g.op("Mul", [h, g.const("target_scale", scaler.scale, np.float64)])
        h = g.op("Add", [h, g.const("target_mean", scaler.mean, np.float64)])
    if scaler.clip:  # clip_predictions: the training target's range
        h = g.op("Max", [h, g.const("target_low", scaler.low, np.float64)])
        h = g.op("Min", [h, g.const("target_high", scaler.high, np.float64)], "clipped")
    g.nodes.append(helper.make_node("Identity", [h], [OUTPUT], name=OUTPUT))
    n_out = reg.n_outputs_
    graph = helper.make_graph(
        g.nodes,
        "nnreg",
        inputs,
        [helper.make_tensor_value_info(OUTPUT, tp.DOUBLE, ["batch", n_out])],
        g.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    if pre.categorical:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    proto = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="nnreg",
        producer_version=__version__,
        doc_string="nnreg Regressor: raw features -> predictions in the target's units.",
    )
    # The oldest IR version that holds these opsets, so that older runtimes can load the file.
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(proto, _metadata(reg, net_dtype, n_members(model)))
    return proto


def _numeric_parts(g: Graph, pre: TablePreprocessor, net_type: int) -> list[str]:
    """Scaled numeric columns, then missing indicators: [(batch, n_numeric), (batch, k)]."""
    x = NUMERIC  # (batch, n_numeric) float64
    indicators = None
    if pre.missing == "impute":
        nan = g.op("IsNaN", [x], "nan")  # (batch, n_numeric) bool
        x = g.op("Where", [nan, g.const("median", pre.fill, np.float64), x], "imputed")
        if pre.indicators:
            idx = [pre.numeric.index(c) for c in pre.indicators]
            flags = g.op("Cast", [nan], "nan_flags", to=net_type)
            # (batch, n_indicators): only the columns that had NaN in fit get an indicator
            columns = g.const("indicator_columns", idx, np.int64)
            indicators = g.op("Gather", [flags, columns], "indicators", axis=1)
    if pre.scaling == "quantile":
        x = onnx_transform(g, pre.knots, x)
    elif pre.scaling != "none":
        x = g.op("Sub", [x, g.const("center", pre.center, np.float64)], "centred")
        x = g.op("Div", [x, g.const("scale", pre.scale, np.float64)], "scaled")
        if pre.scaling == "robust":
            # z / sqrt(1 + (z / 3)**2), the smooth clip of TablePreprocessor.transform
            q = g.op("Div", [x, g.const("clip", SMOOTH_CLIP, np.float64)])
            q = g.op("Add", [g.const("one", 1.0, np.float64), g.op("Mul", [q, q])])
            x = g.op("Div", [x, g.op("Sqrt", [q])], "clipped")
    parts = [g.op("Cast", [x], "numeric_encoded", to=net_type)]
    return parts + ([indicators] if indicators else [])


def _categorical_parts(g: Graph, pre: TablePreprocessor, net_type: int) -> list[str]:
    """One one-hot block per categorical column: (batch, len(categories[c])) each."""
    parts = []
    for j, c in enumerate(pre.categorical):
        cats = pre.categories[c]
        # Unseen strings go to the shared "other" column, or to none (an all-zero row).
        default = cats.index(OTHER) if OTHER in cats else len(cats)
        col = g.op("Gather", [CATEGORICAL, g.const("column", [j], np.int64)], "cat", axis=1)
        # Each category, and "4.0" for a category "4" (str of a float column; see
        # nnreg.categories), to its position in cats.
        spelt = [[c] + [f for f in float_spellings(c) if f not in cats] for c in cats]
        keys = [(k, i) for i, spellings in enumerate(spelt) for k in spellings]
        codes = g.op(  # (batch, 1) int64: position in cats
            "LabelEncoder",
            [col],
            "codes",
            keys_strings=[k for k, _ in keys],
            values_int64s=[i for _, i in keys],
            default_int64=default,
        )
        # (batch, 1) == (len(cats),) broadcasts to the (batch, len(cats)) one-hot block.
        hit = g.op("Equal", [codes, g.const("positions", np.arange(len(cats)), np.int64)])
        parts.append(g.op("Cast", [hit], "onehot", to=net_type))
    return parts


def _metadata(reg: Regressor, net_dtype: Any, n_models: int) -> dict[str, str]:
    """metadata_props: what a runtime without nnreg needs to feed the graph and read it."""
    pre: TablePreprocessor = reg.preprocessor_
    info = getattr(reg, "model_info_", {})
    n_out = reg.n_outputs_
    targets = info.get("targets") or (["y"] if n_out == 1 else [f"y{j}" for j in range(n_out)])
    inputs: dict[str, Any] = {}
    if pre.numeric:
        inputs[NUMERIC] = {
            "dtype": "float64",
            "shape": ["batch", len(pre.numeric)],
            "columns": list(pre.numeric),
            "missing": "NaN; replaced by the fitted median (plus indicator columns)"
            if pre.missing == "impute"
            else "not allowed: the model was fitted with missing='error', NaN gives NaN",
        }
    if pre.categorical:
        inputs[CATEGORICAL] = {
            "dtype": "string",
            "shape": ["batch", len(pre.categorical)],
            "columns": list(pre.categorical),
            "encoding": "str(value) of each entry (a whole number as '4' or '4.0'); a missing "
            "entry as "
            f"{MISSING_CATEGORY!r}; one-hot over 'categories' inside the graph, unseen values "
            f"in the {OTHER!r} column when a column has one, else in none",
            "categories": {c: list(pre.categories[c]) for c in pre.categorical},
        }
    usage = (
        "Feed "
        + " and ".join(
            f"'{k}' ({v['dtype']}, one row per observation, columns {v['columns']})"
            for k, v in inputs.items()
        )
        + f"; read '{OUTPUT}' (float64, one column per target {targets}). Categorical "
        f"entries are the strings str(value), a missing one {MISSING_CATEGORY!r}."
    )
    return {
        "nnreg_version": __version__,
        "features": json.dumps(list(pre.columns)),
        "targets": json.dumps(list(targets)),
        "inputs": json.dumps(inputs),
        "output": json.dumps(
            {"name": OUTPUT, "dtype": "float64", "shape": ["batch", n_out], "columns": targets}
        ),
        "usage": usage,
        "network_dtype": np.dtype(net_dtype).name,
        "n_models": str(n_models),  # an ensemble's graph gives the members' mean
        "preprocessing": json.dumps({"inputs": pre.to_dict(), "target": reg.y_scaler_.to_dict()}),
    }
