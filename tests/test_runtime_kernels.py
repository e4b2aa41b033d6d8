"""Runtime kernels against outside references, with exact equality.

Custom integer layers: an independent torch float64 computation on integer-valued tensors,
``q = clamp(floor((op(x, W) + B) * 2**-shift + 0.5))`` (exact: every value is an integer < 2**53).
Standard ONNX ops: onnxruntime on a one-node model.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from linger.errors import ModelFileError, NumericError
from linger.runtime import InferenceSession
from linger.runtime.kernels import KERNELS

D = "ai.linger"
RNG = np.random.default_rng(1234)
I_DT = {8: np.int8, 16: np.int16, 32: np.int32}


def k(op, inputs, domain=D, **attrs):
    return KERNELS[(domain, op)](inputs, **attrs)


def ints(shape, bits, extreme=False):
    lo, hi = -(1 << bits - 1), (1 << bits - 1) - 1
    if extreme:  # every value at the negative end: the largest possible products
        return np.full(shape, lo, I_DT[max(bits, 8)])
    return RNG.integers(lo, hi + 1, shape).astype(I_DT[max(bits, 8)])


def t64(a):
    return None if a is None else torch.tensor(a.astype(np.float64))


def ref_out(acc, shift, bits):
    """Output stage reference: floor(acc * 2**-shift + 0.5) saturated, in torch float64."""
    q = torch.floor(acc * 2.0 ** -shift + 0.5)
    return q.clamp(-(1 << bits - 1), (1 << bits - 1) - 1).numpy().astype(I_DT[bits])


def exps(shift):
    """Exponent attributes giving ``exp_x + exp_w - exp_o == shift``."""
    return dict(exp_x=5, exp_w=3, exp_o=8 - shift)


# --- convolutions --------------------------------------------------------------------------
# (nd, N, C, Cout, size, kernel, stride, pads (begins+ends), dilation, group, bits x/w/o, shift)
CONV = [
    (2, 1, 3, 4, (7, 7), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (8, 8, 8), 9),
    (2, 3, 4, 6, (9, 8), (3, 2), (2, 1), (1, 0, 2, 1), (1, 2), 2, (8, 8, 8), 7),
    (2, 2, 6, 6, (8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6, (8, 8, 8), 4),     # depthwise
    (2, 1, 4, 8, (10, 9), (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 1, (8, 8, 16), 6),
    (2, 3, 2, 3, (6, 6), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, (8, 8, 8), 0),     # shift 0
    (2, 1, 2, 2, (6, 5), (2, 2), (1, 2), (0, 0, 0, 0), (2, 2), 1, (8, 8, 8), -2),    # left shift
    (2, 2, 3, 5, (7, 7), (4, 4), (2, 2), (1, 2, 2, 1), (1, 1), 1, (16, 8, 16), 12),
    (2, 1, 8, 8, (5, 5), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, (16, 16, 16), 20),
    (2, 1, 4, 4, (6, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, (8, 8, 32), 0),    # int32 out
    (2, 2, 2, 4, (5, 7), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 2, (8, 4, 8), 5),     # int4 w
    (1, 1, 3, 4, (11,), (3,), (1,), (1, 1), (1,), 1, (8, 8, 8), 8),
    (1, 3, 4, 4, (16,), (5,), (2,), (2, 1), (2,), 2, (8, 8, 8), 6),
    (1, 2, 5, 5, (9,), (2,), (2,), (0, 0), (1,), 5, (16, 8, 8), 10),                 # depthwise
    (1, 1, 2, 3, (7,), (1,), (1,), (0, 0), (1,), 1, (8, 8, 16), -1),
    (1, 3, 2, 2, (8,), (4,), (1,), (3, 0), (1,), 1, (8, 8, 8), 3),
]


@pytest.mark.parametrize("extreme", [False, True], ids=["random", "saturating"])
@pytest.mark.parametrize("cfg", CONV, ids=[f"conv{i}" for i in range(len(CONV))])
def test_conv_int_matches_torch(cfg, extreme):
    nd, n, c, cout, size, ks, st, pads, dil, g, (bx, bw, bo), shift = cfg
    x = ints((n, c, *size), bx, extreme)
    w = ints((cout, c // g, *ks), bw, extreme)
    b = RNG.integers(-2 ** 20, 2 ** 20, cout).astype(np.int32)
    attrs = dict(exps(shift), bits_x=bx, bits_w=bw, bits_o=bo, kernel_shape=list(ks),
                 strides=list(st), pads=list(pads), dilations=list(dil), group=g)
    [y] = k(f"Conv{nd}dInt", [x, w, b], **attrs)
    torch_pad = [p for i in reversed(range(nd)) for p in (pads[i], pads[nd + i])]
    conv = F.conv1d if nd == 1 else F.conv2d
    acc = conv(F.pad(t64(x), torch_pad), t64(w), t64(b), st, 0, dil, g)
    assert y.dtype == I_DT[bo]
    assert np.array_equal(y, ref_out(acc, shift, bo))


# (nd, N, Cin, Cout, size, kernel, stride, pad, output_padding, dilation, group, bits, shift)
CONVT = [
    (2, 1, 3, 4, (4, 4), (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1, (8, 8, 8), 8),
    (2, 2, 4, 6, (5, 6), (3, 2), (2, 3), (1, 0), (1, 2), (2, 1), 2, (8, 8, 16), 7),
    (2, 3, 2, 2, (3, 5), (5, 5), (1, 1), (2, 2), (0, 0), (1, 1), 1, (8, 8, 8), 0),
    (2, 1, 4, 4, (4, 3), (4, 4), (4, 4), (0, 0), (3, 3), (1, 1), 4, (16, 8, 16), -3),
    (1, 2, 3, 5, (7,), (3,), (2,), (1,), (1,), (1,), 1, (8, 8, 8), 9),
    (1, 1, 4, 2, (6,), (4,), (2,), (1,), (0,), (2,), 2, (8, 8, 32), 2),
]


@pytest.mark.parametrize("extreme", [False, True], ids=["random", "saturating"])
@pytest.mark.parametrize("cfg", CONVT, ids=[f"convt{i}" for i in range(len(CONVT))])
def test_conv_transpose_int_matches_torch(cfg, extreme):
    nd, n, cin, cout, size, ks, st, pad, opad, dil, g, (bx, bw, bo), shift = cfg
    x = ints((n, cin, *size), bx, extreme)
    w = ints((cin, cout // g, *ks), bw, extreme)
    b = RNG.integers(-2 ** 20, 2 ** 20, cout).astype(np.int32)
    attrs = dict(exps(shift), bits_x=bx, bits_w=bw, bits_o=bo, kernel_shape=list(ks),
                 strides=list(st), pads=list(pad) * 2, dilations=list(dil), group=g,
                 output_padding=list(opad))
    [y] = k(f"ConvTranspose{nd}dInt", [x, w, b], **attrs)
    convt = F.conv_transpose1d if nd == 1 else F.conv_transpose2d
    acc = convt(t64(x), t64(w), t64(b), st, pad, opad, g, dil)
    assert np.array_equal(y, ref_out(acc, shift, bo))


def test_conv_without_bias():
    x, w = ints((2, 3, 6, 6), 8), ints((4, 3, 3, 3), 8)
    [y] = k("Conv2dInt", [x, w], **exps(6), bits_x=8, bits_w=8, bits_o=8, pads=[1] * 4)
    acc = F.conv2d(t64(x), t64(w), None, 1, 1)
    assert np.array_equal(y, ref_out(acc, 6, 8))


# --- linear, batch-norm ----------------------------------------------------------------------
@pytest.mark.parametrize("shape,out,bits,shift", [
    ((1, 16), 8, (8, 8, 8), 7), ((3, 5, 32), 10, (8, 8, 16), 5), ((4, 7), 3, (16, 8, 8), 14),
    ((2, 3), 4, (8, 8, 32), -4), ((2, 64), 5, (16, 16, 16), 0)])
@pytest.mark.parametrize("extreme", [False, True], ids=["random", "saturating"])
def test_linear_int_matches_torch(shape, out, bits, shift, extreme):
    bx, bw, bo = bits
    x, w = ints(shape, bx, extreme), ints((out, shape[-1]), bw, extreme)
    b = RNG.integers(-2 ** 20, 2 ** 20, out).astype(np.int32)
    [y] = k("LinearInt", [x, w, b], **exps(shift), bits_x=bx, bits_w=bw, bits_o=bo)
    assert np.array_equal(y, ref_out(F.linear(t64(x), t64(w), t64(b)), shift, bo))


@pytest.mark.parametrize("k_len", [1024, 1025], ids=["float32-edge", "float64"])
def test_linear_accumulator_at_the_float32_bound(k_len):
    # 1024 * (-128)**2 == 2**24: the largest sum float32 holds exactly; 1025 switches to float64.
    x, w = ints((2, k_len), 8, extreme=True), ints((3, k_len), 8, extreme=True)
    w[1] = 127
    [y] = k("LinearInt", [x, w], **exps(0), bits_x=8, bits_w=8, bits_o=32)
    assert np.array_equal(y, ref_out(F.linear(t64(x), t64(w)), 0, 32))
    assert y[0, 0] == k_len * 128 * 128


@pytest.mark.parametrize("shape", [(2, 4), (3, 4, 5), (2, 4, 3, 3)])
def test_batch_norm_int_matches_torch(shape):
    x, w = ints(shape, 8), ints((4,), 8)
    b = RNG.integers(-2 ** 16, 2 ** 16, 4).astype(np.int32)
    [y] = k("BatchNormInt", [x, w, b], **exps(6), bits_x=8, bits_w=8, bits_o=8)
    view = [1, -1] + [1] * (len(shape) - 2)
    acc = t64(x) * t64(w).view(view) + t64(b).view(view)
    assert np.array_equal(y, ref_out(acc, 6, 8))


# --- average pooling -------------------------------------------------------------------------
@pytest.mark.parametrize("size,ks,st,pad,include,bits", [
    ((8, 8), (2, 2), (2, 2), (0, 0), 1, 8), ((7, 9), (3, 3), (2, 1), (1, 1), 1, 8),
    ((7, 9), (3, 3), (2, 2), (1, 1), 0, 8), ((6, 6), (6, 6), (6, 6), (0, 0), 1, 16),
    ((5, 8), (3, 5), (1, 3), (1, 2), 0, 16), ((12,), (3,), (2,), (1,), 0, 8),
    ((12,), (4,), (4,), (0,), 1, 8)])
@pytest.mark.parametrize("n", [1, 3])
def test_avg_pool_int_matches_torch(size, ks, st, pad, include, bits, n):
    x = ints((n, 3, *size), bits)
    [y] = k("AvgPoolInt", [x], kernel_shape=list(ks), strides=list(st), pads=list(pad) * 2,
            count_include_pad=include, exp=3, bits=bits)
    pool = F.avg_pool1d if len(size) == 1 else F.avg_pool2d
    sums = pool(t64(x), ks, st, pad, False, True) * float(np.prod(ks))
    counts = pool(torch.ones_like(t64(x)), ks, st, pad, False, True) * float(np.prod(ks))
    counts = counts.round() if not include else torch.full_like(counts, float(np.prod(ks)))
    ref = torch.floor((2 * sums.round() + counts) / (2 * counts))  # half up, exact integers
    assert y.dtype == I_DT[bits] and np.array_equal(y, ref.numpy())


def test_avg_pool_rounds_ties_up():
    x = np.array([[[-3, 0, 1, 0, 3, 0, -1, 0]]], np.int8)  # window means -1.5, .5, 1.5, -.5
    [y] = k("AvgPoolInt", [x], kernel_shape=[2], strides=[2], exp=0, bits=8)
    assert y.tolist() == [[[-1, 1, 2, 0]]]


# --- boundary ops ------------------------------------------------------------------------------
def test_quant_rounds_half_up_and_saturates():
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, 126.5, 127.5, -128.5, -200, 3e38], np.float32)
    [q] = k("Quant", [x / 8], exp=3, bits=8)
    assert q.dtype == np.int8
    assert q.tolist() == [1, 0, 2, -1, 3, 127, 127, -128, -128, 127]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quant_refuses_non_finite(bad):
    with pytest.raises(NumericError, match="finite"):
        k("Quant", [np.array([1.0, bad], np.float32)], exp=3, bits=8)


@pytest.mark.parametrize("bits,dtype", [(8, np.float32), (16, np.float32), (32, np.float64)])
def test_dequant(bits, dtype):
    q = ints((5,), bits)
    [x] = k("Dequant", [q], exp=-3, bits=bits)
    assert x.dtype == dtype and np.array_equal(x, q.astype(np.float64) * 8)


@pytest.mark.parametrize("shift,bits_in,bits", [(3, 16, 8), (1, 32, 16), (0, 8, 16), (-4, 8, 16),
                                                (-9, 16, 32), (25, 32, 8)])
def test_requant_matches_python_ints(shift, bits_in, bits):
    x = ints((64,), bits_in)
    x[:4] = [-(1 << bits_in - 1), (1 << bits_in - 1) - 1, 0, -1]
    [y] = k("Requant", [x], exp_in=shift + 2, bits_in=bits_in, exp=2, bits=bits)
    lo, hi = -(1 << bits - 1), (1 << bits - 1) - 1

    def one(v):  # python integers: (v + 2**(s-1)) >> s, or v << -s
        v = (v + (1 << shift - 1)) >> shift if shift > 0 else v << -shift
        return min(max(v, lo), hi)
    assert y.dtype == I_DT[bits] and y.tolist() == [one(int(v)) for v in x]


def test_embedding_int():
    w = ints((6, 4), 8)
    idx = np.array([[0, 5], [2, 2]], np.int64)
    [y] = k("EmbeddingInt", [idx, w], exp_w=4, bits_w=8)
    assert np.array_equal(y, w[idx])


def test_mismatched_storage_dtype_is_refused():
    with pytest.raises(ModelFileError, match="int16"):
        k("LinearInt", [ints((2, 4), 16), ints((3, 4), 8)], **exps(3), bits_x=8, bits_w=8,
          bits_o=8)


# --- standard ops against onnxruntime ---------------------------------------------------------
_ONNX_TYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int8): TensorProto.INT8,
              np.dtype(np.int16): TensorProto.INT16, np.dtype(np.int32): TensorProto.INT32,
              np.dtype(np.int64): TensorProto.INT64}


def vs_ort(op, feeds, consts=(), n_out=1, **attrs):
    """Run a one-node model with onnxruntime and the linger runtime; outputs must be identical.

    ``feeds``: graph inputs (name -> array); ``consts``: extra inputs as initializers, in order
    after the feeds (``None`` = omitted optional input).
    """
    names = list(feeds)
    inits = []
    for i, c in enumerate(consts):
        if c is None:
            names.append("")
        else:
            names.append(f"c{i}")
            inits.append(numpy_helper.from_array(np.asarray(c), f"c{i}"))
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, _ONNX_TYPE[a.dtype], a.shape) for n, a in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    got = InferenceSession(model).run(None, feeds)
    for e, g in zip(expected, got):
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, g.shape, e.dtype, e.shape)
        assert np.array_equal(g, e)


X8 = ints((2, 3, 4, 5), 8)
XF = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
I64 = np.int64


@pytest.mark.parametrize("shape", [[0, 0, 20], [2, -1], [-1], [0, 3, 2, 10], [1, 0, -1]])
def test_reshape(shape):
    vs_ort("Reshape", {"x": X8}, [np.array(shape, I64)])


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [3, 1, 0, 2]])
def test_transpose(perm):
    vs_ort("Transpose", {"x": X8}, **({} if perm is None else {"perm": perm}))


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [3], [2], [1]), ([0, 1], [2, 5], [1, 3], [2, 2]), ([-1], [-2 ** 63], [3], [-1]),
    ([3, 10], [0, -100], [2, 1], [-2, -1]), ([-3], [2 ** 62], [-1], [1]), ([1], [2], None, None),
    ([4], [0], [3], [-3])])
def test_slice(starts, ends, axes, steps):
    consts = [np.array(starts, I64), np.array(ends, I64),
              None if axes is None else np.array(axes, I64),
              None if steps is None else np.array(steps, I64)]
    while consts[-1] is None:
        consts.pop()
    vs_ort("Slice", {"x": X8}, consts)


def test_split_sizes_and_equal():
    vs_ort("Split", {"x": X8}, [np.array([1, 4], I64)], n_out=2, axis=3)
    vs_ort("Split", {"x": XF}, [], n_out=2, axis=-2)


def test_concat():
    vs_ort("Concat", {"a": X8, "b": X8[:, :1]}, axis=1)
    vs_ort("Concat", {"a": XF, "b": XF}, axis=-1)


@pytest.mark.parametrize("pads,value", [([0, 0, 1, 2, 0, 0, 3, 0], None),
                                        ([0, 1, 0, 0, 1, 0, -1, 2], np.array(-7, np.int8))])
def test_pad(pads, value):
    vs_ort("Pad", {"x": X8}, [np.array(pads, I64)] + ([value] if value is not None else []),
           mode="constant")


def test_expand_identity_flatten():
    vs_ort("Expand", {"x": X8[:, :1]}, [np.array([2, 1, 3, 4, 5], I64)])
    vs_ort("Identity", {"x": XF})
    vs_ort("Flatten", {"x": X8}, axis=2)
    vs_ort("Flatten", {"x": XF}, axis=-1)


def test_squeeze_unsqueeze():
    vs_ort("Squeeze", {"x": X8[:, :1, :, :1]}, [np.array([1, -1], I64)])
    vs_ort("Squeeze", {"x": X8[:, :1, :, :1]})
    vs_ort("Unsqueeze", {"x": X8}, [np.array([0, -1, 3], I64)])


def test_gather():
    vs_ort("Gather", {"x": X8}, [np.array([[0, -1], [2, 1]], I64)], axis=2)
    vs_ort("Gather", {"x": XF}, [np.array(1, I64)], axis=0)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 3], strides=[1, 1], pads=[0, 1, 1, 2], dilations=[2, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 0], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[2, 2], strides=[3, 2], auto_pad="SAME_LOWER")])
@pytest.mark.parametrize("x", [X8, XF], ids=["int8", "float32"])
def test_max_pool(attrs, x):
    vs_ort("MaxPool", {"x": x}, **attrs)


def test_max_pool_1d():
    vs_ort("MaxPool", {"x": X8[:, :, 0]}, kernel_shape=[3], strides=[2], pads=[1, 1])


@pytest.mark.parametrize("x", [X8, XF], ids=["int8", "float32"])
def test_relu_clip(x):
    vs_ort("Relu", {"x": x})
    lo, hi = np.array(-20, x.dtype), np.array(50, x.dtype)
    vs_ort("Clip", {"x": x}, [lo, hi])
    vs_ort("Clip", {"x": x}, [None, hi])
    vs_ort("Clip", {"x": x}, [lo])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_float_binary_ops_are_bit_exact(op):
    b = RNG.standard_normal((1, 3, 1, 5)).astype(np.float32)
    b[0, 0, 0, 0] = 0.0  # Div by zero: inf/nan as IEEE defines
    vs_ort(op, {"a": XF, "b": b})
    vs_ort(op, {"a": XF, "b": XF[::-1].copy()})


def test_float_unary_ops():
    vs_ort("Neg", {"x": XF})
    vs_ort("Abs", {"x": XF})
    vs_ort("Abs", {"x": X8})
