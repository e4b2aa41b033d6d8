"""InferenceSession: loading and refusing bad files, input validation, error wrapping, the
onnxruntime-shaped API, and a small end-to-end graph checked against a torch reference."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import linger
from linger.errors import InputError, ModelFileError, NumericError
from linger.runtime import InferenceSession

D = "ai.linger"
RNG = np.random.default_rng(7)


def make_model(nodes, inputs, outputs, inits=(), opsets=(("", 17), (D, 1))):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(a, n) for n, a in dict(inits).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def vi(name, elem=TensorProto.FLOAT, shape=("N", 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def quant_model(shape=("N", 4)):
    """x (float) -> Quant -> Relu -> Dequant -> y."""
    nodes = [helper.make_node("Quant", ["x"], ["q"], name="in.quant", domain=D, exp=4, bits=8),
             helper.make_node("Relu", ["q"], ["r"], name="act"),
             helper.make_node("Dequant", ["r"], ["y"], name="out.dequant", domain=D, exp=4,
                              bits=8)]
    return make_model(nodes, [vi("x", shape=shape)], [vi("y", shape=shape)])


# --- bad files -------------------------------------------------------------------------------
def test_random_bytes_truncated_and_empty_files(tmp_path):
    good = quant_model().SerializeToString()
    cases = {"random.onnx": RNG.integers(0, 256, 300, dtype=np.uint8).tobytes(),
             "truncated.onnx": good[: len(good) // 2], "empty.onnx": b""}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelFileError, match=name):
            InferenceSession(str(path))
        with pytest.raises(ModelFileError):
            InferenceSession(data)


def test_missing_file_and_wrong_source_type(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        InferenceSession(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="int"):
        InferenceSession(42)


def test_unknown_op_names_node_op_and_domain():
    nodes = [helper.make_node("Quant", ["x"], ["q"], name="in.quant", domain=D, exp=4, bits=8),
             helper.make_node("FancyInt", ["q"], ["y"], name="block.fancy", domain=D)]
    model = make_model(nodes, [vi("x")], [vi("y", TensorProto.INT8)])
    with pytest.raises(ModelFileError) as e:
        InferenceSession(model)
    msg = str(e.value)
    assert "block.fancy" in msg and "FancyInt" in msg and D in msg and "Conv2dInt" in msg


@pytest.mark.parametrize("fast", [True, False])
def test_node_declaring_more_outputs_than_its_kernel_gives(fast):
    nodes = [helper.make_node("Identity", ["x"], ["y", "extra"], name="copy")]
    model = make_model(nodes, [vi("x")], [vi("extra")])
    with pytest.raises(ModelFileError, match=r"'copy'.*'extra' at position 1.*only 1 output"):
        InferenceSession(model, fast=fast).run(None, {"x": np.ones((1, 4), np.float32)})


def test_bad_attributes_are_refused_at_load():
    missing = helper.make_node("Quant", ["x"], ["y"], name="q", domain=D, exp=4)
    with pytest.raises(ModelFileError, match="'q'.*bits"):
        InferenceSession(make_model([missing], [vi("x")], [vi("y")]))
    extra = helper.make_node("Quant", ["x"], ["y"], name="q", domain=D, exp=4, bits=8, zp=3)
    with pytest.raises(ModelFileError, match="zp"):
        InferenceSession(make_model([extra], [vi("x")], [vi("y")]))


def test_opset_versions_are_checked():
    with pytest.raises(ModelFileError, match="opset"):
        InferenceSession(make_model(quant_model().graph.node, [vi("x")], [vi("y")],
                                    opsets=(("", 10), (D, 1))))
    with pytest.raises(ModelFileError, match="Upgrade linger"):
        InferenceSession(make_model(quant_model().graph.node, [vi("x")], [vi("y")],
                                    opsets=(("", 17), (D, 2))))


def test_undefined_value_and_cycle_are_refused():
    node = helper.make_node("Relu", ["ghost"], ["y"], name="act")
    with pytest.raises(ModelFileError, match="'act'.*ghost"):
        InferenceSession(make_model([node], [vi("x")], [vi("y")]))
    cyc = [helper.make_node("Relu", ["b"], ["a"], name="n1"),
           helper.make_node("Relu", ["a"], ["b"], name="n2"),
           helper.make_node("Add", ["x", "b"], ["y"], name="n3")]
    with pytest.raises(ModelFileError, match="cycle"):
        InferenceSession(make_model(cyc, [vi("x")], [vi("y")]))


def test_unsorted_graph_is_sorted():
    nodes = list(quant_model().graph.node)[::-1]
    sess = InferenceSession(make_model(nodes, [vi("x")], [vi("y")]))
    x = np.array([[0.3, -1.0, 2.0, 9.0]], np.float32)
    assert sess.run(None, {"x": x})[0].tolist() == [[0.3125, 0.0, 2.0, 7.9375]]


# --- inputs and outputs ----------------------------------------------------------------------
def test_node_args():
    w = np.ones((3, 4), np.int8)
    nodes = [helper.make_node("Quant", ["x"], ["q"], name="q", domain=D, exp=4, bits=8),
             helper.make_node("LinearInt", ["q", "fc.weight"], ["y"], name="fc", domain=D,
                              exp_x=4, exp_w=0, exp_o=4, bits_x=8, bits_w=8, bits_o=16)]
    model = make_model(nodes, [vi("x"), vi("fc.weight", TensorProto.INT8, (3, 4))],
                       [vi("y", TensorProto.INT16, ("N", 3))], {"fc.weight": w})
    sess = InferenceSession(model)
    [i], [o] = sess.get_inputs(), sess.get_outputs()  # the initializer is no input
    assert (i.name, i.shape, i.type) == ("x", ["N", 4], "tensor(float)")
    assert (o.name, o.shape, o.type) == ("y", ["N", 3], "tensor(int16)")


@pytest.mark.parametrize("feed,match", [
    ({"x": np.zeros((2, 4), np.float32), "z": np.zeros(1)}, "unknown input.*'z'.*'x'"),
    ({}, "missing inputs.*'x'"),
    ({"x": np.zeros((2, 4), np.float64)}, "'x'.*float32.*float64"),
    ({"x": np.zeros((2, 4, 1), np.float32)}, "'x'.*rank 2.*\\[2, 4, 1\\]"),
    ({"x": np.zeros((2, 5), np.float32)}, "'x'.*dimension 1 must be 4"),
    ({"x": [[0.0] * 4]}, "'x'.*numpy array"),
])
def test_bad_inputs_raise_input_error(feed, match):
    with pytest.raises(InputError, match=match):
        InferenceSession(quant_model()).run(None, feed)


def test_symbolic_dims_must_agree_between_inputs():
    node = helper.make_node("Add", ["a", "b"], ["y"], name="add")
    sess = InferenceSession(make_model([node], [vi("a"), vi("b")], [vi("y")]))
    a = np.zeros((2, 4), np.float32)
    assert sess.run(None, {"a": a, "b": a})[0].shape == (2, 4)
    with pytest.raises(InputError, match="'N'"):
        sess.run(None, {"a": a, "b": np.zeros((3, 4), np.float32)})


def test_output_names():
    sess = InferenceSession(quant_model())
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    [y] = sess.run(None, {"x": x})
    [y2] = sess.run(["y"], {"x": x})
    [q] = sess.run(["q"], {"x": x})  # intermediate values may be asked for too
    assert np.array_equal(y, y2) and q.dtype == np.int8
    with pytest.raises(InputError, match="'nope'"):
        sess.run(["nope"], {"x": x})
    with pytest.raises(InputError, match=r"\['y'\]"):
        sess.run("y", {"x": x})
    y[:] = 99  # outputs belong to the caller
    assert np.array_equal(sess.run(None, {"x": x})[0], y2)


def test_run_with_intermediates_has_every_value():
    sess = InferenceSession(quant_model())
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    values = sess.run_with_intermediates({"x": x})
    assert set(values) == {"x", "q", "r", "y"}
    assert np.array_equal(values["r"], np.maximum(values["q"], 0))


# --- errors during execution name the node ---------------------------------------------------
def test_nan_input_names_the_quant_node():
    x = np.array([[0.0, np.nan, 1.0, 2.0]], np.float32)
    with pytest.raises(NumericError, match="in.quant"):
        InferenceSession(quant_model()).run(None, {"x": x})


def test_numpy_failure_is_wrapped_with_the_node():
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="head.view")
    model = make_model([node], [vi("x")], [vi("y", shape=(5, -1))],
                       {"shape": np.array([5, -1], np.int64)})
    with pytest.raises(ModelFileError, match="head.view.*Reshape.*reshape"):
        InferenceSession(model).run(None, {"x": np.zeros((3, 4), np.float32)})


def test_embedding_index_out_of_range_is_an_input_error():
    node = helper.make_node("EmbeddingInt", ["idx", "emb.weight"], ["y"], name="emb", domain=D,
                            exp_w=3, bits_w=8)
    model = make_model([node], [vi("idx", TensorProto.INT64, ("N",))],
                       [vi("y", TensorProto.INT8, ("N", 2))],
                       {"emb.weight": np.arange(10, dtype=np.int8).reshape(5, 2)})
    sess = InferenceSession(model)
    assert sess.run(None, {"idx": np.array([4, 0])})[0].tolist() == [[8, 9], [0, 1]]
    with pytest.raises(InputError, match="'emb'.*index 5"):
        sess.run(None, {"idx": np.array([5])})


# --- end to end ------------------------------------------------------------------------------
def test_small_network_matches_torch_reference(tmp_path):
    """Quant -> Conv2dInt -> Relu -> MaxPool -> Reshape -> LinearInt -> Dequant, batch 3."""
    wc = RNG.integers(-128, 128, (4, 2, 3, 3)).astype(np.int8)
    bc = RNG.integers(-3000, 3000, 4).astype(np.int32)
    wl = RNG.integers(-128, 128, (5, 36)).astype(np.int8)
    bl = RNG.integers(-3000, 3000, 5).astype(np.int32)
    conv = dict(exp_x=5, exp_w=7, exp_o=4, bits_x=8, bits_w=8, bits_o=8)
    fc = dict(exp_x=4, exp_w=7, exp_o=3, bits_x=8, bits_w=8, bits_o=16)
    nodes = [
        helper.make_node("Quant", ["x"], ["q"], name="quant", domain=D, exp=5, bits=8),
        helper.make_node("Conv2dInt", ["q", "conv.weight", "conv.bias"], ["c"], name="conv",
                         domain=D, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                         dilations=[1, 1], group=1, **conv),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
        helper.make_node("LinearInt", ["f", "fc.weight", "fc.bias"], ["l"], name="fc",
                         domain=D, **fc),
        helper.make_node("Dequant", ["l"], ["y"], name="fc.dequant", domain=D, exp=3, bits=16)]
    inits = {"conv.weight": wc, "conv.bias": bc, "fc.weight": wl, "fc.bias": bl,
             "shape": np.array([0, -1], np.int64)}
    model = make_model(nodes, [vi("x", shape=("N", 2, 6, 6))], [vi("y", shape=("N", 5))], inits)
    path = tmp_path / "net.onnx"
    path.write_bytes(model.SerializeToString())
    x = (RNG.standard_normal((3, 2, 6, 6)) * 3).astype(np.float32)
    [y] = InferenceSession(str(path)).run(None, {"x": x})

    def out(acc, shift, bits):
        return torch.floor(acc * 2.0 ** -shift + 0.5).clamp(-(1 << bits - 1), (1 << bits - 1) - 1)
    t = torch.tensor
    q = out(t(x.astype(np.float64)), -5, 8)
    c = out(F.conv2d(q, t(wc).double(), t(bc).double(), 1, 1), 5 + 7 - 4, 8)
    p = F.max_pool2d(F.relu(c), 2, 2).flatten(1)
    ref = out(F.linear(p, t(wl).double(), t(bl).double()), 4 + 7 - 3, 16) * 2.0 ** -3
    assert y.dtype == np.float32 and np.array_equal(y, ref.float().numpy())


def test_runtime_does_not_import_torch():
    code = "import linger.runtime, sys; assert 'torch' not in sys.modules, 'torch imported'"
    root = Path(linger.__file__).resolve().parents[1]  # where `import linger` resolves
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
