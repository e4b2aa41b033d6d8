"""Row and column splitting of linear layers and matmuls whose matrices exceed the target.

Identity (rows): each row of ``x @ W^T`` (``LinearInt``) or ``x @ y`` (``MatMulInt``) depends on
its own row of the left matrix only, so cutting the left matrix along a leading axis and
concatenating the results along that axis is exact: ``f(x) == Concat_a(f(x[r0:r1]) ...)``.
The batch axis (0) is never cut (the chip runs one sample at a time; the file keeps any batch).

Identity (columns, ``MatMulInt``): each output column depends on its own column of the right
matrix: ``x @ y == Concat_last(x @ y[..., l0:l1] ...)``; a constant right matrix is cut into new
initializers, an activation through a ``Slice``.
"""

from __future__ import annotations

import numpy as np

from ... import numerics
from .graph import Builder, chunks

OPS = ("LinearInt", "MatMulInt")
ROWS_CHANGES = {"M", "numel_in", "numel_out"}
COLS_CHANGES = {"L"}


def _emit(b, node, inputs, out=None, suffix="0"):
    xs, x1 = b.shape(inputs[0]), inputs[1]
    if node.op_type == "LinearInt":
        shape = (*xs[:-1], b.shape(x1)[0])
    else:
        ys = b.shape(x1)
        shape = (*np.broadcast_shapes(xs[:-2], ys[:-2]), xs[-2], ys[-1])
    return b.emit(node.op_type, inputs, node.attrs, shape, numerics.int_dtype(node.attrs["bits_o"]),
                  suffix, out, node.domain)


def rows(node, ctx):
    x = node.inputs[0]
    xs = ctx.shapes[x]
    if node.op_type == "LinearInt":    # every leading axis but the batch
        cands = [a for a in range(1, len(xs) - 1) if xs[a] > 1]
    else:                              # the row axis of the left matrix
        cands = [len(xs) - 2] if len(xs) >= 2 and xs[-2] > 1 else []
    if not cands:
        return
    ax = max(cands, key=lambda a: xs[a])
    last = None
    for n in range(2, xs[ax] + 1):
        size = -(-xs[ax] // n)
        if size == last:
            continue
        last = size
        b = Builder(ctx, node, "rows")
        outs = []
        for k, (r0, r1) in enumerate(chunks(xs[ax], size)):
            xi = b.slice(x, [ax], [r0], [r1], suffix=f"in{k}")
            outs.append(_emit(b, node, [xi] + list(node.inputs[1:]), suffix=f"{k}"))
        b.concat(outs, ax, out=node.outputs[0])
        yield b.done(f"{xs[ax]} rows (axis {ax}) split into {len(outs)} {node.op_type} of <="
                     f" {size} rows, then Concat")


def cols(node, ctx):
    if node.op_type != "MatMulInt":
        return
    x, y = node.inputs[:2]
    ys = ctx.shapes[y]
    const = ctx.inits.get(y)
    out_axis = len(ctx.shapes[node.outputs[0]]) - 1
    last = None
    for n in range(2, ys[-1] + 1):
        size = -(-ys[-1] // n)
        if size == last:
            continue
        last = size
        b = Builder(ctx, node, "cols")
        outs = []
        for k, (l0, l1) in enumerate(chunks(ys[-1], size)):
            yk = b.init(const[..., l0:l1].copy(), f"y{k}") if const is not None else \
                b.slice(y, [len(ys) - 1], [l0], [l1], suffix=f"y{k}")
            outs.append(_emit(b, node, [x, yk], suffix=f"{k}"))
        b.concat(outs, out_axis, out=node.outputs[0])
        yield b.done(f"{ys[-1]} columns of the right matrix split into {len(outs)} matmuls of"
                     f" <= {size}, then Concat")
