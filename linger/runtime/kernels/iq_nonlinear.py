"""linger's quantized non-linear ops: iqSigmoid, iqTanh, iqSiLU, iqGELU, SoftmaxInt,
LogSoftmaxInt, LayerNormInt. Thin wrappers around :mod:`linger.iqmath` (integer tables and
fixed-point steps, no float transcendental), shared with the PyTorch eval path."""

from __future__ import annotations

import numpy as np

from ... import iqmath, numerics
from ...errors import ModelFileError
from .. import schema as S
from . import kernel
from ._common import check_dtype


_ONE = dict(exp_x=S.Exp(), bits_x=S.Bits(), exp_o=S.Exp(), bits_o=S.Bits())
for _op in ("iqSigmoid", "iqTanh", "iqSiLU", "iqGELU"):
    S.schema(_op, inputs=(1, 1), memory=S.sum_memory(8), **_ONE)
for _op in ("SoftmaxInt", "LogSoftmaxInt"):
    S.schema(_op, inputs=(1, 1), memory=S.sum_memory(8), axis=S.Axis(), **_ONE)
S.schema("LayerNormInt", inputs=(1, 3), memory=S.sum_memory(10), axis=S.Axis(),
         eps_q=S.Int(0, 1 << 61), exp_w=S.Exp(), bits_w=S.Bits(), **_ONE)


def _out(q, bits):
    return [np.asarray(q).astype(numerics.int_dtype(int(bits)))]


def _gate(name, fn, formula):
    @kernel(name)
    def run(inputs, *, exp_x, bits_x, exp_o, bits_o):
        (x,) = inputs
        check_dtype(x, bits_x, f"{name} input")
        return _out(fn(x, int(exp_x), int(exp_o), int(bits_o)), bits_o)
    run.__name__ = name
    run.__doc__ = formula + " with ``x11 = sat16(rs(x, exp_x - 11))`` (see linger.iqmath)."
    return run


iq_sigmoid = _gate("iqSigmoid", iqmath.sigmoid, "``sat_o(rs(sigmoid_q15(x11), 15 - exp_o))``")
iq_tanh = _gate("iqTanh", iqmath.tanh, "``sat_o(rs(tanh_q15(x11), 15 - exp_o))``")
iq_silu = _gate("iqSiLU", iqmath.silu, "``sat_o(rs(x * sigmoid_q15(x11), exp_x + 15 - exp_o))``")
iq_gelu = _gate("iqGELU", iqmath.gelu, "``sat_o(rs(x * phi_q15(x11), exp_x + 15 - exp_o))``")


@kernel("SoftmaxInt")
def softmax_int(inputs, *, axis, exp_x, bits_x, exp_o, bits_o):
    """Integer softmax along ``axis``: Q16 ``x - max``, ``2**f`` table to Q20, rounded division
    by the sum to Q15, ``sat_o(rs(p15, 15 - exp_o))``."""
    (x,) = inputs
    check_dtype(x, bits_x, "SoftmaxInt input")
    return _out(iqmath.softmax(x, int(exp_x), int(axis), int(exp_o), int(bits_o)), bits_o)


@kernel("LogSoftmaxInt")
def log_softmax_int(inputs, *, axis, exp_x, bits_x, exp_o, bits_o):
    """Integer log-softmax along ``axis``: ``(x - max) - ln(sum exp)`` in Q16, then
    ``sat_o(rs(y16, 16 - exp_o))``."""
    (x,) = inputs
    check_dtype(x, bits_x, "LogSoftmaxInt input")
    return _out(iqmath.log_softmax(x, int(exp_x), int(axis), int(exp_o), int(bits_o)), bits_o)


@kernel("LayerNormInt")
def layer_norm_int(inputs, *, axis, eps_q, exp_x, bits_x, exp_w, bits_w, exp_o, bits_o):
    """``z = rhu(2**10 (k x - S1) / sqrt(k S2 - S1**2 + eps_q))`` over the axes from ``axis`` on
    (exact integer square root), ``sat_o(rs(z * W + B, 10 + exp_w - exp_o))``; W and B are
    optional (without W: ``sat_o(rs(z + B, 10 - exp_o))``)."""
    x, w, b = (list(inputs) + [None, None])[:3]
    check_dtype(x, bits_x, "LayerNormInt input")
    if w is not None:
        check_dtype(w, bits_w, "LayerNormInt weight")
    if b is not None:
        check_dtype(b, 32, "LayerNormInt bias")
    axis = int(axis)
    ndim = -axis if axis < 0 else x.ndim - axis
    if not 1 <= ndim <= x.ndim:
        raise ModelFileError(f"LayerNormInt axis={axis} is out of range for rank {x.ndim}")
    q = iqmath.layer_norm(x, ndim, int(eps_q), w, int(exp_w) if w is not None else 0, b,
                          int(exp_o), int(bits_o))
    return _out(q, bits_o)
