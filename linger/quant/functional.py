"""Element-wise functional ops on quantized values that keep the exponent: ReLU6 / hardtanh,
dropout.

``hardtanh(x, lo, hi)`` on integers: ``q_o = clip(q, ceil(lo * 2**n), floor(hi * 2**n))``, the
exponent ``n`` is unchanged (export: a standard ``Clip`` with integer bounds). ``relu6`` is
``hardtanh(x, 0, 6)``.

``dropout``: identity in eval. In training, dropout scales the kept values by ``1/(1-p)``, which
moves them off the grid, so the result is fake-quantized back onto the input's grid (same
exponent and bits, saturating; straight-through gradient).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import trace
from .functions import clip, fake_quant
from .qtensor import QTensor, _layout, _run_plain, register


def clip_on_grid(x: QTensor, lo: float, hi: float) -> QTensor:
    """Clamp a quantized value to ``[lo, hi]`` rounded inwards onto its grid; exponent kept."""
    if isinstance(x.raw_exp, int) and math.isfinite(lo) and math.isfinite(hi):
        # CPU: bounds as Python numbers, fused backward
        n = x.raw_exp
        qlo, qhi = math.ceil(lo * 2.0 ** n), math.floor(hi * 2.0 ** n)
        out = QTensor.wrap(clip(x.plain(), qlo * 2.0 ** -n, qhi * 2.0 ** -n), n, x.bits)
        rec = trace.current()
        if rec is not None:
            rec.clip(x, out, qlo, qhi)
        return out
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


def _dropout(func, args, kwargs):
    x = args[0]
    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
    training = kwargs.get("training", args[2] if len(args) > 2 else True)
    if x.bits is None or not training or p == 0:
        return _layout(func, args, kwargs)
    y = _run_plain(func, args, kwargs)  # kept values scaled by 1/(1-p)
    return QTensor.wrap(fake_quant(y, x.exp, x.bits), x.exp, x.bits)


register([F.hardtanh], _hardtanh)
register([F.dropout], _dropout)
register([F.relu6], _relu6)
