"""linger's quantized activations iqHardSigmoid, iqHardSwish, iqPReLU, iqELU: thin wrappers around
:mod:`linger.iqops`, the functions the PyTorch eval path calls."""

from __future__ import annotations

import numpy as np

from ... import iqops, numerics
from ...errors import ModelFileError
from .. import schema as S
from . import kernel
from ._common import check_dtype

_ONE = dict(exp_x=S.Exp(), bits_x=S.Bits(), exp_o=S.Exp(), bits_o=S.Bits())
S.schema("iqHardSigmoid", inputs=(1, 1), memory=S.sum_memory(8), **_ONE)
S.schema("iqHardSwish", inputs=(1, 1), memory=S.sum_memory(8), **_ONE)
S.schema("iqPReLU", inputs=(2, 2), memory=S.sum_memory(16), axis=S.Axis(), exp_w=S.Exp(),
         bits_w=S.Bits(), **_ONE)
S.schema("iqELU", inputs=(1, 1), memory=S.sum_memory(16), alpha_q=S.Int(-(1 << 15), 1 << 15),
         exp_alpha=S.Exp(), **_ONE)


def _out(q, bits):
    return [np.asarray(q).astype(numerics.int_dtype(int(bits)))]


@kernel("iqHardSigmoid")
def iq_hardsigmoid(inputs, *, exp_x, bits_x, exp_o, bits_o):
    """``sat_o(rs(h15, 15 - exp_o))``, ``h15 = clip(rhu(x 2**(15 - exp_x) / 6) + 2**14, 0,
    2**15)``."""
    (x,) = inputs
    check_dtype(x, bits_x, "iqHardSigmoid input")
    return _out(iqops.hardsigmoid(x, int(exp_x), int(exp_o), int(bits_o)), bits_o)


@kernel("iqHardSwish")
def iq_hardswish(inputs, *, exp_x, bits_x, exp_o, bits_o):
    """``sat_o(rs(x * h15, exp_x + 15 - exp_o))`` (``h15`` as in iqHardSigmoid)."""
    (x,) = inputs
    check_dtype(x, bits_x, "iqHardSwish input")
    return _out(iqops.hardswish(x, int(exp_x), int(exp_o), int(bits_o)), bits_o)


@kernel("iqPReLU")
def iq_prelu(inputs, *, axis, exp_x, bits_x, exp_w, bits_w, exp_o, bits_o):
    """``x >= 0``: ``sat_o(rs(x, exp_x - exp_o))``; else ``sat_o(rs(x * W, exp_x + exp_w -
    exp_o))``; ``W``: one slope, or one per channel along ``axis``."""
    x, w = inputs
    check_dtype(x, bits_x, "iqPReLU input")
    check_dtype(w, bits_w, "iqPReLU slope W")
    axis = int(axis)
    if w.size > 1 and (not 0 <= axis < x.ndim or x.shape[axis] != w.size):
        raise ModelFileError(f"iqPReLU has {w.size} slopes but input shape {list(x.shape)}"
                             f" along axis {axis}")
    return _out(iqops.prelu(x, int(exp_x), w, int(exp_w), int(exp_o), int(bits_o), axis),
                bits_o)


@kernel("iqELU")
def iq_elu(inputs, *, alpha_q, exp_alpha, exp_x, bits_x, exp_o, bits_o):
    """``x > 0``: ``sat_o(rs(x, exp_x - exp_o))``; else ``sat_o(rs((exp_q20(d16) - 2**20)
    alpha_q, 20 + exp_alpha - exp_o))``, ``d16 = max(rs(x, exp_x - 16), -32 * 2**16)``."""
    (x,) = inputs
    check_dtype(x, bits_x, "iqELU input")
    return _out(iqops.elu(x, int(exp_x), int(alpha_q), int(exp_alpha), int(exp_o), int(bits_o)),
                bits_o)
