"""Standard ONNX element-wise ops.

On integers (``Relu``, ``Clip``) they keep the dtype and exponent. On float32 (after a
``Dequant``) they are single IEEE-754 operations, correctly rounded in every library, so numpy
float32 op float32 (which stays float32) matches any other runtime bit for bit.
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelFileError
from .. import schema as S
from . import fast, kernel
from ._fast import FastOp, Stage, fast_ok


for _op, _n in (("Relu", 1), ("Neg", 1), ("Abs", 1), ("Add", 2), ("Sub", 2), ("Mul", 2),
                ("Div", 2)):
    S.schema(_op, "", inputs=(_n, _n), memory=S.broadcast_memory(4))
S.schema("Clip", "", inputs=(1, 3), memory=S.broadcast_memory(3))


def _same_dtype(op: str, *arrays) -> None:
    # ONNX requires equal input types; numpy would silently promote (float32 + float64 -> float64).
    dtypes = {a.dtype for a in arrays if a is not None}
    if len(dtypes) > 1:
        raise ModelFileError(f"{op} inputs have different dtypes {sorted(map(str, dtypes))}")


@kernel("Relu", domain="")
def relu(inputs):
    """``max(x, 0)`` in the input's dtype."""
    x = inputs[0]
    return [np.maximum(x, x.dtype.type(0))]


@kernel("Clip", domain="")
def clip(inputs):
    """``min(max(x, lo), hi)``; ``lo``/``hi`` are optional scalar inputs of x's dtype."""
    x, lo, hi = (list(inputs) + [None, None])[:3]
    _same_dtype("Clip", x, lo, hi)
    if lo is not None:
        x = np.maximum(x, lo.reshape(()))
    if hi is not None:
        x = np.minimum(x, hi.reshape(()))
    return [x]


def _clip_op(dtype, lo, hi):
    stage = Stage(lo=lo, hi=hi)

    def run(a, inplace, scratch):
        return [stage(a[0], a[0] if inplace else scratch.get("out", a[0].shape))]

    return FastOp(run, (dtype, None, None), (dtype,), stage=stage, pointwise=True)


@fast("Relu", domain="")
def relu_fast(attrs, args):
    """``clip(x, 0, max)`` on fast integers; usually folded into the producer's output clip."""
    dtype = args[0].dtype
    if not fast_ok(dtype):
        return None
    return _clip_op(dtype, 0, int(np.iinfo(dtype).max))


@fast("Clip", domain="")
def clip_fast(attrs, args):
    """``min(max(x, lo), hi)`` with constant ``lo``/``hi`` of x's dtype (omitted: no bound)."""
    x, lo, hi = (list(args) + [None, None])[:3]
    dtype = x.dtype
    if not fast_ok(dtype) or any(v is not None and (v.const is None or v.const.dtype != dtype
                                                    or v.const.size != 1) for v in (lo, hi)):
        return None
    info = np.iinfo(dtype)
    return _clip_op(dtype, info.min if lo is None else int(lo.const.reshape(())),
                    info.max if hi is None else int(hi.const.reshape(())))


def _binary(op_type: str, fn):
    @kernel(op_type, domain="")
    def run(inputs):
        a, b = inputs
        _same_dtype(op_type, a, b)
        with np.errstate(all="ignore"):  # IEEE inf/nan results are the defined answer
            return [fn(a, b)]
    run.__name__ = op_type.lower()
    run.__doc__ = f"ONNX {op_type} with numpy (multidirectional) broadcasting, dtype kept."
    return run


def _int_div(a, b):
    """Integer Div truncates towards zero (C semantics, as ONNX runtimes do)."""
    if np.issubdtype(a.dtype, np.floating):
        return np.divide(a, b)
    if (b == 0).any():
        raise ModelFileError("integer Div by zero")
    q = np.abs(a.astype(np.int64)) // np.abs(b.astype(np.int64))
    return (np.sign(a.astype(np.int64)) * np.sign(b.astype(np.int64)) * q).astype(a.dtype)


add = _binary("Add", np.add)
sub = _binary("Sub", np.subtract)
mul = _binary("Mul", np.multiply)
div = _binary("Div", _int_div)


@kernel("Neg", domain="")
def neg(inputs):
    """``-x``."""
    return [np.negative(inputs[0])]


@kernel("Abs", domain="")
def abs_(inputs):
    """``|x|``."""
    return [np.abs(inputs[0])]
