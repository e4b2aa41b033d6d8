"""Models exported by the original linger (domain ``thinker``): import, run, pack.

Every op gets a small graph written the way the original exported it (opset 11, float
``scale_*`` attributes) and its runtime output is compared, with exact equality, to a reference
written here from the documented algorithm (reference/report_numerics.md sections 1-2 and 5,
reference/report_thinker.md section 7): plain Python integers and ``fractions``, one element at a
time, sharing no code with ``linger/runtime/kernels/luna.py``.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from linger.errors import ModelFileError, NumericError, TargetError
from linger.runtime import InferenceSession

_CANDIDATES = [os.environ.get("LINGER_THINKER_SAMPLE", ""),
               os.path.join(os.path.dirname(__file__), "..", "..", "shared", "samples",
                            "thinker_resnet18.onnx"),
               "/work/shared/samples/thinker_resnet18.onnx"]
#: The original engine's demo model (a real file the original exported), where it is available.
SAMPLE = next((p for p in _CANDIDATES if p and os.path.isfile(p)), "")
RNG = np.random.default_rng(17)


# -- the documented algorithms, element by element ----------------------------------------------
def rhu(v, k):
    """floor(v / 2**k + 1/2) for any integer k (k <= 0: exact multiplication)."""
    return math.floor(Fraction(int(v)) / Fraction(2) ** k + Fraction(1, 2))


def sat(v, bits):
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, int(v)))


def quant(x, e, bits=8):
    return sat(math.floor(Fraction(float(x)) * Fraction(2) ** e + Fraction(1, 2)), bits)


def q11(q, e):
    return q * 2 ** (11 - e) if 11 - e > 0 else rhu(q, e - 11)


SB = [0, 971, 1699, 2347, 2974, 3614, 4291, 5026, 5861, 6831, 7864, 8987, 10375, 11594, 13168,
      14730, 32768]
SS = [32316, 29471, 25891, 22068, 18225, 29057, 22206, 16113, 10881, 27353, 16611, 9242, 4618,
      20670, 8610, 693]
SB0 = [16384, 16721, 17464, 18559, 19954, 21585, 23380, 25249, 27121, 28807, 30096, 31107, 31839,
       32199, 32502, 32724]
TB = [0, 512, 888, 1226, 1558, 1899, 2264, 2670, 3146, 3734, 4297, 4761, 5466, 6151, 7193, 8093,
      32768]
TS = [32266, 29154, 25374, 21309, 17272, 26886, 19904, 13765, 8599, 19497, 12047, 7324, 3373,
      26820, 5531, 337]
TBIAS = [0, 778, 2417, 4851, 7922, 11474, 15334, 19335, 23303, 26699, 28653, 30026, 31344, 31981,
         32565, 32725]


def sigmoid15(x):
    for j in range(1, 17):
        if abs(x) <= SB[j]:
            sh = 13 if j <= 5 else 14 if j <= 9 else 16 if j <= 13 else 19
            bias = SB0[j - 1] if x >= 0 else 32768 - SB0[j - 1]
            return math.floor(Fraction(SS[j - 1] * x, 2 ** sh)) + bias
    return 0


def tanh15(x):
    a = 32767 if x == -32768 else abs(x)
    for j in range(1, 17):
        if a <= TB[j]:
            sh = 11 if j <= 5 else 12 if j <= 9 else 14 if j <= 13 else 18
            if x >= 0:
                return math.floor(Fraction(TS[j - 1] * a, 2 ** sh)) + TBIAS[j - 1]
            return math.floor(Fraction(-TS[j - 1] * a, 2 ** sh)) - TBIAS[j - 1]
    return 0


def sig7(x):
    return max(0, sat(rhu(sigmoid15(x), 8), 8))


def tanh7(x):
    return sat(rhu(tanh15(x), 8), 8)


def rasym(v, n, saturate=False):
    """shift_rasym: floor(double(v) * 2**-n + 0.5) in double, as the report says venus does."""
    y = math.floor(float(v) * 2.0 ** -n + 0.5)
    return sat(y, 32) if saturate else y


def softmax15_row(x25):
    m = max(x25)
    es = []
    for x in x25:
        d = sat(x - m, 32)
        big_x = rasym(d * 774541002, 31, True)
        e = (big_x >> 23) + 1
        f = (big_x & 0x7FFFFF) - 0x800000
        y = 57364
        for p in (446161, 2008107, 5813551, 8388575):
            y = rasym(y * f, 23) + p
        es.append(int(y * 2.0 ** e))          # C: (int32_t)(Y * pow(2, E)), truncation
    s = min(sum(es), 2 ** 31 - 1)
    nsa = 0 if s == 0 else 31 - s.bit_length()
    n = nsa - 8
    s = sat(s >> -n if n < 0 else s << n, 32)
    n += 1
    r = 0xBB5000 - s
    for _ in range(2):
        g = 2 * (0x400000 - rasym(s * r, 23))
        r = r + rasym(r * g, 23)
    r = sat(r >> -n if n < 0 else r << n, 32)
    return [rasym(r * e, 31, True) for e in es]


def layernorm_row(xs, ex, w, b, ew, eo):
    t = len(xs)
    s1, s2 = sum(xs), sum(v * v for v in xs)
    q_eps = math.floor(1e-5 * 2.0 ** (2 * ex) * t * t + 0.5)
    d = t * s2 - s1 * s1 + q_eps
    table = [min(32767, math.floor(2 ** 15 * math.sqrt(256 / (i + 256)))) for i in range(768)]
    if d == 0:
        r, s = table[0], 4
    else:
        k = (d.bit_length() - 1) // 2 - 4
        tmp = d >> 2 * k if k >= 0 else d << -2 * k
        assert 256 <= tmp < 1024
        r, s = table[tmp - 256], 9 + k
    out = []
    for v, g, bb in zip(xs, w, b):
        y1 = sat(rhu((t * v - s1) * r, s), 16)
        out.append(sat(rhu(y1 * g + bb, 10 + ew - eo), 8))
    return out


# -- graphs in the original's format --------------------------------------------------------------
def tnode(op, ins, outs, **attrs):
    attrs.setdefault("platform_quant", "luna_quant")
    return helper.make_node(op, ins, outs, name=f"{op}_{outs[0]}", domain="thinker", **attrs)


def model(nodes, inputs, outputs, inits=(), opset=11):
    """``inputs``/``outputs``: (name, TensorProto type, shape)."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                            helper.make_opsetid("thinker", 1)])
    m.ir_version = 6
    return m


def run(m, **feed):
    return InferenceSession(m).run(None, feed)


I8, I16, F32 = TensorProto.INT8, TensorProto.INT16, TensorProto.FLOAT


def all_int8(shape_tail=()):
    return np.arange(-128, 128, dtype=np.int8).reshape((-1,) + shape_tail)


# -- boundary ops ---------------------------------------------------------------------------------
@pytest.mark.parametrize("e", [-1, 0, 4, 7])
def test_quant_dequant_round_half_up_and_saturation(e):
    ties = (np.arange(-300, 300) + 0.5) * 2.0 ** -e            # exact .5 after scaling
    x = np.concatenate([ties, [1e6, -1e6, 0.0, 2.0 ** -e * 0.49999997]]).astype(np.float32)
    m = model([tnode("Quant", ["x"], ["q"], data_bits=8, scale_x=2.0 ** e),
               tnode("Dequant", ["q"], ["y"], scale_o=2.0 ** e)],
              [("x", F32, [x.size])], [("y", F32, [x.size])])
    got = run(m, x=x)[0]
    want = np.array([quant(v, e) * 2.0 ** -e for v in x], np.float32)
    assert np.array_equal(got, want)


# -- layers: conv family, linear, batchnorm, avgpool ----------------------------------------------
def conv_ref(x, w, b, stride, pad, group, ex, ew, eo, ob, transpose=False, opad=0):
    """Plain loops over a 1-D or 2-D (transposed) convolution; ``pad`` per side."""
    nd = x.ndim - 2
    xs = x.astype(object)
    n, cin = x.shape[:2]
    if not transpose:
        cout, cig, *k = w.shape
        xp = np.pad(xs, [(0, 0), (0, 0)] + [(pad, pad)] * nd, constant_values=0)
        osz = [(xp.shape[2 + i] - k[i]) // stride + 1 for i in range(nd)]
        acc = np.zeros((n, cout, *osz), object)
        for o in np.ndindex(*osz):
            for co in range(cout):
                gi = co // (cout // group)
                win = tuple(slice(o[i] * stride, o[i] * stride + k[i]) for i in range(nd))
                patch = xp[(slice(None), slice(gi * cig, (gi + 1) * cig)) + win]
                acc[(slice(None), co) + o] = (patch * w[co].astype(object)).reshape(n, -1).sum(1)
    else:
        _, cog, *k = w.shape
        cout = cog * group
        full = [(x.shape[2 + i] - 1) * stride + k[i] for i in range(nd)]
        acc_full = np.zeros((n, cout, *[f + opad for f in full]), object)
        for i_pos in np.ndindex(*x.shape[2:]):
            for ci in range(cin):
                gi = ci // (cin // group)
                for tap in np.ndindex(*k):
                    dst = tuple(i_pos[i] * stride + tap[i] for i in range(nd))
                    for co in range(cog):
                        acc_full[(slice(None), gi * cog + co) + dst] += \
                            xs[(slice(None), ci) + i_pos] * int(w[(ci, co) + tap])
        crop = tuple(slice(pad, f + opad - pad) for f in full)
        acc = acc_full[(slice(None), slice(None)) + crop]
    if b is not None:
        acc = acc + np.asarray(b, object).reshape([1, -1] + [1] * nd)
    if ob is None:
        return np.vectorize(lambda v: float(Fraction(int(v)) / 2 ** (ex + ew)))(acc)
    return np.vectorize(lambda v: sat(rhu(v, ex + ew - eo), ob))(acc).astype(np.int64)


CONV_CASES = [  # nd, cin, cout, k, stride, pad, group, ex, ew, eo, o_bits, transpose
    (2, 3, 4, 3, 1, 1, 1, 4, 6, 3, 8, False),       # shift 7: ties, saturation
    (2, 4, 4, 3, 2, 1, 4, 5, 7, 5, 8, False),       # depthwise, stride 2
    (2, 2, 3, 1, 1, 0, 1, 2, 3, 7, 8, False),       # shift -2: exact left shift
    (2, 2, 3, 3, 1, 0, 1, 4, 6, None, None, False),  # no o_bits: float accumulator
    (1, 3, 5, 3, 1, 1, 1, 4, 6, 2, 16, False),      # Conv1d, int16 output
    (2, 3, 2, 3, 2, 1, 1, 4, 6, 4, 8, True),        # ConvTranspose2d
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_family(case):
    nd, cin, cout, k, stride, pad, group, ex, ew, eo, ob, transpose = case
    sp = [5] * nd
    x = RNG.integers(-128, 128, size=(2, cin, *sp)).astype(np.int8)
    x[0, 0] = 127                                   # saturating corner
    wshape = (cin, cout // group, *[k] * nd) if transpose else (cout, cin // group, *[k] * nd)
    w = RNG.integers(-128, 128, size=wshape).astype(np.int8)
    b = RNG.integers(-2000, 2000, size=cout).astype(np.int32)
    op = "ConvTranspose2dInt" if transpose else f"Conv{nd}dInt"
    attrs = dict(scale_x=2.0 ** ex, scale_w=2.0 ** ew, dilations=[1] * nd, group=group,
                 kernel_shape=[k] * nd, pads=[pad] * (2 * nd), strides=[stride] * nd,
                 data_bits=8, parameter_bits=8, castor_mode="luna")
    if ob is not None:
        attrs.update(scale_o=2.0 ** eo, o_bits=ob)
    m = model([tnode(op, ["x", "w", "b"], ["y"], **attrs)], [("x", I8, list(x.shape))],
              [("y", F32 if ob is None else (I8 if ob == 8 else I16), None)],
              [("w", w), ("b", b)])
    got = run(m, x=x)[0]
    want = conv_ref(x, w, b, stride, pad, group, ex, ew, eo, ob, transpose)
    if ob is None:
        assert np.array_equal(got.astype(np.float64), want.astype(np.float64))
    else:
        assert np.array_equal(got.astype(np.int64), want)


def test_linear_bmm_batchnorm_avgpool():
    x = all_int8((4,)).repeat(1, 0)[:64].reshape(16, 4) if False else \
        RNG.integers(-128, 128, size=(6, 8)).astype(np.int8)
    x[0] = 127
    w = RNG.integers(-128, 128, size=(5, 8)).astype(np.int8)
    b = RNG.integers(-500, 500, size=5).astype(np.int32)
    m = model([tnode("LinearInt", ["x", "w", "b"], ["y"], scale_x=16.0, scale_w=64.0,
                     scale_o=8.0, o_bits=8, data_bits=8, parameter_bits=8)],
              [("x", I8, [6, 8])], [("y", I8, [6, 5])], [("w", w), ("b", b)])
    acc = x.astype(object) @ w.T.astype(object) + b.astype(object)
    want = np.vectorize(lambda v: sat(rhu(v, 4 + 6 - 3), 8))(acc)
    assert np.array_equal(run(m, x=x)[0].astype(np.int64), want.astype(np.int64))

    y = RNG.integers(-128, 128, size=(2, 8, 3)).astype(np.int8)
    xb = RNG.integers(-128, 128, size=(2, 4, 8)).astype(np.int8)
    m = model([tnode("BmmInt", ["a", "c"], ["y"], scale_x=8.0, scale_y=4.0, scale_o=2.0,
                     o_bits=8, data_bits=8)],
              [("a", I8, [2, 4, 8]), ("c", I8, [2, 8, 3])], [("y", I8, None)])
    want = np.vectorize(lambda v: sat(rhu(v, 3 + 2 - 1), 8))(xb.astype(object) @ y.astype(object))
    assert np.array_equal(run(m, a=xb, c=y)[0].astype(np.int64), want.astype(np.int64))

    xc = RNG.integers(-128, 128, size=(2, 3, 4, 4)).astype(np.int8)
    alpha = np.array([127, -128, 5], np.int8)
    beta = np.array([100, -7, 1 << 20], np.int32)
    m = model([tnode("BatchNorm2dInt", ["x", "w", "b", "mu", "var"], ["y"], scale_x=16.0,
                     scale_w=32.0, scale_o=4.0, o_bits=8, data_bits=8, parameter_bits=8)],
              [("x", I8, [2, 3, 4, 4])], [("y", I8, None)],
              [("w", alpha), ("b", beta), ("mu", np.zeros(3, np.float32)),
               ("var", np.ones(3, np.float32))])
    acc = xc.astype(object) * alpha.astype(object).reshape(1, 3, 1, 1) \
        + beta.astype(object).reshape(1, 3, 1, 1)
    want = np.vectorize(lambda v: sat(rhu(v, 4 + 5 - 2), 8))(acc)
    assert np.array_equal(run(m, x=xc)[0].astype(np.int64), want.astype(np.int64))

    xp = RNG.integers(-128, 128, size=(1, 2, 6, 6)).astype(np.int8)
    xp[0, 0, :2, :2] = [[1, 1], [0, 0]]           # window sum 2 over 4: tie 0.5 -> 1
    xp[0, 1, :2, :2] = [[-1, -1], [0, 0]]         # -0.5 -> 0
    m = model([tnode("AvgPool2dInt", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                     pads=[0, 0, 0, 0], ceil_mode=0, data_bits=8, scale_x=8.0, scale_o=8.0,
                     o_bits=8)], [("x", I8, [1, 2, 6, 6])], [("y", I8, None)])
    want = np.zeros((1, 2, 3, 3), np.int64)
    for c, i, j in np.ndindex(2, 3, 3):
        s = int(xp[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(np.int64).sum())
        want[0, c, i, j] = sat(math.floor(Fraction(s, 4) + Fraction(1, 2)), 8)
    assert want[0, 0, 0, 0] == 1 and want[0, 1, 0, 0] == 0
    assert np.array_equal(run(m, x=xp)[0].astype(np.int64), want)


def test_embedding_gather():
    w = RNG.integers(-128, 128, size=(10, 4)).astype(np.int8)
    idx = np.array([[0, 9, 3], [3, 3, 1]], np.int64)
    m = model([tnode("Gather", ["w", "i"], ["y"], scale_w=32.0, scale_o=32.0, parameter_bits=8,
                     o_bits=8),
               tnode("Dequant", ["y"], ["z"], scale_o=32.0)],
              [("i", TensorProto.INT64, [2, 3])], [("z", F32, None)], [("w", w)])
    assert np.array_equal(run(m, i=idx)[0], w[idx] / np.float32(32.0))


# -- element-wise -----------------------------------------------------------------------------
def pairs():
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    return a.reshape(-1).astype(np.int8), b.reshape(-1).astype(np.int8)


def test_iq_add_mul_every_pair():
    x, y = pairs()
    n = x.size
    # add: each operand rounded on its own (ties at both rescalings), then saturated
    m = model([tnode("iqAdd", ["x", "y"], ["z"], scale_x=32.0, scale_y=8.0, scale_o=4.0,
                     mode="Non_t710_mode")], [("x", I8, [n]), ("y", I8, [n])], [("z", I8, [n])])
    want = [sat(rhu(a, 3) + rhu(b, 1), 8) for a, b in zip(x.tolist(), y.tolist())]
    assert np.array_equal(run(m, x=x, y=y)[0], np.array(want, np.int8))
    m = model([tnode("iqMul", ["x", "y"], ["z"], scale_x=16.0, scale_y=8.0, scale_o=16.0)],
              [("x", I8, [n]), ("y", I8, [n])], [("z", I8, [n])])
    want = [sat(rhu(a * b, 4 + 3 - 4), 8) for a, b in zip(x.tolist(), y.tolist())]
    assert np.array_equal(run(m, x=x, y=y)[0], np.array(want, np.int8))


def test_iq_add_and_div_by_float_constant():
    x = all_int8()
    for op, c, f in (("iqAdd", 0.75, lambda v, c: v + c), ("iqDiv", -1.5, lambda v, c: v / c)):
        m = model([tnode(op, ["x", "c"], ["z"], scale_x=16.0, scale_y=1.0, scale_o=8.0)],
                  [("x", I8, [256])], [("z", I8, [256])], [("c", np.array(c, np.float32))])
        want = [sat(math.floor(f(Fraction(a, 16), Fraction(c)) * 8 + Fraction(1, 2)), 8)
                for a in x.tolist()]
        assert np.array_equal(run(m, x=x)[0], np.array(want, np.int8)), op


def test_iq_div_tensors_every_pair_including_zero():
    x, y = pairs()
    n = x.size
    m = model([tnode("iqDiv", ["x", "y"], ["z"], scale_x=8.0, scale_y=16.0, scale_o=4.0)],
              [("x", I8, [n]), ("y", I8, [n])], [("z", I8, [n])])
    want = []
    for a, b in zip(x.tolist(), y.tolist()):
        if b == 0:
            want.append(127 if a > 0 else -128 if a < 0 else 0)
        else:
            want.append(sat(math.floor(Fraction(a, 8) / Fraction(b, 16) * 4
                                       + Fraction(1, 2)), 8))
    assert np.array_equal(run(m, x=x, y=y)[0], np.array(want, np.int8))


def test_iq_cat_sum_clamp():
    a = all_int8((4,))
    b = RNG.integers(-128, 128, size=(64, 2)).astype(np.int8)
    m = model([tnode("iqCat", ["a", "b"], ["z"], scale_x_0=32.0, scale_x_1=2.0, scale_o=8.0,
                     dim=1)], [("a", I8, [64, 4]), ("b", I8, [64, 2])], [("z", I8, None)])
    want = np.concatenate([np.vectorize(lambda v: sat(rhu(v, 2), 8))(a.astype(object)),
                           np.vectorize(lambda v: sat(rhu(v, -2), 8))(b.astype(object))], 1)
    assert np.array_equal(run(m, a=a, b=b)[0].astype(np.int64), want.astype(np.int64))

    x = RNG.integers(-128, 128, size=(3, 5, 7)).astype(np.int8)
    x[0] = 127
    m = model([tnode("iqSum", ["x"], ["z"], scale_x=16.0, scale_o=2.0, dims=[2])],
              [("x", I8, [3, 5, 7])], [("z", I8, None)])
    want = np.vectorize(lambda v: sat(rhu(v, 3), 8))(x.astype(object).sum(2))
    assert np.array_equal(run(m, x=x)[0].astype(np.int64), want.astype(np.int64))
    m = model([tnode("iqSum", ["x"], ["z"], scale_x=16.0, scale_o=1.0)],
              [("x", I8, [3, 5, 7])], [("z", I8, None)])
    got = run(m, x=x)[0]
    assert got.shape == () and int(got) == sat(rhu(int(x.astype(np.int64).sum()), 4), 8)

    x = all_int8()
    for lo, hi in ((0.0, 127 / 16), (-8.0, 127 / 16)):
        m = model([tnode("iqClamp", ["x"], ["z"], scale_x=64.0, scale_o=16.0, min=lo, max=hi)],
                  [("x", I8, [256])], [("z", I8, [256])])
        want = [sat(math.floor(min(max(Fraction(v, 64), Fraction(lo)), Fraction(hi)) * 16
                               + Fraction(1, 2)), 8) for v in x.tolist()]
        assert np.array_equal(run(m, x=x)[0], np.array(want, np.int8)), (lo, hi)


@pytest.mark.parametrize("e8", [0, 3, 5, 7])
@pytest.mark.parametrize("op", ["iqSigmoid", "iqTanh"])
def test_sigmoid_tanh_through_requant(op, e8):
    """Export form: int8 -> Requant to int16 -> iqSigmoid/iqTanh (Q7 out). e8 = 0 drives |x11|
    past 32768, where the original's table lookup returns 0."""
    x = all_int8()
    e16 = e8 + 8
    m = model([tnode("Requant", ["x"], ["x16"], data_bits=8, scale_x=2.0 ** e8,
                     scale_o=2.0 ** e16, o_bits=16),
               tnode(op, ["x16"], ["z"], scale_x=2.0 ** e16, scale_o=128.0, castor_mode="luna")],
              [("x", I8, [256])], [("z", I8, [256])])
    f = sig7 if op == "iqSigmoid" else tanh7
    want = [f(q11(v * 256, e16)) for v in x.tolist()]
    assert np.array_equal(run(m, x=x)[0], np.array(want, np.int8))
    if e8 == 0:
        assert want[-1] == 0      # sigmoid(+large) is 0 in the original (no segment matches)


@pytest.mark.parametrize("e16", [9, 11, 13])
@pytest.mark.parametrize("op", ["iqSigmoid", "iqTanh"])
def test_sigmoid_tanh_every_int16(op, e16):
    """Every int16 input: rounding ties of the Q11 shift (e16 = 13), the -32768 tanh edge,
    every segment boundary."""
    x = np.arange(-32768, 32768, dtype=np.int16)
    m = model([tnode(op, ["x"], ["z"], scale_x=2.0 ** e16, scale_o=128.0)],
              [("x", I16, [x.size])], [("z", I8, [x.size])])
    f = sig7 if op == "iqSigmoid" else tanh7
    want = np.array([f(q11(v, e16)) for v in x.tolist()], np.int8)
    assert np.array_equal(run(m, x=x)[0], want)


# -- rows: softmax, layer norm --------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 7, 300])
def test_softmax(length):
    x = RNG.integers(-128, 128, size=(4, length)).astype(np.int8)
    x[1] = 5                                    # equal values (sum saturates at 300)
    x[2, ::2], x[2, 1::2] = 127, -128           # extreme spread
    for ex, eo, ob in ((4, 7, 8), (2, 5, 8), (28, 7, 8), (4, None, None)):
        attrs = dict(scale_x=2.0 ** ex, data_bits=8, dim=1)
        if ob:
            attrs.update(scale_o=2.0 ** eo, o_bits=ob)
        m = model([tnode("SoftmaxInt", ["x"], ["z"], **attrs)], [("x", I8, [4, length])],
                  [("z", I8 if ob else F32, None)])
        want = []
        for row in x.tolist():
            x25 = [sat(v * 2 ** (25 - ex) if 25 - ex > 0 else rhu(v, ex - 25), 32) for v in row]
            y15 = [max(0, min(32767, v)) for v in softmax15_row(x25)]
            want.append([sat(rhu(v, 15 - eo), 8) for v in y15] if ob else
                        [v / 32768 for v in y15])
        got = run(m, x=x)[0]
        assert np.array_equal(got, np.array(want, got.dtype)), (ex, eo)


def test_layer_norm():
    t = 16
    x = RNG.integers(-128, 128, size=(2, 3, t)).astype(np.int8)
    x[0, 0] = 3                                          # constant row: D = q_eps
    x[0, 1, :8], x[0, 1, 8:] = 127, -128                 # saturating spread
    w = RNG.integers(-32768, 32768, size=t).astype(np.int16)
    b = RNG.integers(-(1 << 24), 1 << 24, size=t).astype(np.int32)
    for ex, ew, eo in ((0, 14, 5), (5, 12, 4), (3, 15, 6)):
        m = model([tnode("LayerNormInt", ["x", "w", "b"], ["z"], data_bits=8,
                         parameter_bits=16, o_bits=8, scale_x=2.0 ** ex, scale_w=2.0 ** ew,
                         scale_o=2.0 ** eo)], [("x", I8, [2, 3, t])], [("z", I8, None)],
                  [("w", w), ("b", b)])
        want = [[layernorm_row(r, ex, w.tolist(), b.tolist(), ew, eo) for r in plane]
                for plane in x.tolist()]
        assert np.array_equal(run(m, x=x)[0], np.array(want, np.int8)), (ex, ew, eo)


def test_layer_norm_int32_overflow_is_refused():
    t = 400
    x = np.tile(np.array([127, -128], np.int8), (1, t // 2))
    m = model([tnode("LayerNormInt", ["x", "w", "b"], ["z"], data_bits=8, parameter_bits=16,
                     o_bits=8, scale_x=16.0, scale_w=2.0 ** 14, scale_o=16.0)],
              [("x", I8, [1, t])], [("z", I8, None)],
              [("w", np.ones(t, np.int16)), ("b", np.zeros(t, np.int32))])
    with pytest.raises(NumericError, match="int32"):
        run(m, x=x)


# -- recurrent --------------------------------------------------------------------------------------
def rnn_ref(kind, x, lengths, h0, s0, wih, whh, bih, bhh, ex, eiw, ehw, eh, eo, forward):
    """Per sequence, per step, per unit: the documented LSTM/GRU step (report 2.4, 2.5)."""
    t_len, n, _ = x.shape
    h = whh.shape[1]
    y = np.zeros((t_len, n, h), np.int64)
    y14 = np.zeros((t_len, n, h))
    h_n = np.zeros((n, h))
    for b in range(n):
        qh = [quant(v, eh) for v in h0[b]]
        c7 = [quant(v, 7, 16) for v in s0[b]] if kind == "lstm" else None
        h7 = [quant(v, 7, 16) for v in s0[b]] if kind == "gru" else None
        h14 = [Fraction(q) * 2 ** (14 - eh) for q in qh]
        steps = range(lengths[b]) if forward else range(lengths[b] - 1, -1, -1)
        for t in steps:
            gi = [q11(sum(int(x[t, b, f]) * int(wih[r, f]) for f in range(x.shape[2]))
                      + int(bih[r]), ex + eiw) for r in range(wih.shape[0])]
            gh = [q11(sum(qh[f] * int(whh[r, f]) for f in range(h)) + int(bhh[r]), eh + ehw)
                  for r in range(whh.shape[0])]
            new14 = []
            for u in range(h):
                if kind == "lstm":
                    v = [sat(gi[g * h + u] + gh[g * h + u], 16) for g in range(4)]
                    c14 = sig7(v[1]) * c7[u] + sig7(v[0]) * tanh7(v[2])
                    c7[u] = rhu(c14, 7)
                    new14.append(sig7(v[3]) * tanh7(sat(rhu(c14, 3), 16)))
                else:
                    r = sig7(gi[u] + gh[u])
                    z = sig7(gi[h + u] + gh[h + u])
                    nn = tanh7(gi[2 * h + u] + rhu(r * gh[2 * h + u], 7))
                    hy = nn * 128 + z * (h7[u] - nn)
                    h7[u] = rhu(hy, 7)
                    new14.append(hy)
            h14 = new14
            qh = [sat(rhu(v, 14 - eh), 8) for v in h14]
            y[t, b] = [sat(rhu(v, 14 - eo), 8) for v in h14]
            y14[t, b] = [float(v) / 2 ** 14 for v in h14]
        h_n[b] = [float(v) / 2 ** 14 for v in h14]
    return y, h_n, y14


@pytest.mark.parametrize("kind,forward", [("lstm", True), ("lstm", False), ("gru", True),
                                          ("gru", False)])
def test_lstm_gru(kind, forward):
    t_len, n, f, h = 5, 3, 4, 3
    g = 4 if kind == "lstm" else 3
    x = RNG.integers(-128, 128, size=(t_len, n, f)).astype(np.int8)
    x[:, 0] = 127
    wih = RNG.integers(-128, 128, size=(g * h, f)).astype(np.int8)
    whh = RNG.integers(-128, 128, size=(g * h, h)).astype(np.int8)
    bih = RNG.integers(-3000, 3000, size=g * h).astype(np.int32)
    bhh = RNG.integers(-3000, 3000, size=g * h).astype(np.int32)
    lengths = np.array([5, 2, 4], np.int64)
    h0 = RNG.uniform(-1, 1, size=(1, n, h)).astype(np.float32)
    s0 = RNG.uniform(-1, 1, size=(1, n, h)).astype(np.float32)
    ex, eiw, ehw, eh = 6, 8, 7, 7
    attrs = dict(input_size=f, hidden_size=h, num_layers=1, batch_first=0, dropout=0.0,
                 go_forward=int(forward), scale_i=2.0 ** ex, scale_h=2.0 ** eh,
                 scale_iw=2.0 ** eiw, scale_hw=2.0 ** ehw, data_bits=8, parameter_bits=8,
                 scale_o=2.0 ** eh, o_bits=8)
    if kind == "lstm":
        node = tnode("LSTMInt", ["x", "len", "h0", "c0", "wih", "whh", "bih", "bhh"],
                     ["y", "hn", "cn"], **attrs)
        ins = [("x", I8, [t_len, n, f]), ("len", TensorProto.INT64, [n]),
               ("h0", F32, [1, n, h]), ("c0", F32, [1, n, h])]
        feed = dict(x=x, len=lengths, h0=h0, c0=s0)
        outs = [("y", I8, None), ("hn", F32, None), ("cn", F32, None)]
    else:
        node = tnode("GRUInt_Is8_Is64_If32", ["x", "len", "h0", "wih", "whh", "bih", "bhh"],
                     ["y", "hn"], **attrs)
        ins = [("x", I8, [t_len, n, f]), ("len", TensorProto.INT64, [n]), ("h0", F32, [1, n, h])]
        feed = dict(x=x, len=lengths, h0=h0)
        outs = [("y", I8, None), ("hn", F32, None)]
        s0 = h0
    m = model([node], ins, outs, [("wih", wih), ("whh", whh), ("bih", bih), ("bhh", bhh)])
    got = run(m, **feed)
    y, h_n, _ = rnn_ref(kind, x, lengths, h0[0], s0[0], wih, whh, bih, bhh, ex, eiw, ehw, eh,
                        eh, forward)
    assert np.array_equal(got[0].astype(np.int64), y)
    assert np.array_equal(got[1][0].astype(np.float64), h_n)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_lstm_gru_batch_first_float_output_no_bias(kind):
    """No lengths, no initial state, no bias, no o_bits (float Y), batch-first layout."""
    t_len, n, f, h = 4, 2, 3, 5
    g = 4 if kind == "lstm" else 3
    x = RNG.integers(-128, 128, size=(n, t_len, f)).astype(np.int8)
    wih = RNG.integers(-128, 128, size=(g * h, f)).astype(np.int8)
    whh = RNG.integers(-128, 128, size=(g * h, h)).astype(np.int8)
    ex, eiw, ehw, eh = 3, 9, 8, 6       # Q11 conversion of gi by a left shift
    attrs = dict(input_size=f, hidden_size=h, num_layers=1, batch_first=1, go_forward=1,
                 scale_i=2.0 ** ex, scale_h=2.0 ** eh, scale_iw=2.0 ** eiw,
                 scale_hw=2.0 ** ehw, data_bits=8, parameter_bits=8)
    outs = ["y", "hn", "cn"] if kind == "lstm" else ["y", "hn"]
    op = "LSTMInt" if kind == "lstm" else "GRUInt"
    m = model([tnode(op, ["x", "wih", "whh"], outs, **attrs)], [("x", I8, [n, t_len, f])],
              [(o, F32, None) for o in outs], [("wih", wih), ("whh", whh)])
    got = run(m, x=x)
    zeros = np.zeros((n, h))
    _, h_n, y14 = rnn_ref(kind, x.transpose(1, 0, 2), np.full(n, t_len), zeros, zeros, wih, whh,
                          np.zeros(g * h, int), np.zeros(g * h, int), ex, eiw, ehw, eh, eh, True)
    assert got[0].dtype == np.float32
    assert np.array_equal(got[0].astype(np.float64), y14.transpose(1, 0, 2))
    assert np.array_equal(got[1][0].astype(np.float64), h_n)


# -- standard layout ops in opset 11 form ---------------------------------------------------------
def test_standard_ops_opset11_forms():
    x = RNG.integers(-128, 128, size=(2, 1, 6, 4)).astype(np.int8)
    nodes = [helper.make_node("Squeeze", ["x"], ["s"], axes=[1]),
             helper.make_node("Unsqueeze", ["s"], ["u"], axes=[0]),
             helper.make_node("Split", ["u"], ["p", "q"], axis=2, split=[2, 4]),
             helper.make_node("Transpose", ["q"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Flatten", ["mp"], ["f"], axis=1)]
    m = model(nodes, [("x", I8, [2, 1, 6, 4])], [("f", I8, None), ("p", I8, None)])
    f, p = run(m, x=x)
    u = x.squeeze(1)[None]
    r = np.maximum(u[:, :, 2:].transpose(0, 1, 3, 2), 0)
    mp = np.max(np.lib.stride_tricks.sliding_window_view(r, (2, 2), axis=(2, 3)), axis=(-1, -2))
    assert np.array_equal(p, u[:, :, :2])
    assert np.array_equal(f, mp.reshape(1, -1))


# -- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("node,match", [
    (tnode("Quant", ["x"], ["q"], data_bits=8, scale_x=3.0), "scale_x.*power of two"),
    (tnode("Quant", ["x"], ["q"], data_bits=8, scale_x=4.0, platform_quant="other"),
     "platform_quant"),
    (tnode("Quant", ["x"], ["q"], data_bits=8, scale_x=4.0, zero_point=3), "zero_point"),
    (tnode("LogSoftmaxInt", ["x"], ["q"], scale_x=4.0, data_bits=8, dim=1), "LogSoftmaxInt"),
    (tnode("iqVar", ["x"], ["q"], scale_x=4.0, scale_o=4.0), "iqVar"),
    (tnode("Quant", ["x"], ["q"], data_bits="eight", scale_x=4.0), "malformed"),
    (tnode("Quant", ["x"], ["q"], data_bits=8, scale_x="4"), "scale_x"),
])
def test_refusals_name_node_and_attribute(node, match):
    m = model([node], [("x", F32, [2, 3])], [("q", I8, None)])
    with pytest.raises(ModelFileError, match=match) as info:
        InferenceSession(m)
    assert node.name in str(info.value)


# -- the original's demo model ------------------------------------------------------------------
def _float_conv(xf, w, b, attrs):
    """Float64 convolution of dequantized values (independent of the runtime's kernels)."""
    s, p, g = attrs["strides"][0], attrs["pads"][0], attrs["group"]
    k = attrs["kernel_shape"][0]
    xp = np.pad(xf, [(0, 0), (0, 0), (p, p), (p, p)])
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    cout, cig = w.shape[:2]
    out = np.empty((xf.shape[0], cout) + win.shape[2:4])
    for co in range(cout):
        gi = co // (cout // g)
        out[:, co] = np.einsum("nchwij,cij->nhw", win[:, gi * cig:(gi + 1) * cig], w[co])
    return out + (0 if b is None else b.reshape(1, -1, 1, 1))


@pytest.mark.skipif(not SAMPLE, reason="the original's sample model is not on this machine")
def test_sample_resnet18_loads_runs_packs_and_matches_float():
    import onnx

    from linger.packer import pack

    orig = onnx.load(SAMPLE)
    sess = InferenceSession(SAMPLE)
    x = RNG.normal(0, 1.5, size=(1, 3, 32, 32)).astype(np.float32)
    vals = sess.run_with_intermediates({"input": x})
    attrs = {n.output[0]: (n, {a.name: helper.get_attribute_value(a) for a in n.attribute})
             for n in orig.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in orig.graph.initializer}
    checked = 0
    for out, (node, a) in attrs.items():
        if node.op_type not in ("Conv2dInt", "iqAdd", "LinearInt", "AvgPool2dInt"):
            continue
        xin = vals[node.input[0]].astype(np.float64) / a["scale_x"]
        if node.op_type == "Conv2dInt":
            w = inits[node.input[1]] / a["scale_w"]
            b = inits[node.input[2]] / (a["scale_x"] * a["scale_w"]) if len(node.input) > 2 \
                else None
            ref = _float_conv(xin, w, b, a)
        elif node.op_type == "LinearInt":
            ref = xin @ (inits[node.input[1]] / a["scale_w"]).T \
                + inits[node.input[2]] / (a["scale_x"] * a["scale_w"])
        elif node.op_type == "iqAdd":
            ref = xin + vals[node.input[1]] / a["scale_y"]
        else:
            k = a["kernel_shape"][0]
            ref = xin.reshape(*xin.shape[:2], xin.shape[2] // k, k, -1, k).mean((3, 5))
        want = np.clip(ref * a["scale_o"], -128, 127)
        got = vals[out].astype(np.float64)
        assert np.abs(got - want).max() <= 1.0, node.name   # within one output step
        checked += 1
    assert checked == 46
    with pytest.raises(TargetError) as strict:   # as exported, the wide convs overflow venus
        pack(SAMPLE, target="venus", lower=False)
    assert {v.rule for v in strict.value.violations} == {"Conv2dInt.weight_buffer"}
    res = pack(SAMPLE, target="venus")          # the packer splits their output channels
    assert "Conv2dInt_52Conv2dInt_373" in res.report()
    packed = InferenceSession(res.data)
    for seed in range(3):
        xs = np.random.default_rng(seed).normal(0, 3, size=(1, 3, 32, 32)).astype(np.float32)
        assert np.array_equal(packed.run(None, {"input": xs})[0],
                              sess.run(None, {"input": xs})[0])


@pytest.mark.skipif(not SAMPLE, reason="the original's sample model is not on this machine")
def test_sample_cli_pack_and_run(tmp_path, capsys):
    from linger.cli import main

    out = tmp_path / "r18.bin"
    assert main(["pack", SAMPLE, "-o", str(out), "--no-html"]) == 0
    np.save(tmp_path / "x.npy", np.ones((1, 3, 32, 32), np.float32))
    assert main(["run", str(out), str(tmp_path / "x.npy")]) == 0
    assert "output: shape [1, 100], float32" in capsys.readouterr().out


def luna_mixed_model():
    """An original graph whose import holds LutInt, LayerNormLuna, LSTMLuna and SoftmaxLuna
    (also run by the C engine's tests): ``(model, input shape)``."""
    t, f, h = 4, 8, 6
    wl = RNG.integers(-32768, 32768, size=f).astype(np.int16)
    bl = RNG.integers(-9999, 9999, size=f).astype(np.int32)
    wih = RNG.integers(-128, 128, size=(4 * h, f)).astype(np.int8)
    whh = RNG.integers(-128, 128, size=(4 * h, h)).astype(np.int8)
    nodes = [
        tnode("Quant", ["x"], ["q"], data_bits=8, scale_x=16.0),
        tnode("LayerNormInt", ["q", "wl", "bl"], ["ln"], data_bits=8, parameter_bits=16,
              o_bits=8, scale_x=16.0, scale_w=2.0 ** 14, scale_o=16.0),
        tnode("Requant", ["ln"], ["l16"], data_bits=8, scale_x=16.0, scale_o=4096.0, o_bits=16),
        tnode("iqTanh", ["l16"], ["th"], scale_x=4096.0, scale_o=128.0),
        tnode("LSTMInt", ["th", "wih", "whh"], ["y", "hn", "cn"], input_size=f, hidden_size=h,
              num_layers=1, batch_first=1, go_forward=1, scale_i=128.0, scale_h=64.0,
              scale_iw=128.0, scale_hw=128.0, scale_o=64.0, o_bits=8, data_bits=8,
              parameter_bits=8),
        tnode("SoftmaxInt", ["y"], ["sm"], scale_x=64.0, data_bits=8, dim=2, scale_o=128.0,
              o_bits=8),
        tnode("iqDiv", ["sm", "y"], ["dv"], scale_x=128.0, scale_y=64.0, scale_o=8.0),
        tnode("Dequant", ["dv"], ["out"], scale_o=8.0),
    ]
    m = model(nodes, [("x", F32, [1, t, f])], [("out", F32, [1, t, h]), ("cn", F32, None)],
              [("wl", wl), ("bl", bl), ("wih", wih), ("whh", whh)], opset=12)
    return m, (1, t, f)


def test_new_ops_pack_and_run_bit_exact():
    """LutInt, LayerNormLuna, LSTMLuna, SoftmaxLuna in one packed file: same bits as the ONNX."""
    from linger.packer import pack

    m, shape = luna_mixed_model()
    res = pack(m, target="venus")
    ops = {o.op_type for o in InferenceSession(res.data)._graph.nodes}
    assert {"LutInt", "LayerNormLuna", "LSTMLuna", "SoftmaxLuna"} <= ops
    x = RNG.normal(0, 4, size=shape).astype(np.float32)
    a = InferenceSession(res.data).run(None, {"x": x})
    b = InferenceSession(m).run(None, {"x": x})
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_import_needs_no_torch(tmp_path):
    import subprocess
    import sys

    import onnx
    m = model([tnode("Quant", ["x"], ["q"], data_bits=8, scale_x=4.0),
               tnode("iqSigmoid", ["q"], ["s"], scale_x=4.0, scale_o=128.0),
               tnode("Dequant", ["s"], ["y"], scale_o=128.0)], [("x", F32, [3])],
              [("y", F32, [3])])
    onnx.save(m, tmp_path / "m.onnx")
    code = ("import sys, numpy as np, linger.runtime as r;"
            f" r.InferenceSession({str(tmp_path / 'm.onnx')!r}).run(None, {{'x': np.ones(3,"
            " np.float32)}); assert 'torch' not in sys.modules, 'torch imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": root})
