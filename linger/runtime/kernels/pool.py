"""Pooling: integer average pooling (custom) and standard ONNX MaxPool."""

from __future__ import annotations

import math

import numpy as np

from ... import numerics
from ...errors import ModelFileError
from .. import schema as S
from . import fast, kernel
from ._common import check_dtype, pad_pairs, pad_spatial, spatial, windows
from ._fast import F32, FastOp, fast_ok, pad_cl, windows_cl


def _pool_check(attrs, consts, where):
    S.spatial_lengths(attrs, len(attrs["kernel_shape"]), where)


def _pool_memory(attrs, ins, fast):
    """The padded input and the window sums in int64, the output; plus one int64 per window
    element summed: not memory, but it bounds the time a pool of huge windows (a tiny file)
    may take in proportion to ``max_memory_bytes``."""
    x = ins[0]
    k = [int(v) for v in attrs["kernel_shape"]]
    nd = len(k)
    if len(x.shape) != nd + 2:
        return 0  # the kernel explains the rank
    strides, dil = S.per_axis(attrs, "strides", nd, 1), S.per_axis(attrs, "dilations", nd, 1)
    pairs = S.pad_pairs(attrs, nd) if attrs.get("auto_pad", "NOTSET") == "NOTSET" else \
        [(kd * d, kd * d) for kd, d in zip(k, dil)]     # SAME_*: at most a window per side
    out = [S.window_out(L, pp, kd, s, d, "input x") + 1 for L, pp, kd, s, d in
           zip(x.shape[2:], pairs, k, strides, dil)]    # + 1: ceil_mode's last window
    padded = [L + a + b + s for L, (a, b), s in zip(x.shape[2:], pairs, strides)]
    return 2 * S.nbytes([*x.shape[:2], *padded]) + 3 * S.nbytes([*x.shape[:2], *out]) \
        + S.nbytes([*x.shape[:2], *out, *k])


_POOL = dict(kernel_shape=S.Ints(1, S.MAX_SPATIAL, (1, 3)),
             strides=S.Ints(1, S.MAX_SPATIAL, (1, 3)), pads=S.Ints(0, S.MAX_SPATIAL, (2, 6)),
             ceil_mode=S.Flag())
S.schema("AvgPoolInt", inputs=(1, 1), check=_pool_check, memory=_pool_memory, exp=S.Exp(),
         bits=S.Bits(), count_include_pad=S.Flag(), **_POOL)
S.schema("MaxPool", "", inputs=(1, 1), check=_pool_check, memory=_pool_memory,
         dilations=S.Ints(1, S.MAX_SPATIAL, (1, 3)), storage_order=S.Flag(),
         auto_pad=S.Str(("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")), **_POOL)


@kernel("AvgPoolInt")
def avg_pool_int(inputs, *, kernel_shape, exp, bits, strides=None, pads=None,
                 count_include_pad=0, ceil_mode=0):
    """``y = floor((2s + k) / (2k))``: the window mean rounded half up; exponent unchanged.

    ``s``: int64 sum of the window over the zero-padded input; ``k``: the window size, or the
    number of non-padding elements in it when ``count_include_pad == 0``.
    """
    (x,) = inputs
    check_dtype(x, bits, "input x")
    if ceil_mode:
        raise ModelFileError("AvgPoolInt with ceil_mode=1 is not supported (export refuses it)")
    nd = len(kernel_shape)
    k = [int(v) for v in kernel_shape]
    strides = spatial(strides, nd, 1, "strides")
    pairs = pad_pairs(pads, nd)
    ones = [1] * nd
    sums = windows(pad_spatial(x.astype(np.int64), pairs), k, strides, ones)
    sums = sums.sum(axis=tuple(range(-nd, 0)))                 # (N, C, *O) int64
    if count_include_pad or not any(b or e for b, e in pairs):
        counts = math.prod(k)
    else:  # per output position: how many window elements are real input
        mask = pad_spatial(np.ones(x.shape[-nd:], dtype=np.int64), pairs)
        counts = windows(mask, k, strides, ones).sum(axis=tuple(range(-nd, 0)))  # (*O)
    return [numerics.rounded_div(sums, counts).astype(numerics.int_dtype(bits))]


S.schema("GlobalAvgPoolInt", inputs=(1, 1), memory=S.sum_memory(2), exp=S.Exp(), bits=S.Bits())


@kernel("GlobalAvgPoolInt")
def global_avg_pool_int(inputs, *, exp, bits):
    """``AvgPoolInt`` over the whole spatial extent of the input it is given (written by export
    for a global pooling over a dynamic axis): ``y = floor((2s + L) / (2L))``, ``s`` the int64 sum
    of each channel, ``L`` the product of the actual spatial sizes; exponent unchanged."""
    (x,) = inputs
    check_dtype(x, bits, "input x")
    if x.ndim < 3:
        raise ModelFileError(f"GlobalAvgPoolInt input must be (N, C, *spatial), got"
                             f" {list(x.shape)}")
    axes = tuple(range(2, x.ndim))
    sums = x.astype(np.int64).sum(axis=axes, keepdims=True)          # (N, C, 1...) int64
    return [numerics.rounded_div(sums, math.prod(x.shape[2:])).astype(numerics.int_dtype(bits))]


def _pool_geometry(shape, k, strides, dilations, pads, auto_pad, ceil_mode):
    """Per-axis ``(pad_begin, pad_end, out)`` of ONNX pooling, PyTorch's ceil_mode rule included.

    ``out = floor_or_ceil((L + pb + pe - span) / s) + 1`` with ``span = d*(k-1) + 1``; in ceil
    mode a last window starting in the end padding is dropped. ``pad_end`` is raised so that every
    kept window lies inside the padded input.
    """
    auto_pad = auto_pad or "NOTSET"
    nd = len(k)
    if auto_pad == "NOTSET":
        pairs = pad_pairs(pads, nd)
    elif auto_pad == "VALID":
        pairs = [(0, 0)] * nd
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = []
        for n, kd, s, d in zip(shape, k, strides, dilations):
            total = max(0, (math.ceil(n / s) - 1) * s + d * (kd - 1) + 1 - n)
            small, big = total // 2, total - total // 2
            pairs.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
    else:
        raise ModelFileError(f"auto_pad={auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER,"
                             f" SAME_LOWER")
    geom = []
    for n, kd, s, d, (pb, pe) in zip(shape, k, strides, dilations, pairs):
        span = d * (kd - 1) + 1
        room = n + pb + pe - span
        if room < 0:
            raise ModelFileError(f"pooling window {span} is larger than the padded input"
                                 f" {n + pb + pe}")
        out = (-(-room // s) if ceil_mode else room // s) + 1
        if ceil_mode and (out - 1) * s >= n + pb:
            out -= 1
        geom.append((pb, max(pe, (out - 1) * s + span - n - pb), out))
    return geom


@kernel("MaxPool", domain="")
def max_pool(inputs, *, kernel_shape, auto_pad="NOTSET", ceil_mode=0, dilations=None,
             pads=None, storage_order=0, strides=None):
    """ONNX MaxPool (``Indices`` output not supported): max over each window, padding never wins.

    Padding uses -inf (floats) or the dtype's minimum (integers), so the output dtype and
    exponent are the input's.
    """
    (x,) = inputs
    nd = len(kernel_shape)
    k = [int(v) for v in kernel_shape]
    strides = spatial(strides, nd, 1, "strides")
    dilations = spatial(dilations, nd, 1, "dilations")
    if x.ndim != nd + 2:
        raise ModelFileError(f"MaxPool input must be (N, C, *{nd} spatial), got {list(x.shape)}")
    geom = _pool_geometry(x.shape[2:], k, strides, dilations, pads, auto_pad, ceil_mode)
    fill = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    xp = pad_spatial(x, [(pb, pe) for pb, pe, _ in geom], fill)
    win = windows(xp, k, strides, dilations)
    win = win[(Ellipsis,) + tuple(slice(0, o) for _, _, o in geom) + (slice(None),) * nd]
    return [win.max(axis=tuple(range(-nd, 0)))]


@fast("AvgPoolInt")
def avg_pool_fast(attrs, args):
    """Channels-last window sums (float64: exact integers), then ``numerics.rounded_div`` in
    int64 exactly as the plain kernel."""
    dtype = numerics.int_dtype(attrs["bits"])
    if not fast_ok(dtype) or attrs.get("ceil_mode"):
        return None
    k = [int(v) for v in attrs["kernel_shape"]]
    nd = len(k)
    strides = spatial(attrs.get("strides"), nd, 1, "strides")
    pairs = pad_pairs(attrs.get("pads"), nd)
    ones, axes = [1] * nd, tuple(range(1 + nd, 1 + 2 * nd))
    padded = any(b or e for b, e in pairs)
    include = attrs.get("count_include_pad", 0) or not padded

    def run(a, inplace, scratch):
        x = a[0]                                                     # (N, *S, C)
        if x.ndim != nd + 2:
            raise ModelFileError(f"input {list(x.shape)} is not (N, C, *{nd} spatial)")
        if list(x.shape[1:-1]) == k and not padded:                  # global pooling
            sums = x.sum(axis=tuple(range(1, nd + 1)), keepdims=True, dtype=np.float64)
        else:
            win = windows_cl(pad_cl(x, pairs, scratch), k, strides, ones)  # (N, *O, *k, C)
            sums = win.sum(axis=axes, dtype=np.float64)              # (N, *O, C)
        sums = sums.astype(np.int64)
        if include:
            counts = math.prod(k)
        else:  # per output position: how many window elements are real input
            mask = pad_spatial(np.ones(x.shape[1:-1], dtype=np.int64), pairs)
            counts = windows(mask, k, strides, ones).sum(axis=tuple(range(-nd, 0)))[..., None]
        return [numerics.rounded_div(sums, counts).astype(F32)]

    return FastOp(run, (dtype,), (dtype,))


@fast("MaxPool", domain="")
def max_pool_fast(attrs, args):
    """Channels-last window max; padding holds the dtype's minimum, as in the plain kernel."""
    dtype = args[0].dtype
    if not fast_ok(dtype):
        return None
    k = [int(v) for v in attrs["kernel_shape"]]
    nd = len(k)
    strides = spatial(attrs.get("strides"), nd, 1, "strides")
    dilations = spatial(attrs.get("dilations"), nd, 1, "dilations")
    fill = float(np.iinfo(dtype).min)

    def run(a, inplace, scratch):
        x = a[0]                                                     # (N, *S, C)
        if x.ndim != nd + 2:
            raise ModelFileError(f"input {list(x.shape)} is not (N, C, *{nd} spatial)")
        geom = _pool_geometry(x.shape[1:-1], k, strides, dilations, attrs.get("pads"),
                              attrs.get("auto_pad"), attrs.get("ceil_mode", 0))
        win = windows_cl(pad_cl(x, [(pb, pe) for pb, pe, _ in geom], scratch, fill), k,
                         strides, dilations)
        win = win[(slice(None),) + tuple(slice(0, o) for _, _, o in geom)]
        return [win.max(axis=tuple(range(1 + nd, 1 + 2 * nd)))]

    return FastOp(run, (dtype,), (dtype,))
