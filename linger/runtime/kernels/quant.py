"""Boundary ops: float <-> integer and integer -> integer at another exponent."""

from __future__ import annotations

import numpy as np

from ... import numerics
from ...errors import ModelFileError, NumericError
from .. import schema as S
from . import fast, kernel
from ._common import check_dtype
from ._fast import (CANON, EXACT, F32, MAX_SHIFT, FastOp, Stage, _clip, cl, fast_ok, int_max,
                    to_fast, uncl)


S.schema("Quant", inputs=(1, 1), memory=S.broadcast_memory(4), exp=S.Exp(), bits=S.Bits())
S.schema("Dequant", inputs=(1, 1), memory=S.broadcast_memory(4), exp=S.Exp(), bits=S.Bits())
S.schema("Requant", inputs=(1, 1), memory=S.broadcast_memory(4), exp_in=S.Exp(),
         bits_in=S.Bits(), exp=S.Exp(), bits=S.Bits())


@kernel("Quant")
def quant(inputs, *, exp, bits):
    """``q = sat_bits(rhu(float64(x) * 2**exp))`` stored as ``int_dtype(bits)``.

    NaN and +-inf are refused: ``rhu`` is a floor-division, and ``inf // 1`` is NaN, so neither
    has a defined integer (in the PyTorch simulation either).
    """
    (x,) = inputs
    if not np.issubdtype(x.dtype, np.floating):
        raise ModelFileError(f"Quant expects a float input, got {x.dtype}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        at = np.argwhere(bad)[0].tolist()
        raise NumericError(f"Quant input holds {x[tuple(at)]} at index {at}; the integer model"
                           f" needs finite inputs")
    return [numerics.quantize(x, int(exp), int(bits)).astype(numerics.int_dtype(bits))]


@kernel("Dequant")
def dequant(inputs, *, exp, bits):
    """``x = q * 2**-exp``: float32, float64 when ``bits > 24`` (exact in both cases)."""
    (q,) = inputs
    check_dtype(q, bits, "Dequant input")
    out = np.float64 if bits > 24 else np.float32
    return [numerics.dequantize(q.astype(np.float64), int(exp)).astype(out)]


@kernel("Requant")
def requant(inputs, *, exp_in, bits_in, exp, bits):
    """``q = sat_bits(rshift(x, exp_in - exp))``: round-half-up right shift or exact left shift."""
    (x,) = inputs
    check_dtype(x, bits_in, "Requant input")
    q = numerics.requantize(x.astype(np.float64), int(exp_in) - int(exp), int(bits))
    return [q.astype(numerics.int_dtype(bits))]


@fast("Quant")
def quant_fast(attrs, args):
    """``floor(clip(float64(x) * 2**exp, qmin, qmax) + 0.5)`` written channels-last as float32.

    Clipping before rounding gives the same integers (``rhu`` is monotone and fixes integers).
    ``v + 0.5`` is exact in float64 for ``v`` a float32 times a power of two with
    ``2**-29 <= |v| <= 2**15`` (at most 40 significant bits); below ``2**-29`` both sides floor
    to 0. Non-finite inputs go to the plain kernel, which names them.
    """
    exp, bits = int(attrs["exp"]), int(attrs["bits"])
    dtype = numerics.int_dtype(bits)
    if not fast_ok(dtype) or abs(exp) > MAX_SHIFT:
        return None
    scale, lo, hi = 2.0 ** exp, numerics.qmin(bits), numerics.qmax(bits)

    def run(a, inplace, scratch):
        x = a[0]
        if x.dtype != np.float32 or not np.isfinite(x).all():   # float64 input, NaN, inf
            return [to_fast(quant([x], exp=exp, bits=bits)[0], dtype)]
        v = scratch.get("v", x.shape, dtype=np.float64)
        np.multiply(x, scale, out=v, dtype=np.float64)
        _clip(v, lo, hi, out=v)
        v += 0.5
        out = scratch.get("out", cl(v).shape)
        np.floor(cl(v), out=out)
        return [out]

    return FastOp(run, (CANON,), (dtype,))


@fast("Dequant")
def dequant_fast(attrs, args):
    """``x * 2**-exp`` in float32 (exact: a power-of-two scaling of an integer below 2**24),
    written in the canonical layout."""
    exp, bits = int(attrs["exp"]), int(attrs["bits"])
    dtype = numerics.int_dtype(bits)
    if not fast_ok(dtype) or abs(exp) > MAX_SHIFT:
        return None
    scale = F32(2.0 ** -exp)

    def run(a, inplace, scratch):
        x = a[0]
        out = np.empty(uncl(x).shape, F32)                          # may be a result: fresh
        np.multiply(x, scale, out=cl(out))
        return [out]

    return FastOp(run, (dtype,), (None,))


@fast("Requant")
def requant_fast(attrs, args):
    """``clip(floor(x * 2**-s + 0.5), qmin, qmax)`` (no ``+ 0.5`` for ``s <= 0``): exact while
    ``2**(bits_in-1) + 2**(s-1) <= 2**24``."""
    s = int(attrs["exp_in"]) - int(attrs["exp"])
    dtype, bits = numerics.int_dtype(attrs["bits_in"]), int(attrs["bits"])
    if not fast_ok(dtype) or bits > 16 or abs(s) > MAX_SHIFT \
            or (s > 0 and int_max(dtype) + (1 << (s - 1)) > EXACT):
        return None
    stage = Stage(2.0 ** -s, 0.5 if s > 0 else None, numerics.qmin(bits), numerics.qmax(bits))

    def run(a, inplace, scratch):
        return [stage(a[0], a[0] if inplace else scratch.get("out", a[0].shape))]

    return FastOp(run, (dtype,), (numerics.int_dtype(bits),), stage=stage, pointwise=True)
