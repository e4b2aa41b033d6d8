"""The integer maths of linger, written once.

Every function here is pure and works on numpy arrays *and* torch tensors (duck typing: only
operators and methods both libraries share are used), so the PyTorch simulation and the numpy
runtime execute the very same definitions. This module imports numpy only.

Number format
-------------
A quantized value is an integer ``q`` of ``bits`` bits with a power-of-two scale::

    real = q * 2**-n            (n: the *exponent*, any integer, may be negative)

Integers travel as float64 arrays holding exact integers (|q| < 2**53), which keeps every
operation below exact in both libraries and lets BLAS do the heavy sums.

Formulas
--------
- round-half-up:       ``rhu(v) = floor(v + 0.5)``
- saturate:            ``clamp(q, -2**(b-1), 2**(b-1) - 1)``
- quantize:            ``q = clamp(rhu(x * 2**n))``, computed in float64
- exponent from range: ``n = floor(log2((2**(b-1) - 1) / r))``: the largest n with r * 2**n <= qmax
- rounding shift:      ``shift > 0: (acc + 2**(shift-1)) >> shift``; ``shift <= 0: acc << -shift``
- bias:                ``q_b = clamp32(rhu(b * 2**(n_x + n_w)))``
"""

from __future__ import annotations

import math

import numpy as np

#: Bit widths linger accepts, per role.
DATA_BITS = (8, 16)
PARAM_BITS = (4, 8, 16)
OUT_BITS = (8, 16, 32)
BIAS_BITS = 32

#: Exponent returned for an all-zero range: any exponent represents zero exactly, this one keeps
#: the scale moderate if the tensor later grows.
ZERO_RANGE_EXP = 0

#: Exponents are clipped to this range so that 2**n stays a normal float32 (and float64) number.
MIN_EXP, MAX_EXP = -60, 60


def qmin(bits: int) -> int:
    """Smallest integer of a signed ``bits``-bit value: ``-2**(bits-1)``."""
    return -(1 << (bits - 1))


def qmax(bits: int) -> int:
    """Largest integer of a signed ``bits``-bit value: ``2**(bits-1) - 1``."""
    return (1 << (bits - 1)) - 1


def round_half_up(v):
    """``floor(v + 0.5)``: ties go towards +inf (``-2.5 -> -2``, ``2.5 -> 3``).

    Evaluated as ``floor(v) + (frac(v) >= 0.5)``, which is exact for every finite float: the
    literal ``floor(v + 0.5)`` is not, because ``v + 0.5`` itself rounds (``0.49999999999999994
    + 0.5 == 1.0`` in float64, and odd integers above ``2**52`` gain 1).

    >>> round_half_up(np.array([-2.5, -0.5, 0.5, 2.5, 0.49999999999999994]))
    array([-2.,  0.,  1.,  3.,  0.])
    """
    f = v // 1
    return f + ((v - f) >= 0.5)  # v - f is exact (the fractional part of v)


def saturate(q, bits: int):
    """Clamp integers to the signed ``bits``-bit range ``[-2**(b-1), 2**(b-1)-1]``."""
    return q.clip(qmin(bits), qmax(bits))


def pow2(n):
    """``2.0 ** n`` for an integer exponent (python int, numpy or torch integer)."""
    return 2.0 ** n


def quantize(x, exp, bits: int):
    """Float to integer: ``q = clamp(floor(x * 2**exp + 0.5))``.

    ``x`` must be float64 for the result to be exact; both sides of linger call it that way.

    >>> quantize(np.array([0.3, -1.0, 5.0]), 7, 8)
    array([  38., -128.,  127.])
    """
    return saturate(round_half_up(x * pow2(exp)), bits)


def dequantize(q, exp):
    """Integer to float: ``q * 2**-exp`` (exact in float32 for |q| < 2**24)."""
    return q * pow2(-exp)


def exponent_for_range(r: float, bits: int) -> int:
    """The exponent rule: ``n = floor(log2(qmax / r))``, the largest n with ``r * 2**n <= qmax``.

    ``r`` is a non-negative range (max |x|). ``r == 0`` gives :data:`ZERO_RANGE_EXP`. The result
    is clipped to ``[MIN_EXP, MAX_EXP]``. Evaluated with exact power-of-two checks, so values on
    a boundary (``r == qmax * 2**-n``) land on the same side in every library.

    >>> exponent_for_range(1.0, 8), exponent_for_range(127 / 128, 8), exponent_for_range(300.0, 8)
    (6, 7, -2)
    """
    r = float(r)
    if not math.isfinite(r):
        raise ValueError(f"range must be finite, got {r}")
    if r <= 0.0:
        return ZERO_RANGE_EXP
    top = qmax(bits)
    n = math.floor(math.log2(top) - math.log2(r))  # not log2(top / r): that overflows for tiny r
    # log2 may be off by one ulp near exact powers of two: settle with exact ldexp comparisons.
    while math.ldexp(r, n + 1) <= top:
        n += 1
    while math.ldexp(r, n) > top:
        n -= 1
    return int(min(max(n, MIN_EXP), MAX_EXP))


def rounding_shift(acc, shift: int):
    """Requantize an integer accumulator by a power of two.

    ``shift > 0``: ``(acc + 2**(shift-1)) >> shift`` (round half up);
    ``shift <= 0``: ``acc << -shift`` (exact). Works on float64 arrays holding integers, where it
    equals ``floor(acc * 2**-shift + 0.5)`` exactly, and on integer arrays.

    >>> rounding_shift(np.array([5., -5., 6., -6.]), 1), rounding_shift(np.array([3.]), -2)
    (array([ 3., -2.,  3., -3.]), array([12.]))
    """
    shift = int(shift)
    if shift <= 0:
        return acc * float(1 << -shift) if _is_float(acc) else acc << -shift
    if _is_float(acc):
        return round_half_up(acc * pow2(-shift))
    return (acc + (1 << (shift - 1))) >> shift


def requantize(acc, shift: int, bits: int):
    """``saturate(rounding_shift(acc, shift), bits)``: the output stage of conv/linear/matmul."""
    return saturate(rounding_shift(acc, shift), bits)


def bias_exponent(exp_x: int, exp_w: int) -> int:
    """The bias lives on the accumulator's grid: ``n_b = n_x + n_w``."""
    return int(exp_x) + int(exp_w)


def quantize_bias(b, exp_x: int, exp_w: int):
    """``q_b = clamp32(floor(b * 2**(n_x+n_w) + 0.5))``; ``b`` as float64."""
    return quantize(b, bias_exponent(exp_x, exp_w), BIAS_BITS)


def rescale(q, exp_from: int, exp_to: int, bits: int):
    """Move integers from exponent ``exp_from`` to ``exp_to`` with the rounding shift, saturated.

    Used by add/sub/cat: ``shift = exp_from - exp_to``.
    """
    return requantize(q, int(exp_from) - int(exp_to), bits)


def rounded_div(num, den):
    """Integer division rounded half up: ``floor((2*num + den) / (2*den))`` for ``den > 0``.

    Used by average pooling (``den`` = window size). Inputs are integer arrays (int64).
    """
    return (2 * num + den) // (2 * den)


def acc_float_dtype_for(k: int, bits_x: int, bits_w: int):
    """Float dtype in which an integer dot product of length ``k`` is exact.

    Products of ``bits_x`` x ``bits_w`` integers summed ``k`` times stay below
    ``k * 2**(bits_x-1) * 2**(bits_w-1)``; float32 is exact while that is <= 2**24, float64 while it
    is <= 2**53 (always, for the widths linger uses).
    """
    bound = k * (1 << (bits_x - 1)) * (1 << (bits_w - 1))
    return np.float32 if bound <= (1 << 24) else np.float64


def int_dtype(bits: int):
    """Smallest numpy integer dtype holding a signed ``bits``-bit value."""
    if bits <= 8:
        return np.int8
    if bits <= 16:
        return np.int16
    if bits <= 32:
        return np.int32
    return np.int64


def _is_float(a) -> bool:
    dt = getattr(a, "dtype", None)
    if dt is None:
        return isinstance(a, float)
    return getattr(dt, "is_floating_point", None) if hasattr(dt, "is_floating_point") \
        else np.issubdtype(dt, np.floating)
