"""The integer algorithms of linger.iqmath against exact Python-int references and float maths.

Edge cases are named: exact .5 ties, negative ties, saturation, huge shifts in both directions,
zero-variance rows, the extremes of the Q11 gate domain, very wide and very narrow exponents.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linger import iqmath, iqtables, numerics

rng = np.random.default_rng(0)


def ref_requant(v: int, shift: int, bits: int) -> int:
    """Python big-int reference of sat(rs(v, shift))."""
    r = (v + (1 << (shift - 1))) >> shift if shift > 0 else v << -shift
    return max(numerics.qmin(bits), min(numerics.qmax(bits), r))


def test_tables_match_their_definitions():
    for name, value in iqtables.generate().items():
        assert getattr(iqtables, name) == value, name


def test_rshift_ties_round_half_up():
    v = np.array([1, 2, 3, -1, -2, -3, 6, -6], dtype=np.int64)
    assert iqmath.rshift(v, 1).tolist() == [1, 1, 2, 0, -1, -1, 3, -3]
    assert iqmath.rshift(np.array([-(1 << 60), (1 << 60)]), 200).tolist() == [0, 0]


@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 40), 1 << 40), st.integers(-120, 120), st.sampled_from([8, 16, 32]))
def test_requant_equals_big_int_reference(v, shift, bits):
    assert iqmath.requant(np.array([v]), shift, bits)[0] == ref_requant(v, shift, bits)


def test_left_shift_saturation_edges():
    # a 1 shifted by 31 must saturate int32 (caught once by hypothesis: keep it named)
    assert iqmath.requant(np.array([1, -1, 0]), -31, 32).tolist() == [2**31 - 1, -2**31, 0]
    assert iqmath.requant(np.array([1, -1]), -200, 8).tolist() == [127, -128]
    assert iqmath.add([1], -16, [32767], 11, 35, 16, subtract=True).tolist() == [0]
    assert iqmath.add([-32768], -4, [1], -13, 18, 16).tolist() == [-1]


@settings(max_examples=500, deadline=None)
@given(st.integers(-32768, 32767), st.integers(-20, 40), st.integers(-32768, 32767),
       st.integers(-20, 40), st.integers(-20, 40), st.sampled_from([8, 16, 32]))
def test_add_mul_equal_big_int_reference(qx, nx, qy, ny, no, bits):
    def sat32(v):
        return max(-(1 << 31), min((1 << 31) - 1, v))
    a, b = sat32(ref_requant(qx, nx - no, 64)), sat32(ref_requant(qy, ny - no, 64))
    sat = (lambda v: max(numerics.qmin(bits), min(numerics.qmax(bits), v)))
    assert iqmath.add([qx], nx, [qy], ny, no, bits)[0] == sat(a + b)
    assert iqmath.add([qx], nx, [qy], ny, no, bits, subtract=True)[0] == sat(a - b)
    assert iqmath.mul([qx], nx, [qy], ny, no, bits)[0] == ref_requant(qx * qy, nx + ny - no, bits)


def test_cat_format_never_saturates():
    no, bits = iqmath.cat_format([7, 3, 12], [8, 8, 16])
    assert bits == 16 and no == 11
    q = iqmath.cat([np.array([127, -128]), np.array([127, -128]), np.array([32767, -32768])],
                   [7, 3, 12], no, bits, axis=0)
    assert q.tolist() == [127 * 16, -128 * 16, 127 * 256, -128 * 256, 16384, -16384]


def test_bit_length_and_isqrt_exact():
    vals = [0, 1, 2, 3, 4, (1 << 53) - 1, (1 << 53) + 1, (1 << 62) - 1, (1 << 61) + 12345]
    assert iqmath.bit_length(np.array(vals)).tolist() == [v.bit_length() for v in vals]
    small = np.arange(0, 1 << 16)
    assert np.array_equal(iqmath.isqrt(small), [math.isqrt(int(v)) for v in small])
    big = rng.integers(0, (1 << 62) - 1, 2000, dtype=np.int64)
    edges = np.array([(k * k) + d for k in (1 << 30, (1 << 31) - 1, 3037000499) for d in (-1, 0, 1)
                      if 0 <= k * k + d < (1 << 62)], dtype=np.int64)
    for v in np.concatenate([big, edges]):
        assert iqmath.isqrt(np.array([v]))[0] == math.isqrt(int(v))


def test_gates_over_the_whole_q11_domain():
    x = np.arange(-32768, 32768, dtype=np.int64)
    xf = x / 2048.0
    sig, tanh, phi = iqmath.sigmoid_q15(x), iqmath.tanh_q15(x), iqmath.phi_q15(x)
    assert np.abs(sig / 32768 - 1 / (1 + np.exp(-xf))).max() < 1e-4
    assert np.abs(tanh / 32768 - np.tanh(xf)).max() < 5e-4
    erf = np.vectorize(math.erf)
    assert np.abs(phi / 32768 - 0.5 * (1 + erf(xf / math.sqrt(2)))).max() < 2e-4
    for y in (sig, tanh, phi):
        assert (np.diff(y) >= 0).all()  # monotone
    assert np.array_equal(sig[1:] + sig[1:][::-1], np.full(65535, 32768))  # sigmoid(-x) = 1 - s(x)
    assert np.array_equal(tanh[1:], -tanh[1:][::-1])
    # int8 output: sigmoid in [0, 127] at Q7, tanh in [-128, 127]
    q7 = iqmath.sigmoid(np.array([-30000, 0, 30000]), 11, 7, 8)
    assert q7.tolist() == [0, 64, 127]
    assert iqmath.tanh(np.array([-30000, 0, 30000]), 11, 7, 8).tolist() == [-128, 0, 127]


def test_gate_input_saturates_instead_of_wrapping():
    # exponent 0 (range +-127): 100 is far beyond Q11's +-16, saturates to sigmoid(16) = 1
    assert iqmath.sigmoid(np.array([100, -100]), 0, 15, 16).tolist() == [32767, 0]
    # exponent 20: tiny values, left of Q11: rounded to zero input
    assert iqmath.sigmoid(np.array([100]), 20, 7, 8).tolist() == [64]


@pytest.mark.parametrize("n", [-6, 0, 4, 12, 40])
def test_softmax_and_log_softmax_accuracy(n):
    q = rng.integers(-128, 128, (64, 17))
    x = q * 2.0 ** -n
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    got = iqmath.softmax(q, n, -1, 15, 16) / 32768.0
    assert np.abs(got - p).max() < 4e-5
    lsm = iqmath.log_softmax(q, n, -1, 9, 16) / 512.0
    d = np.maximum(x - x.max(-1, keepdims=True), -32.0)  # x - max is floored at -32
    ref = d - np.log(np.exp(d).sum(-1, keepdims=True))
    assert np.abs(lsm - ref).max() < 2e-3


def test_softmax_long_axis_and_ties():
    q = np.zeros((1, 2048), dtype=np.int64)
    assert (iqmath.softmax(q, 0, 1, 15, 16) == 16).all()  # 32768 / 2048
    q = np.array([[5, 5]])
    assert iqmath.softmax(q, 3, 1, 7, 8).tolist() == [[64, 64]]


def test_layer_norm_accuracy_and_edge_rows():
    for bits, k in ((8, 16), (16, 4096)):
        q = rng.integers(numerics.qmin(bits), numerics.qmax(bits) + 1, (8, k))
        eps_q = iqmath.layer_norm_eps(1e-5, 3, k)
        z = iqmath.layer_norm_q10(q, 1, eps_q) / 1024.0
        x = q / 8.0
        ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        assert np.abs(z - ref).max() < 1e-3
    assert iqmath.layer_norm_q10(np.full((2, 7), 5), 1, 0).tolist() == [[0] * 7] * 2
    assert iqmath.layer_norm_q10(np.full((1, 4), -9), 1, 1000).tolist() == [[0] * 4]
    # one outlier: z = +-sqrt(k-1) style extremes stay exact
    row = np.array([[100, 0, 0, 0]])
    z = iqmath.layer_norm_q10(row, 1, 0)[0] / 1024.0
    assert np.allclose(z, [math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3),
                           -1 / math.sqrt(3)], atol=1e-3)


def test_mean_multiplier_and_mean():
    for k in (1, 2, 3, 7, 16, 100, 4096, 1 << 20):
        m, t = iqmath.mean_multiplier(k)
        assert abs(m / 2 ** t - 1 / k) <= 2 ** -(t + 1) and (1 << 21) <= m <= (1 << 23)
    q = np.full((3, 5), -7)
    assert iqmath.reduce_mean(q, 4, 4, 8, axes=1).tolist() == [-7, -7, -7]
    assert iqmath.reduce_mean(np.array([[1, 2]]), 0, 1, 8, axes=1).tolist() == [3]  # 1.5 at Q1


def test_matmul_float_and_int_paths_agree():
    a = rng.integers(-32768, 32768, (3, 4, 64))
    b = rng.integers(-32768, 32768, (3, 64, 5))
    want = [[[ref_requant(int(sum(int(x) * int(y) for x, y in zip(a[i, r], b[i, :, c]))),
                          9, 16) for c in range(5)] for r in range(4)] for i in range(3)]
    assert iqmath.matmul(a, 0, b, 0, -9, 16).tolist() == want
    big = np.full((1, 1, 4), 1 << 30)  # bound > 2**53: the int64 path
    assert iqmath.matmul(big, 0, big.transpose(0, 2, 1), 0, 0, 32)[0, 0, 0] == (1 << 31) - 1


def test_runtime_stays_torch_free():
    code = "import linger.runtime, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
