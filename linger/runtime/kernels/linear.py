"""Integer linear and per-channel affine (folded batch-norm) layers."""

from __future__ import annotations

import math

import numpy as np

from ... import numerics
from ...errors import ModelFileError
from .. import schema as S
from . import fast, kernel
from ._common import acc_dtype, check_dtype, check_rank, output_stage
from ._fast import EXACT, F32, MAX_SHIFT, FastOp, Stage, cl, fast_ok, int_max, layer_stage, uncl


def _affine_check(attrs, consts, where, *, rank):
    """Weight ``(out, in)`` (LinearInt) or ``(C,)`` (BatchNormInt) of ``bits_w``, int32 bias
    with one value per output."""
    w, b = (list(consts) + [None, None])[1:3]
    if w is None:
        return
    S.need(w.ndim == rank, where, f"weight W {list(w.shape)} must have rank {rank}")
    S.const_dtype(w, numerics.int_dtype(attrs["bits_w"]), where, "weight W")
    if b is not None:
        S.const_dtype(b, np.int32, where, "bias B")
        S.need(b.shape == w.shape[:1], where,
               f"bias B {list(b.shape)} must have shape ({w.shape[0]},)")


def _linear_memory(attrs, ins, fast):
    """``x`` as floats, the ``(M, out)`` accumulator (three float64 temporaries), the output."""
    x, w = ins[0], ins[1]
    if w is None or len(w.shape) != 2 or not x.shape:
        return 0
    rows = math.prod(x.shape[:-1])
    return S.nbytes([rows, x.shape[-1]]) + 4 * S.nbytes([rows, w.shape[0]])


S.schema("LinearInt", inputs=(2, 3), memory=_linear_memory, **S.layer_attrs(),
         check=lambda a, c, w: _affine_check(a, c, w, rank=2))
S.schema("BatchNormInt", inputs=(2, 3), memory=lambda a, ins, f: 4 * S.nbytes(ins[0].shape),
         **S.layer_attrs(), check=lambda a, c, w: _affine_check(a, c, w, rank=1))


@kernel("LinearInt")
def linear_int(inputs, *, exp_x, exp_w, exp_o, bits_x, bits_w, bits_o):
    """``y = sat_bits_o(rshift(x @ W^T + B, exp_x + exp_w - exp_o))``.

    ``x (..., in)``, ``W (out, in)``, optional int32 ``B (out,)``; one BLAS matmul, exact in the
    float dtype ``acc_float_dtype_for(in, bits_x, bits_w)``.
    """
    x, w, b = (list(inputs) + [None])[:3]
    check_dtype(x, bits_x, "input x")
    check_dtype(w, bits_w, "weight W")
    check_rank(w, 2, "weight W (out, in)")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ModelFileError(f"input x {list(x.shape)} does not end with the weight's"
                             f" in_features {w.shape[1]}")
    f = acc_dtype(w.shape[1], bits_x, bits_w)
    acc = x.astype(f).reshape(-1, w.shape[1]) @ w.astype(f).T  # (M, out) exact ints
    acc = acc.reshape(*x.shape[:-1], w.shape[0])
    return [output_stage(acc, b, exp_x, exp_w, exp_o, bits_o, axis=-1)]


@kernel("BatchNormInt")
def batch_norm_int(inputs, *, exp_x, exp_w, exp_o, bits_x, bits_w, bits_o):
    """``y = sat_bits_o(rshift(x * W[c] + B[c], exp_x + exp_w - exp_o))`` over ``x (N, C, ...)``.

    One product per element: computed in float64 directly (no sum, nothing for BLAS to do).
    """
    x, w, b = (list(inputs) + [None])[:3]
    check_dtype(x, bits_x, "input x")
    check_dtype(w, bits_w, "weight W")
    if x.ndim < 2 or w.shape != (x.shape[1],):
        raise ModelFileError(f"weight W {list(w.shape)} must have one value per channel of x"
                             f" {list(x.shape)} (N, C, ...)")
    acc = x.astype(np.float64) * w.astype(np.float64).reshape([-1] + [1] * (x.ndim - 2))
    return [output_stage(acc, b, exp_x, exp_w, exp_o, bits_o, axis=1)]


@fast("LinearInt")
def linear_fast(attrs, args):
    """``x @ (W^T * 2**-s)`` in float32 (one sgemm), then ``floor(acc + c)`` and the clip.

    The fast form of a rank >= 3 input has its axis 1 last: the matmul runs on the canonical
    layout view and the result goes back to channels-last.
    """
    x, w, b = (list(args) + [None])[:3]
    dtype = numerics.int_dtype(attrs["bits_x"])
    if w is None or w.const is None or w.const.ndim != 2 or (b is not None and b.const is None) \
            or not fast_ok(dtype):
        return None
    prepared = layer_stage(w.const, None if b is None else b.const, attrs)
    if prepared is None:
        return None
    wm, stage = prepared
    wt = np.ascontiguousarray(wm.T)                                  # (in, out)

    def run(a, inplace, scratch):
        x = uncl(a[0])                                               # canonical layout view
        if x.ndim < 1 or x.shape[-1] != wt.shape[0]:
            raise ModelFileError(f"input {list(x.shape)} does not end with {wt.shape[0]}")
        acc = np.matmul(x.reshape(-1, wt.shape[0]), wt).reshape(*x.shape[:-1], wt.shape[1])
        acc = stage(acc)                                             # per output feature
        return [np.ascontiguousarray(cl(acc))]

    return FastOp(run, (dtype, None, None)[:len(args)], (numerics.int_dtype(attrs["bits_o"]),),
                  stage=stage)


@fast("BatchNormInt")
def batch_norm_fast(attrs, args):
    """``floor(x * (W * 2**-s) + (B + 2**(s-1)) * 2**-s)`` and the clip, per channel (last axis).

    Exact in float32 when ``2**(bits_x-1) * max|W| + max|B + 2**(s-1)| <= 2**24``.
    """
    x, w, b = (list(args) + [None])[:3]
    dtype = numerics.int_dtype(attrs["bits_x"])
    s = int(attrs["exp_x"]) + int(attrs["exp_w"]) - int(attrs["exp_o"])
    bits_o = int(attrs["bits_o"])
    if w is None or w.const is None or b is None or b.const is None or not fast_ok(dtype) \
            or abs(s) > MAX_SHIFT or bits_o > 16:
        return None
    w, b = w.const, b.const
    if w.ndim != 1 or w.dtype != numerics.int_dtype(attrs["bits_w"]) or b.dtype != np.int32 \
            or b.shape != w.shape:
        return None
    shifted = b.astype(np.int64) + ((1 << (s - 1)) if s > 0 else 0)
    w64 = w.astype(np.int64)
    if int_max(dtype) * int(np.abs(w64).max(initial=0)) + int(np.abs(shifted).max(initial=0)) \
            > EXACT:
        return None
    scale = 2.0 ** -s
    stage = Stage((w64 * scale).astype(F32), (shifted * scale).astype(F32),
                  numerics.qmin(bits_o), numerics.qmax(bits_o))

    def run(a, inplace, scratch):
        x = a[0]
        if x.ndim < 2 or x.shape[-1] != w.shape[0]:
            raise ModelFileError(f"input {list(x.shape)} has no {w.shape[0]} channels")
        return [stage(x, x if inplace else scratch.get("out", x.shape))]

    return FastOp(run, (dtype, None, None), (numerics.int_dtype(bits_o),), stage=stage,
                  pointwise=True)
