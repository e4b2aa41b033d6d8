"""Which violations of one layer lowering would fix, known from the layer's parameters alone.

``linger.init(model, target=...)`` checks PyTorch layers before training, when activation sizes
are unknown. To report only what cannot be lowered, it asks :func:`fixable_rules`: the layer is
built as a one-node graph (its kernel, stride, pads, dilation, groups, channels and bit widths;
zero weights; an input just large enough for two outputs per axis) and lowered with the very
passes ``linger pack`` runs. A rule the lowered nodes no longer break is fixable. The one thing
this cannot know is the weights: a kernel split also needs the accumulator bound of
:mod:`.partial`, which ``linger pack`` checks on the trained weights.
"""

from __future__ import annotations

import numpy as np

from ... import numerics
from .graph import CONV_OPS, DECONV_OPS, Ctx, LNode, conv_out_shape

#: Ops a one-node graph can be built for from the layer's parameters.
OPS = CONV_OPS + DECONV_OPS


def fixable_rules(target, op_type: str, q: dict) -> set:
    """Rule ids (``"Conv2dInt.kernel"``) of the layer with quantities ``q`` that lowering fixes."""
    if op_type not in OPS or "kernel" not in q or "Cin" not in q:
        return set()
    from . import _lower

    nd = len(q["kernel"])
    k, s = list(q["kernel"]), list(q["stride"])
    d = list(q.get("dilation") or [1] * nd)
    pads = list(q.get("pads") or [0] * (2 * nd))
    g, cin, cout = max(int(q.get("groups", 1)), 1), int(q["Cin"]), int(q["Cout"])
    bits = {r: int(q.get(f"bits_{r}", 8)) for r in "xwo"}
    attrs = {"exp_x": 0, "exp_w": 0, "exp_o": 0, "bits_x": bits["x"], "bits_w": bits["w"],
             "bits_o": bits["o"], "kernel_shape": k, "strides": s, "pads": pads,
             "dilations": d, "group": g}
    if op_type in DECONV_OPS:
        attrs["output_padding"] = list(q.get("output_padding") or [0] * nd)
    size = [dv * (kv - 1) + 1 + sv for kv, sv, dv in zip(k, s, d)]
    x_shape = (1, cin, *size)
    wshape = (cin, cout // g, *k) if op_type in DECONV_OPS else (cout, cin // g, *k)
    w = np.zeros(wshape, numerics.int_dtype(bits["w"]))
    y_shape = conv_out_shape(op_type, x_shape, w.shape, attrs)
    dt = {r: np.dtype(numerics.int_dtype(b)).name for r, b in bits.items()}
    ctx = Ctx(target, {"x": x_shape, "w": w.shape, "y": y_shape},
              {"x": dt["x"], "w": dt["w"], "y": dt["o"]}, {"w": w})
    node = LNode(op_type, "ai.linger", "layer", ["x", "w"], ["y"], attrs)
    errs = ctx.errors(node)
    nodes, _ = _lower(node, ctx, errs, 0)
    left = {v.rule for n in nodes for v in ctx.errors(n)}
    return {v.rule for v in errs} - left
