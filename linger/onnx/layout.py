"""Torch layout ops and exact float ops, written as standard ONNX nodes.

Layout ops move values without changing them, so they apply to integer and float tensors alike
and the exponent of a quantized value passes through.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ExportError
from ..quant.qtensor import QTensor

T = torch.Tensor

_ALIAS = {T.contiguous, T.clone, torch.clone, T.detach, T.to, T.cpu, T.cuda, F.dropout}
_RESHAPE = {T.view, T.reshape, torch.reshape, T.flatten, torch.flatten, T.squeeze, torch.squeeze,
            T.unsqueeze, torch.unsqueeze, T.view_as, T.reshape_as, T.unflatten}
_PERMUTE = {T.permute, torch.permute}
_TRANSPOSE = {T.transpose, torch.transpose, T.t}
_SPLIT = {T.split, torch.split, T.chunk, torch.chunk, T.unbind, torch.unbind}
_FLIP = {T.flip, torch.flip}
_RELU = {F.relu, torch.relu, T.relu}
_MAXPOOL = {F.max_pool1d, F.max_pool2d}
_EXPAND = {T.expand, T.expand_as}

_FLOAT_BINARY = {
    T.__add__: "Add", T.__radd__: "Add", torch.add: "Add", T.add: "Add",
    T.__sub__: "Sub", T.__rsub__: "Sub", torch.sub: "Sub", T.sub: "Sub",
    T.__mul__: "Mul", T.__rmul__: "Mul", torch.mul: "Mul", T.mul: "Mul",
    T.__truediv__: "Div", T.__rtruediv__: "Div", torch.div: "Div", T.div: "Div",
}
_FLOAT_UNARY = {T.__neg__: "Neg", torch.neg: "Neg", T.neg: "Neg", T.abs: "Abs", torch.abs: "Abs"}
_REVERSED = {T.__rsub__, T.__rtruediv__}


def _fname(func) -> str:
    return getattr(func, "__name__", repr(func))


def emit_layout(rec, func, args, kwargs, out) -> None:
    x = args[0]
    base = f"{rec.module_path()}.{_fname(func).strip('_')}"
    xn = rec.name_of(x)
    if func in _ALIAS or (func is F.dropout and not kwargs.get("training", False)):
        rec.alias(out, x)
    elif func in _RESHAPE:
        _reshape(rec, xn, x, out, base)
    elif func in _PERMUTE:
        dims = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
        dims = kwargs.get("dims", dims)
        perm = [int(d) % x.dim() for d in dims]
        rec.emit("Transpose", [xn], [out], name=rec.unique(base), perm=perm)
    elif func in _TRANSPOSE:
        perm = list(range(x.dim()))
        if func is not T.t:
            a, b = (int(d) % x.dim() for d in args[1:3])
            perm[a], perm[b] = perm[b], perm[a]
        else:
            perm = perm[::-1]
        rec.emit("Transpose", [xn], [out], name=rec.unique(base), perm=perm)
    elif func is T.__getitem__:
        _getitem(rec, xn, x, args[1], out, base)
    elif func in _SPLIT:
        _split(rec, xn, x, func, args, kwargs, out, base)
    elif func in _FLIP:
        dims = kwargs.get("dims", args[1] if len(args) > 1 else None)
        dims = [int(d) % x.dim() for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        big = np.iinfo(np.int64).max
        ins = [xn, rec.constant([-1] * len(dims), np.int64),
               rec.constant([-big] * len(dims), np.int64), rec.constant(dims, np.int64),
               rec.constant([-1] * len(dims), np.int64)]
        rec.emit("Slice", ins, [out], name=rec.unique(base))
    elif func is F.pad:
        _pad(rec, xn, x, args, kwargs, out, base)
    elif func in _RELU:
        rec.emit("Relu", [xn], [out], name=rec.unique(base))
    elif func in _MAXPOOL:
        _maxpool(rec, xn, x, func, args, kwargs, out, base)
    elif func in _EXPAND:  # 1 keeps the input's size (it then follows a dynamic axis)
        keep = [1] * (out.dim() - x.dim()) + [int(n == 1) for n in x.shape]
        shape = [1 if not k and n == m else n for k, n, m in
                 zip(keep, out.shape, [None] * (out.dim() - x.dim()) + list(x.shape))]
        rec.emit("Expand", [xn, rec.constant(shape, np.int64)], [out], name=rec.unique(base))
    else:
        raise ExportError(f"'{_fname(func)}' in '{rec.module_path()}' has no ONNX export yet;"
                          f" rewrite it with view/permute/slicing or report it")


def _reshape(rec, xn, x, out, base):
    shape = list(out.shape)
    if shape and x.dim() and shape[0] == x.shape[0]:
        shape[0] = 0  # copy the batch dimension: the graph then runs at any batch size
    rec.emit("Reshape", [xn, rec.constant(shape, np.int64)], [out], name=rec.unique(base))


def _getitem(rec, xn, x, idx, out, base):
    """Basic indexing as Slice (ints and slices), Squeeze (the int axes) and Unsqueeze (None):
    no fixed shapes, so the graph still runs at any batch size."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (torch.Tensor, list)) for i in idx):
        raise ExportError(f"tensor indexing in '{rec.module_path()}' is not exportable; use"
                          f" slices, integers or torch.index_select")
    n_explicit = sum(1 for i in idx if i is not None and i is not Ellipsis)
    starts, ends, axes, steps, int_axes, new_axes = [], [], [], [], [], []
    d = o = 0  # current input axis, current output axis
    for i in idx:
        if i is Ellipsis:
            d += x.dim() - n_explicit
            o += x.dim() - n_explicit
        elif i is None:
            new_axes.append(o)
            o += 1
        elif isinstance(i, int):  # negative indices stay relative to the actual length
            starts.append(i), ends.append(i + 1 if i != -1 else _BIG), axes.append(d)
            steps.append(1), int_axes.append(d)
            d += 1
        elif isinstance(i, slice):
            if (i.start, i.stop, i.step) not in ((None, None, None), (None, None, 1)):
                b = _bounds(i)
                starts.append(b[0]), ends.append(b[1]), axes.append(d), steps.append(b[2])
            d, o = d + 1, o + 1
        else:
            raise ExportError(f"index {i!r} in '{rec.module_path()}' is not exportable")
    stages = []
    if axes:
        stages.append(("Slice", [rec.constant(v, np.int64) for v in (starts, ends, axes, steps)]))
    if int_axes:
        stages.append(("Squeeze", [rec.constant(int_axes, np.int64)]))
    if new_axes:
        stages.append(("Unsqueeze", [rec.constant(new_axes, np.int64)]))
    if not stages:
        rec.alias(out, x)
        return
    shape = list(x.shape)  # traced shape after each stage, for the graph's value_info
    for a, b, ax, st in zip(starts, ends, axes, steps):
        shape[ax] = len(range(*slice(a, b, st).indices(shape[ax])))
    after = {"Slice": tuple(shape),
             "Squeeze": tuple(n for k, n in enumerate(shape) if k not in int_axes)}
    cur = xn
    for k, (op, extra) in enumerate(stages):
        name = rec.unique(f"{base}.{op.lower()}")
        if k == len(stages) - 1:
            rec.emit(op, [cur] + extra, [out], name=name)
        else:
            rec.emit(op, [cur] + extra, [f"{name}:out"], name=name)
            rec.value_info[f"{name}:out"] = (rec.value_info[cur][0], after[op])
            cur = f"{name}:out"


_BIG = int(np.iinfo(np.int64).max)


def _bounds(sl: slice) -> tuple:
    """ONNX Slice (start, end, step) of a Python slice, as written (negative bounds and omitted
    ends stay relative to the length the graph is given, as in Python)."""
    step = 1 if sl.step is None else int(sl.step)
    if step > 0:
        return (0 if sl.start is None else int(sl.start),
                _BIG if sl.stop is None else int(sl.stop), step)
    return (_BIG if sl.start is None else int(sl.start),
            -_BIG if sl.stop is None else int(sl.stop), step)


def _split(rec, xn, x, func, args, kwargs, out, base):
    if func in (T.unbind, torch.unbind):
        dim = int(kwargs.get("dim", args[1] if len(args) > 1 else 0)) % x.dim()
        pieces = [o.unsqueeze(dim) if False else o for o in out]
        sizes = [1] * len(pieces)
    else:
        dim = int(kwargs.get("dim", args[2] if len(args) > 2 else 0)) % x.dim()
        sizes = [o.shape[dim] for o in out]
    name = rec.unique(base)
    outs = [f"{name}:{i}" for i in range(len(out))]
    rec.emit("Split", [xn, rec.constant(sizes, np.int64)], outs, name=name, axis=dim)
    for i, o in enumerate(out):
        if func in (T.unbind, torch.unbind):
            rec.value_info[outs[i]] = (rec.value_info[xn][0], tuple(_with(x.shape, dim, 1)))
            rec.emit("Reshape", [outs[i], rec.constant(list(o.shape), np.int64)], [o],
                     name=rec.unique(base + ".squeeze"))
        else:
            rec.bind(o, outs[i])


def _with(shape, dim, v):
    s = list(shape)
    s[dim] = v
    return s


def _pad(rec, xn, x, args, kwargs, out, base):
    pad = list(kwargs.get("pad", args[1]))
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    value = kwargs.get("value", args[3] if len(args) > 3 else None)
    if mode != "constant" or value not in (None, 0, 0.0):
        raise ExportError(f"F.pad(mode={mode!r}, value={value!r}) in '{rec.module_path()}' is"
                          f" not exportable on quantized values; use constant zero padding")
    nd = x.dim()
    begins, ends = [0] * nd, [0] * nd
    for k in range(len(pad) // 2):  # torch pads the last dimension first
        begins[nd - 1 - k], ends[nd - 1 - k] = pad[2 * k], pad[2 * k + 1]
    rec.emit("Pad", [xn, rec.constant(begins + ends, np.int64)], [out], name=rec.unique(base),
             mode="constant")


def _maxpool(rec, xn, x, func, args, kwargs, out, base):
    names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    p = dict(zip(names, args[1:]))
    p.update(kwargs)
    nd = 1 if func is F.max_pool1d else 2

    def tup(v, default):
        v = default if v is None or (isinstance(v, (tuple, list)) and not v) else v
        return list(v) if isinstance(v, (tuple, list)) else [int(v)] * nd
    k = tup(p["kernel_size"], None)
    s = tup(p.get("stride"), k)
    pad = tup(p.get("padding", 0), 0)
    dil = tup(p.get("dilation", 1), 1)
    if p.get("return_indices"):
        raise ExportError(f"max-pooling with return_indices in '{rec.module_path()}' is not"
                          f" exportable")
    rec.emit("MaxPool", [xn], [out], name=rec.unique(base), kernel_shape=k, strides=s,
             pads=pad + pad, dilations=dil, ceil_mode=int(bool(p.get("ceil_mode", False))))


#: ``COLLECT.problems = []`` (linger.check): refused float ops are listed there, not raised.
COLLECT = threading.local()


def exact_float_op(func, args, kwargs, out):
    """The ONNX op (``"Add"``...) the exporter writes for ``func`` after a Dequant, exactly as
    IEEE float computes it in PyTorch; ``None`` when there is none (the export refuses it)."""
    if func not in _FLOAT_BINARY and func not in _FLOAT_UNARY:
        return None
    bad = [k for k in kwargs if k not in ("alpha",)] or (kwargs.get("alpha", 1) != 1)
    if func is torch.div and kwargs.get("rounding_mode"):
        bad = True
    if bad or not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return None
    return _FLOAT_BINARY.get(func) or _FLOAT_UNARY[func]


def emit_float(rec, func, args, kwargs, out):
    """The dequant boundary: dequantize quantized inputs, then an exact IEEE float op (or a
    float32 tail op of a layer kept float after the last quantized one: :mod:`.float_tail`)."""
    from .float_tail import emit as emit_tail
    res = emit_tail(rec, func, args, kwargs, out)
    if res is not None:
        return res
    op = exact_float_op(func, args, kwargs, out)
    if op is not None:
        operands = list(args[:2]) if func in _FLOAT_BINARY else [args[0]]
        if func in _REVERSED:
            operands = operands[::-1]
        names = [rec.float_name(a) if isinstance(a, torch.Tensor)
                 else rec.constant(np.asarray(a, dtype=np.float32)) for a in operands]
        res = QTensor.wrap(out, None, None)
        rec.emit(op, names, [res], name=rec.unique(f"{rec.module_path()}.{op.lower()}"))
        return res
    if getattr(COLLECT, "problems", None) is not None:  # linger.check: list it and go on
        COLLECT.problems.append((rec.module_path(), _fname(func)))
        res = QTensor.wrap(out if isinstance(out, torch.Tensor) else out[0], None, None)
        rec.bind(res, rec.unique(f"{rec.module_path()}.{_fname(func)}.unexportable"))
        return res if isinstance(out, torch.Tensor) else type(out)([res] + list(out[1:]))
    raise ExportError(f"'{_fname(func)}' in '{rec.module_path()}'{_source_line()} runs in"
                      f" float: {_float_cause(args, kwargs)}")


def _operands(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))
        elif isinstance(a, torch.Tensor):
            yield a


def _float_cause(args, kwargs) -> str:
    """Why an op ran in float, from its operands, with the fix."""
    ops = list(_operands(args, kwargs))
    consts = [t for t in ops if not isinstance(t, QTensor) and t.is_floating_point()]
    floats = [t for t in ops if isinstance(t, QTensor) and t.bits is None]
    if consts:
        shapes = ", ".join(str(list(t.shape)) for t in consts)
        return (f"an operand is a float tensor that was never quantized (shape {shapes}): not a"
                f" parameter, a buffer or a view of one (expand, slicing and view keep it one;"
                f" repeat, clone and arithmetic make a copy). Use a view of the parameter, or"
                f" quantize the tensor with linger.quant_tensor(self, t, name=...)")
    if any(not t.is_floating_point() for t in floats):
        return ("an operand is a bool or integer graph value (a mask, indices) that this op"
                " cannot take in a linger graph; compute it outside the model and pass the"
                " result as an input, or use an op of docs/ops.md that takes it")
    if floats:
        return ("an operand was computed in float earlier (an op upstream ran on dequantized"
                " values, or a model input reaches the op without linger.quant_tensor). Quantize"
                " that value with linger.quant_tensor(self, x, name=...) or fix the op upstream"
                " (see docs/ops.md)")
    return ("the op has no quantized version (or its switch is off) and only add/sub/mul/div/neg/"
            "abs are bit-exact after a Dequant (linear/conv/sigmoid/tanh/softmax are exported as"
            " a float32 tail, see docs/export.md). Quantize the op (see docs/ops.md for the"
            " supported ops), or apply it outside the model (e.g. argmax on the outputs)")


def _source_line() -> str:
    """`` (file.py:42, in forward)``: the model source line that ran the op, if any."""
    import os
    import sys
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    linger_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith((torch_dir, linger_dir)):
        f = f.f_back
    if f is None:
        return ""
    return f" ({os.path.basename(f.f_code.co_filename)}:{f.f_lineno}, in {f.f_code.co_name})"
