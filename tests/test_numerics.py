"""Rounding, saturation, exponent and shift rules of linger.numerics, edge case by edge case.

References are computed independently with Python integers and ``fractions.Fraction`` (exact
rational arithmetic), never with the function under test.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linger import numerics
from linger.quant.functions import exponent_for_range_t, fake_quant

BITS = (4, 8, 16, 32)


def exact_rhu(v) -> int:
    """floor(v + 1/2) in exact rational arithmetic."""
    return math.floor(Fraction(v) + Fraction(1, 2))


def exact_exponent(r, bits) -> int:
    """Largest n with r * 2**n <= qmax, by exact search (clipped like the product)."""
    r, top = Fraction(r), numerics.qmax(bits)
    if r == 0:
        return numerics.ZERO_RANGE_EXP
    n = 0
    while r * Fraction(2) ** n > top:
        n -= 1
    while r * Fraction(2) ** (n + 1) <= top:
        n += 1
    return min(max(n, numerics.MIN_EXP), numerics.MAX_EXP)


# ---------------------------------------------------------------- round half up

def test_round_half_up_exact_half_positive():
    v = np.array([0.5, 1.5, 2.5, 126.5, 127.5])
    assert numerics.round_half_up(v).tolist() == [1, 2, 3, 127, 128]


def test_round_half_up_exact_half_negative():
    v = np.array([-0.5, -1.5, -2.5, -127.5, -128.5])
    assert numerics.round_half_up(v).tolist() == [0, -1, -2, -127, -128]


def test_round_half_up_not_a_tie():
    v = np.array([0.49, -0.49, 0.51, -0.51, 2.4999, -2.5001])
    assert numerics.round_half_up(v).tolist() == [0, 0, 1, -1, 2, -3]


def test_round_half_up_largest_double_below_half():
    # 0.49999999999999994 + 0.5 rounds to 1.0 in float64; the exact result is 0.
    v = np.nextafter(0.5, 0.0)
    assert numerics.round_half_up(np.array([v, -v])).tolist() == [0, 0]
    assert numerics.round_half_up(torch.tensor([v], dtype=torch.float64)).tolist() == [0]


def test_round_half_up_large_odd_integer_unchanged():
    v = np.array([2.0 ** 52 + 1, -(2.0 ** 52) - 1, 2.0 ** 53])
    assert numerics.round_half_up(v).tolist() == v.tolist()


def test_round_half_up_numpy_and_torch_agree():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.integers(-300, 300, 500) / 2.0, rng.normal(0, 100, 500)])
    assert np.array_equal(numerics.round_half_up(v),
                          numerics.round_half_up(torch.from_numpy(v)).numpy())


# ---------------------------------------------------------------- quantize / saturation

def test_quantize_exact_half_both_signs():
    # x * 2**3 = +-2.5, +-0.5 exactly
    x = np.array([2.5, -2.5, 0.5, -0.5]) / 8
    assert numerics.quantize(x, 3, 8).tolist() == [3, -2, 1, 0]


@pytest.mark.parametrize("bits", BITS)
def test_saturation_upper(bits):
    top = numerics.qmax(bits)
    x = np.array([top - 0.5, top + 0.49, top + 0.5, 1e30])  # top-0.5 rounds up to top
    assert numerics.quantize(x, 0, bits).tolist() == [top] * 4


@pytest.mark.parametrize("bits", BITS)
def test_saturation_lower(bits):
    lo = numerics.qmin(bits)
    x = np.array([lo - 0.5, lo - 0.51, lo - 1.0, -1e30, lo + 0.0])
    assert numerics.quantize(x, 0, bits).tolist() == [lo] * 5
    # just inside: lo + 0.5 rounds half up to lo + 1
    assert numerics.quantize(np.array([lo + 0.5]), 0, bits).tolist() == [lo + 1]


def test_saturation_is_asymmetric_for_8_bits():
    assert numerics.quantize(np.array([-1.0, 1.0]), 7, 8).tolist() == [-128, 127]


def test_all_zero_tensor():
    z = np.zeros((3, 4))
    assert numerics.exponent_for_range(0.0, 8) == numerics.ZERO_RANGE_EXP
    assert int(exponent_for_range_t(torch.tensor(0.0), 8)) == numerics.ZERO_RANGE_EXP
    q = numerics.quantize(z, numerics.ZERO_RANGE_EXP, 8)
    assert np.array_equal(q, z) and np.array_equal(numerics.dequantize(q, 0), z)


def test_negative_exponent_quantize_and_back():
    n = numerics.exponent_for_range(300.0, 8)
    assert n == -2                                  # 300 * 2**-2 = 75 <= 127 < 150
    q = numerics.quantize(np.array([300.0, -6.0, 5.9, 2.0]), n, 8)
    assert q.tolist() == [75, -1, 1, 1]             # -1.5 -> -1, 1.475 -> 1, 0.5 -> 1
    assert numerics.dequantize(q, n).tolist() == [300.0, -4.0, 4.0, 4.0]


# ---------------------------------------------------------------- exponent rule

def test_exponent_examples():
    assert numerics.exponent_for_range(1.0, 8) == 6       # 64 <= 127 < 128
    assert numerics.exponent_for_range(127 / 128, 8) == 7  # exactly 127 at n=7
    assert numerics.exponent_for_range(0.75, 16) == 15     # 24576 <= 32767 < 49152


def test_exponent_very_large_range():
    assert numerics.exponent_for_range(2.0 ** 40, 8) == -34  # 2**40 * 2**-34 = 64
    assert numerics.exponent_for_range(1e30, 8) == numerics.MIN_EXP  # -92 clipped to -60
    assert numerics.exponent_for_range(np.finfo(np.float64).max, 8) == numerics.MIN_EXP


def test_exponent_very_small_range():
    assert numerics.exponent_for_range(2.0 ** -40, 8) == 46  # 2**-40 * 2**46 = 64
    assert numerics.exponent_for_range(1e-30, 8) == numerics.MAX_EXP
    assert numerics.exponent_for_range(5e-324, 8) == numerics.MAX_EXP  # smallest subnormal


def test_exponent_rejects_non_finite_range():
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite"):
            numerics.exponent_for_range(bad, 8)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [-20, -3, 0, 1, 7, 20])
def test_exponent_boundary(bits, n):
    top = numerics.qmax(bits)
    r = math.ldexp(top, -n)                      # r == qmax * 2**-n exactly: n still fits
    assert numerics.exponent_for_range(r, bits) == n
    assert numerics.exponent_for_range(np.nextafter(r, math.inf), bits) == n - 1
    assert numerics.exponent_for_range(np.nextafter(r, 0.0), bits) == n
    # and the quantized boundary value is exactly qmax, not saturated
    assert numerics.quantize(np.array([r]), n, bits).tolist() == [top]


@pytest.mark.parametrize("bits", BITS)
def test_exponent_twins_equal_on_boundaries(bits):
    top = numerics.qmax(bits)
    b = np.array([math.ldexp(top, -n) for n in range(-70, 71)] +
                 [math.ldexp(1.0, -n) for n in range(-70, 71)])
    vals = np.concatenate([b, np.nextafter(b, 0.0), np.nextafter(b, np.inf), [0.0]])
    expected = [numerics.exponent_for_range(v, bits) for v in vals]
    assert expected == [exact_exponent(v, bits) for v in vals]
    assert exponent_for_range_t(torch.from_numpy(vals), bits).tolist() == expected
    # float32 ranges (what training stores): boundaries of the float32 grid
    v32 = torch.from_numpy(vals).float()
    v32 = torch.cat([v32, torch.nextafter(v32, torch.tensor(0.0)),
                     torch.nextafter(v32, torch.tensor(math.inf))])
    v32 = v32[torch.isfinite(v32)]
    assert exponent_for_range_t(v32, bits).tolist() == \
        [numerics.exponent_for_range(v, bits) for v in v32.tolist()]


def test_exponent_twins_equal_on_random_values():
    rng = np.random.default_rng(0)
    vals = np.exp(rng.uniform(-45, 45, 5000))
    for bits in BITS:
        expected = [numerics.exponent_for_range(v, bits) for v in vals]
        assert exponent_for_range_t(torch.from_numpy(vals), bits).tolist() == expected
        assert exponent_for_range_t(torch.from_numpy(vals).float(), bits).tolist() == \
            [numerics.exponent_for_range(v, bits) for v in vals.astype(np.float32)]


def test_exponent_twin_returns_int32_tensor():
    n = exponent_for_range_t(torch.tensor(1.0), 8)
    assert n.dtype == torch.int32 and n.dim() == 0 and int(n) == 6


# ---------------------------------------------------------------- rounding shift

ACC = np.array([-9, -8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                -(2 ** 40) - 1, 2 ** 40 + 3, -(2 ** 31), 2 ** 31 - 1])


def shift_reference(acc, s):
    return [a << -s if s <= 0 else math.floor(Fraction(a, 2 ** s) + Fraction(1, 2))
            for a in map(int, acc)]


@pytest.mark.parametrize("shift", [1, 2, 3, 8, 20])
def test_rounding_shift_right(shift):
    expected = shift_reference(ACC, shift)
    assert numerics.rounding_shift(ACC.astype(np.float64), shift).tolist() == expected
    assert numerics.rounding_shift(ACC.astype(np.int64), shift).tolist() == expected
    assert numerics.rounding_shift(torch.from_numpy(ACC).double(), shift).tolist() == expected
    assert numerics.rounding_shift(torch.from_numpy(ACC), shift).tolist() == expected


def test_rounding_shift_right_ties_go_up():
    acc = np.array([1, 3, 5, -1, -3, -5], dtype=np.int64)  # x.5 after shift 1
    assert numerics.rounding_shift(acc, 1).tolist() == [1, 2, 3, 0, -1, -2]
    assert numerics.rounding_shift(acc.astype(np.float64), 1).tolist() == [1, 2, 3, 0, -1, -2]


@pytest.mark.parametrize("shift", [-1, -4, -10])
def test_rounding_shift_left(shift):
    acc = ACC[:19]
    expected = [int(a) * 2 ** -shift for a in acc]
    assert numerics.rounding_shift(acc.astype(np.float64), shift).tolist() == expected
    assert numerics.rounding_shift(acc.astype(np.int64), shift).tolist() == expected
    assert numerics.rounding_shift(torch.from_numpy(acc).double(), shift).tolist() == expected
    assert numerics.rounding_shift(torch.from_numpy(acc), shift).tolist() == expected


def test_rounding_shift_zero_is_identity():
    for a in (ACC.astype(np.float64), ACC.astype(np.int64), torch.from_numpy(ACC)):
        assert numerics.rounding_shift(a, 0).tolist() == ACC.tolist()


def test_rounding_shift_keeps_dtype():
    assert numerics.rounding_shift(np.array([5], dtype=np.int32), 1).dtype == np.int32
    assert numerics.rounding_shift(np.array([5.0]), -1).dtype == np.float64


def test_requantize_saturates_after_shift():
    acc = np.array([1000, -1000, 254, 255, -256, -257], dtype=np.int64)
    assert numerics.requantize(acc, 1, 8).tolist() == [127, -128, 127, 127, -128, -128]


def test_rescale_between_exponents():
    q = np.array([3, -3, 100], dtype=np.int64)
    assert numerics.rescale(q, 5, 4, 8).tolist() == [2, -1, 50]    # shift right 1
    assert numerics.rescale(q, 4, 6, 8).tolist() == [12, -12, 127]  # shift left 2, saturate


def test_bias_quantization():
    # q_b = rhu(b * 2**(n_x + n_w)) on the accumulator grid
    b = np.array([0.1, -0.1, 1.0 / 1024, -5.0 / 4096])
    assert numerics.bias_exponent(5, 6) == 11
    # 204.8 -> 205, -204.8 -> -205, 2 -> 2, -2.5 (tie) -> -2
    assert numerics.quantize_bias(b, 5, 6).tolist() == [205, -205, 2, -2]
    assert numerics.quantize_bias(np.array([1e10]), 5, 6).tolist() == [2 ** 31 - 1]


def test_rounded_div_rounds_half_up():
    num = np.array([5, 6, 7, -5, -6, -7, 0, 2, -2])
    assert numerics.rounded_div(num, 4).tolist() == \
        [exact_rhu(Fraction(int(n), 4)) for n in num] == [1, 2, 2, -1, -1, -2, 0, 1, 0]


def test_acc_dtype_bound():
    assert numerics.acc_float_dtype_for(256, 8, 8) == np.float32      # 256 * 2**14 = 2**22
    assert numerics.acc_float_dtype_for(2048, 8, 8) == np.float64     # 2**25
    assert numerics.int_dtype(4) == np.int8 and numerics.int_dtype(32) == np.int32


# ---------------------------------------------------------------- fake quant (training twin)

def test_fake_quant_matches_integer_quantize_on_float32_values():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(0, 2, 4000).astype(np.float32))
    x[:8] = torch.tensor([0.5, -0.5, 1.5, -1.5, 10.0, -10.0, 0.0, 127 / 32])  # ties, saturation
    for exp in (-2, 0, 3, 5):
        expected = numerics.dequantize(numerics.quantize(x.double(), exp, 8), exp).float()
        got = fake_quant(x, torch.tensor(exp, dtype=torch.int32), 8)
        assert torch.equal(got, expected)


def test_fake_quant_gradient_zero_only_where_clamped():
    x = torch.tensor([-2.0, -1.0, -0.99, 0.0, 0.98, 0.99, 2.0], requires_grad=True)
    fake_quant(x, torch.tensor(7, dtype=torch.int32), 8).sum().backward()
    # 0.99 * 128 = 126.72 -> 127 is inside; -1.0 * 128 = -128 is exactly qmin: inside
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]


# ---------------------------------------------------------------- properties

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(x=finite, exp=st.integers(-20, 20), bits=st.sampled_from(BITS))
def test_quantize_property(x, exp, bits):
    got = numerics.quantize(np.array([x]), exp, bits)[0]
    ref = exact_rhu(Fraction(x) * Fraction(2) ** exp)
    assert got == min(max(ref, numerics.qmin(bits)), numerics.qmax(bits))


@settings(max_examples=300, deadline=None)
@given(acc=st.integers(-(2 ** 50), 2 ** 50), s=st.integers(-8, 30))
def test_rounding_shift_property(acc, s):
    ref = acc << -s if s <= 0 else math.floor(Fraction(acc, 2 ** s) + Fraction(1, 2))
    if s > 0:
        assert ref == (acc + 2 ** (s - 1)) >> s  # the documented integer formula
    assert numerics.rounding_shift(np.array([acc], dtype=np.int64), s)[0] == ref
    if abs(ref) < 2 ** 53:
        assert numerics.rounding_shift(np.array([float(acc)]), s)[0] == ref
    assert numerics.rounding_shift(torch.tensor([acc]), s).item() == ref


@settings(max_examples=300, deadline=None)
@given(r=st.floats(min_value=0.0, max_value=1e300, allow_nan=False),
       bits=st.sampled_from(BITS))
def test_exponent_property(r, bits):
    n = numerics.exponent_for_range(r, bits)
    assert n == exact_exponent(r, bits)
    assert int(exponent_for_range_t(torch.tensor(r, dtype=torch.float64), bits)) == n
