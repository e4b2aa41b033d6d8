"""Integer linear and per-channel affine (folded batch-norm) layers."""

from __future__ import annotations

import numpy as np

from ...errors import ModelFileError
from . import kernel
from ._common import acc_dtype, check_dtype, check_rank, output_stage


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
