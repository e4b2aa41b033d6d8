"""Integer convolutions: ``y = sat_bits_o(rshift(conv(x, W) + B, exp_x + exp_w - exp_o))``.

Both directions are one batched matmul over the groups on exact-integer float arrays
(``numerics.acc_float_dtype_for`` picks float32 only where every partial sum stays below 2**24),
then the shared output stage (bias add and rounding shift in float64).

The fast version (``conv_fast``) works on the channels-last float32 form: windows are copied
block by block into an im2col buffer that stays in cache, one sgemm per block against weights
pre-scaled by ``2**-shift``, then ``floor(acc + c)`` and the clip in place (``_fast.py``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ... import numerics
from ...errors import ModelFileError
from .. import schema as S
from . import fast, kernel
from ._common import (acc_dtype, check_dtype, check_rank, output_stage, pad_pairs, pad_spatial,
                      spatial, windows)
from ._fast import (FastOp, c_strides, fast_ok, layer_stage, pad_cl, window_geometry,
                    windows_cl)

#: Bytes of one im2col block (rows x K float32): it stays in cache between the copy and its sgemm.
_BLOCK_BYTES = 1 << 19

# -- schemas (linger/runtime/schema.py): attribute ranges, consistency, memory ----------------
_GEOMETRY = dict(kernel_shape=S.Ints(1, S.MAX_SPATIAL, (1, 2)),
                 strides=S.Ints(1, S.MAX_SPATIAL, (1, 2)),
                 pads=S.Ints(0, S.MAX_SPATIAL, (2, 4)),
                 dilations=S.Ints(1, S.MAX_SPATIAL, (1, 2)), group=S.Int(1, S.ATTR_INT[1]))


def _conv_check(attrs, consts, where, *, nd, transposed):
    """Lengths of the per-axis attributes; with the weight known: its rank and dtype, the
    kernel shape, the groups and the bias (``B (Cout,)`` int32)."""
    S.spatial_lengths(attrs, nd, where)
    if transposed:
        S.spatial_lengths(attrs, nd, where, names=("output_padding",))
    w, b = (list(consts) + [None, None])[1:3]
    if w is None:
        return
    S.need(w.ndim == nd + 2, where, f"weight W {list(w.shape)} must have rank {nd + 2}")
    S.const_dtype(w, numerics.int_dtype(attrs["bits_w"]), where, "weight W")
    k = list(w.shape[2:])
    ks = attrs.get("kernel_shape")
    S.need(ks is None or list(ks) == k, where, f"kernel_shape {ks} disagrees with weight shape"
           f" {list(w.shape)}")
    S.need(min(k, default=1) >= 1, where, f"weight W {list(w.shape)} has an empty kernel")
    g = int(attrs.get("group", 1))
    cout = w.shape[1] * g if transposed else w.shape[0]
    S.need(w.shape[0] % g == 0, where, f"group={g} does not divide weight {list(w.shape)}")
    if b is not None:
        S.const_dtype(b, np.int32, where, "bias B")
        S.need(b.shape == (cout,), where, f"bias B {list(b.shape)} must have shape ({cout},)")


def _conv_memory(attrs, ins, fast):
    """Padded input, im2col columns (blocked on the fast path), accumulator and output."""
    x, w = ins[0], ins[1]
    if w is None or len(x.shape) != len(w.shape) or len(x.shape) < 3:
        return 0  # the kernel explains the rank mismatch
    nd, (n, c), cout = len(x.shape) - 2, x.shape[:2], w.shape[0]
    k = list(w.shape[2:])
    where = "input x"
    out = [S.window_out(L, pp, kd, s, d, where) for L, pp, kd, s, d in
           zip(x.shape[2:], S.pad_pairs(attrs, nd), k, S.per_axis(attrs, "strides", nd, 1),
               S.per_axis(attrs, "dilations", nd, 1))]
    padded = [L + a + b for L, (a, b) in zip(x.shape[2:], S.pad_pairs(attrs, nd))]
    item = 4 if fast else 8
    cols = S.nbytes([n, *out, c, *k], item)
    if fast and int(attrs.get("group", 1)) == 1:
        cols = min(cols, 4 * _BLOCK_BYTES)
    return S.nbytes([n, c, *padded], item) + cols + 3 * S.nbytes([n, cout, *out], 8)


def _conv_t_memory(attrs, ins, fast):
    """Columns ``x^T W`` (twice: the transpose copies), the full output and its crop."""
    x, w = ins[0], ins[1]
    if w is None or len(x.shape) != len(w.shape) or len(x.shape) < 3:
        return 0
    nd, n = len(x.shape) - 2, x.shape[0]
    k, cout = list(w.shape[2:]), w.shape[1] * int(attrs.get("group", 1))
    full = [(i - 1) * s + d * (kd - 1) + 1 for i, s, d, kd in
            zip(x.shape[2:], S.per_axis(attrs, "strides", nd, 1),
                S.per_axis(attrs, "dilations", nd, 1), k)]
    size = [f + pb + pe + op for f, (pb, pe), op in
            zip(full, S.pad_pairs(attrs, nd), S.per_axis(attrs, "output_padding", nd, 0))]
    return 2 * S.nbytes([n, *x.shape[2:], cout, *k]) + 3 * S.nbytes([n, cout, *size]) \
        + S.nbytes(x.shape)


for _nd in (1, 2):
    S.schema(f"Conv{_nd}dInt", inputs=(2, 3), memory=_conv_memory, **S.layer_attrs(),
             **_GEOMETRY,
             check=lambda a, c, w, nd=_nd: _conv_check(a, c, w, nd=nd, transposed=False))
    S.schema(f"ConvTranspose{_nd}dInt", inputs=(2, 3), memory=_conv_t_memory,
             **S.layer_attrs(), **_GEOMETRY, output_padding=S.Ints(0, S.MAX_SPATIAL, (1, 2)),
             check=lambda a, c, w, nd=_nd: _conv_check(a, c, w, nd=nd, transposed=True))


def _layer_inputs(inputs, bits_x, bits_w):
    """``(x, W, B or None, nd)``; 1-d ops see ``(N, C, W)``, 2-d ops ``(N, C, H, W)``."""
    x, w, b = (list(inputs) + [None])[:3]
    check_dtype(x, bits_x, "input x")
    check_dtype(w, bits_w, "weight W")
    if x.ndim not in (3, 4):
        raise ModelFileError(f"input x must be (N, C, W) or (N, C, H, W), got {list(x.shape)}")
    check_rank(w, x.ndim, "weight W")
    return x, w, b, x.ndim - 2


def _geometry(w, nd, kernel_shape, strides, dilations):
    """Kernel size (checked against the weight's shape), strides and dilations as lists."""
    k = list(w.shape[2:])
    if kernel_shape is not None and list(kernel_shape) != k:
        raise ModelFileError(f"kernel_shape {list(kernel_shape)} disagrees with weight shape"
                             f" {list(w.shape)}")
    return k, spatial(strides, nd, 1, "strides"), spatial(dilations, nd, 1, "dilations")


@kernel("Conv1dInt")
@kernel("Conv2dInt")
def conv_int(inputs, *, exp_x, exp_w, exp_o, bits_x, bits_w, bits_o, kernel_shape=None,
             strides=None, pads=None, dilations=None, group=1):
    """Forward convolution by im2col: windows ``(G, N*P, Cg*K)`` @ weights ``(G, Cg*K, Cout/G)``.

    ``x (N, C, *S)``, ``W (Cout, C/group, *k)``, optional int32 ``B (Cout,)``.
    """
    x, w, b, nd = _layer_inputs(inputs, bits_x, bits_w)
    k, strides, dilations = _geometry(w, nd, kernel_shape, strides, dilations)
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


def _blocks(n, rows, per_row, size):
    """``(i0, i1, j0, j1)``: samples ``i0:i1``, output rows ``j0:j1`` (axis 1) of about ``size``
    output positions each (``per_row`` positions per row); a block never spans two samples and
    part rows."""
    if rows * per_row >= size:
        r = max(1, size // per_row)
        return [(i, i + 1, j, min(j + r, rows)) for i in range(n) for j in range(0, rows, r)]
    step = size // (rows * per_row)
    return [(i, min(i + step, n), 0, rows) for i in range(0, n, step)]


@fast("Conv1dInt")
@fast("Conv2dInt")
def conv_fast(attrs, args):
    """Channels-last convolution ``x (N, *S, C)`` -> ``y (N, *O, Cout)``, float32 integers.

    Weights are reordered to rows ``(k..., Cg)``, the memory order of a window. Without groups:
    im2col (:func:`_im2col_conv`); a 1x1 convolution is a plain matmul on the (strided) input;
    with groups, one batched matmul over ``(G, N*P, K)`` windows.
    """
    x, w, b = (list(args) + [None])[:3]
    dtype = numerics.int_dtype(attrs["bits_x"])
    if w is None or w.const is None or (b is not None and b.const is None) or not fast_ok(dtype):
        return None
    w = w.const
    nd, g = w.ndim - 2, int(attrs.get("group", 1))
    k = list(w.shape[2:])
    cout, cg = w.shape[:2]
    if nd not in (1, 2) or g < 1 or cout % g or list(attrs.get("kernel_shape") or k) != k:
        return None  # the plain kernel explains what is wrong
    strides = spatial(attrs.get("strides"), nd, 1, "strides")
    dilations = spatial(attrs.get("dilations"), nd, 1, "dilations")
    pairs = pad_pairs(attrs.get("pads"), nd)
    prepared = layer_stage(np.moveaxis(w, 1, -1).reshape(cout, -1),  # (Cout, k... * Cg)
                           None if b is None else b.const, attrs)
    if prepared is None:
        return None
    wm, stage = prepared
    wm = wm.reshape(g, cout // g, -1).transpose(0, 2, 1).copy()  # (G, K, Cout/G)
    pointwise = all(v == 1 for v in k) and not any(p for pr in pairs for p in pr)
    if g == 1 and not pointwise:
        run = _im2col_conv(wm[0], stage, k, strides, dilations, pairs)
    else:
        def run(a, inplace, scratch):
            x = a[0]
            if x.ndim != nd + 2 or x.shape[-1] != cg * g:
                raise ModelFileError(f"input {list(x.shape)} does not fit weight"
                                     f" {list(w.shape)}")
            if pointwise:
                win = x[(slice(None),) + tuple(slice(None, None, s) for s in strides)]
                if g == 1:
                    out = scratch.get("out", (*win.shape[:-1], cout))
                    np.matmul(win.reshape(-1, cg), wm[0], out=out.reshape(-1, cout))
                    return [stage(out)]
                win = win.reshape(*win.shape[:-1], *k, cg * g)         # (N, *O, *k, C)
            else:
                win = windows_cl(pad_cl(x, pairs, scratch), k, strides, dilations)
            out = scratch.get("out", (*win.shape[:1 + nd], cout))
            win = win.reshape(*win.shape[:-1], g, cg)                   # (N, *O, *k, G, Cg)
            cols = np.moveaxis(win, -2, 0).reshape(g, out.size // cout, wm.shape[1])  # (G,N*P,K)
            acc = np.matmul(cols, wm)                                   # (G, N*P, Cout/G)
            out.reshape(-1, g, cout // g)[...] = acc.transpose(1, 0, 2)
            return [stage(out)]

    return FastOp(run, (dtype, None, None)[:len(args)], (numerics.int_dtype(attrs["bits_o"]),),
                  stage=stage)


def _im2col_conv(wm, stage, k, strides, dilations, pairs):
    """``run`` of an ungrouped convolution with pre-scaled weights ``wm (K, Cout)``.

    Per block of output positions, the windows are copied into a buffer of rows ``K + 1``
    whose last column holds 1 (written once: the buffer is kept), and one sgemm against
    ``[wm; c]`` adds the stage's constant ``c`` too. Each window row ``(kw, C)`` is contiguous
    in the padded input and copied as one raw-bytes element (~30 % faster than float by float).
    The per-shape geometry is computed once, and the block views once per set of buffers.
    """
    nd, cin, cout = len(k), wm.shape[0] // math.prod(k), wm.shape[1]
    wc = np.concatenate([wm, stage.c.reshape(1, cout)])            # (K + 1, Cout)
    kk = wc.shape[0]
    plans: dict = {}
    bound: dict = {}                  # shape -> (xp, out, buf, [(dst, src, lhs, res) per block])

    def plan(shape):
        padded = (shape[0], *(s + b + e for s, (b, e) in zip(shape[1:-1], pairs)), shape[-1])
        interior = (slice(None), *(slice(b, b + s) for s, (b, _) in zip(shape[1:-1], pairs)))
        view, steps = window_geometry(padded, c_strides(padded), k, strides, dilations)
        merge = dilations[-1] == 1                      # (kw, C) contiguous: one unit per row
        unit = np.dtype(f"V{4 * cin * (k[-1] if merge else 1)}")       # raw bytes copied as one
        view, steps = view[:-1 - merge], steps[:-1 - merge]             # (N, *O, *k') of units
        out_sp = view[1:1 + nd]
        per_row = math.prod(out_sp[1:])
        blocks = _blocks(shape[0], out_sp[0], per_row, max(1, _BLOCK_BYTES // (4 * kk)))
        rows = max(((i1 - i0) * (j1 - j0) * per_row for i0, i1, j0, j1 in blocks), default=0)
        if len(plans) > 32:
            plans.clear()
        plans[shape] = (padded if padded != shape else None, interior, view, steps, unit,
                        (shape[0], *out_sp, cout), blocks, rows)
        return plans[shape]

    def run(a, inplace, scratch):
        x = a[0]
        if x.ndim != nd + 2 or x.shape[-1] != cin:
            raise ModelFileError(f"input {list(x.shape)} does not have {cin} channels")
        padded, interior, view, steps, unit, out_shape, blocks, rows = \
            plans.get(x.shape) or plan(x.shape)
        if padded:
            xp = scratch.get("pad", padded, 0.0)                        # border stays zero
            xp[interior] = x
        else:
            xp = np.ascontiguousarray(x)
        out = scratch.get("out", out_shape)
        buf = scratch.get("cols", (rows, kk), 1.0)                      # last column: ones
        ops = bound.get(x.shape)
        if ops is None or ops[0] is not xp or ops[1] is not out or ops[2] is not buf:
            win = np.ndarray(view, unit, xp, 0, steps)                  # windows, as units
            units = buf[:, :-1].view(unit)                              # (rows, K / unit)
            ops = (xp, out, buf, [])
            for i0, i1, j0, j1 in blocks:
                src = win[i0:i1, j0:j1]
                m = src.size // units.shape[1]                          # output positions
                ops[3].append((units[:m].reshape(src.shape), src, buf[:m],
                               out[i0:i1, j0:j1].reshape(m, cout)))
            if padded:                 # views of kept buffers: valid while they are kept
                if len(bound) > 32:
                    bound.clear()
                bound[x.shape] = ops
        for dst, src, lhs, res in ops[3]:
            np.copyto(dst, src)                                         # the im2col block
            np.matmul(lhs, wc, out=res)
        return [stage(out, c_added=True)]

    return run


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
    k, strides, dilations = _geometry(w, nd, kernel_shape, strides, dilations)
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
