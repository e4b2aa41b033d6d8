"""linger's quantized tensor arithmetic: iqAdd, iqSub, iqMul, iqDiv, iqCat, iqSum, iqMean,
MatMulInt. Every kernel is a thin wrapper around :mod:`linger.iqmath`, the very functions the
PyTorch eval path calls, so both sides agree bit for bit by construction."""

from __future__ import annotations

import numpy as np

from ... import iqmath, numerics
from ...errors import ModelFileError
from . import kernel
from ._common import check_dtype


def _out(q, bits):
    return [np.asarray(q).astype(numerics.int_dtype(int(bits)))]


def _add(name, subtract):
    @kernel(name)
    def run(inputs, *, exp_x, bits_x, exp_y, bits_y, exp_o, bits_o):
        x, y = inputs
        check_dtype(x, bits_x, f"{name} input x")
        check_dtype(y, bits_y, f"{name} input y")
        return _out(iqmath.add(x, exp_x, y, exp_y, exp_o, bits_o, subtract), bits_o)
    run.__name__ = name
    run.__doc__ = (f"``sat_o(sat32(rs(x, exp_x - exp_o)) {'-' if subtract else '+'}"
                   f" sat32(rs(y, exp_y - exp_o)))`` with numpy broadcasting.")
    return run


iq_add = _add("iqAdd", False)
iq_sub = _add("iqSub", True)


def _mul(name):
    @kernel(name)
    def run(inputs, *, exp_x, bits_x, exp_y, bits_y, exp_o, bits_o):
        x, y = inputs
        check_dtype(x, bits_x, f"{name} input x")
        check_dtype(y, bits_y, f"{name} input y")
        return _out(iqmath.mul(x, exp_x, y, exp_y, exp_o, bits_o), bits_o)
    run.__name__ = name
    run.__doc__ = "``sat_o(rs(x * y, exp_x + exp_y - exp_o))`` (iqDiv: y = quantized 1/c)."
    return run


iq_mul = _mul("iqMul")
iq_div = _mul("iqDiv")


@kernel("MatMulInt")
def matmul_int(inputs, *, exp_x, bits_x, exp_y, bits_y, exp_o, bits_o):
    """``sat_o(rs(x @ y, exp_x + exp_y - exp_o))`` with matmul broadcasting, exact accumulator."""
    x, y = inputs
    check_dtype(x, bits_x, "MatMulInt input x")
    check_dtype(y, bits_y, "MatMulInt input y")
    return _out(iqmath.matmul(x, exp_x, y, exp_y, exp_o, bits_o), bits_o)


@kernel("iqCat")
def iq_cat(inputs, *, axis, new_axis=0, exp_inputs, bits_inputs, exp_o, bits_o):
    """``concat_axis(sat_o(rs(x_i, exp_inputs[i] - exp_o)))`` (``new_axis=1``: stack)."""
    if len(inputs) != len(exp_inputs) or len(inputs) != len(bits_inputs):
        raise ModelFileError(f"iqCat has {len(inputs)} inputs but {len(exp_inputs)} exp_inputs"
                             f" and {len(bits_inputs)} bits_inputs")
    for i, (x, b) in enumerate(zip(inputs, bits_inputs)):
        check_dtype(x, b, f"iqCat input {i}")
    return _out(iqmath.cat(inputs, exp_inputs, int(exp_o), int(bits_o), int(axis),
                           bool(new_axis)), bits_o)


@kernel("iqSum")
def iq_sum(inputs, *, axes, keepdims, exp_x, bits_x, exp_o, bits_o):
    """``sat_o(rs(sum_axes(x), exp_x - exp_o))``, exact int64 sum."""
    (x,) = inputs
    check_dtype(x, bits_x, "iqSum input")
    return _out(iqmath.reduce_sum(x, exp_x, exp_o, bits_o, list(axes), bool(keepdims)), bits_o)


@kernel("iqMean")
def iq_mean(inputs, *, axes, keepdims, exp_x, bits_x, exp_o, bits_o):
    """``sat_o(rs(s * m, t + exp_x - exp_o))``: ``s`` the sum over ``axes`` of ``k`` elements,
    ``m = rhu(2**t / k)``, ``t = 22 + bit_length(k)`` (:func:`linger.iqmath.mean_multiplier`)."""
    (x,) = inputs
    check_dtype(x, bits_x, "iqMean input")
    return _out(iqmath.reduce_mean(x, exp_x, exp_o, bits_o, list(axes), bool(keepdims)), bits_o)
