"""The network as ONNX nodes: numeric embeddings, MLP layers, TabM's shared members.

:class:`Graph` collects nodes and constants for :mod:`nnreg.export`, which adds the
preprocessing around :func:`network`. Constants are written in the network's dtype; dropout
is off.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .embeddings import PeriodicEmbedding, PiecewiseLinearEmbedding
from .exceptions import ConfigError
from .model import MLP
from .tabm import TabM

__all__ = ["Graph", "network"]


class Graph:
    """Collects nodes and constants; every value gets a fresh, readable name."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: Any, dtype: Any) -> str:
        name = self._name(hint)
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        domain = "ai.onnx.ml" if op_type == "LabelEncoder" else ""
        out = self._name(hint or op_type.lower())
        self.nodes.append(
            self.onnx.helper.make_node(op_type, inputs, [out], name=out, domain=domain, **attrs)
        )
        return out


def _embedding(g: Graph, model: MLP | TabM, h: str, dtype: Any) -> str:
    """The numeric embedding (nnreg.embeddings) of the first ``n_embedded`` columns,
    flattened, then the other columns: (batch, n_inputs) -> (batch, first_width)."""
    emb, config = model.embedding, model.config
    if emb is None:
        return h
    n = config.n_embedded

    def const(hint: str, t: torch.Tensor) -> str:
        return g.const(hint, t.detach().cpu().double().numpy(), dtype)

    def columns(lo: int, hi: int) -> str:
        ends = [g.const(k, [v], np.int64) for k, v in (("start", lo), ("end", hi), ("axis", 1))]
        return g.op("Slice", [h, *ends], "columns")

    x = g.op("Unsqueeze", [columns(0, n), g.const("axis", [2], np.int64)], "numeric")
    if isinstance(emb, PiecewiseLinearEmbedding):  # x: (batch, n, 1)
        z = g.op(
            "Add",
            [g.op("Mul", [x, const("bin_scale", emb.scale)]), const("bin_offset", emb.offset)],
        )
        z = g.op("Max", [z, const("bin_lower", emb.lower)])
        z = g.op("Min", [z, const("bin_upper", emb.upper)], "bin_code")  # (batch, n, bins)
        linear = g.op("Mul", [x, const("linear_weight", emb.linear_weight)])
        linear = g.op("Add", [linear, const("linear_bias", emb.linear_bias)])
        out = g.op("Add", [linear, _per_feature(g, z, const("bin_weight", emb.weight))])
    else:
        assert isinstance(emb, PeriodicEmbedding)
        angle = g.op("Mul", [x, const("frequency", (2 * math.pi) * emb.frequencies)])
        z = g.op("Concat", [g.op("Cos", [angle]), g.op("Sin", [angle])], "periodic", axis=2)
        out = g.op(
            "Add", [_per_feature(g, z, const("weight", emb.weight)), const("bias", emb.bias)]
        )
        out = g.op("Relu", [out])
    flat = g.op("Flatten", [out], "embedded", axis=1)  # (batch, n * d)
    if n == config.n_inputs:
        return flat
    return g.op("Concat", [flat, columns(n, config.n_inputs)], "embedded_inputs", axis=1)


def _per_feature(g: Graph, z: str, weight: str) -> str:
    """Each feature's own linear map: (batch, n, k) @ (n, k, d) -> (batch, n, d)."""
    product = g.op("MatMul", [g.op("Transpose", [z], perm=[1, 0, 2]), weight])  # (n, batch, d)
    return g.op("Transpose", [product], perm=[1, 0, 2])


def network(g: Graph, model: MLP | TabM, h: str, dtype: Any) -> str:
    """The network's layers as Gemm nodes with the activation between them (TabM: its
    members' mean); dropout is off. (batch, n_inputs) -> (batch, n_outputs)."""
    h = _embedding(g, model, h, dtype)
    if isinstance(model, TabM):
        return _tabm(g, model, h, dtype)
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    activation = model.config.activation
    for i, layer in enumerate(linears):
        w = layer.weight.detach().cpu().numpy()  # (out, in)
        b = layer.bias.detach().cpu().numpy()  # (out,)
        weight, bias = g.const("weight", w, dtype), g.const("bias", b, dtype)
        h = g.op("Gemm", [h, weight, bias], f"linear{i}", transB=1)  # (batch, out)
        if i < len(linears) - 1:
            h = _activation(g, activation, h, dtype)
    return h


def _tabm(g: Graph, model: TabM, h: str, dtype: Any) -> str:
    """TabM's members on the embedded inputs ``h``, as (k, batch, width) tensors, then
    their mean: every shared layer is one MatMul."""

    def const(hint: str, t: torch.Tensor) -> str:
        return g.const(hint, t.detach().cpu().double().numpy(), dtype)

    x = g.op("Unsqueeze", [h, g.const("axis", [0], np.int64)], "members")  # (1, batch, in)
    for i, weight in enumerate(model.weights):
        if i < len(model.r):
            x = g.op("Mul", [x, const("r", model.r[i].unsqueeze(1))])  # (k, batch, in)
        x = g.op("MatMul", [x, const("weight", weight.T)], f"shared{i}")
        if i < len(model.s):
            x = g.op("Mul", [x, const("s", model.s[i].unsqueeze(1))])
        bias = model.biases[i]
        x = g.op("Add", [x, const("bias", bias.unsqueeze(1) if bias.dim() == 2 else bias)])
        x = _activation(g, model.config.activation, x, dtype)
    x = g.op("MatMul", [x, const("head_weight", model.head_weight)], "heads")
    x = g.op("Add", [x, const("head_bias", model.head_bias.unsqueeze(1))])  # (k, batch, out)
    total = g.op("ReduceSum", [x, g.const("axis", [0], np.int64)], "members_sum", keepdims=0)
    return g.op("Div", [total, g.const("k", model.config.k, dtype)], "members_mean")


def _activation(g: Graph, name: str, h: str, dtype: Any) -> str:
    if name == "relu":
        return g.op("Relu", [h])
    if name == "tanh":
        return g.op("Tanh", [h])
    if name == "silu":  # no Silu operator in the default domain: x * sigmoid(x)
        return g.op("Mul", [h, g.op("Sigmoid", [h])], "silu")
    if name == "gelu":  # torch's exact GELU, 0.5 x (1 + erf(x / sqrt 2)); Gelu needs opset 20
        erf_in = g.op("Div", [h, g.const("sqrt2", np.sqrt(2.0), dtype)])
        if dtype == np.float64:
            # onnxruntime has Erf for float32 only; float64 models lose a little there.
            tp = g.onnx.TensorProto
            erf_in = g.op("Cast", [erf_in], to=tp.FLOAT)
            erf = g.op("Cast", [g.op("Erf", [erf_in])], to=tp.DOUBLE)
        else:
            erf = g.op("Erf", [erf_in])
        one_plus = g.op("Add", [g.const("one", 1.0, dtype), erf])
        return g.op("Mul", [g.op("Mul", [h, one_plus]), g.const("half", 0.5, dtype)], "gelu")
    raise ConfigError(f"cannot export activation {name!r} to ONNX.")
