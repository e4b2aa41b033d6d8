"""linger.onnx_opsets: opset-11/12 graphs written by other tools are read with their own
semantics, and the rewrites between the two forms are exact (compared with onnxruntime, which
implements both opsets)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import checker, helper

from linger.errors import ExportError, ModelFileError
from linger.onnx_opsets import downgrade, upgrade
from linger.runtime import InferenceSession

RNG = np.random.default_rng(0)


def _model(nodes, opset, inits=(), x_shape=(2, 3, 1, 4), y_shape=None):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", T.FLOAT, y_shape)], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    checker.check_model(m)
    return m


def _ort(m, x):
    return ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [11, 12])
def test_attribute_forms_and_old_softmax_read_as_written(opset):
    nodes = [helper.make_node("Squeeze", ["x"], ["s"], axes=[2]),                    # (2, 3, 4)
             helper.make_node("Split", ["s"], ["a", "b"], axis=2, split=[1, 3]),
             helper.make_node("Unsqueeze", ["b"], ["u"], axes=[0]),                  # (1,2,3,3)
             helper.make_node("Softmax", ["u"], ["y"], axis=1)]  # opset 11: over dims 1..3
    m = _model(nodes, opset, y_shape=(1, 2, 3, 3))
    x = RNG.normal(size=(2, 3, 1, 4)).astype(np.float32)
    got = InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _ort(m, x), rtol=1e-6, atol=1e-6)
    up = upgrade(m)
    checker.check_model(up)
    assert up.opset_import[0].version == 13 and all(
        len(n.attribute) == 0 for n in up.graph.node if n.op_type in ("Squeeze", "Unsqueeze"))
    # ReduceSum (no runtime kernel yet): the opset-13 form, same result in onnxruntime
    rs = _model([helper.make_node("ReduceSum", ["x"], ["y"], axes=[3], keepdims=1)], opset,
                y_shape=(2, 3, 1, 1))
    up = upgrade(rs)
    checker.check_model(up)
    assert [len(n.input) for n in up.graph.node] == [2]
    np.testing.assert_allclose(_ort(up, x), _ort(rs, x), rtol=1e-6)


def test_downgrade_round_trip_and_refusals():
    axes = helper.make_tensor("axes", T.INT64, [1], [2])
    m13 = _model([helper.make_node("Squeeze", ["x", "axes"], ["s"], name="sq"),
                  helper.make_node("Softmax", ["s"], ["y"], name="sm", axis=1)], 13, [axes],
                 y_shape=(2, 3, 4))
    x = RNG.normal(size=(2, 3, 1, 4)).astype(np.float32)
    m11 = downgrade(m13, 11)
    checker.check_model(m11)
    assert [n.op_type for n in m11.graph.node] == ["Squeeze", "Transpose", "Softmax", "Transpose"]
    assert not m11.graph.initializer  # the axes moved into the attribute
    np.testing.assert_allclose(_ort(m11, x), _ort(m13, x), rtol=1e-6, atol=1e-7)
    computed = _model([helper.make_node("Shape", ["x"], ["sh"]),
                       helper.make_node("Slice", ["sh", "st", "en"], ["ax"]),
                       helper.make_node("Squeeze", ["x", "ax"], ["y"], name="sq")], 13,
                      [helper.make_tensor("st", T.INT64, [1], [5]),
                       helper.make_tensor("en", T.INT64, [1], [6])], y_shape=(2, 3, 4))
    with pytest.raises(ExportError, match="'sq'.*computed"):
        downgrade(computed, 12)
    with pytest.raises(ModelFileError, match="opset 10"):
        upgrade(_model([helper.make_node("Relu", ["x"], ["y"])], 10, y_shape=(2, 3, 1, 4)))


def test_resize_without_roi_gets_the_empty_roi_opset_11_requires():
    scales = helper.make_tensor("scales", T.FLOAT, [4], [1, 1, 2, 2])
    m13 = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up",
                                   mode="nearest")], 13, [scales], y_shape=(2, 3, 2, 8))
    m11 = downgrade(m13, 11)
    checker.check_model(m11)
    assert m11.graph.node[0].input[1] == "up.roi"
    x = RNG.normal(size=(2, 3, 1, 4)).astype(np.float32)
    np.testing.assert_array_equal(_ort(m11, x), _ort(m13, x))
