"""Explicit padding: a convolution's zero padding moved into a ``Pad`` node before it.

Identity: ``conv(x, W, pads=p) == conv(Pad(x, p, value 0), W, pads=0)`` -- a convolution pads
with zeros, and so does ``Pad``; every output reads exactly the same numbers. The conv then has
no padding (0 is within every pad limit and below every kernel) and its input is the padded
one, so rules on the input size (``H >= kernel``) see the padded size.
"""

from __future__ import annotations

from .graph import CONV_OPS, Builder, spatial_attrs

OPS = CONV_OPS
#: Quantities the rewrite changes (a violated rule reading one of them is addressed).
CHANGES = {"pads", "pad_top", "pad_left", "pad_bottom", "pad_right", "H", "W"}


def candidates(node, ctx):
    nd = len(node.attrs["kernel_shape"])
    _, _, _, begins, ends = spatial_attrs(node, nd)
    params = ctx.params(node)
    if params is None or not any(begins + ends) or not ctx.target.supports("Pad"):
        return
    w, bias = params
    b = Builder(ctx, node, "pad")
    x = node.inputs[0]
    lead = [0] * (len(b.shape(x)) - nd)
    xp = b.pad(x, lead + begins, lead + ends)
    b.conv(node, xp, w, bias, {"pads": [0] * (2 * nd)}, "conv", out=node.outputs[0])
    yield b.done(f"padding {begins + ends} moved into a Pad node before the conv")
