"""Integer algorithms of linger's quantized tensor ops, written once (numpy only).

Both sides call these functions: the PyTorch eval path (``linger.quant.ops_*``) converts its
integer payloads to numpy ``int64`` and back, and the runtime kernels (``linger.runtime.kernels``)
call them on the arrays of the graph. Every function takes and returns ``int64`` arrays of exact
integers; nothing here uses a float ``exp``/``tanh``/``sqrt`` whose last ulp could differ between
libraries (the only float operations are exact: power-of-two scalings, ``frexp`` on integers below
2**53, a float ``sqrt`` corrected to the exact integer square root, and BLAS sums of integers
below 2**53).

A value is ``q * 2**-n``. Notation: ``rhu(v) = floor(v + 0.5)``; ``sat_b`` clamps to the signed
``b``-bit range; ``rs(acc, s)`` is the rounding shift of :func:`requant` (right by ``s`` with
round-half-up when ``s > 0``, exact left shift when ``s <= 0``).

Fixed formats (tables in :mod:`linger.iqtables`):

- sigmoid / tanh / GELU / SiLU gates: input rescaled to **int16 Q11** (``x11 = sat16(rs(q, n-11))``,
  so |x| saturates at 16), piecewise-linear table lookup on 1/16-wide segments to **Q15**;
- softmax / log-softmax: ``x - max`` in **Q16** (floored at -32), ``2**(x log2 e)`` through a
  64-segment ``2**f`` table to **Q20**, sum, rounded integer division to **Q15**; log-softmax uses a
  64-segment ``log2(1+f)`` table;
- layer-norm: exact integer mean/variance, exact integer square root, normalized value in **Q10**.
"""

from __future__ import annotations

import numpy as np

from . import iqtables, numerics

I64 = np.int64

#: Q format of the gate input (sigmoid, tanh, GELU, SiLU): int16 Q11, |x| < 16.
GATE_Q = 11
#: Q format of gate outputs and of softmax probabilities.
PROB_Q = 15
#: Q format of ``x - max`` inside softmax / log-softmax; floored at ``-SOFTMAX_FLOOR``.
SOFTMAX_Q = 16
SOFTMAX_FLOOR = 32
#: Q format of ``exp(x - max)`` terms summed by softmax.
EXP_Q = 20
#: Q format of the normalized value inside layer-norm.
LN_Q = 10
#: Largest accumulator magnitude the algorithms below keep in int64.
_BIG = 1 << 62


def _padded(table) -> np.ndarray:
    t = np.asarray(table, dtype=I64)
    return np.append(t, t[-1])  # one extra entry: idx + 1 stays in range at the clamp point


_SIGMOID = _padded(iqtables.SIGMOID_Q15)
_TANH = _padded(iqtables.TANH_Q15)
_PHI = _padded(iqtables.PHI_Q15)
_EXP2 = np.asarray(iqtables.EXP2_Q30, dtype=I64)
_LOG2 = np.asarray(iqtables.LOG2_Q30, dtype=I64)


# -- primitives ---------------------------------------------------------------------------------

def as_int(a) -> np.ndarray:
    """Any integer-valued array (int8..int64, or float holding integers) as int64."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return np.rint(a).astype(I64)
    return a.astype(I64)


def saturate(q, bits: int) -> np.ndarray:
    """``sat_b(q)``: clamp to ``[-2**(b-1), 2**(b-1) - 1]``."""
    return np.clip(q, numerics.qmin(bits), numerics.qmax(bits))


def rshift(acc, shift):
    """Rounding right shift ``(acc + 2**(s-1)) >> s`` for ``s >= 1`` (``s`` int or int array).

    Shifts beyond 62 act as 62: every accumulator here is below 2**61 in magnitude, so the result
    is then 0, as the unbounded shift would give.

    >>> rshift(np.array([5, -5, 6, -6, 7]), 1)
    array([ 3, -2,  3, -3,  4])
    """
    s = np.minimum(shift, 62)
    return (acc + (np.int64(1) << (s - 1))) >> s


def requant(acc, shift: int, bits: int) -> np.ndarray:
    """``sat_b(rs(acc, shift))``: rounding right shift when ``shift > 0``, exact saturating left
    shift when ``shift <= 0`` (computed without int64 overflow for any shift).

    >>> requant(np.array([300, -302, 3]), 2, 8).tolist()
    [75, -75, 1]
    >>> requant(np.array([3, -30]), -3, 8).tolist()
    [24, -128]
    """
    shift = int(shift)
    acc = np.asarray(acc, dtype=I64)
    if shift > 0:
        return saturate(rshift(acc, shift), bits)
    # |acc| >= 2**(b-1) saturates for any left shift, and for 0 < |acc| < 2**(b-1) every shift
    # >= b-1 saturates: clipping to +-2**(b-1) and capping the shift at 63-b (>= b-1 for b <= 32)
    # changes no result and keeps acc << s below 2**62.
    lim = 1 << (bits - 1)
    s = min(-shift, 63 - bits)
    return saturate(np.clip(acc, -lim, lim) << s, bits)


def rounded_div(num, den):
    """``floor((2 num + den) / (2 den))`` for ``den > 0``: the quotient rounded half up."""
    return (2 * num + den) // (2 * den)


def bit_length(x) -> np.ndarray:
    """Number of bits of non-negative int64 values (``0`` for 0), exact for every int64."""
    x = np.asarray(x, dtype=I64)
    k = np.frexp(x.astype(np.float64))[1].astype(I64)
    # float64 may round x up to the next power of two (x >= 2**53): settle exactly.
    too_big = (k > 0) & ((np.int64(1) << np.maximum(k - 1, 0)) > x)
    return np.where(too_big, k - 1, k)


# -- element-wise arithmetic --------------------------------------------------------------------

def add(qx, nx: int, qy, ny: int, no: int, bits: int, subtract: bool = False) -> np.ndarray:
    """``sat_b(sat32(rs(qx, nx-no)) +/- sat32(rs(qy, ny-no)))`` with numpy broadcasting.

    Each operand is moved to the output grid separately (round half up, saturated to int32),
    then added in int64 and saturated to ``bits``.

    >>> add(np.array([100]), 6, np.array([-3]), 2, 5, 8)   # 1.5625 + -0.75 -> 0.8125 (26 / 32)
    array([26])
    """
    a = requant(as_int(qx), nx - no, 32)
    b = requant(as_int(qy), ny - no, 32)
    return saturate(a - b if subtract else a + b, bits)


def mul(qx, nx: int, qy, ny: int, no: int, bits: int) -> np.ndarray:
    """``sat_b(rs(qx * qy, nx + ny - no))``: exact int64 product, one rounding shift."""
    return requant(as_int(qx) * as_int(qy), nx + ny - no, bits)


def cat_format(exps, bits_list) -> tuple:
    """Common grid of a concatenation: ``B = max(bits_i)``, ``no = min(n_i + B - bits_i)``.

    Every input then fits without saturation: a wider-range input sets the (coarser) grid, a
    narrower bit width is widened by an exact left shift.
    """
    big = max(int(b) for b in bits_list)
    return min(int(n) + big - int(b) for n, b in zip(exps, bits_list)), big


def cat(qs, exps, no: int, bits: int, axis: int, new_axis: bool = False) -> np.ndarray:
    """Concatenate (or stack, ``new_axis``) after ``sat_b(rs(q_i, n_i - no))`` per input."""
    parts = [requant(as_int(q), int(n) - no, bits) for q, n in zip(qs, exps)]
    return np.stack(parts, axis) if new_axis else np.concatenate(parts, axis)


def _axes(ndim: int, axes):
    if axes is None:
        return tuple(range(ndim))
    axes = (axes,) if isinstance(axes, (int, np.integer)) else axes
    return tuple(sorted(int(a) % ndim for a in axes)) if ndim else ()


def reduce_sum(q, n: int, no: int, bits: int, axes=None, keepdims: bool = False) -> np.ndarray:
    """``sat_b(rs(sum(q), n - no))`` over ``axes`` (None: all), exact int64 sum."""
    q = as_int(q)
    return requant(q.sum(axis=_axes(q.ndim, axes), keepdims=keepdims), n - no, bits)


def mean_multiplier(count: int) -> tuple:
    """``(m, t)`` with ``m = rhu(2**t / count)``, ``t = 22 + bit_length(count)``: the fixed-point
    reciprocal (22..23 significant bits) by which :func:`reduce_mean` multiplies the sum."""
    count = int(count)
    t = 22 + count.bit_length()
    return ((1 << (t + 1)) + count) // (2 * count), t


def reduce_mean(q, n: int, no: int, bits: int, axes=None, keepdims: bool = False) -> np.ndarray:
    """``sat_b(rs(sum(q) * m, t + n - no))`` with ``(m, t) = mean_multiplier(k)``: the mean of
    the ``k`` elements over ``axes`` through a fixed-point reciprocal (inputs up to 16 bits keep
    ``sum * m`` below 2**61 for ``k <= 2**24``)."""
    q = as_int(q)
    ax = _axes(q.ndim, axes)
    count = int(np.prod([q.shape[a] for a in ax])) if ax else 1
    m, t = mean_multiplier(count)
    return requant(q.sum(axis=ax, keepdims=keepdims) * m, t + n - no, bits)


def matmul(qx, nx: int, qy, ny: int, no: int, bits: int) -> np.ndarray:
    """``sat_b(rs(qx @ qy, nx + ny - no))`` with numpy/torch matmul broadcasting.

    The integer products are summed in float64 (BLAS) when ``k * max|qx| * max|qy| <= 2**53``,
    where every partial sum is an exact integer whatever the summation order, else in int64.
    """
    qx, qy = as_int(qx), as_int(qy)
    k = qx.shape[-1]
    bound = k * int(np.abs(qx).max(initial=0)) * int(np.abs(qy).max(initial=0))
    if bound <= (1 << 53):
        acc = np.rint(np.matmul(qx.astype(np.float64), qy.astype(np.float64))).astype(I64)
    else:
        acc = np.matmul(qx, qy)
    return requant(acc, nx + ny - no, bits)


# -- gates: sigmoid, tanh, GELU, SiLU -----------------------------------------------------------

def to_q11(q, n: int) -> np.ndarray:
    """The gate input format: ``x11 = sat16(rs(q, n - 11))`` (|x| saturates at 16)."""
    return requant(as_int(q), n - GATE_Q, 16)


def _pwl(table: np.ndarray, a) -> np.ndarray:
    """Piecewise-linear lookup at ``a >= 0`` (Q11) on 1/16-wide segments, result in Q15:
    ``i = a >> 7, r = a & 127, y = T[i] + rs((T[i+1] - T[i]) * r, 7)``; ``a`` is clamped to the
    last table point (where the function has reached 1.0 in Q15)."""
    a = np.minimum(a, (len(table) - 2) << 7)
    i = a >> 7
    t0 = table[i]
    return t0 + rshift((table[i + 1] - t0) * (a & 127), 7)


def sigmoid_q15(x11) -> np.ndarray:
    """``sigmoid`` of Q11 input in Q15 ``[0, 32768]``; ``sigmoid(-x) = 1 - sigmoid(x)``."""
    y = _pwl(_SIGMOID, np.abs(x11))
    return np.where(x11 >= 0, y, (1 << PROB_Q) - y)


def tanh_q15(x11) -> np.ndarray:
    """``tanh`` of Q11 input in Q15 ``[-32768, 32768]``; odd: ``tanh(-x) = -tanh(x)``."""
    y = _pwl(_TANH, np.abs(x11))
    return np.where(x11 >= 0, y, -y)


def phi_q15(x11) -> np.ndarray:
    """Gaussian CDF ``Phi`` of Q11 input in Q15; ``Phi(-x) = 1 - Phi(x)``."""
    y = _pwl(_PHI, np.abs(x11))
    return np.where(x11 >= 0, y, (1 << PROB_Q) - y)


def sigmoid(q, n: int, no: int, bits: int) -> np.ndarray:
    """``sat_b(rs(sigmoid_q15(x11), 15 - no))``; linger uses ``no = bits - 1`` (Q7 for int8)."""
    return requant(sigmoid_q15(to_q11(q, n)), PROB_Q - no, bits)


def tanh(q, n: int, no: int, bits: int) -> np.ndarray:
    """``sat_b(rs(tanh_q15(x11), 15 - no))``; linger uses ``no = bits - 1``."""
    return requant(tanh_q15(to_q11(q, n)), PROB_Q - no, bits)


def silu(q, n: int, no: int, bits: int) -> np.ndarray:
    """``x * sigmoid(x)``: ``sat_b(rs(q * sigmoid_q15(x11), n + 15 - no))``."""
    q = as_int(q)
    return requant(q * sigmoid_q15(to_q11(q, n)), n + PROB_Q - no, bits)


def gelu(q, n: int, no: int, bits: int) -> np.ndarray:
    """``x * Phi(x)``: ``sat_b(rs(q * phi_q15(x11), n + 15 - no))`` (exact-erf GELU)."""
    q = as_int(q)
    return requant(q * phi_q15(to_q11(q, n)), n + PROB_Q - no, bits)


# -- softmax, log-softmax -----------------------------------------------------------------------

def _exp_q20(q, n: int, axis: int, mask=None):
    """``e = 2**20 * exp(x - max)`` along ``axis`` and ``d16 = x - max`` in Q16 (>= -32).
    ``mask`` (bool, broadcast to ``q``): True excludes an element (its ``e`` is 0, and it takes
    no part in the max)."""
    q = as_int(q)
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), q.shape)
        low = np.iinfo(I64).min >> 2
        top = np.where(mask, low, q).max(axis=axis, keepdims=True)
        d = np.where(mask, 0, q - np.where(top == low, 0, top))  # fully masked rows: e = 0
        e, d16 = _exp_q20(d, n, axis)
        return np.where(mask, 0, e), d16
    d = q - q.max(axis=axis, keepdims=True)                      # <= 0, exponent n
    d16 = np.maximum(requant(d, n - SOFTMAX_Q, 32), -(SOFTMAX_FLOOR << SOFTMAX_Q))
    return exp_q20_nonpos(d16), d16


def exp_q20_nonpos(d16) -> np.ndarray:
    """``2**20 exp(d)`` for ``d`` in Q16, ``-32 <= d <= 0``: ``t = rs(d16 log2(e), 30)``, ``2**f``
    of its fraction from the 64-segment table (Q30), shifted by its integer part to Q20."""
    t = rshift(d16 * iqtables.LOG2E_Q30, 30)                     # d * log2(e), Q16
    ip = t >> SOFTMAX_Q                                          # integer part, <= 0
    f = t - (ip << SOFTMAX_Q)                                    # fraction, [0, 2**16)
    i = f >> 10
    p = _EXP2[i] + rshift((_EXP2[i + 1] - _EXP2[i]) * (f & 1023), 10)  # 2**f in Q30
    return rshift(p, (30 - EXP_Q) - ip)                          # 2**t in Q20, [0, 2**20]


def softmax(q, n: int, axis: int, no: int, bits: int, mask=None) -> np.ndarray:
    """``p = rhu(2**15 e / S)`` with ``S = sum(e)`` (exact integer division), then
    ``sat_b(rs(p, 15 - no))``; linger uses ``no = bits - 1``. ``mask`` (bool, True = excluded,
    as attention masks): excluded elements get ``p = 0``; a row excluded entirely is all 0."""
    e, _ = _exp_q20(q, n, axis, mask)
    s = np.maximum(e.sum(axis=axis, keepdims=True), 1)           # >= 2**20 unless all masked
    p15 = rounded_div(e << PROB_Q, s)
    return requant(p15, PROB_Q - no, bits)


def log2_q16(s) -> np.ndarray:
    """``log2(s / 2**20)`` in Q16 for integers ``s >= 1``: ``s = 2**k * m``, ``m`` in [1, 2)
    normalized to Q30 (floor), ``log2(m)`` from the 64-segment table."""
    s = np.asarray(s, dtype=I64)
    k = bit_length(s) - 1
    m30 = np.where(k >= 30, s >> np.maximum(k - 30, 0), s << np.maximum(30 - k, 0))
    f = m30 - (1 << 30)
    i = f >> 24
    lg = _LOG2[i] + rshift((_LOG2[i + 1] - _LOG2[i]) * (f & ((1 << 24) - 1)), 24)
    return ((k - EXP_Q) << SOFTMAX_Q) + rshift(lg, 30 - SOFTMAX_Q)


def log_softmax(q, n: int, axis: int, no: int, bits: int) -> np.ndarray:
    """``y16 = d16 - rs(log2_q16(S) * LN2_Q30, 30)`` (Q16, <= 0), then ``sat_b(rs(y16, 16-no))``."""
    e, d16 = _exp_q20(q, n, axis)
    ln16 = rshift(log2_q16(e.sum(axis=axis, keepdims=True)) * iqtables.LN2_Q30, 30)
    return requant(d16 - ln16, SOFTMAX_Q - no, bits)


# -- layer-norm ---------------------------------------------------------------------------------

def layer_norm_eps(eps: float, n: int, count: int) -> int:
    """``eps`` in the integer domain of :func:`layer_norm_q10`: ``rhu(eps * 2**(2n) * count**2)``
    (capped at 2**61). Computed once when the graph is written; the runtime reads the integer."""
    v = float(eps) * 2.0 ** (2 * int(n)) * float(count) ** 2
    return int(min(np.floor(v + 0.5), 2.0 ** 61))


def isqrt(x) -> np.ndarray:
    """Exact ``floor(sqrt(x))`` for int64 ``0 <= x < 2**62`` (float seed, integer correction)."""
    x = np.asarray(x, dtype=I64)
    s = np.floor(np.sqrt(x.astype(np.float64))).astype(I64)
    for _ in range(2):  # the float seed is off by at most one
        s = np.where(s * s > x, s - 1, s)
        s = np.where((s + 1) * (s + 1) <= x, s + 1, s)
    return s


def layer_norm_q10(q, ndim: int, eps_q: int) -> np.ndarray:
    """``z = 2**10 (x - mean) / sqrt(var + eps)`` over the last ``ndim`` axes, exactly defined:

    ``k = count``, ``num = k q - sum(q)``, ``D = k sum(q**2) - sum(q)**2 + eps_q`` (so that
    ``num / sqrt(D)`` is the normalized value, scale-free); ``D`` is brought to ``[2**30, 2**32)``
    by an even shift ``2j`` (floor), ``r = isqrt(D' << 30)`` (``sqrt(D) ~ r 2**(j-15)``) and
    ``z = rhu(num 2**(25 - j) / r)``. Rows with ``D == 0`` give 0.
    """
    q = as_int(q)
    axes = tuple(range(q.ndim - ndim, q.ndim))
    count = int(np.prod(q.shape[q.ndim - ndim:]))
    s1 = q.sum(axis=axes, keepdims=True)
    d = np.clip(count * (q * q).sum(axis=axes, keepdims=True) - s1 * s1 + int(eps_q), 0, _BIG - 1)
    num = count * q - s1
    j = (bit_length(d) - 31) // 2                                # D' = D / 4**j in [2**30, 2**32)
    dn = np.where(j >= 0, d >> (2 * np.maximum(j, 0)), d << (2 * np.maximum(-j, 0)))
    r = np.maximum(isqrt(dn << 30), 1)                           # floor(sqrt(D') 2**15)
    z = rounded_div(num << (LN_Q + 15 - j), r)                   # shift >= 10: D < 2**62
    return np.where(d == 0, 0, z)


def layer_norm(q, ndim: int, eps_q: int, qw, nw: int, qb, no: int, bits: int) -> np.ndarray:
    """``sat_b(rs(z * qw + qb, 10 + nw - no))``; ``qw``/``qb`` may be None (1 and 0)."""
    z = layer_norm_q10(q, ndim, eps_q)
    if qw is None:
        acc, ne = z, LN_Q
    else:
        acc, ne = z * as_int(qw), LN_Q + int(nw)
    if qb is not None:
        acc = acc + as_int(qb)
    return requant(acc, ne - no, bits)
