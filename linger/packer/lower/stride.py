"""Stride decomposition and sub-sampling, for strides the target does not run.

Identity (output sub-sampling): with ``s = r * s'``, the stride-``s`` convolution is every
``r``-th output of the stride-``s'`` one: ``y_s[o] = sum_t W[t] xp[o*s + t] = y_s'[o*r]``, and
``ceil(Ho_s' / r) == Ho_s``. So stride 8 = stride 4 (or 2, or 1) + ``Slice`` with step 2 (4, 8)
on the output. A kernel smaller than the stride is fixed the same way (``s'`` <= kernel).

Identity (input sub-sampling, kernel 1 and no padding on the axis): ``y[o] = W x[o*s]`` reads
only every ``s``-th input, so ``conv_s(x) == conv_1(x[::s])`` -- the cheaper form for the 1x1
stride-2 shortcut convs of ResNets: ``Slice`` step 2 first, then a 1x1 stride-1 conv.

The new stride per axis is the largest divisor of the old one for which the conv satisfies the
target's stride rules (checked with the profile, not assumed).
"""

from __future__ import annotations

import itertools

from .graph import CONV_OPS, Builder, spatial_attrs

OPS = CONV_OPS
CHANGES = {"stride", "stride_h", "stride_w"}


def _divisors(s):
    return [d for d in range(s, 0, -1) if s % d == 0]


def candidates(node, ctx):
    nd = len(node.attrs["kernel_shape"])
    k, s, _, begins, ends = spatial_attrs(node, nd)
    params = ctx.params(node)
    if params is None or all(v == 1 for v in s):
        return
    w, bias = params
    options = sorted(itertools.product(*[_divisors(v) for v in s]),
                     key=lambda c: sum(a // b for a, b in zip(s, c)))  # least extra work first
    x = node.inputs[0]
    lead = len(ctx.shapes[x]) - nd
    for new in options:
        if list(new) == s:
            continue
        r = [a // b for a, b in zip(s, new)]
        inner = [i for i in range(nd) if r[i] > 1 and k[i] == 1 and begins[i] == ends[i] == 0]
        outer = [i for i in range(nd) if r[i] > 1 and i not in inner]
        b = Builder(ctx, node, "stride")
        xs = x
        strides = list(new)
        if inner:
            xs = b.slice(x, [lead + i for i in inner], [0] * len(inner),
                         [ctx.shapes[x][lead + i] for i in inner], [r[i] for i in inner],
                         suffix="subsample_in")
        if outer:
            y = b.conv(node, xs, w, bias, {"strides": strides}, "conv")
            ys = b.shape(y)
            b.slice(y, [lead + i for i in outer], [0] * len(outer),
                    [ys[lead + i] for i in outer], [r[i] for i in outer],
                    suffix="subsample_out", out=node.outputs[0])
        else:
            b.conv(node, xs, w, bias, {"strides": strides}, "conv", out=node.outputs[0])
        how = []
        if inner:
            how.append(f"input sub-sampled by {[r[i] for i in inner]} on axes"
                       f" {[lead + i for i in inner]} (kernel 1)")
        if outer:
            how.append(f"stride {s} computed as stride {list(new)} then every"
                       f" {[r[i] for i in outer]}-th output kept")
        yield b.done("; ".join(how))

