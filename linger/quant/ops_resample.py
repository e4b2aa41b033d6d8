"""Resampling and pooling on quantized values: ``F.interpolate`` / ``nn.Upsample`` (nearest,
linear, bilinear), adaptive average/max pooling of any output size, and the functional forms
``F.avg_pool1d/2d``, ``F.adaptive_avg_pool1d/2d``, ``F.adaptive_max_pool1d/2d``.

Every one keeps the input's exponent and bits (a mean or an interpolation never leaves the input's
range). Eval computes with :mod:`linger.iqops` (see there for the formulas), as the runtime does;
training runs the float op and puts the result back on the input's grid (nearest and max pick
elements: nothing to round).

Export: ``UpsampleNearest`` / ``UpsampleLinearInt`` with either ``sizes`` (the ``size=`` form) or
``scales`` (the ``scale_factor=`` form, written as the decimal text of each float64 factor so that
the runtime computes the same output length ``floor(L * scale)`` and the same nearest indices at
any input length), ``AdaptiveAvgPoolInt`` / ``AdaptiveMaxPool`` (windows from the actual input
length), ``AvgPoolInt`` for ``F.avg_pool*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import iqops
from . import trace
from .functions import fake_quant
from .layers import avg_pool
from .ops_common import OpCall, fallback, from_int, is_q, to_int
from .qtensor import QTensor, _run_plain, register


def _tuple(v, nd: int) -> list:
    return list(v) if isinstance(v, (tuple, list)) else [v] * nd


def _sizes(output_size, x) -> list:
    """Adaptive output sizes per spatial axis (``None``: keep the input's)."""
    nd = x.dim() - 2
    return [int(x.shape[2 + k]) if o is None else int(o)
            for k, o in enumerate(_tuple(output_size, nd))]


def _on_grid(y: torch.Tensor, x: QTensor) -> QTensor:
    return QTensor.wrap(fake_quant(y, x.raw_exp, x.bits), x.raw_exp, x.bits)


def _record(x, out, op_type: str, attrs: dict) -> None:
    rec = trace.current()
    if rec is not None:
        rec.node(None, op_type, [x], [out], attrs)


# -- adaptive pooling ----------------------------------------------------------------------------

def adaptive_avg_pool(xq: QTensor, output_size, nd: int, training: bool) -> QTensor:
    """Adaptive average pooling of quantized ``xq`` over its last ``nd`` axes (``nd`` 1 or 2):
    PyTorch's windows ``[floor(i L / O), ceil((i + 1) L / O))``, each mean rounded half up,
    ``floor((2 s + k) / (2 k))``; exponent kept."""
    sizes = _sizes(output_size, xq)
    fn = F.adaptive_avg_pool1d if nd == 1 else F.adaptive_avg_pool2d
    if training:
        return _on_grid(fn(xq.plain(), sizes), xq)
    out = from_int(iqops.adaptive_avg_pool(to_int(xq), sizes, xq.bits), xq.int_exp(), xq.bits,
                   xq)
    _record(xq, out, "AdaptiveAvgPoolInt", {"output_size": sizes, "bits": xq.bits})
    return out


def _adaptive_avg(func, args, kwargs):
    x = args[0]
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    nd = 1 if func is F.adaptive_avg_pool1d else 2
    call = OpCall.start("avg_pool", "pool", False) if is_q(x) else None
    if call is None or x.dim() != nd + 2:
        return fallback(func, args, kwargs)
    return adaptive_avg_pool(x, size, nd, call.training)


def _adaptive_max(func, args, kwargs):
    x = args[0]
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    nd = 1 if func is F.adaptive_max_pool1d else 2
    ret = args[2] if len(args) > 2 else kwargs.get("return_indices", False)
    if not is_q(x) or ret or x.dim() != nd + 2:
        return fallback(func, args, kwargs)
    out = QTensor.wrap(_run_plain(func, args, kwargs), x.raw_exp, x.bits)  # picks elements
    _record(x, out, "AdaptiveMaxPool", {"output_size": _sizes(size, x)})
    return out


def _avg_pool_f(func, args, kwargs):
    """``F.avg_pool1d/2d`` as the ``AvgPoolInt`` of the pooling layers."""
    names = ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
             "divisor_override"]
    p = dict(zip(names, args[1:]))
    p.update(kwargs)
    x = args[0]
    nd = 1 if func is F.avg_pool1d else 2
    call = OpCall.start("avg_pool", "pool", False) if is_q(x) else None
    if call is None or p.get("ceil_mode") or p.get("divisor_override") or x.dim() != nd + 2:
        return fallback(func, args, kwargs)
    k = _tuple(p["kernel_size"], nd)
    s = _tuple(p.get("stride") or k, nd)
    pad = _tuple(p.get("padding", 0), nd)
    if nd == 1:
        k, s, pad = [1] + k, [1] + s, [0] + pad
    return avg_pool(x, tuple(k), tuple(s), tuple(pad), bool(p.get("count_include_pad", True)),
                    call.training)


# -- interpolation -------------------------------------------------------------------------------

_MODES = {"nearest": None, "linear": 1, "bilinear": 2}


def _interpolate(func, args, kwargs):
    names = ["size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
             "antialias"]
    p = dict(zip(names, args[1:]))
    p.update(kwargs)
    x = args[0]
    mode = p.get("mode", "nearest")
    if not is_q(x) or mode not in _MODES or p.get("antialias") or x.dim() not in (3, 4) \
            or _MODES[mode] not in (None, x.dim() - 2):
        return fallback(func, args, kwargs)  # export names the op and the supported forms
    call = OpCall.start("upsample", "resample", False)
    if call is None:
        return fallback(func, args, kwargs)
    nd = x.dim() - 2
    if p.get("size") is not None:
        sizes, scales = [int(v) for v in _tuple(p["size"], nd)], None
    else:
        factors = [float(v) for v in _tuple(p["scale_factor"], nd)]
        sizes = [iqops.out_size(x.shape[2 + k], None, f) for k, f in enumerate(factors)]
        scales = None if p.get("recompute_scale_factor") else factors
    attrs = {"sizes": sizes} if scales is None else {"scales": [repr(f) for f in scales]}
    if mode == "nearest":
        if call.training:
            return QTensor.wrap(_run_plain(func, args, kwargs), x.raw_exp, x.bits)
        q = iqops.upsample_nearest(to_int(x), sizes, scales)
        out = from_int(q, x.int_exp(), x.bits, x)
        _record(x, out, "UpsampleNearest", attrs)
        return out
    align = bool(p.get("align_corners") or False)
    if call.training:
        return _on_grid(_run_plain(func, args, kwargs), x)
    out = from_int(iqops.upsample_linear(to_int(x), sizes, align, x.bits), x.int_exp(), x.bits, x)
    _record(x, out, "UpsampleLinearInt", dict(attrs, align_corners=int(align), bits=x.bits))
    return out


register([F.adaptive_avg_pool1d, F.adaptive_avg_pool2d], _adaptive_avg)
register([F.adaptive_max_pool1d, F.adaptive_max_pool2d], _adaptive_max)
register([F.avg_pool1d, F.avg_pool2d], _avg_pool_f)
register([F.interpolate], _interpolate)
