"""Dilation removed: a dilated kernel written out as a dense kernel with zeros between its taps.

Identity: ``conv(x, W, dilation=d) == conv(x, W', dilation=1)`` where ``W'`` has size
``d*(k-1) + 1`` per axis, ``W'[..., d*t] = W[..., t]`` and zeros elsewhere: the zero taps add
exact zeros to the integer accumulator. The dense kernel may then exceed the kernel limit, which
the kernel split lowers in turn. Costs ``(d*(k-1)+1)^2 / k^2`` times the weight bytes; beyond
:data:`MAX_GROWTH` times the pass does not apply (the layer is reported, not lowered): a huge
dilation would become thousands of kernel pieces and the packer would grind instead of answering.
"""

from __future__ import annotations

import numpy as np

from .graph import CONV_OPS, Builder, spatial_attrs

OPS = CONV_OPS
CHANGES = {"dilation", "dilation_h", "dilation_w", "dilated"}
#: the largest factor by which writing out the dilation may grow a layer's weights
MAX_GROWTH = 256


def candidates(node, ctx):
    nd = len(node.attrs["kernel_shape"])
    k, _, d, _, _ = spatial_attrs(node, nd)
    params = ctx.params(node)
    if params is None or all(v == 1 for v in d):
        return
    w, bias = params
    if np.prod([dv * (kv - 1) + 1 for kv, dv in zip(k, d)]) > MAX_GROWTH * np.prod(k):
        return
    dense = np.zeros(w.shape[:2] + tuple(dv * (kv - 1) + 1 for kv, dv in zip(k, d)), w.dtype)
    dense[(slice(None), slice(None)) + tuple(slice(None, None, dv) for dv in d)] = w
    b = Builder(ctx, node, "dense")
    b.conv(node, node.inputs[0], dense, bias, {"dilations": [1] * nd}, "conv",
           out=node.outputs[0])
    yield b.done(f"dilation {d} written as a dense {list(dense.shape[2:])} kernel with zero"
                 f" taps")
