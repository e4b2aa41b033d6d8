"""max / min over dimensions of a quantized value: ``x.max(dim)`` (values and indices),
``torch.amax``/``amin`` (several dims), ``torch.max(x)`` (everything), ``argmax``/``argmin``.

The values are elements of the input, so they keep its exponent and bits: the op is exact in
training and eval alike (gradients as torch's). Export: standard ``ReduceMax``/``ReduceMin``
(``axes`` attribute below opset 18, an input from 18 on) for the values and
``ArgMax``/``ArgMin`` (first index among equal values, as PyTorch on the CPU) for the indices,
which are plain int64 tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from . import trace
from .ops_common import fallback, is_q
from .qtensor import QTensor, _run_plain, register

T = torch.Tensor


def _dims(dim, ndim: int):
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return list(range(ndim))
    dims = dim if isinstance(dim, (tuple, list)) else [dim]
    return sorted(int(d) % max(ndim, 1) for d in dims)


def _minmax(func, args, kwargs, kind: str, form: str):
    """``form``: "pair" (max/min: values, or (values, indices) with a dim), "values"
    (amax/amin), "index" (argmax/argmin)."""
    x = args[0]
    names = ("dim", "keepdim")
    p = dict(zip(names, args[1:]))
    p.update({k: v for k, v in kwargs.items() if k in names})
    dim, keepdim = p.get("dim"), bool(p.get("keepdim", False))
    if not is_q(x) or isinstance(dim, torch.Tensor) or set(kwargs) - set(names):
        return fallback(func, args, kwargs)  # torch.max(a, b) is element-wise: not this op
    out = _run_plain(func, args, kwargs)
    values = indices = None
    if form == "pair" and dim is not None:
        values, indices = out
    elif form == "index":
        indices = out
    else:
        values = out
    if values is not None:
        values = QTensor.wrap(values, x.raw_exp, x.bits)
    rec = trace.current()
    if rec is not None:
        _record(rec, x, kind, dim, keepdim, values, indices)
    if form == "pair" and dim is not None:
        return type(out)((values, indices))
    return values if values is not None else indices


def _record(rec, x, kind, dim, keepdim, values, indices):
    base = f"{rec.module_path()}.{kind}"
    axes = _dims(dim, x.dim())
    keep = int(keepdim)
    if values is not None:
        op = "ReduceMax" if kind == "max" else "ReduceMin"
        if getattr(rec, "opset", 17) >= 18:  # axes became an input in opset 18
            rec.emit(op, [rec.name_of(x), rec.constant(axes, np.int64)], [values],
                     name=rec.unique(base), keepdims=keep)
        else:
            rec.emit(op, [rec.name_of(x)], [values], name=rec.unique(base), axes=axes,
                     keepdims=keep)
    if indices is not None:
        src, axis = rec.name_of(x), axes[0]
        if dim is None:  # torch flattens first
            name = rec.unique(base + ".flatten")
            src = rec.emit("Reshape", [src, rec.constant([-1], np.int64)], [f"{name}:out"],
                           name=name).output[0]
            rec.value_info[src] = (rec.value_info[rec.name_of(x)][0], (x.numel(),))
            axis = 0
        rec.emit("ArgMax" if kind == "max" else "ArgMin", [src], [indices],
                 name=rec.unique(base + ".arg"), axis=axis, keepdims=keep, select_last_index=0)


def _reg(funcs, kind, form):
    register([f for f in funcs if f is not None],
             lambda f, a, k: _minmax(f, a, k, kind, form))


_reg([T.max, torch.max], "max", "pair")
_reg([T.min, torch.min], "min", "pair")
_reg([T.amax, torch.amax], "max", "values")
_reg([T.amin, torch.amin], "min", "values")
_reg([T.argmax, torch.argmax], "max", "index")
_reg([T.argmin, torch.argmin], "min", "index")
