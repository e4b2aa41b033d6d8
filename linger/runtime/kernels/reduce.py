"""Standard ONNX ``ReduceMax``/``ReduceMin``/``ArgMax``/``ArgMin``: they pick elements (or their
positions), so they are exact on integers; exponents pass through unchanged."""

from __future__ import annotations

import numpy as np

from ...errors import ModelFileError
from .. import schema as S
from . import fast, kernel
from .layout import _layout_fast

for _op in ("ReduceMax", "ReduceMin"):
    S.schema(_op, "", inputs=(1, 2), memory=S.sum_memory(2), axes=S.Ints(-8, 7, (0, 8)),
             keepdims=S.Flag(), noop_with_empty_axes=S.Flag())
for _op in ("ArgMax", "ArgMin"):
    S.schema(_op, "", inputs=(1, 1), memory=S.sum_memory(9), axis=S.Axis(), keepdims=S.Flag(),
             select_last_index=S.Flag())


def _axes(inputs, axes, ndim):
    if len(inputs) > 1 and inputs[1] is not None:  # opset >= 18: axes as an input
        axes = [int(v) for v in np.asarray(inputs[1]).reshape(-1)]
    if axes is None or len(axes) == 0:
        return tuple(range(ndim))
    for a in axes:
        if not -ndim <= int(a) < ndim:
            raise ModelFileError(f"axis {a} is out of range for rank {ndim}")
    return tuple(sorted(int(a) % ndim for a in axes))


def _reduce(name, fn):
    @kernel(name, domain="")
    def run(inputs, *, axes=None, keepdims=1, noop_with_empty_axes=0):
        x = inputs[0]
        if noop_with_empty_axes and not axes and (len(inputs) < 2 or inputs[1] is None):
            return [x]
        return [fn(x, axis=_axes(inputs, axes, x.ndim), keepdims=bool(keepdims))]
    run.__name__ = name
    run.__doc__ = f"``{fn.__name__}`` over ``axes`` (all when empty), dtype kept."
    return run


def _arg(name, fn):
    @kernel(name, domain="")
    def run(inputs, *, axis=0, keepdims=1, select_last_index=0):
        (x,) = inputs
        ax = _axes([x], [axis], x.ndim)[0]
        if select_last_index:
            flipped = np.flip(x, ax)
            idx = x.shape[ax] - 1 - fn(flipped, axis=ax)
        else:
            idx = fn(x, axis=ax)
        idx = np.asarray(idx, dtype=np.int64)
        return [np.expand_dims(idx, ax) if keepdims else idx]
    run.__name__ = name
    run.__doc__ = f"``{fn.__name__}`` along ``axis``: the first (or last) index of the extreme."
    return run


reduce_max = _reduce("ReduceMax", np.max)
reduce_min = _reduce("ReduceMin", np.min)
arg_max = _arg("ArgMax", np.argmax)
arg_min = _arg("ArgMin", np.argmin)


for _op in ("ReduceMax", "ReduceMin"):  # pick values: the fast form needs no round trip
    fast(_op, domain="")(lambda attrs, args, _op=_op: _layout_fast(attrs, args, op_type=_op))
