"""Integer algorithms of the activation, resampling and pooling ops added beside
:mod:`linger.iqmath` (numpy only, written once).

The PyTorch eval path (``linger.quant.ops_act``, ``linger.quant.ops_resample``) and the runtime
kernels (``linger.runtime.kernels.iq_act``, ``...resample``) call these very functions on exact
``int64`` integers, so both sides agree bit for bit. Notation as in :mod:`linger.iqmath`: a value
is ``q * 2**-n``, ``rs`` the rounding shift, ``rhu(v) = floor(v + 0.5)``, ``sat_b`` saturation.

- hard-sigmoid: ``h15 = clip(rhu(x 2**15 / 6) + 2**14, 0, 2**15)`` (Q15, exact rational
  rounding), output ``sat_b(rs(h15, 15 - no))`` on the fixed grid ``no = bits - 1``;
- hard-swish: ``sat_b(rs(q * h15, n + 15 - no))`` (output statistic);
- PReLU / LeakyReLU: ``sat_b(rs(q 2**na, n + na - no))`` for ``q >= 0``,
  ``sat_b(rs(q * qa, n + na - no))`` below (slopes ``qa`` quantized with exponent ``na``);
- ELU: ``sat_b(rs(q, n - no))`` for ``q > 0``; below, ``d16 = max(rs(q, n - 16), -32 * 2**16)``,
  ``e20 = exp_q20(d16)`` (the softmax ``2**f`` table), ``sat_b(rs((e20 - 2**20) * qa, 20 + na -
  no))`` (alpha ``qa`` int16 with exponent ``na``);
- nearest upsampling: index ``min(floor(f32(dst) * f32(scale)), in - 1)``, PyTorch's own
  float32 formula (``scale = 1 / scale_factor`` when given, else ``in / out``): one correctly
  rounded IEEE multiplication, deterministic everywhere; values unchanged;
- bilinear upsampling: source coordinates as exact rationals, weights ``rhu(2**15 * frac)``
  (Q15), ``sat_b(rs(sum w_y w_x q, 30))``, exponent unchanged;
- adaptive average pooling: PyTorch's windows ``[floor(i in / out), ceil((i + 1) in / out))``,
  mean rounded half up ``floor((2 s + k) / (2 k))``, exponent unchanged; adaptive max: the
  window maximum.
"""

from __future__ import annotations

import numpy as np

from . import iqmath, numerics
from .iqmath import PROB_Q, as_int, requant, rounded_div

I64 = np.int64
#: Q format of the ELU exponential (the softmax ``2**f`` table output).
EXP_Q = iqmath.EXP_Q


# -- hard-sigmoid / hard-swish ------------------------------------------------------------------

def hardsigmoid_q15(q, n: int) -> np.ndarray:
    """``clip(rhu(q 2**(15-n) / 6) + 2**14, 0, 2**15)``: ``relu6(x + 3) / 6`` in Q15."""
    q = as_int(q)
    n = int(n)
    if n <= PROB_Q:
        num, den = q << (PROB_Q - n), 6
    else:
        num, den = q, 6 << (n - PROB_Q)
    return np.clip(rounded_div(num, den) + (1 << (PROB_Q - 1)), 0, 1 << PROB_Q)


def hardsigmoid(q, n: int, no: int, bits: int) -> np.ndarray:
    """``sat_b(rs(h15, 15 - no))``; linger uses ``no = bits - 1`` (Q7 for int8)."""
    return requant(hardsigmoid_q15(q, n), PROB_Q - no, bits)


def hardswish(q, n: int, no: int, bits: int) -> np.ndarray:
    """``x * relu6(x + 3) / 6``: ``sat_b(rs(q * h15, n + 15 - no))``."""
    q = as_int(q)
    return requant(q * hardsigmoid_q15(q, n), int(n) + PROB_Q - no, bits)


# -- PReLU / LeakyReLU / ELU ---------------------------------------------------------------------

def _channel(a, ndim: int, axis: int) -> np.ndarray:
    """Slopes of shape ``(C,)`` broadcast along ``axis`` of an ``ndim``-d input (scalars as is)."""
    a = as_int(a)
    if a.size <= 1:
        return a.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return a.reshape(shape)


def prelu(q, n: int, qa, na: int, no: int, bits: int, axis: int = 1) -> np.ndarray:
    """``q >= 0``: ``sat_b(rs(q, n - no))`` (equal to ``rs(q 2**na, n + na - no)``); below:
    ``sat_b(rs(q qa, n + na - no))``; ``qa`` one slope or one per channel (``axis``)."""
    q = as_int(q)
    neg = requant(q * _channel(qa, q.ndim, axis), int(n) + int(na) - no, bits)
    return np.where(q >= 0, requant(q, int(n) - no, bits), neg)


def exp_q20(d16) -> np.ndarray:
    """``2**20 exp(d)`` for ``d <= 0`` given in Q16 (``d >= -32``): :mod:`linger.iqmath`'s
    softmax exponential."""
    return iqmath.exp_q20_nonpos(np.asarray(d16, dtype=I64))


def elu(q, n: int, qa, na: int, no: int, bits: int) -> np.ndarray:
    """``x > 0``: ``sat_b(rs(q, n - no))``; else ``sat_b(rs((exp_q20(d16) - 2**20) qa,
    20 + na - no))`` with ``d16 = max(rs(q, n - 16), -32 2**16)``."""
    q = as_int(q)
    d16 = np.maximum(requant(np.minimum(q, 0), int(n) - iqmath.SOFTMAX_Q, 32),
                     -(iqmath.SOFTMAX_FLOOR << iqmath.SOFTMAX_Q))
    neg = (exp_q20(d16) - (1 << EXP_Q)) * as_int(qa)
    return np.where(q > 0, requant(q, int(n) - no, bits),
                    requant(neg, EXP_Q + int(na) - no, bits))


# -- upsampling ----------------------------------------------------------------------------------

def out_size(size_in: int, size, scale) -> int:
    """Output length along one axis: ``size``, or ``floor(size_in * scale)`` (PyTorch's rule)."""
    if size is not None and int(size) > 0:
        return int(size)
    return int(np.floor(float(size_in) * float(scale)))


def nearest_index(size_in: int, size_out: int, scale=None) -> np.ndarray:
    """Source index of each output position: ``min(floor(f32(dst) * s), in - 1)`` with
    ``s = f32(1 / scale)`` when a scale factor is given, else ``f32(in) / f32(out)`` (PyTorch's
    ``nearest`` mode on the CPU, float32 as it computes it)."""
    if scale is not None and float(scale) > 0:
        s = np.float32(1.0 / float(scale))
    else:
        s = np.float32(np.float32(size_in) / np.float32(size_out))
    dst = np.arange(size_out, dtype=np.float32)
    idx = np.floor(dst * s).astype(I64)
    return np.minimum(idx, size_in - 1)


def upsample_nearest(q, out_sizes, scales) -> np.ndarray:
    """Gather along the last ``len(out_sizes)`` axes with :func:`nearest_index`."""
    q = np.asarray(q)
    nd = len(out_sizes)
    for k in range(nd):
        axis = q.ndim - nd + k
        idx = nearest_index(q.shape[axis], int(out_sizes[k]), scales[k] if scales else None)
        q = np.take(q, idx, axis=axis)
    return q


def linear_weights(size_in: int, size_out: int, align_corners: bool) -> tuple:
    """``(i0, i1, w1)`` per output position: neighbours and the Q15 weight of ``i1``.

    Source coordinate as an exact rational ``num / den``: ``align_corners``:
    ``dst (in - 1) / (out - 1)``; else ``max((2 dst + 1) in - out, 0) / (2 out)`` (PyTorch's
    half-pixel rule, clamped at 0); ``i0 = floor``, ``i1 = min(i0 + 1, in - 1)``,
    ``w1 = rhu(2**15 (num - i0 den) / den)``.
    """
    dst = np.arange(size_out, dtype=I64)
    if align_corners:
        num, den = dst * (size_in - 1), max(size_out - 1, 1)
    else:
        num, den = np.maximum((2 * dst + 1) * size_in - size_out, 0), 2 * size_out
    i0 = np.minimum(num // den, size_in - 1)
    w1 = rounded_div((num - i0 * den) << PROB_Q, den)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, w1


def upsample_linear(q, out_sizes, align_corners: bool, bits: int) -> np.ndarray:
    """Separable (bi)linear interpolation over the last ``len(out_sizes)`` axes:
    ``sat_b(rs(sum_k w_k q_k, 15 * nd))`` with the Q15 weights of :func:`linear_weights`."""
    acc = as_int(q)
    nd = len(out_sizes)
    for k in range(nd):
        axis = acc.ndim - nd + k
        i0, i1, w1 = linear_weights(acc.shape[axis], int(out_sizes[k]), bool(align_corners))
        shape = [1] * acc.ndim
        shape[axis] = -1
        w1 = w1.reshape(shape)
        acc = np.take(acc, i0, axis=axis) * ((1 << PROB_Q) - w1) + np.take(acc, i1, axis=axis) * w1
    return requant(acc, PROB_Q * nd, bits)


# -- adaptive pooling ----------------------------------------------------------------------------

def adaptive_windows(size_in: int, size_out: int) -> list:
    """PyTorch's adaptive windows ``[floor(i in / out), ceil((i + 1) in / out))``."""
    return [(i * size_in // size_out, -(-(i + 1) * size_in // size_out))
            for i in range(size_out)]


def _adaptive(q, out_sizes, reduce):
    nd = len(out_sizes)
    for k in range(nd):
        axis = q.ndim - nd + k
        parts = [reduce(np.take(q, np.arange(a, b), axis=axis), axis)
                 for a, b in adaptive_windows(q.shape[axis], int(out_sizes[k]))]
        q = np.stack(parts, axis=axis)
    return q


def adaptive_avg_pool(q, out_sizes, bits: int) -> np.ndarray:
    """``floor((2 s + k) / (2 k))`` over each 1-d/2-d adaptive window (``s``: exact sum, ``k``:
    the window's element count); the exponent is unchanged, so the result always fits."""
    q = as_int(q)
    nd = len(out_sizes)
    sums = _adaptive(q, out_sizes, lambda v, a: v.sum(axis=a))
    counts = np.ones((1,) * q.ndim, dtype=I64)
    for k in range(nd):
        axis = q.ndim - nd + k
        c = np.array([b - a for a, b in adaptive_windows(q.shape[axis], int(out_sizes[k]))],
                     dtype=I64)
        shape = [1] * q.ndim
        shape[axis] = -1
        counts = counts * c.reshape(shape)
    return numerics.saturate(rounded_div(sums, counts), bits)


def adaptive_max_pool(q, out_sizes) -> np.ndarray:
    """The maximum of each adaptive window (values unchanged)."""
    return _adaptive(np.asarray(q), out_sizes, lambda v, a: v.max(axis=a))
