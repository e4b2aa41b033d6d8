"""Standard ONNX layout ops (opset >= 13 signatures). They move values without changing them, so
they are exact on integers and floats alike; exponents pass through unchanged.

Their fast version (``_layout_fast``) runs the same kernel on the canonical-layout view of the
float32 fast form, so integers between two fast ops need no int8 round trip."""

from __future__ import annotations

import functools

import numpy as np

from ...errors import ModelFileError
from .. import schema as S
from . import KERNELS, fast, kernel
from ._fast import FastOp, cl, fast_ok, uncl


def _ints(a) -> list[int]:
    """A shape/axes/pads input tensor as python ints."""
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _layout_kernel(op_type: str, **kw):
    """Register a standard layout kernel whose numpy shape errors (a reshape to a size that
    does not match, an axis out of range...) are the model's: ModelFileError, numpy's words."""
    def register(fn):
        @functools.wraps(fn)
        def run(inputs, **attrs):
            try:
                return fn(inputs, **attrs)
            except (ValueError, IndexError) as e:  # numpy AxisError is both
                shapes = [None if a is None else list(a.shape) for a in inputs]
                raise ModelFileError(f"{op_type} cannot be applied to inputs of shapes"
                                     f" {shapes}: {e}") from e
        return kernel(op_type, domain="", **kw)(run)
    return register


def _axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ModelFileError(f"axis {axis} is out of range for rank {ndim}")
    return axis % ndim


def _values(arg):
    """The ints of a shape/pads/axes input, ``None`` when not known before running."""
    return None if arg is None or arg.value is None else _ints(arg.value)


def _pad_memory(attrs, ins, fast):
    """The padded copy: each axis grows by its positive pads."""
    x, pads, axes = ins[0], _values(ins[1]), _values((list(ins) + [None] * 4)[3])
    axes = list(range(len(x.shape))) if axes is None else axes
    if pads is None or len(pads) != 2 * len(axes) or any(not -len(x.shape) <= a < len(x.shape)
                                                          for a in axes):
        return 2 * x.nbytes  # the kernel explains what is wrong
    shape = list(x.shape)
    for i, a in enumerate(axes):
        shape[a] += max(pads[i], 0) + max(pads[i + len(axes)], 0)
    return x.nbytes + S.nbytes(shape, x.dtype.itemsize)


def _expand_memory(attrs, ins, fast):
    x, shape = ins[0], _values(ins[1])
    if shape is None:
        return 2 * x.nbytes
    return S.nbytes(S.broadcast([x.shape, shape], "Expand"), x.dtype.itemsize)


def _gather_memory(attrs, ins, fast):
    x, idx = ins
    axis = int(attrs.get("axis", 0))
    if not -len(x.shape) <= axis < len(x.shape):
        return 0  # the kernel explains the axis
    axis %= len(x.shape)
    return S.nbytes([*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]], x.dtype.itemsize)


_INT64 = S.Int(-(1 << 63), (1 << 63) - 1)
S.schema("Identity", "", inputs=(1, 1), memory=S.sum_memory(0))
S.schema("Constant", "", inputs=(0, 0), memory=S.sum_memory(0), value=S.Tensor(),
         value_float=S.Float(), value_floats=S.Floats(), value_int=_INT64,
         value_ints=S.Ints(_INT64.lo, _INT64.hi))
S.schema("Shape", "", inputs=(1, 1), memory=S.sum_memory(0), start=S.Int(), end=S.Int())
S.schema("Reshape", "", inputs=(2, 2), memory=S.sum_memory(1), allowzero=S.Flag())
S.schema("Transpose", "", inputs=(1, 1), memory=S.sum_memory(2), perm=S.Ints(0, 7, (0, 8)))
S.schema("Flatten", "", inputs=(1, 1), memory=S.sum_memory(1), axis=S.Int(-8, 8))
S.schema("Squeeze", "", inputs=(1, 2), memory=S.sum_memory(1))
S.schema("Unsqueeze", "", inputs=(2, 2), memory=S.sum_memory(1))
S.schema("Concat", "", inputs=(1, S.MAX_LIST), memory=S.sum_memory(2), axis=S.Axis())
S.schema("Split", "", inputs=(1, 2), memory=S.sum_memory(2), axis=S.Axis(),
         num_outputs=S.Int(1, S.MAX_LIST))
S.schema("Slice", "", inputs=(3, 5), memory=S.sum_memory(2))
S.schema("Pad", "", inputs=(2, 4), memory=_pad_memory,
         mode=S.Str(("constant", "edge", "reflect")))
S.schema("Expand", "", inputs=(2, 2), memory=_expand_memory)
S.schema("Gather", "", inputs=(2, 2), memory=_gather_memory, axis=S.Axis())


@kernel("Identity", domain="")
def identity(inputs):
    """``y = x``."""
    return [inputs[0]]


@kernel("Constant", domain="")
def constant(inputs, *, value=None, value_float=None, value_floats=None, value_int=None,
             value_ints=None):
    """The tensor in the attribute (``value``, or a scalar/list attribute as float32/int64)."""
    if value is not None:
        return [value]
    for v, dt in ((value_float, np.float32), (value_floats, np.float32),
                  (value_int, np.int64), (value_ints, np.int64)):
        if v is not None:
            return [np.array(v, dtype=dt)]
    raise ModelFileError("Constant has no supported value attribute (value, value_float(s),"
                         " value_int(s))")


@kernel("Shape", domain="")
def shape(inputs, *, start=0, end=None):
    """``int64(x.shape[start:end])``."""
    return [np.array(inputs[0].shape[start:end], dtype=np.int64)]


@_layout_kernel("Reshape")
def reshape(inputs, *, allowzero=0):
    """``x.reshape(shape)``; ``0`` copies the input's dimension (unless ``allowzero``), ``-1`` is
    inferred."""
    x, shape = inputs
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return [x.reshape(dims)]


@_layout_kernel("Transpose")
def transpose(inputs, *, perm=None):
    """``x.transpose(perm)``; default reverses the axes."""
    return [np.ascontiguousarray(inputs[0].transpose(perm))]


@_layout_kernel("Flatten")
def flatten(inputs, *, axis=1):
    """``(prod(shape[:axis]), prod(shape[axis:]))``; ``axis`` may be ``ndim`` or negative."""
    x = inputs[0]
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis <= x.ndim:
        raise ModelFileError(f"Flatten axis {axis} is out of range for rank {x.ndim}")
    return [x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))]


@_layout_kernel("Squeeze")
def squeeze(inputs):
    """Remove the given axes (each of size 1), or every size-1 axis when ``axes`` is omitted."""
    x, axes = (list(inputs) + [None])[:2]
    if axes is None:
        return [x.squeeze()]
    axes = tuple(_axis(a, x.ndim) for a in _ints(axes))
    bad = [a for a in axes if x.shape[a] != 1]
    if bad:
        raise ModelFileError(f"Squeeze axes {bad} of shape {list(x.shape)} are not of size 1")
    return [x.squeeze(axes)]


@_layout_kernel("Unsqueeze")
def unsqueeze(inputs):
    """Insert size-1 axes; ``axes`` index the *output* (negative counts from its end)."""
    x, axes = inputs
    return [np.expand_dims(x, tuple(_ints(axes)))]


@_layout_kernel("Concat")
def concat(inputs, *, axis):
    """Join along ``axis``; all inputs must share the dtype (and so the exponent)."""
    dtypes = {a.dtype for a in inputs}
    if len(dtypes) > 1:
        raise ModelFileError(f"Concat inputs have different dtypes {sorted(map(str, dtypes))}")
    return [np.concatenate(inputs, axis=_axis(axis, inputs[0].ndim))]


@_layout_kernel("Split", pass_num_outputs=True)
def split(inputs, *, axis=0, num_outputs=None):
    """Split along ``axis`` into the sizes of the ``split`` input, or into ``num_outputs``
    pieces of ``ceil(L / num_outputs)`` (the last one smaller)."""
    x, sizes = (list(inputs) + [None])[:2]
    axis = _axis(axis, x.ndim)
    length = x.shape[axis]
    if sizes is None:
        chunk = -(-length // num_outputs)
        sizes = [min(chunk, length - i * chunk) for i in range(num_outputs)]
    sizes = _ints(sizes)
    if sum(sizes) != length or min(sizes) < 0:
        raise ModelFileError(f"Split sizes {sizes} do not add up to the axis length {length}")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice clamping: negatives count from the end; ``[0, dim]`` for positive steps,
    ``[-1, dim-1]`` for negative ones (-1 meaning "before index 0")."""
    if step == 0:
        raise ModelFileError("Slice step must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, -1), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@_layout_kernel("Slice")
def slice_(inputs):
    """``x[starts:ends:steps]`` along ``axes`` (default all leading axes, steps default 1)."""
    x, starts, ends, axes, steps = (list(inputs) + [None] * 5)[:5]
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else [_axis(a, x.ndim) for a in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ModelFileError("Slice starts, ends, axes and steps must have the same length")
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = _slice_bounds(s, e, st, x.shape[a])
    return [np.ascontiguousarray(x[tuple(index)])]


@_layout_kernel("Pad")
def pad(inputs, *, mode="constant"):
    """Pad by ``pads`` ``[b_1..b_n, e_1..e_n]`` (on ``axes`` when given; negative values crop)
    with ``constant_value`` (default 0), or by ``edge``/``reflect`` replication."""
    x, pads, value, axes = (list(inputs) + [None] * 4)[:4]
    pads = _ints(pads)
    axes = list(range(x.ndim)) if axes is None else [_axis(a, x.ndim) for a in _ints(axes)]
    if len(pads) != 2 * len(axes):
        raise ModelFileError(f"Pad needs {2 * len(axes)} pads for axes {axes}, got {pads}")
    pairs = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        pairs[a] = (pads[i], pads[i + len(axes)])
    crop = tuple(slice(max(-b, 0), x.shape[a] - max(-e, 0)) for a, (b, e) in enumerate(pairs))
    x = x[crop]
    grow = [(max(b, 0), max(e, 0)) for b, e in pairs]
    if mode == "constant":
        fill = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
        return [np.pad(x, grow, mode="constant", constant_values=fill).astype(x.dtype, copy=False)]
    if mode in ("edge", "reflect"):
        return [np.pad(x, grow, mode=mode)]
    raise ModelFileError(f"Pad mode {mode!r} is not one of constant, edge, reflect")


@_layout_kernel("Expand")
def expand(inputs):
    """Broadcast ``x`` against ``shape`` (ONNX bidirectional broadcasting)."""
    x, shape = inputs
    out = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    return [np.broadcast_to(x, out).copy()]


@_layout_kernel("Gather")
def gather(inputs, *, axis=0):
    """``take(x, indices, axis)``; negative indices count from the end."""
    x, indices = inputs
    return [np.take(x, indices, axis=_axis(axis, x.ndim))]


def _layout_fast(attrs, args, *, op_type):
    """The plain kernel on ``uncl(x)`` (float32 integers, canonical layout), result back to the
    fast form. Shape/axes inputs must be initializers. The output may be a view of the input,
    so the runtime never overwrites it in place."""
    dtype = args[0].dtype
    if not fast_ok(dtype) or any(a is not None and a.const is None for a in args[1:]):
        return None
    plain, consts = KERNELS[("", op_type)], [None if a is None else a.const for a in args[1:]]

    def run(a, inplace, scratch):
        y = plain([uncl(a[0]), *consts], **attrs)[0]
        return [np.ascontiguousarray(cl(y))]

    return FastOp(run, (dtype,) + (None,) * (len(args) - 1), (dtype,), fresh=False)


for _op in ("Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice"):
    fast(_op, domain="")(lambda attrs, args, _op=_op: _layout_fast(attrs, args, op_type=_op))
