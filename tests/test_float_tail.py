"""The float tail (layers kept float after the last quantized one): its float32 kernels against
onnxruntime, and a model with a conv/sigmoid/linear/tanh tail against PyTorch. Float results are
compared with a tolerance on purpose: the tail is float32 computed by different BLAS libraries
(docs/export.md, "Float tail"); the integer part before it is compared exactly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import linger
from linger.runtime import InferenceSession

RNG = np.random.default_rng(0)


def _single(op, x, inits, out_shape, **attrs):
    names = ["x"] + [f"p{i}" for i in range(len(inits))]
    g = helper.make_graph([helper.make_node(op, names, ["y"], name="n", **attrs)], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", T.FLOAT, out_shape)],
                          [numpy_helper.from_array(a, f"p{i}") for i, a in enumerate(inits)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ref = ort.InferenceSession(m.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return InferenceSession(m).run(None, {"x": x})[0], ref


def _f32(*shape):
    return RNG.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("op, x, inits, shape, attrs", [
    ("Conv", _f32(2, 4, 7, 6), [_f32(6, 2, 3, 2), _f32(6)], (2, 6, 3, 6),
     dict(group=2, strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2])),
    ("Conv", _f32(2, 3, 9), [_f32(4, 3, 3)], (2, 4, 9), dict(pads=[2, 2], dilations=[2])),
    ("Gemm", _f32(3, 5), [_f32(4, 5), _f32(4)], (3, 4), dict(transB=1)),
    ("MatMul", _f32(2, 3, 5), [_f32(5, 4)], (2, 3, 4), {}),
    ("Softmax", _f32(2, 3, 4) * 10, [], (2, 3, 4), dict(axis=1)),
    ("LogSoftmax", _f32(2, 3, 4) * 10, [], (2, 3, 4), dict(axis=-1)),
    ("Sigmoid", _f32(3, 4) * 10, [], (3, 4), {}),
    ("Tanh", _f32(3, 4) * 3, [], (3, 4), {}),
])
def test_float32_kernels_match_onnxruntime(op, x, inits, shape, attrs):
    got, ref = _single(op, x, inits, shape, **attrs)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


class Tail(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(2, 4, 3)
        self.b = nn.Conv1d(4, 3, 3, padding=1)
        self.c = nn.Linear(3, 5)

    def forward(self, x):
        y = torch.sigmoid(self.b(self.a(x))).transpose(1, 2)   # (N, L, 3) float after b
        return torch.tanh(self.c(y))                            # MatMul + Add on 3-D, Tanh


@pytest.mark.parametrize("opset", [11, 17])
def test_conv_sigmoid_linear_tanh_tail(opset):
    torch.manual_seed(0)
    model = Tail()
    linger.disable_quant(model.b)
    linger.disable_quant(model.c)
    linger.init(model)
    model.train()
    model(torch.randn(8, 2, 10))
    model.eval()
    x = torch.randn(2, 2, 10)
    graph = linger.onnx.export(model, x, None, opset_version=opset)
    ops = [n.op_type for n in graph.graph.node]
    assert ops == ["Quant", "Conv1dInt", "Dequant", "Conv", "Sigmoid", "Transpose", "MatMul",
                   "Add", "Tanh", "Identity"]
    out = InferenceSession(graph).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=0, atol=1e-6)
    report = linger.validate.validate_model(model, x)
    assert report.ok and report.compared >= 3 and report.tail_compared == 5


def test_float_kernels_refuse_bad_attributes_at_load():
    from linger.errors import ModelFileError
    x, w = _f32(1, 2, 5, 5), _f32(3, 2, 3, 3)
    with pytest.raises(ModelFileError, match="node 'n'.*pads"):
        InferenceSession(_model_of("Conv", x, [w], (1, 3, 3, 3), pads=[1, 1]))
    with pytest.raises(ModelFileError, match="'n'.*expects float32"):
        x64 = _f32(2, 3).astype(np.float64)
        InferenceSession(_model_of("Gemm", x64, [_f32(3, 4)], (2, 4))).run(None, {"x": x64})


def _model_of(op, x, inits, out_shape, **attrs):
    dt = T.DOUBLE if x.dtype == np.float64 else T.FLOAT
    g = helper.make_graph([helper.make_node(op, ["x"] + [f"p{i}" for i in range(len(inits))],
                                            ["y"], name="n", **attrs)], "g",
                          [helper.make_tensor_value_info("x", dt, x.shape)],
                          [helper.make_tensor_value_info("y", dt, out_shape)],
                          [numpy_helper.from_array(a, f"p{i}") for i, a in enumerate(inits)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
