"""Boundary ops: float <-> integer and integer -> integer at another exponent."""

from __future__ import annotations

import numpy as np

from ... import numerics
from ...errors import ModelFileError, NumericError
from . import kernel
from ._common import check_dtype


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
