"""Spatial tiling with a halo: a convolution computed tile by tile along H (rows) or W (columns).

Identity: output position ``o`` of a conv reads the padded input ``[o*s, o*s + d*(k-1) + 1)``
only. So outputs ``o0:o1`` are the conv of the input window ``[o0*s - p, (o1-1)*s + d*(k-1) + 1
- p)`` (``p`` the leading pad; the window overlaps its neighbours by the *halo*
``d*(k-1) + 1 - s``), where the window's part outside the input becomes that tile's own zero
padding: ``conv(x) == Concat_axis(conv(Slice(x, window_i), pads_i) for each tile i)``.
Every output is computed from the same numbers with the same rounding, so it is exact.

Rows cut the output (``Ho``); columns cut both the output and the aligned input line buffer
(which grows with ``W``). The number of tiles is the smallest for which every tile satisfies the
violated rules.
"""

from __future__ import annotations

from .graph import CONV_OPS, Builder, pieces, spatial_attrs, window

OPS = CONV_OPS


def tiles(axis_from_end: int):
    """The pass for the spatial axis ``axis_from_end`` counted from the last one (0: W, 1: H)."""
    def candidates(node, ctx):
        nd = len(node.attrs["kernel_shape"])
        if axis_from_end >= nd:
            return
        i = nd - 1 - axis_from_end                     # index among the spatial axes
        k, s, d, begins, ends = spatial_attrs(node, nd)
        x, y = node.inputs[0], node.outputs[0]
        ax = len(ctx.shapes[x]) - nd + i
        size, out = ctx.shapes[x][ax], ctx.shapes[y][ax]
        span = d[i] * (k[i] - 1) + 1
        params = ctx.params(node)
        if params is None:
            return
        w, bias = params
        last = None
        for n in range(2, out + 1):
            parts = pieces(out, n)
            if parts[0][1] - parts[0][0] == last:
                continue                                   # same largest tile as before
            last = parts[0][1] - parts[0][0]
            b = Builder(ctx, node, "tile")
            outs = []
            for t, (o0, o1) in enumerate(parts):
                win = window(o0 * s[i] - begins[i], (o1 - o0 - 1) * s[i] + span, size)
                if win is None:                            # a tile of padding only
                    return
                xin = x if win[:2] == (0, size) else \
                    b.slice(x, [ax], [win[0]], [win[1]], suffix=f"in{t}")
                pads = begins + ends
                pads[i], pads[nd + i] = win[2], win[3]
                outs.append(b.conv(node, xin, w, bias, {"pads": pads}, f"{t}"))
            b.concat(outs, ax, out=y)
            yield b.done(f"axis {ax} ({out} outputs) computed in {len(outs)} tiles of <="
                         f" {parts[0][1] - parts[0][0]} with a halo of {max(span - s[i], 0)},"
                         f" then Concat")
    return candidates


rows = tiles(1)
cols = tiles(0)
ROWS_CHANGES = {"H", "Ho", "numel_in", "numel_out"}
COLS_CHANGES = {"W", "Wo", "numel_in", "numel_out"}
