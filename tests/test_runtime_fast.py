"""The runtime's fast path (float32 channels-last, fused clips, in-place steps, kept buffers)
against its plain kernels, bit for bit: every value of every graph, on random, saturating and
rounding-tie inputs. The plain kernels are themselves tested against torch and onnxruntime
(test_runtime_kernels.py), and whole models against PyTorch eval (test_bitexact.py)."""

import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from linger.errors import ModelFileError, NumericError
from linger.runtime import InferenceSession

D = "ai.linger"
RNG = np.random.default_rng(11)
I8, I16, I32, F = TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.FLOAT


def make(nodes, inputs, outputs, inits=()):
    """Model from nodes; ``inputs``: {name: (elem type, shape)}; outputs untyped."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        [numpy_helper.from_array(a, n) for n, a in dict(inits).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(D, 1)])


def node(op, ins, outs, domain=D, **attrs):
    return helper.make_node(op, ins, outs, name=outs[0] + ".node", domain=domain, **attrs)


def ints(shape, dtype, mode="random"):
    info = np.iinfo(dtype)
    if mode == "min":    # largest magnitudes: every accumulator at its bound
        return np.full(shape, info.min, dtype)
    if mode == "max":
        return np.full(shape, info.max, dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def weights(shape, shift, k, mode="random"):
    """int8 weights scaled so that random int8 inputs mostly land inside the output range after
    ``shift``: the rounding (ties included) is exercised, not only the saturation."""
    if mode != "random":
        return ints(shape, np.int8, "min")
    top = int(np.clip(round(60 * 2.0 ** shift * 1.7 / (74 * np.sqrt(k))), 1, 127))
    return RNG.integers(-top, top + 1, shape).astype(np.int8)


def bias(n, shift):
    top = 64 << max(shift, 0)
    return RNG.integers(-top, top + 1, n).astype(np.int32)


def fast_steps(sess):
    """Fast steps of ``sess.run(None, ...)`` by op type, ``+`` joining folded ops."""
    program = sess._program(tuple(o.name for o in sess.get_outputs()))
    return {"+".join(n.op_type for n in [s.node, *s.folded])
            for s in program.steps if s.kind == "fast"}


def assert_same(model, feed, fast_ops=()):
    """fast == plain for every value (dtype and integers) and for run(None)."""
    fast, plain = InferenceSession(model), InferenceSession(model, fast=False)
    for got, want in zip(fast.run(None, feed), plain.run(None, feed)):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want), f"max diff {np.abs(got - want).max()}"
    every_fast, every_plain = fast.run_with_intermediates(feed), plain.run_with_intermediates(feed)
    assert every_fast.keys() == every_plain.keys()
    for name, want in every_plain.items():
        got = every_fast[name]
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    missing = set(fast_ops) - {op for label in fast_steps(fast) for op in label.split("+")}
    assert not missing, f"{missing} did not take the fast path"
    return fast


def layer_attrs(shift, bx=8, bw=8, bo=8):
    return dict(exp_x=5, exp_w=3, exp_o=8 - shift, bits_x=bx, bits_w=bw, bits_o=bo)


# --- convolutions: (id, nd, N, C, Cout, size, kernel, stride, pads, dilation, group, shift) ---
CONVS = [
    ("3x3_same", 2, 2, 4, 6, (7, 7), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 9),
    ("3x3_s2", 2, 3, 4, 5, (9, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, 6),
    ("rect_asym_dil", 2, 2, 3, 4, (9, 10), (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 1, 7),
    ("1x1", 2, 2, 8, 4, (5, 6), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, 1),     # ties
    ("1x1_s2", 2, 2, 8, 4, (5, 6), (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, 2),
    ("1x1_groups", 2, 1, 8, 4, (4, 4), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2, 3),
    ("depthwise", 2, 2, 6, 6, (8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6, 4),
    ("groups2", 2, 2, 4, 6, (6, 7), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, 8),
    ("5x5_s2", 2, 1, 4, 8, (10, 9), (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 1, 10),
    ("left_shift", 2, 2, 2, 2, (6, 5), (2, 2), (1, 2), (0, 0, 0, 0), (2, 2), 1, -2),
    ("shift0", 2, 3, 2, 3, (6, 6), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, 0),
    ("big_batch", 2, 40, 3, 4, (12, 12), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 9),
    ("conv1d", 1, 2, 3, 4, (11,), (3,), (1,), (1, 1), (1,), 1, 8),
    ("conv1d_s2_dil2", 1, 3, 4, 4, (16,), (5,), (2,), (2, 1), (2,), 2, 6),
    ("conv1d_depthwise", 1, 2, 5, 5, (9,), (2,), (2,), (0, 0), (1,), 5, 1),
]


@pytest.mark.parametrize("mode", ["random", "min", "max"])
@pytest.mark.parametrize("cfg", CONVS, ids=[c[0] for c in CONVS])
def test_conv(cfg, mode):
    _, nd, n, c, cout, size, ks, st, pads, dil, g, shift = cfg
    w = weights((cout, c // g, *ks), shift, c // g * np.prod(ks), mode)
    b = bias(cout, shift)
    op = f"Conv{nd}dInt"
    model = make([node(op, ["x", "w", "b"], ["y"], kernel_shape=list(ks), strides=list(st),
                       pads=list(pads), dilations=list(dil), group=g, **layer_attrs(shift))],
                 {"x": (I8, ["N", c, *size])}, ["y"], {"w": w, "b": b})
    assert_same(model, {"x": ints((n, c, *size), np.int8, mode)}, [op])


def test_conv_without_bias_16bit_output_and_fallbacks():
    w = ints((4, 3, 3, 3), np.int8)
    x = ints((2, 3, 6, 6), np.int8)
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = make([node("Conv2dInt", ["x", "w"], ["y"], **conv, **layer_attrs(3, bo=16))],
                 {"x": (I8, ["N", 3, 6, 6])}, ["y"], {"w": w})
    assert_same(model, {"x": x}, ["Conv2dInt"])
    # a bias that takes the accumulator past 2**24: float32 would not be exact -> plain kernel
    big = np.full(4, 2 ** 24, np.int32)
    model = make([node("Conv2dInt", ["x", "w", "b"], ["y"], **conv, **layer_attrs(3))],
                 {"x": (I8, ["N", 3, 6, 6])}, ["y"], {"w": w, "b": big})
    assert fast_steps(assert_same(model, {"x": x})) == set()
    # 16-bit data x 16-bit weights, 32-bit output: plain kernel
    model = make([node("Conv2dInt", ["x", "w"], ["y"], **conv,
                       **layer_attrs(12, bx=16, bw=16, bo=32))],
                 {"x": (I16, ["N", 3, 6, 6])}, ["y"], {"w": w.astype(np.int16) * 200})
    assert fast_steps(assert_same(model, {"x": ints((2, 3, 6, 6), np.int16)})) == set()


@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12), (2, 3, 4, 12)])
def test_linear(shape):
    w, b = weights((7, 12), 1, 12), bias(7, 1)
    model = make([node("LinearInt", ["x", "w", "b"], ["y"], **layer_attrs(1))],
                 {"x": (I8, ["N", *shape[1:]])}, ["y"], {"w": w, "b": b})
    for mode in ("random", "min"):
        assert_same(model, {"x": ints(shape, np.int8, mode)}, ["LinearInt"])


@pytest.mark.parametrize("shape", [(4, 5), (3, 5, 7), (2, 5, 4, 3)])
@pytest.mark.parametrize("shift", [1, 6, 0, -3])
def test_batch_norm(shape, shift):
    w, b = weights((5,), shift, 1), bias(5, shift)
    model = make([node("BatchNormInt", ["x", "w", "b"], ["y"], **layer_attrs(shift))],
                 {"x": (I8, ["N", *shape[1:]])}, ["y"], {"w": w, "b": b})
    assert_same(model, {"x": ints(shape, np.int8)}, ["BatchNormInt"])


@pytest.mark.parametrize("shift,bits_in,bits", [(1, 8, 8), (3, 16, 8), (0, 8, 16), (-2, 8, 8),
                                                (-9, 8, 16), (20, 16, 8)])
def test_requant_after_batch_norm(shift, bits_in, bits):
    model = make([node("BatchNormInt", ["x", "w", "b"], ["q"], **layer_attrs(2, bo=bits_in)),
                  node("Requant", ["q"], ["y"], exp_in=6, bits_in=bits_in, exp=6 - shift,
                       bits=bits)],
                 {"x": (I8, ["N", 3, 4])}, ["y"],
                 {"w": ints((3,), np.int8), "b": np.array([7, -300, 2000], np.int32)})
    assert_same(model, {"x": ints((4, 3, 4), np.int8)}, ["Requant"])


def test_quant_rounding_edges_and_dequant():
    ties = np.arange(-600, 600) / 32.0                               # v = x * 16: k / 2 ties
    near = np.concatenate([np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf)])
    odd = [0.49999997 / 16, -0.49999997 / 16, 1e-45, -1e-45, 1e-40, 0.0, -0.0, 3.4e38, -3.4e38,
           2.5 / 16, -2.5 / 16, 7.96875, 7.9375, -8.03125]
    x = np.concatenate([ties, near, odd]).astype(np.float32).reshape(1, -1)
    model = make([node("Quant", ["x"], ["q"], exp=4, bits=8),
                  node("Dequant", ["q"], ["y"], exp=4, bits=8)],
                 {"x": (F, [1, x.shape[1]])}, ["y"])
    assert_same(model, {"x": x}, ["Quant", "Dequant"])
    x4 = (RNG.standard_normal((2, 3, 4, 5)) * 40).astype(np.float32)
    model = make([node("Quant", ["x"], ["q"], exp=9, bits=16),
                  node("Dequant", ["q"], ["y"], exp=9, bits=16)],
                 {"x": (F, ["N", 3, 4, 5])}, ["y"])
    assert_same(model, {"x": x4}, ["Quant", "Dequant"])


def test_quant_of_float64_and_non_finite_inputs():
    # 32-bit Dequant gives float64: the fast Quant hands it to the plain formula
    model = make([node("Dequant", ["x"], ["f"], exp=3, bits=32),
                  node("Quant", ["f"], ["y"], exp=1, bits=8)], {"x": (I32, ["N", 4])}, ["y"])
    assert_same(model, {"x": np.array([[5, -5, 3, 1 << 30]], np.int32)}, ["Quant"])
    model = make([node("Quant", ["x"], ["y"], exp=4, bits=8)], {"x": (F, ["N", 2])}, ["y"])
    for bad in (np.nan, np.inf):
        with pytest.raises(NumericError, match="y.node"):
            InferenceSession(model).run(None, {"x": np.array([[0.0, bad]], np.float32)})


@pytest.mark.parametrize("op", ["iqAdd", "iqSub"])
@pytest.mark.parametrize("exps,bits", [((4, 4, 4), (8, 8, 8)), ((6, 3, 4), (8, 8, 8)),
                                       ((9, 2, 5), (16, 8, 16)), ((2, 3, 9), (8, 8, 16))])
def test_add_sub(op, exps, bits):
    ex, ey, eo = exps
    bx, by, bo = bits
    dts = {8: np.int8, 16: np.int16}
    attrs = dict(exp_x=ex, bits_x=bx, exp_y=ey, bits_y=by, exp_o=eo, bits_o=bo)
    model = make([node(op, ["x", "y"], ["z"], **attrs)],
                 {"x": ({8: I8, 16: I16}[bx], ["N", 3, 4, 5]),
                  "y": ({8: I8, 16: I16}[by], ["N", 3, 4, 5])}, ["z"])
    for mode in ("random", "min", "max"):
        feed = {"x": ints((2, 3, 4, 5), dts[bx], mode), "y": ints((2, 3, 4, 5), dts[by])}
        assert_same(model, feed, [op])
    # broadcasting: same rank (N, C, H, W) + (1, C, 1, 1), and between ranks + (H, W)
    for y_shape in ([1, 3, 1, 1], [4, 5]):
        model = make([node(op, ["x", "y"], ["z"], **attrs)],
                     {"x": ({8: I8, 16: I16}[bx], ["N", 3, 4, 5]),
                      "y": ({8: I8, 16: I16}[by], y_shape)}, ["z"])
        assert_same(model, {"x": ints((2, 3, 4, 5), dts[bx]), "y": ints(y_shape, dts[by])},
                    [op])


@pytest.mark.parametrize("attrs,size", [
    (dict(kernel_shape=[2, 2], strides=[2, 2]), (6, 6)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (7, 7)),
    (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), (7, 6)),
    (dict(kernel_shape=[5, 3], strides=[5, 3]), (5, 3)),                    # global
])
def test_avg_pool(attrs, size):
    model = make([node("AvgPoolInt", ["x"], ["y"], exp=4, bits=8, **attrs)],
                 {"x": (I8, ["N", 3, *size])}, ["y"])
    assert_same(model, {"x": ints((2, 3, *size), np.int8)}, ["AvgPoolInt"])


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
                                   dict(kernel_shape=[2, 2], dilations=[2, 2])])
def test_max_pool_after_conv(attrs):
    model = make([node("Conv2dInt", ["x", "w"], ["c"], kernel_shape=[1, 1], **layer_attrs(4)),
                  node("MaxPool", ["c"], ["y"], domain="", **attrs)],
                 {"x": (I8, ["N", 2, 7, 7])}, ["y"], {"w": ints((3, 2, 1, 1), np.int8)})
    assert_same(model, {"x": ints((2, 2, 7, 7), np.int8, "min")}, ["MaxPool"])


def _conv_chain(tail, outputs=("y",), extra_inits=()):
    conv = node("Conv2dInt", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                **layer_attrs(7))
    inits = {"w": ints((4, 3, 3, 3), np.int8), "b": RNG.integers(-999, 999, 4).astype(np.int32)}
    inits.update(extra_inits)
    return make([conv, *tail], {"x": (I8, ["N", 3, 5, 5])}, list(outputs), inits)


@pytest.mark.parametrize("lo,hi", [(10, 100), (50, 20), (-128, -100), (None, 5), (-3, None)])
def test_relu_and_clip_fold_into_the_producer(lo, hi):
    consts = {k: np.array(v, np.int8) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    clip_in = ["r", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    model = _conv_chain([node("Relu", ["c"], ["r"], domain=""),
                         node("Clip", clip_in, ["y"], domain="")], extra_inits=consts)
    sess = assert_same(model, {"x": ints((3, 3, 5, 5), np.int8)})
    assert fast_steps(sess) == {"Conv2dInt+Relu+Clip"}


def test_no_fold_or_overwrite_where_a_value_is_read_twice_or_wanted():
    bn = layer_attrs(2)
    tail = [node("BatchNormInt", ["c", "w1", "b1"], ["p"], **bn),
            node("BatchNormInt", ["c", "w2", "b2"], ["q"], **bn),
            node("Relu", ["p"], ["r"], domain=""),
            node("iqAdd", ["r", "q"], ["s"], exp_x=6, bits_x=8, exp_y=6, bits_y=8, exp_o=5,
                 bits_o=8),
            node("Relu", ["s"], ["y"], domain="")]
    inits = {"w1": ints((4,), np.int8), "b1": np.arange(4, dtype=np.int32) * 50,
             "w2": ints((4,), np.int8), "b2": np.arange(4, dtype=np.int32) * -70}
    feed = {"x": ints((2, 3, 5, 5), np.int8)}
    model = _conv_chain(tail, ("y", "p"), inits)
    sess = assert_same(model, feed)                          # p wanted: nothing folds into it
    assert "BatchNormInt" in fast_steps(sess) and "iqAdd+Relu" in fast_steps(sess)
    plain = InferenceSession(model, fast=False)
    for names in (["c", "y"], ["q"], ["r", "s", "x"]):       # intermediate values on request
        for got, want in zip(sess.run(names, feed), plain.run(names, feed)):
            assert got.dtype == want.dtype and np.array_equal(got, want)


def test_kept_buffers_across_batch_sizes_and_threads():
    model = _conv_chain([node("Relu", ["c"], ["y"], domain="")])
    sess, plain = InferenceSession(model), InferenceSession(model, fast=False)
    feeds = [{"x": ints((n, 3, 5, 5), np.int8)} for n in (3, 1, 3, 7, 1)]
    want = [plain.run(None, f)[0] for f in feeds]
    for f, w in zip(feeds, want):
        assert np.array_equal(sess.run(None, f)[0], w)
    got, errors = {}, []

    def worker(k):
        try:
            for _ in range(20):
                got[k] = [sess.run(None, f)[0] for f in feeds]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for outs in got.values():
        assert all(np.array_equal(o, w) for o, w in zip(outs, want))


def test_errors_read_as_without_the_fast_path():
    conv = node("Conv2dInt", ["x", "w"], ["y"], kernel_shape=[3, 3], **layer_attrs(7))
    w = ints((4, 3, 3, 3), np.int8)
    for elem, feed in ((I16, ints((1, 3, 5, 5), np.int16)),     # wrong storage dtype
                       (I8, ints((1, 2, 5, 5), np.int8)),       # wrong channel count
                       (I8, ints((1, 3, 2, 2), np.int8))):      # smaller than the kernel
        model = make([conv], {"x": (elem, ["N", None, None, None])}, ["y"], {"w": w})
        messages = []
        for fast in (True, False):
            with pytest.raises(ModelFileError) as e:
                InferenceSession(model, fast=fast).run(None, {"x": feed})
            messages.append(str(e.value))
        assert messages[0] == messages[1] and "y.node" in messages[0]


def test_error_in_a_folded_op_names_that_op():
    conv = node("Conv2dInt", ["x", "w"], ["c"], kernel_shape=[3, 3], **layer_attrs(7))
    bn = node("BatchNormInt", ["c", "bw", "bb"], ["y"], **layer_attrs(2))  # 3 channels, not 4
    model = make([conv, bn], {"x": (I8, ["N", 3, 5, 5])}, ["y"],
                 {"w": ints((4, 3, 3, 3), np.int8), "bw": ints((3,), np.int8),
                  "bb": np.zeros(3, np.int32)})
    assert fast_steps(InferenceSession(model)) == {"Conv2dInt+BatchNormInt"}
    messages = []
    for fast in (True, False):
        with pytest.raises(ModelFileError) as e:
            InferenceSession(model, fast=fast).run(None, {"x": ints((1, 3, 5, 5), np.int8)})
        messages.append(str(e.value))
    assert messages[0] == messages[1] and "y.node" in messages[0]


@pytest.mark.parametrize("op,extra,attrs", [
    ("Reshape", {"shape": np.array([0, -1], np.int64)}, {}),
    ("Flatten", {}, {"axis": 1}),
    ("Transpose", {}, {"perm": [0, 2, 3, 1]}),
    ("Identity", {}, {}),
    ("Unsqueeze", {"axes": np.array([2], np.int64)}, {}),
    ("Slice", {"starts": np.array([1, 0], np.int64), "ends": np.array([4, 5], np.int64),
               "axes": np.array([1, 3], np.int64), "steps": np.array([2, 2], np.int64)}, {}),
])
def test_layout_ops_on_fast_values_never_alias_a_live_buffer(op, extra, attrs):
    """c -> layout op -> Relu (may not overwrite c: BatchNormInt still reads it) and c -> BN."""
    tail = [node(op, ["c", *extra], ["r"], domain="", **attrs),
            node("Relu", ["r"], ["y"], domain=""),
            node("BatchNormInt", ["c", "bw", "bb"], ["z"], **layer_attrs(2))]
    inits = {"bw": weights((4,), 2, 1), "bb": bias(4, 2), **extra}
    sess = assert_same(_conv_chain(tail, ("y", "z"), inits), {"x": ints((2, 3, 5, 5), np.int8)},
                       [op, "Relu", "BatchNormInt"])
    converted = {s.outs[0] for s in sess._program(("y", "z")).steps if s.kind == "convert"}
    assert converted == {"x\0fast", "y", "z"}      # the input, the two outputs: nothing between
