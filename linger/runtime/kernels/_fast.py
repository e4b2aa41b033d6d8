"""Shared pieces of the fast path: the float32 channels-last form, exactness bounds, the rounding
output stage, and the :class:`FastOp` record that a ``@fast`` preparer returns.

The fast form
-------------
Between nodes that have a fast version, integers travel as **float32 arrays holding them
exactly, channel axis last**: ``(N, C, *S)`` ``int8`` becomes ``(N, *S, C)`` ``float32``; rank
<= 2 keeps its layout, so for every rank >= 2 the channel axis is the last one. Per-channel
constants broadcast along it, im2col windows read ``C`` contiguous values, and no node casts
int8 -> float -> int8 again. The plain (canonical) form is the kernel contract of
``docs/onnx_ops.md``; the runtime converts where a value crosses between the two.

Why float32 is exact here
-------------------------
float32 holds every ``m * 2**e`` with an integer ``|m| <= 2**24`` (normal range: ``|e| <= 100``
is far inside it). Every value a fast kernel computes is of that kind:

- multiplying by a power of two changes only ``e``: exact;
- adding values on the same grid ``2**e`` is exact while the integer of every partial sum stays
  ``<= 2**24`` in magnitude, whatever the order (BLAS blocking and FMA included);
- ``floor`` and ``clip`` are exact.

So the rounding shift of ``numerics.requantize``, ``floor((acc + B + 2**(s-1)) * 2**-s)``, is
computed as ``floor(acc' + c)`` with the weights pre-scaled by ``2**-s`` (``acc' = acc * 2**-s``)
and ``c = (B + 2**(s-1)) * 2**-s``: exact when ``max|acc| + max|B + 2**(s-1)| <= 2**24``
(:data:`EXACT`). Preparers check that bound on the constants they see (the weights, and the
largest input the input's dtype allows) and return ``None`` when it fails: the plain kernel runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ... import numerics
from ...errors import ModelFileError

F32 = np.float32
#: Largest integer magnitude float32 holds with all its neighbours (2**24).
EXACT = 1 << 24
#: Largest |shift| a fast kernel accepts: ``2**-s`` and ``2**24 * 2**s`` stay normal float32,
#: and ``2**(s-1)`` fits an int64 (a hostile file may ask for any shift the schema allows).
MAX_SHIFT = 62
#: Marker in :attr:`FastOp.takes`: the input is read in its canonical form (e.g. Quant's floats).
CANON = "canonical"
#: ``np.clip``'s ufunc without its Python wrapper (a few us per call at batch 1), if available.
_clip = getattr(getattr(np, "_core", None) and np._core.umath, "clip", np.clip)


class Arg(NamedTuple):
    """What a preparer knows of one node input before any run (``None`` for an omitted one)."""

    const: np.ndarray | None      # the initializer, or None for a value computed at run time
    dtype: np.dtype | None        # its canonical dtype when known at load time


@dataclass(eq=False)
class FastOp:
    """A node's fast version, as its preparer built it.

    ``run(args, inplace, scratch) -> list``: ``args[i]`` is node input ``i`` in the form
    ``takes[i]`` asks for (``None`` where ``takes[i]`` is ``None``: a constant baked into
    ``run``). ``inplace``: ``args[0]`` is a temporary nothing else reads, which ``run`` may
    overwrite and return. ``scratch``: the step's :class:`Scratch`, for temporaries and fast-form
    outputs (the runtime never hands a fast-form array to the caller).
    ``takes[i]``: the integer dtype of an input read in fast form, :data:`CANON` for one read as
    is, ``None`` for one not read. ``gives[k]``: the integer dtype of a fast output, ``None`` for a
    canonical one. ``stage``: the output stage, whose clip a following Relu/Clip may narrow.
    ``pointwise``: ``run`` is ``stage`` applied to input 0 (BatchNormInt, Requant, Relu, Clip),
    so the runtime may fold the op into the step producing that input. ``fresh``: the outputs
    are new arrays (``False``: they may be views of the inputs, never to be overwritten).
    """

    run: Callable
    takes: tuple
    gives: tuple
    stage: "Stage | None" = None
    pointwise: bool = False
    fresh: bool = True


class Scratch:
    """Arrays (float32 unless asked) one step keeps from run to run, by key.

    Reusing them saves the allocation and, above all, the page faults of fresh large arrays
    (measured: ~2,500 per SmallResNet batch-32 run without it); a padding buffer's border is
    filled once and only its interior is written afterwards. Arrays above :data:`KEEP_BYTES`
    are not kept. The runtime gives each step its own, and a fresh one to a run that overlaps
    another in a second thread.
    """

    KEEP_BYTES = 64 << 20

    def __init__(self):
        self._arrays: dict = {}

    def get(self, key, shape, fill=None, dtype=F32) -> np.ndarray:
        """An array of ``shape``; with ``fill`` its elements hold ``fill`` until written."""
        a = self._arrays.get((key, fill))
        if a is None or a.shape != tuple(shape) or a.dtype != dtype:
            a = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
            if a.nbytes <= self.KEEP_BYTES:
                self._arrays[(key, fill)] = a
        return a


def int_max(dtype) -> int:
    """``2**(bits-1)``: the largest magnitude an integer of this dtype has."""
    return 1 << (8 * np.dtype(dtype).itemsize - 1)


def fast_ok(dtype) -> bool:
    """Integer dtypes the fast form holds exactly: int8 and int16."""
    return dtype is not None and np.dtype(dtype) in (np.dtype(np.int8), np.dtype(np.int16))


def cl(x: np.ndarray) -> np.ndarray:
    """Canonical layout -> channels-last view (rank >= 3; no copy)."""
    return x.transpose(0, *range(2, x.ndim), 1) if x.ndim >= 3 else x


def uncl(x: np.ndarray) -> np.ndarray:
    """Channels-last -> canonical layout view (rank >= 3; no copy)."""
    return x.transpose(0, x.ndim - 1, *range(1, x.ndim - 1)) if x.ndim >= 3 else x


def to_fast(x: np.ndarray, dtype) -> np.ndarray:
    """Canonical integers of ``dtype`` -> a new C-contiguous float32 channels-last array."""
    if x.dtype != dtype:
        raise ModelFileError(f"expected {np.dtype(dtype)} integers, got {x.dtype}")
    out = np.empty(cl(x).shape, F32)
    np.copyto(out, cl(x))
    return out


def to_canonical(x: np.ndarray, dtype) -> np.ndarray:
    """Fast form -> a new C-contiguous canonical array of ``dtype``."""
    return np.ascontiguousarray(uncl(x), dtype=dtype)


class Stage:
    """``y = clip(floor(x * a + c), lo, hi)`` in place over ``x (..., C)``.

    ``a``, ``c``: ``None``, a python float, or one float32 per channel (last axis). Without ``a``
    and ``c`` it is a plain clip (no floor). Per-channel constants are tiled to a whole sample
    (``x`` seen as ``(N, size/N)``): numpy's inner loop is then long instead of ``C`` wide.
    """

    def __init__(self, a=None, c=None, lo=None, hi=None):
        self.a, self.c, self.lo, self.hi = a, c, lo, hi
        self._plans: dict = {}

    def clip_to(self, lo, hi) -> None:
        """Follow the stage by ``min(max(y, lo), hi)`` (ONNX Clip/Relu).

        Two clips in a row are one clip to ``[h(lo1), h(hi1)]`` with ``h`` the second one
        (``h`` is monotone and the identity between its bounds), disjoint ranges included.
        """
        def h(v):
            return v if v is None else min(max(v, lo), hi)
        self.lo, self.hi = (lo, hi) if self.lo is None else (h(self.lo), h(self.hi))

    def _plan(self, shape):
        """``(rows shape, a, c)`` for a C-contiguous ``x`` of this shape (tiled constants)."""
        plan = self._plans.get(shape)
        if plan is None:
            width = math.prod(shape[1:]) if len(shape) > 1 and shape[0] else 0
            for v in (self.a, self.c):
                if isinstance(v, np.ndarray) and (not shape or shape[-1] != v.shape[0]):
                    raise ModelFileError(f"input {list(shape)} does not end with the"
                                         f" {v.shape[0]} channels of the constants")
            if not (isinstance(self.a, np.ndarray) or isinstance(self.c, np.ndarray)) \
                    or not shape[-1] < width <= 1 << 16:
                plan = (None, self.a, self.c)
            else:
                def tile(v):
                    return np.tile(v, width // v.shape[0]) if isinstance(v, np.ndarray) else v
                plan = ((shape[0], width), tile(self.a), tile(self.c))
            if len(self._plans) > 16:  # many input shapes: keep memory bounded
                self._plans.clear()
            self._plans[shape] = plan
        return plan

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None, *,
                 c_added: bool = False) -> np.ndarray:
        """The stage of ``x`` written to ``out`` (default: ``x`` itself); returns ``out``.
        ``c_added``: ``x`` already holds ``+ c`` (a convolution summed it in its matmul)."""
        out = x if out is None else out
        rows, a, c = self._plan(x.shape)
        src, dst = x, out
        if rows is None or not (x.flags.c_contiguous and out.flags.c_contiguous):
            a, c = self.a, self.c
        else:
            src, dst = x.reshape(rows), out.reshape(rows)
        for fn, v in ((np.multiply, a), (np.add, None if c_added else c)):
            if v is not None:
                fn(src, v, out=dst)
                src = dst
        if a is not None or c is not None:
            np.floor(src, out=dst)
            src = dst
        if self.lo is not None:
            _clip(src, self.lo, self.hi, out=dst)
        elif src is not dst:
            np.copyto(dst, src)
        return out


def layer_stage(w2d: np.ndarray, bias, attrs) -> tuple | None:
    """Pre-scaled float32 weights ``(Cout, K)`` and the output :class:`Stage` of an integer layer
    (conv, linear): ``y = sat_bits_o(rshift(x . W + B, exp_x + exp_w - exp_o))``.

    ``None`` when float32 is not provably exact: ``max|acc| + max|B + 2**(s-1)| <= 2**24`` with
    ``max|acc| = 2**(bits_x-1) * max_j sum_k |W[j, k]|`` (the weights are known here, which is
    tighter than ``numerics.acc_float_dtype_for``), ``|s| <= MAX_SHIFT`` and ``bits_o <= 16``.
    """
    s = int(attrs["exp_x"]) + int(attrs["exp_w"]) - int(attrs["exp_o"])
    bits_o = int(attrs["bits_o"])
    if abs(s) > MAX_SHIFT or bits_o > 16 or w2d.dtype != numerics.int_dtype(attrs["bits_w"]):
        return None
    cout = w2d.shape[0]
    if bias is not None and (bias.dtype != np.int32 or bias.shape != (cout,)):
        return None
    w64 = w2d.astype(np.int64)
    acc = int_max(numerics.int_dtype(attrs["bits_x"])) * int(np.abs(w64).sum(axis=1).max(initial=0))
    shifted = np.zeros(cout, np.int64) if bias is None else bias.astype(np.int64)
    shifted += (1 << (s - 1)) if s > 0 else 0
    if acc + int(np.abs(shifted).max(initial=0)) > EXACT:
        return None
    scale = 2.0 ** -s
    stage = Stage(None, (shifted * scale).astype(F32), numerics.qmin(bits_o), numerics.qmax(bits_o))
    return (w64 * scale).astype(F32), stage


def pad_cl(x: np.ndarray, pairs, scratch: Scratch, value=0.0) -> np.ndarray:
    """Pad the spatial axes ``1..nd`` of a channels-last array with ``value``: the interior is
    copied into a scratch buffer whose border keeps ``value`` from run to run."""
    if not any(b or e for b, e in pairs):
        return x
    shape = (x.shape[0],) + tuple(n + b + e for n, (b, e) in zip(x.shape[1:-1], pairs)) \
        + (x.shape[-1],)
    out = scratch.get("pad", shape, float(value))
    out[(slice(None),) + tuple(slice(b, b + n) for n, (b, _) in zip(x.shape[1:-1], pairs))] = x
    return out


def window_geometry(shape, byte_strides, kernel, strides, dilations) -> tuple:
    """``(shape, byte strides)`` of the window view ``(N, *O, *kernel, C)`` of a channels-last
    array: as ``_common.windows``, a dilated window spans ``d*(k-1)+1`` inputs and keeps every
    ``d``-th; strides keep every ``s``-th window."""
    out = []
    for n, k, s, d in zip(shape[1:-1], kernel, strides, dilations):
        if n < d * (k - 1) + 1:
            raise ModelFileError(f"spatial size {n} (after padding) is smaller than the (dilated)"
                                 f" kernel extent {d * (k - 1) + 1}")
        out.append((n - d * (k - 1) - 1) // s + 1)
    st = byte_strides[1:-1]
    return ((shape[0], *out, *kernel, shape[-1]),
            (byte_strides[0], *(t * s for t, s in zip(st, strides)),
             *(t * d for t, d in zip(st, dilations)), byte_strides[-1]))


def c_strides(shape, itemsize: int = 4) -> tuple:
    """Byte strides of a C-contiguous array of ``shape``."""
    steps = [itemsize]
    for n in reversed(shape[1:]):
        steps.insert(0, steps[0] * n)
    return tuple(steps)


def windows_cl(xp: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """Strided view ``(N, *O, *kernel, C)`` of the sliding windows of a channels-last array
    (:func:`window_geometry`). No data is copied."""
    shape, steps = window_geometry(xp.shape, xp.strides, kernel, strides, dilations)
    if xp.flags.c_contiguous:  # the ndarray constructor is ~20x cheaper than as_strided
        return np.ndarray(shape, xp.dtype, xp, 0, steps)
    return as_strided(xp, shape, steps, writeable=False)
