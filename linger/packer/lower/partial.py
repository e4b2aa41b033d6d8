"""Kernel and input-channel splitting: partial convolutions summed in int32, requantized once.

Identity: a convolution's accumulator is a sum over input channels and kernel taps,
``acc[o] = sum_c sum_t W[c, t] xp[c, o*s + t*d] + B``. Cut the channels into ranges and the
kernel into tiles (each <= the target's kernel limit): each (range, tile) is a smaller
convolution of an input window, whose exact accumulator the conv writes as int32 by asking for
``bits_o = 32`` at ``exp_o = exp_x + exp_w`` (shift 0: no rounding). Then

    y = Requant(iqAdd(...iqAdd(P_1, P_2)..., P_n), exp_in = exp_x + exp_w -> exp_o, bits_o)

equals the original ``sat(rshift(acc, exp_x + exp_w - exp_o))`` bit for bit **provided no int32
saturates**: every partial and running sum is bounded by ``2^(bits_x-1) * sum|W[c_out]| +
|B[c_out]|``, which the pass checks from the weights before it applies (else it refuses, and the
layer is reported). The bias goes with the first partial. The tile ``(i0:i1, j0:j1)`` reads the
input window that starts at ``i0*d - pad_top`` (rows) / ``j0*d - pad_left`` (columns); the part
of a window outside the input becomes the partial's own zero padding, and a window wholly in
the padding contributes zeros and is dropped. No new op: Conv with int32 output, iqAdd and
Requant are ops every executor already runs.
"""

from __future__ import annotations

import itertools

import numpy as np

from .graph import CONV_OPS, Builder, pieces, spatial_attrs, window

OPS = CONV_OPS
KERNEL_CHANGES = {"kernel", "kernel_h", "kernel_w"}
CIN_CHANGES = {"Cin", "Cin_g"}
INT32_MAX = 2 ** 31 - 1


def _bound_ok(node, ctx, w, bias) -> bool:
    bx = int(node.attrs["bits_x"])
    per_out = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(axis=1) << (bx - 1)
    if bias is not None:
        per_out = per_out + np.abs(bias.astype(np.int64))
    if int(per_out.max(initial=0)) > INT32_MAX:
        ctx.note(node, f"its accumulator can reach {int(per_out.max())} > 2^31-1, so partial"
                       f" sums could saturate int32")
        return False
    return True


def _build(node, ctx, cin_parts, tiles, what):
    nd = len(node.attrs["kernel_shape"])
    k, s, d, begins, ends = spatial_attrs(node, nd)
    x, y = node.inputs[0], node.outputs[0]
    w, bias = ctx.params(node)
    xs = ctx.shapes[x]
    lead = len(xs) - nd
    out_sp = ctx.shapes[y][lead:]
    e = int(node.attrs["exp_x"]) + int(node.attrs["exp_w"])
    b = Builder(ctx, node, what)
    parts = []
    for p, ((c0, c1), tile) in enumerate(itertools.product(cin_parts, tiles)):
        xin, pads = x, begins + ends
        axes, sl0, sl1 = [], [], []
        for i, (t0, t1) in enumerate(tile):
            span = d[i] * (t1 - t0 - 1) + 1
            win = window(t0 * d[i] - begins[i], (out_sp[i] - 1) * s[i] + span, xs[lead + i])
            if win is None:
                break
            if win[:2] != (0, xs[lead + i]):
                axes.append(lead + i)
                sl0.append(win[0])
                sl1.append(win[1])
            pads[i], pads[nd + i] = win[2], win[3]
        else:
            if (c0, c1) != (0, xs[1]):
                axes, sl0, sl1 = [1] + axes, [c0] + sl0, [c1] + sl1
            if axes:
                xin = b.slice(x, axes, sl0, sl1, suffix=f"in{p}")
            wk = w[(slice(None), slice(c0, c1)) + tuple(slice(t0, t1) for t0, t1 in tile)]
            parts.append(b.conv(node, xin, wk, bias if not parts else None,
                                {"pads": pads, "bits_o": 32, "exp_o": e}, f"part{p}"))
    if not parts:
        return None
    acc = parts[0]
    for p in parts[1:]:
        acc = b.add32(acc, p, e)
    b.requant(acc, e, 32, int(node.attrs["exp_o"]), int(node.attrs["bits_o"]), out=y)
    return b, len(parts)


def kernel_split(node, ctx):
    """Kernel tiles (grouped and depthwise convs too: each partial keeps the groups)."""
    k = list(node.attrs["kernel_shape"])
    params = ctx.params(node)
    if params is None or not _bound_ok(node, ctx, *params):
        return
    counts = sorted(itertools.product(*[range(1, v + 1) for v in k]),
                    key=lambda c: (np.prod(c), c))
    cin = ctx.shapes[node.inputs[0]][1]
    for n in counts:
        if all(v == 1 for v in n):
            continue
        tiles = list(itertools.product(*[pieces(kv, nv) for kv, nv in zip(k, n)]))
        built = _build(node, ctx, [(0, cin)], tiles, "ksplit")
        if built is None:
            continue
        b, parts = built
        sizes = [p[0][1] - p[0][0] for p in [pieces(kv, nv) for kv, nv in zip(k, n)]]
        yield b.done(f"kernel {k} split into {parts} partial convs of <= {sizes} with int32"
                     f" outputs, summed (iqAdd int32) and requantized once (Requant)")


def cin_split(node, ctx):
    if int(node.attrs.get("group", 1)) != 1:
        return
    params = ctx.params(node)
    if params is None or not _bound_ok(node, ctx, *params):
        return
    cin = params[0].shape[1]
    tile = [tuple((0, v) for v in node.attrs["kernel_shape"])]
    last = None
    for n in range(2, cin + 1):
        size = -(-cin // n)
        size = -(-size // 8) * 8 if -(-size // 8) * 8 < cin else size  # aligned ranges first
        if size == last:
            continue
        last = size
        ranges = [(i, min(i + size, cin)) for i in range(0, cin, size)]
        built = _build(node, ctx, ranges, tile, "cinsplit")
        if built is None:
            continue
        b, parts = built
        yield b.done(f"{cin} input channels split into {parts} partial convs of <= {size}"
                     f" channels with int32 outputs, summed (iqAdd int32) and requantized once"
                     f" (Requant)")
