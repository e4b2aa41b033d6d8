"""Helpers shared by the kernel families: dtype checks, padding, sliding windows, output stage."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ... import numerics
from ...errors import ModelFileError


def check_dtype(x: np.ndarray, bits: int, what: str) -> None:
    """Refuse an integer input not stored as ``numerics.int_dtype(bits)``.

    The exactness bound of the float accumulators assumes values fit in ``bits`` bits, so a wider
    dtype than the attribute promises is a malformed graph, not something to guess around.
    """
    expected = np.dtype(numerics.int_dtype(bits))
    if x.dtype != expected:
        raise ModelFileError(f"{what} is {x.dtype}, but bits={bits} integers are stored as"
                             f" {expected}")


def check_rank(x: np.ndarray, ndim: int, what: str) -> None:
    if x.ndim != ndim:
        raise ModelFileError(f"{what} must have rank {ndim}, got shape {list(x.shape)}")


def spatial(values, nd: int, default: int, what: str) -> list[int]:
    """An attribute with one int per spatial axis (``None`` -> ``default`` everywhere)."""
    if values is None:
        return [default] * nd
    values = [int(v) for v in values]
    if len(values) != nd:
        raise ModelFileError(f"{what} needs {nd} values (one per spatial axis), got {values}")
    return values


def pad_pairs(pads, nd: int) -> list[tuple[int, int]]:
    """ONNX ``pads`` ``[b_1..b_nd, e_1..e_nd]`` -> ``[(b_1, e_1), ...]`` (all >= 0)."""
    pads = [0] * (2 * nd) if pads is None else [int(p) for p in pads]
    if len(pads) != 2 * nd or min(pads) < 0:
        raise ModelFileError(f"pads must be {2 * nd} non-negative values (all begins, then all"
                             f" ends), got {pads}")
    return list(zip(pads[:nd], pads[nd:]))


def pad_spatial(x: np.ndarray, pairs, value=0) -> np.ndarray:
    """Pad the last ``len(pairs)`` axes with ``value``; leading (batch, channel) axes untouched."""
    if not any(b or e for b, e in pairs):
        return x
    lead = [(0, 0)] * (x.ndim - len(pairs))
    return np.pad(x, lead + list(pairs), constant_values=value)


def windows(xp: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """Strided view ``(..., *O, *kernel)`` of the sliding windows over the last ``nd`` axes.

    A dilated window spans ``d*(k-1)+1`` inputs and keeps every ``d``-th; strides keep every
    ``s``-th window, so ``O = floor((P - d*(k-1) - 1) / s) + 1`` for a (padded) length ``P``.
    No data is copied.
    """
    nd = len(kernel)
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    axes = tuple(range(xp.ndim - nd, xp.ndim))
    for a, sp in zip(axes, span):
        if xp.shape[a] < sp:
            raise ModelFileError(f"spatial size {xp.shape[a]} (after padding) is smaller than the"
                                 f" (dilated) kernel extent {sp}; input shape {list(xp.shape)}")
    view = sliding_window_view(xp, span, axis=axes)
    return view[(Ellipsis,) + tuple(slice(None, None, s) for s in strides)
                + tuple(slice(None, None, d) for d in dilations)]


def acc_dtype(k: int, bits_x: int, bits_w: int):
    """Float dtype for BLAS sums of ``k`` products: float32 when exact, else float64."""
    return numerics.acc_float_dtype_for(int(k), int(bits_x), int(bits_w))


def output_stage(acc: np.ndarray, bias, exp_x: int, exp_w: int, exp_o: int, bits_o: int,
                 axis: int) -> np.ndarray:
    """``sat_bits_o(rshift(acc + B, exp_x + exp_w - exp_o))`` as ``int_dtype(bits_o)``.

    ``acc`` holds exact integers (float32 or float64); the bias add and the rounding shift run in
    float64, exact for |value| < 2**53. ``axis`` is the channel axis ``B`` broadcasts along.
    """
    acc = acc.astype(np.float64)
    if bias is not None:
        check_dtype(bias, numerics.BIAS_BITS, "bias B")
        if bias.shape != (acc.shape[axis],):
            raise ModelFileError(f"bias B must have shape ({acc.shape[axis]},), got"
                                 f" {list(bias.shape)}")
        shape = [1] * acc.ndim
        shape[axis] = -1
        acc += bias.astype(np.float64).reshape(shape)
    q = numerics.requantize(acc, int(exp_x) + int(exp_w) - int(exp_o), int(bits_o))
    return q.astype(numerics.int_dtype(bits_o))
