"""linger's quantized tensor arithmetic: iqAdd, iqSub, iqMul, iqDiv, iqCat, iqSum, iqMean,
MatMulInt. Every kernel is a thin wrapper around :mod:`linger.iqmath`, the very functions the
PyTorch eval path calls, so both sides agree bit for bit by construction."""

from __future__ import annotations

import numpy as np

from ... import iqmath, numerics
from ...errors import ModelFileError
from .. import schema as S
from . import fast, kernel
from ._common import check_dtype
from ._fast import EXACT, MAX_SHIFT, FastOp, Stage, cl, fast_ok, int_max, uncl


def _matmul_memory(attrs, ins, fast):
    """Both operands and three int64 temporaries of the broadcast ``(..., M, N)`` result."""
    x, y = ins
    if len(x.shape) < 2 or len(y.shape) < 2:
        return S.sum_memory(4)(attrs, ins, fast)
    batch = S.broadcast([x.shape[:-2], y.shape[:-2]], "MatMulInt inputs")
    return S.sum_memory(2)(attrs, ins, fast) + 3 * S.nbytes([*batch, x.shape[-2], y.shape[-1]])


def _cat_check(attrs, consts, where):
    n = len(consts)
    S.need(len(attrs["exp_inputs"]) == n and len(attrs["bits_inputs"]) == n, where,
           f"{n} inputs need {n} exp_inputs and bits_inputs, got {len(attrs['exp_inputs'])} and"
           f" {len(attrs['bits_inputs'])}")


_TWO = dict(exp_x=S.Exp(), bits_x=S.Bits(), exp_y=S.Exp(), bits_y=S.Bits(), exp_o=S.Exp(),
            bits_o=S.Bits())
for _op in ("iqAdd", "iqSub", "iqMul", "iqDiv"):
    S.schema(_op, inputs=(2, 2), memory=S.broadcast_memory(6), **_TWO)
S.schema("MatMulInt", inputs=(2, 2), memory=_matmul_memory, **_TWO)
S.schema("iqCat", inputs=(1, S.MAX_LIST), memory=S.sum_memory(4), check=_cat_check,
         axis=S.Axis(), new_axis=S.Flag(), exp_inputs=S.Ints(*S.EXP, (1, S.MAX_LIST)),
         bits_inputs=S.Ints(*S.BITS, (1, S.MAX_LIST)), exp_o=S.Exp(), bits_o=S.Bits())
for _op in ("iqSum", "iqMean"):
    S.schema(_op, inputs=(1, 1), memory=S.sum_memory(4), axes=S.Ints(*S.AXIS, (0, 8)),
             keepdims=S.Flag(), exp_x=S.Exp(), bits_x=S.Bits(), exp_o=S.Exp(), bits_o=S.Bits())


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


def _add_fast(name, subtract):
    @fast(name)
    def prep(attrs, args):
        """Each operand moved to the output grid (``floor(x * 2**-s + 0.5)``, or ``x * 2**-s``
        for ``s <= 0``), added, clipped: exact in float32 while each rounding stays below 2**24
        and the two rescaled magnitudes add up to at most 2**24 (then ``sat32`` never acts)."""
        dx, dy = (numerics.int_dtype(attrs[f"bits_{v}"]) for v in "xy")
        no, bits = int(attrs["exp_o"]), int(attrs["bits_o"])
        shifts = [int(attrs["exp_x"]) - no, int(attrs["exp_y"]) - no]
        if not (fast_ok(dx) and fast_ok(dy)) or bits > 16 or len(args) != 2 \
                or any(a.const is not None for a in args) \
                or any(abs(s) > MAX_SHIFT for s in shifts):
            return None
        scaled = []
        for d, s in zip((dx, dy), shifts):
            if s > 0 and int_max(d) + (1 << (s - 1)) > EXACT:
                return None
            scaled.append((int_max(d) >> s) + 1 if s > 0 else int_max(d) << -s)
        if sum(scaled) > EXACT:
            return None
        moves = [None if s == 0 else Stage(2.0 ** -s, 0.5 if s > 0 else None) for s in shifts]
        stage = Stage(lo=numerics.qmin(bits), hi=numerics.qmax(bits))
        combine = np.subtract if subtract else np.add

        def run(a, inplace, scratch):
            x, y = a
            same = x.ndim == y.ndim
            if not same:               # broadcasting aligns canonical axes: use that layout
                x, y = uncl(x), uncl(y)
            x = x if moves[0] is None else moves[0](x, scratch.get("x", x.shape))
            y = y if moves[1] is None else moves[1](y, scratch.get("y", y.shape))
            shape = np.broadcast_shapes(x.shape, y.shape)
            reuse = (moves[0] is not None or inplace and same) and x.shape == shape  # ours
            out = stage(combine(x, y, out=x if reuse else scratch.get("out", shape)))
            return [out if same else np.ascontiguousarray(cl(out))]
        return FastOp(run, (dx, dy), (numerics.int_dtype(bits),), stage=stage)
    prep.__name__ = f"{name}_fast"
    return prep


iq_add_fast = _add_fast("iqAdd", False)
iq_sub_fast = _add_fast("iqSub", True)


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
