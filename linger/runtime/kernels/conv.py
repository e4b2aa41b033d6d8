"""Integer convolutions: ``y = sat_bits_o(rshift(conv(x, W) + B, exp_x + exp_w - exp_o))``.

Both directions are one batched matmul over the groups on exact-integer float arrays
(``numerics.acc_float_dtype_for`` picks float32 only where every partial sum stays below 2**24),
then the shared output stage (bias add and rounding shift in float64).
"""

from __future__ import annotations

import itertools

import numpy as np

from ...errors import ModelFileError
from . import kernel
from ._common import (acc_dtype, check_dtype, check_rank, output_stage, pad_pairs, pad_spatial,
                      spatial, windows)


def _layer_inputs(inputs, bits_x, bits_w):
    """``(x, W, B or None, nd)``; 1-d ops see ``(N, C, W)``, 2-d ops ``(N, C, H, W)``."""
    x, w, b = (list(inputs) + [None])[:3]
    check_dtype(x, bits_x, "input x")
    check_dtype(w, bits_w, "weight W")
    if x.ndim not in (3, 4):
        raise ModelFileError(f"input x must be (N, C, W) or (N, C, H, W), got {list(x.shape)}")
    check_rank(w, x.ndim, "weight W")
    return x, w, b, x.ndim - 2


@kernel("Conv1dInt")
@kernel("Conv2dInt")
def conv_int(inputs, *, exp_x, exp_w, exp_o, bits_x, bits_w, bits_o, kernel_shape=None,
             strides=None, pads=None, dilations=None, group=1):
    """Forward convolution by im2col: windows ``(G, N*P, Cg*K)`` @ weights ``(G, Cg*K, Cout/G)``.

    ``x (N, C, *S)``, ``W (Cout, C/group, *k)``, optional int32 ``B (Cout,)``.
    """
    x, w, b, nd = _layer_inputs(inputs, bits_x, bits_w)
    k = list(w.shape[2:])
    if kernel_shape is not None and list(kernel_shape) != k:
        raise ModelFileError(f"kernel_shape {list(kernel_shape)} disagrees with weight shape"
                             f" {list(w.shape)}")
    strides, dilations = spatial(strides, nd, 1, "strides"), spatial(dilations, nd, 1, "dilations")
    n, c = x.shape[:2]
    cout, cg = w.shape[:2]
    g = int(group)
    if g < 1 or c != cg * g or cout % g:
        raise ModelFileError(f"group={g} does not fit input channels {c}, weight {list(w.shape)}"
                             f" (need C = group * W.shape[1] and Cout divisible by group)")
    kk = int(np.prod(k))
    f = acc_dtype(cg * kk, bits_x, bits_w)
    xp = pad_spatial(x.astype(f), pad_pairs(pads, nd))
    win = windows(xp, k, strides, dilations)                   # (N, C, *O, *k)
    out_sp = list(win.shape[2:2 + nd])
    win = win.reshape(n, g, cg, *out_sp, *k)                   # split C into (G, Cg): no copy
    perm = (1, 0) + tuple(range(3, 3 + nd)) + (2,) + tuple(range(3 + nd, 3 + 2 * nd))
    cols = win.transpose(perm).reshape(g, -1, cg * kk)         # (G, N*P, Cg*K): the one copy
    wm = w.astype(f).reshape(g, cout // g, cg * kk).transpose(0, 2, 1)  # (G, Cg*K, Cout/G)
    acc = np.matmul(cols, wm)                                  # (G, N*P, Cout/G) exact ints
    acc = acc.reshape(g, n, *out_sp, cout // g)
    acc = acc.transpose((1, 0, 2 + nd) + tuple(range(2, 2 + nd)))  # (N, G, Cout/G, *O)
    acc = acc.reshape(n, cout, *out_sp)
    return [output_stage(acc, b, exp_x, exp_w, exp_o, bits_o, axis=1)]


@kernel("ConvTranspose1dInt")
@kernel("ConvTranspose2dInt")
def conv_transpose_int(inputs, *, exp_x, exp_w, exp_o, bits_x, bits_w, bits_o,
                       kernel_shape=None, strides=None, pads=None, dilations=None, group=1,
                       output_padding=None):
    """Transposed convolution with PyTorch's output geometry.

    ``cols = x^T W`` gives every input pixel's contribution to each kernel tap; col2im adds tap
    ``t`` at offset ``t*d`` with stride ``s`` into the full output of length
    ``F = (I-1)*s + d*(k-1) + 1``; the result is ``full[pb : pb + L]`` with
    ``L = F - pb - pe + output_padding`` (positions past ``F`` get no contribution).
    ``x (N, Cin, *S)``, ``W (Cin, Cout/group, *k)``, optional int32 ``B (Cout,)``.
    """
    x, w, b, nd = _layer_inputs(inputs, bits_x, bits_w)
    k = list(w.shape[2:])
    if kernel_shape is not None and list(kernel_shape) != k:
        raise ModelFileError(f"kernel_shape {list(kernel_shape)} disagrees with weight shape"
                             f" {list(w.shape)}")
    strides, dilations = spatial(strides, nd, 1, "strides"), spatial(dilations, nd, 1, "dilations")
    opad = spatial(output_padding, nd, 0, "output_padding")
    pairs = pad_pairs(pads, nd)
    n, cin = x.shape[:2]
    g = int(group)
    if g < 1 or w.shape[0] != cin or cin % g:
        raise ModelFileError(f"group={g} does not fit input channels {cin}, weight"
                             f" {list(w.shape)} (need W.shape[0] = C, C divisible by group)")
    cig, cog = cin // g, w.shape[1]
    in_sp = list(x.shape[2:])
    kk, pp = int(np.prod(k)), int(np.prod(in_sp))
    f = acc_dtype(cig * kk, bits_x, bits_w)
    xm = x.astype(f).reshape(n, g, cig, pp).transpose(1, 0, 3, 2).reshape(g, n * pp, cig)
    wm = w.astype(f).reshape(g, cig, cog * kk)
    cols = np.matmul(xm, wm).reshape(g, n, *in_sp, cog, *k)   # (G, N, *I, Cout/G, *k)
    perm = (1, 0, 2 + nd) + tuple(range(3 + nd, 3 + 2 * nd)) + tuple(range(2, 2 + nd))
    cols = cols.transpose(perm)                                # (N, G, Cout/G, *k, *I)
    full = [(i - 1) * s + d * (kd - 1) + 1 for i, s, d, kd in zip(in_sp, strides, dilations, k)]
    keep = [fl - pb - pe + op for fl, (pb, pe), op in zip(full, pairs, opad)]
    if min(keep) < 1:
        raise ModelFileError(f"pads {pads} and output_padding {opad} leave no output for input"
                             f" {list(x.shape)} and kernel {k}")
    size = [max(fl, pb + kp) for fl, (pb, _), kp in zip(full, pairs, keep)]
    out = np.zeros((n, g, cog, *size), dtype=f)
    for tap in itertools.product(*(range(kd) for kd in k)):   # <= 25 taps for 5x5
        dst = tuple(slice(t * d, t * d + (i - 1) * s + 1, s)
                    for t, d, i, s in zip(tap, dilations, in_sp, strides))
        out[(Ellipsis,) + dst] += cols[(slice(None),) * 3 + tap]
    crop = tuple(slice(pb, pb + kp) for (pb, _), kp in zip(pairs, keep))
    acc = out[(Ellipsis,) + crop].reshape(n, g * cog, *keep)   # (N, Cout, *L)
    return [output_stage(acc, b, exp_x, exp_w, exp_o, bits_o, axis=1)]
