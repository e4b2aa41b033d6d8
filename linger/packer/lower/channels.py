"""Output-channel splitting, for weight and output buffers that exceed the target.

Identity: every output channel of a convolution depends only on its own weight rows and bias,
``y[:, c] = sat(rshift(conv(x, W[c]) + B[c], shift))``, so
``conv(x, W, B) == Concat_axis1(conv(x, W[c0:c1], B[c0:c1]) for each range)`` bit for bit. For a
grouped (depthwise) conv the unit is a group: the piece for groups ``g0:g1`` reads input
channels ``g0*Cin_g : g1*Cin_g`` (a ``Slice``) and has ``group = g1 - g0``. A transposed conv
(``W (Cin, Cout, k)``, one group) splits ``W[:, c0:c1]`` the same way.

The number of pieces is the smallest for which the largest piece satisfies the violated rules.
"""

from __future__ import annotations

from .graph import CONV_OPS, DECONV_OPS, Builder, chunks

OPS = CONV_OPS + DECONV_OPS
CHANGES = {"Cout", "Cout_g", "numel_out"}


def candidates(node, ctx):
    params = ctx.params(node)
    if params is None:
        return
    w, bias = params
    g = int(node.attrs.get("group", 1))
    deconv = node.op_type in DECONV_OPS
    if deconv and g != 1:
        return
    x = node.inputs[0]
    cout = w.shape[1] if deconv else w.shape[0]
    units, per = (cout, 1) if g == 1 else (g, cout // g)      # split channels or whole groups
    cig = w.shape[1] if not deconv else 0
    last = None
    for n in range(2, units + 1):
        size = -(-units // n)
        if size == last:
            continue
        last = size
        b = Builder(ctx, node, "cout")
        outs = []
        for k, (u0, u1) in enumerate(chunks(units, size)):
            c0, c1 = u0 * per, u1 * per
            xin, attrs = x, {}
            if g > 1:
                xin = b.slice(x, [1], [u0 * cig], [u1 * cig], suffix=f"in{k}")
                attrs["group"] = u1 - u0
            wk = w[:, c0:c1] if deconv else w[c0:c1]
            outs.append(b.conv(node, xin, wk, None if bias is None else bias[c0:c1], attrs,
                               f"{k}"))
        b.concat(outs, 1, out=node.outputs[0])
        what = "groups" if g > 1 else "output channels"
        yield b.done(f"{units} {what} split into {len(outs)} convs of <= {size}, then Concat")
