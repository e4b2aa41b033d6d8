"""Element-wise functional ops on quantized values that keep the exponent: ReLU6 / hardtanh.

``hardtanh(x, lo, hi)`` on integers: ``q_o = clip(q, ceil(lo * 2**n), floor(hi * 2**n))``, the
exponent ``n`` is unchanged (export: a standard ``Clip`` with integer bounds). ``relu6`` is
``hardtanh(x, 0, 6)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import trace
from .qtensor import QTensor, _run_plain, register


def clip_on_grid(x: QTensor, lo: float, hi: float) -> QTensor:
    """Clamp a quantized value to ``[lo, hi]`` rounded inwards onto its grid; exponent kept."""
    scale = torch.exp2(x.exp.double())
    qlo, qhi = torch.ceil(lo * scale), torch.floor(hi * scale)
    v = x.plain()
    out = QTensor.wrap(torch.clamp(v, (qlo / scale).to(v.dtype), (qhi / scale).to(v.dtype)),
                       x.exp, x.bits)
    rec = trace.current()
    if rec is not None:
        rec.clip(x, out, int(qlo), int(qhi))
    return out


def _hardtanh(func, args, kwargs):
    x = args[0]
    lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
    hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
    if x.bits is None:
        return trace.current().float_op(func, args, kwargs, _run_plain(func, args, kwargs))
    return clip_on_grid(x, lo, hi)


def _relu6(func, args, kwargs):
    x = args[0]
    if x.bits is None:
        return trace.current().float_op(func, args, kwargs, _run_plain(func, args, kwargs))
    return clip_on_grid(x, 0.0, 6.0)


register([F.hardtanh], _hardtanh)
register([F.relu6], _relu6)
