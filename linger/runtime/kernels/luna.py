"""The original toolchain's integer algorithms ("luna", linger 1.x / thinker on venus), for models
imported from its ONNX files (:mod:`linger.importers.thinker`).

linger's own ops use linger's tables (docs/onnx_ops.md). A model the original exported was
trained against *these* algorithms instead, so the importer maps its nodes onto the ops below
where linger's semantics differ. Every function is a pure numpy function on exact integers
(int64); where the original computed in IEEE double (its ``shift_rasym`` helper), the same double
operations are done here, which is what makes them bit-exact. Sources of each formula:
``reference/report_numerics.md`` sections 2.3-2.7 and ``reference/report_thinker.md`` section 7.
Op semantics: docs/onnx_ops.md, "Ops of imported original models".
"""

from __future__ import annotations

import math

import numpy as np

from ... import numerics
from ...errors import ModelFileError, NumericError
from . import kernel
from ._common import check_dtype

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

# -- sigmoid / tanh: 16-segment piecewise linear on |x|, Q11 in, Q15 out ---------------------------
SIGMOID_BANDS = (0, 971, 1699, 2347, 2974, 3614, 4291, 5026, 5861, 6831, 7864, 8987, 10375,
                 11594, 13168, 14730, 32768)
SIGMOID_SLOPES = (32316, 29471, 25891, 22068, 18225, 29057, 22206, 16113, 10881, 27353, 16611,
                  9242, 4618, 20670, 8610, 693)
SIGMOID_BIAS_POS = (16384, 16721, 17464, 18559, 19954, 21585, 23380, 25249, 27121, 28807, 30096,
                    31107, 31839, 32199, 32502, 32724)
TANH_BANDS = (0, 512, 888, 1226, 1558, 1899, 2264, 2670, 3146, 3734, 4297, 4761, 5466, 6151,
              7193, 8093, 32768)
TANH_SLOPES = (32266, 29154, 25374, 21309, 17272, 26886, 19904, 13765, 8599, 19497, 12047, 7324,
               3373, 26820, 5531, 337)
TANH_BIAS = (0, 778, 2417, 4851, 7922, 11474, 15334, 19335, 23303, 26699, 28653, 30026, 31344,
             31981, 32565, 32725)
#: Right shift of ``slope * x`` per segment (segments 1-5, 6-9, 10-13, 14-16).
SIGMOID_SHIFTS = (13,) * 5 + (14,) * 4 + (16,) * 4 + (19,) * 3
TANH_SHIFTS = (11,) * 5 + (12,) * 4 + (14,) * 4 + (18,) * 3


def _segments(a, bands):
    """Index (0..15) of the first segment with ``a <= bands[j+1]``; 16 where none matches."""
    return np.searchsorted(np.asarray(bands[1:], np.int64), a, side="left")


def to_q11(q, exp: int):
    """The original's move to Q11: ``q << (11 - exp)`` when ``11 > exp``, else
    ``rhu(q / 2**(exp - 11))``. Not saturated (int64)."""
    q = np.asarray(q, np.int64)
    s = 11 - int(exp)
    return q << s if s > 0 else numerics.rounding_shift(q, -s)


def sigmoid_q15(x11):
    """``floor(slope_j * x / 2**sh_j) + (x >= 0 ? B0_j : 32768 - B0_j)`` on the signed Q11 ``x``;
    0 where ``|x| > 32768`` (no segment matches in the original either)."""
    x = np.asarray(x11, np.int64)
    seg = _segments(np.abs(x), SIGMOID_BANDS)
    j = np.minimum(seg, 15)
    slope = np.asarray(SIGMOID_SLOPES, np.int64)[j]
    sh = np.asarray(SIGMOID_SHIFTS, np.int64)[j]
    b0 = np.asarray(SIGMOID_BIAS_POS, np.int64)[j]
    y = ((slope * x) >> sh) + np.where(x < 0, 32768 - b0, b0)
    return np.where(seg < 16, y, 0)


def tanh_q15(x11):
    """Odd segments: ``floor(slope_j * |x| / 2**sh_j) + bias_j`` for ``x >= 0``,
    ``floor(-slope_j * |x| / 2**sh_j) - bias_j`` below; ``x = -32768`` counts as ``|x| = 32767``;
    0 where ``|x| > 32768``."""
    x = np.asarray(x11, np.int64)
    a = np.where(x == -32768, 32767, np.abs(x))
    seg = _segments(a, TANH_BANDS)
    j = np.minimum(seg, 15)
    slope = np.asarray(TANH_SLOPES, np.int64)[j]
    sh = np.asarray(TANH_SHIFTS, np.int64)[j]
    bias = np.asarray(TANH_BIAS, np.int64)[j]
    y = np.where(x < 0, ((-slope * a) >> sh) - bias, ((slope * a) >> sh) + bias)
    return np.where(seg < 16, y, 0)


def q15_to_q7(y15):
    """``sat8(floor(y15 / 256 + 0.5))``."""
    return numerics.requantize(np.asarray(y15, np.int64), 8, 8)


def sigmoid_q7(x11):
    """Sigmoid gate of the original: Q11 in, Q7 out in [0, 127]."""
    return np.maximum(q15_to_q7(sigmoid_q15(x11)), 0)


def tanh_q7(x11):
    """Tanh of the original: Q11 in, Q7 out in [-128, 127]."""
    return q15_to_q7(tanh_q15(x11))


# -- softmax: Q25 in, Q15 out (NatureDSP vec_softmax32x32 as the original ran it) ------------------
SOFTMAX_P23 = (57364, 446161, 2008107, 5813551, 8388575)
LOG2E_Q29 = 774541002


def _rasym(v, n: int, saturate: bool = False):
    """The original's ``shift_rasym(v, -n)``: ``floor(double(v) * 2**-n + 0.5)`` computed in IEEE
    double (``v`` int64 is first rounded to double, as C converts it), saturated to int32 when
    ``saturate``."""
    y = np.floor(np.asarray(v, np.int64).astype(np.float64) * (2.0 ** -n) + 0.5)
    if saturate:
        y = np.clip(y, INT32_MIN, INT32_MAX)
    return y.astype(np.int64)


def _shift_sat(v, n):
    """``v << n`` (``n >= 0``) or ``v >> -n`` (floor), saturated to int32."""
    v = np.asarray(v, np.int64)
    n = np.asarray(n, np.int64)
    out = np.where(n >= 0, v << np.clip(n, 0, 62), v >> np.clip(-n, 0, 63))
    big = (n > 0) & (np.abs(v) >= (np.int64(1) << np.clip(31 - n, 0, 62)))
    out = np.where(big, np.where(v > 0, INT32_MAX, INT32_MIN), out)
    return np.clip(out, INT32_MIN, INT32_MAX)


def softmax_q15(x25, axis: int = -1):
    """Softmax along ``axis`` of int32 Q25 values, Q15 result (int64), as the original computes:

    ``d = sat32(x - max)``; ``X = sat32(rasym(d * 774541002, 31))`` (Q23 base-2 exponent);
    ``E = (X >> 23) + 1``, ``f = (X & 0x7FFFFF) - 2**23``; ``Y = p0``, ``Y = rasym(Y*f, 23) + p_j``
    (j = 1..4); ``e = trunc(Y * 2**E)``; ``S = min(sum e, 2**31-1)``; ``n = nsa(S) - 8``,
    ``S' = sat32(S << n)`` (or ``S >> -n``), ``n += 1``; ``R = 0xBB5000 - S'`` and twice
    ``F = 2 * (2**22 - rasym(S'*R, 23))``, ``R += rasym(R*F, 23)``; ``R = sat32(R << n)`` (or
    ``>> -n``); ``y = sat32(rasym(R * e, 31))``. ``rasym`` is the double-precision rounding shift
    :func:`_rasym`; plain shifts are arithmetic (floor).
    """
    x = np.moveaxis(np.asarray(x25, np.int64), axis, -1)
    d = np.clip(x - x.max(axis=-1, keepdims=True), INT32_MIN, INT32_MAX)
    xx = _rasym(d * LOG2E_Q29, 31, saturate=True)
    e_exp = (xx >> 23) + 1
    f = (xx & 0x7FFFFF) - 0x800000
    y = np.full(x.shape, SOFTMAX_P23[0], np.int64)
    for p in SOFTMAX_P23[1:]:
        y = _rasym(y * f, 23) + p
    e = np.trunc(y.astype(np.float64) * np.ldexp(1.0, e_exp)).astype(np.int64)
    s = np.minimum(e.sum(axis=-1, keepdims=True), INT32_MAX)
    nsa = np.where(s == 0, 0, 31 - _bit_length(s))
    n = nsa - 8
    s = _shift_sat(s, n)
    n = n + 1
    r = 0xBB5000 - s
    for _ in range(2):
        g = 2 * (0x400000 - _rasym(s * r, 23))
        r = r + _rasym(r * g, 23)
    r = _shift_sat(r, n)
    out = _rasym(r * e, 31, saturate=True)
    return np.moveaxis(out, -1, axis)


def _bit_length(v):
    """Bit length of non-negative int64 values (exact: no float log)."""
    v = np.asarray(v, np.int64)
    out = np.zeros(v.shape, np.int64)
    for b in range(62, -1, -1):
        out = np.where((out == 0) & (v >= (np.int64(1) << b)), b + 1, out)
    return out


def to_q25(q, exp: int):
    """``sat32(q << (25 - exp))`` when ``25 > exp``, else ``sat32(rhu(q / 2**(exp - 25)))``."""
    q = np.asarray(q, np.int64)
    s = 25 - int(exp)
    if s > 0:
        return np.clip(q << min(s, 38), INT32_MIN, INT32_MAX)
    return np.clip(numerics.rounding_shift(q, -s), INT32_MIN, INT32_MAX)


# -- layer norm: Q10 normalised value through a 768-entry 1/sqrt table ------------------------------
def _rsqrt_table():
    """``T[i] = min(32767, floor(2**15 * sqrt(256 / (i + 256))))``, i = 0..767, exactly:
    ``floor(2**19 / sqrt(t)) = isqrt(floor(2**38 / t))``."""
    return np.array([min(32767, math.isqrt((1 << 38) // t)) for t in range(256, 1024)], np.int64)


RSQRT_Q15 = _rsqrt_table()


def layernorm_q10(x, k: int, exp_x: int):
    """The original's normalised value ``sat16(rhu((k*x - S1) * r, s))`` (Q10) over the last axis
    of ``x`` (int64, ``k`` elements per row).

    ``S1 = sum x``, ``S2 = sum x^2``; ``D = k*S2 - S1^2 + q_eps`` with
    ``q_eps = floor(1e-5 * 2**(2 exp_x) * k**2 + 0.5)`` (eps fixed at 1e-5, as the original);
    ``b`` = index of the top bit of ``D``, ``j = floor(b/2) - 4``, ``t = D >> 2j`` (``D << -2j``
    for ``j < 0``) in [256, 1024), ``r = RSQRT_Q15[t - 256]``, ``s = 9 + j``; ``D = 0`` uses
    ``r = RSQRT_Q15[0]``, ``s = 4``. The original multiplied ``k*S2`` and ``S1^2`` in int32: a row
    where they (or ``D``) leave int32 cannot be reproduced and is refused (NumericError).
    """
    x = np.asarray(x, np.int64)
    s1 = x.sum(axis=-1, keepdims=True)
    s2 = (x * x).sum(axis=-1, keepdims=True)
    q_eps = math.floor(1e-5 * 2.0 ** (2 * int(exp_x)) * k * k + 0.5)
    ks2, s1s1 = k * s2, s1 * s1
    d = ks2 - s1s1 + q_eps
    if max(int(ks2.max(initial=0)), int(s1s1.max(initial=0)), int(d.max(initial=0)),
           q_eps) > INT32_MAX:
        raise NumericError(f"a row of {k} elements gives N*sum(x^2) = {int(ks2.max())},"
                           f" sum(x)^2 = {int(s1s1.max())}, eps term {q_eps}: the original"
                           f" computed these in int32 and wrapped around here, so its result"
                           f" cannot be reproduced; re-train with a smaller input range")
    b = _bit_length(d) - 1
    j = b // 2 - 4
    t = np.where(j >= 0, d >> np.maximum(2 * j, 0), d << np.maximum(-2 * j, 0))
    zero = d == 0
    r = RSQRT_Q15[np.where(zero, 0, np.clip(t - 256, 0, 767))]
    s = np.where(zero, 4, 9 + j)
    v = (k * x - s1) * r
    y = (v + (np.int64(1) << (s - 1))) >> s
    return np.clip(y, -32768, 32767)


# -- kernels -------------------------------------------------------------------------------------
@kernel("LutInt")
def lut_int(inputs, *, bits_x, bits_o, bits_y=0):
    """Table lookup: ``y = T[x + 2**(bits_x-1)]``; with a second input ``y``:
    ``T[(x + 2**(bits_x-1)) * 2**bits_y + y + 2**(bits_y-1)]`` (numpy broadcasting of x, y).

    ``T`` (last input) is an int(bits_o) initializer of ``2**bits_x`` (times ``2**bits_y``)
    entries. The importer fills it with an original elementwise algorithm evaluated on every
    possible input.
    """
    *args, table = inputs
    bits_x, bits_y = int(bits_x), int(bits_y)
    check_dtype(table, bits_o, "table T")
    x = args[0]
    check_dtype(x, bits_x, "input x")
    idx = x.astype(np.int64) + (1 << (bits_x - 1))
    size = 1 << bits_x
    if len(args) == 2:
        check_dtype(args[1], bits_y, "input y")
        idx = idx * (1 << bits_y) + args[1].astype(np.int64) + (1 << (bits_y - 1))
        size <<= bits_y
    elif len(args) != 1 or bits_y:
        raise ModelFileError(f"LutInt takes (x, T) or (x, y, T) with bits_y; got {len(inputs)}"
                             f" inputs and bits_y={bits_y}")
    if table.shape != (size,):
        raise ModelFileError(f"table T must have shape ({size},), got {list(table.shape)}")
    return [table[idx]]


@kernel("SoftmaxLuna")
def softmax_luna(inputs, *, axis, exp_x, bits_x, exp_o, bits_o):
    """``sat_o(rshift(clip(softmax_q15(to_q25(x)), 0, 32767), 15 - exp_o))`` along ``axis``
    (:func:`softmax_q15`)."""
    (x,) = inputs
    check_dtype(x, bits_x, "input x")
    y15 = np.clip(softmax_q15(to_q25(x, exp_x), int(axis)), 0, 32767)
    q = numerics.requantize(y15, 15 - int(exp_o), int(bits_o))
    return [q.astype(numerics.int_dtype(bits_o))]


@kernel("LayerNormLuna")
def layernorm_luna(inputs, *, exp_x, bits_x, exp_w, exp_o, bits_o):
    """``sat_o(rshift(z * W + B, 10 + exp_w - exp_o))``, ``z`` = :func:`layernorm_q10` over the
    trailing axes of ``x`` holding ``W.size`` elements; ``W`` int16, ``B`` int32 at
    exponent ``10 + exp_w``."""
    x, w, b = inputs
    check_dtype(x, bits_x, "input x")
    check_dtype(w, 16, "weight W")
    check_dtype(b, numerics.BIAS_BITS, "bias B")
    k = int(w.size)
    lead, prod = x.ndim, 1
    while lead > 0 and prod < k:
        lead -= 1
        prod *= x.shape[lead]
    if prod != k or b.size != k:
        raise ModelFileError(f"weight W ({k} elements) and bias B ({b.size}) must match the"
                             f" trailing dims of x {list(x.shape)}")
    rows = x.reshape(x.shape[:lead] + (k,)).astype(np.int64)
    z = layernorm_q10(rows, k, exp_x)
    acc = z * w.reshape(-1).astype(np.int64) + b.reshape(-1).astype(np.int64)
    q = numerics.requantize(acc, 10 + int(exp_w) - int(exp_o), int(bits_o))
    return [q.reshape(x.shape).astype(numerics.int_dtype(bits_o))]
