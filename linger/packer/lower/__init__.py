"""Lowering: exact graph rewrites that turn a layer the target cannot run into ones it can.

When a node breaks a limit of the target profile, the driver tries the passes below, in this
order, on that node. A pass *addresses* a violation when the violated rule reads a quantity the
pass changes (the rules are the profile's data, so a new target gets the same lowering). Each
pass proposes rewrites from the cheapest up (2 pieces, 3 pieces...); the driver checks every new
node with the target's own checker and takes the first rewrite whose nodes no longer break any
addressed rule (failing that, the most split one that made the violation smaller). The new nodes
are lowered again the same way (a kernel split's int32 partials may need an output-channel
split...). What no pass can fix stays in the graph and is reported as it was.

==================  ===========================================  ==============================
pass                identity (module docstrings give the proof)  fixes (venus)
==================  ===========================================  ==============================
explicit_pad        conv(x, pads) == conv(Pad(x), 0)             pad, pad < kernel, input size
dense_kernel        dilation d == zero taps in a dense kernel    dilation
stride              stride s = stride s/r + keep every r-th out  stride, kernel >= stride
                    (kernel 1: sub-sample the input instead)
output_channels     channels / groups are independent: Concat    weight, depthwise weight,
                                                                 output size
row_tiles           outputs o0:o1 read one input window (halo)   output size
column_tiles        the same along W                             input line buffer, output
input_channels      acc = sum of partial accs (int32), one       weight, input buffer
                    requantization
kernel_split        the same over kernel tiles                   kernel, weight
matmul_rows         rows of the left matrix are independent      linear/matmul left matrix
matmul_cols         columns of the right matrix are independent  matmul right matrix
==================  ===========================================  ==============================

Every rewrite is bit-exact (tests run each lowered graph against the original over shapes at and
around every venus limit). Only ops every executor runs are written: the ``ai.linger`` op
itself with other attributes, ``Slice``, ``Concat``, ``Pad``, ``iqAdd`` and ``Requant``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import channels, dilation, matmul, pad, partial, stride, tiling
from .graph import Ctx, LNode

#: A node is lowered at most this many levels deep (each level strictly shrinks a quantity).
MAX_DEPTH = 12
#: Rewrites one pass may propose for one node before the driver gives up on it.
MAX_CANDIDATES = 64


@dataclass(frozen=True)
class Pass:
    name: str
    ops: tuple
    changes: frozenset          # quantities the rewrite changes
    candidates: object          # (node, ctx) -> iterator of Rewrite, cheapest first


PASSES = (
    Pass("explicit_pad", pad.OPS, frozenset(pad.CHANGES), pad.candidates),
    Pass("dense_kernel", dilation.OPS, frozenset(dilation.CHANGES), dilation.candidates),
    Pass("stride", stride.OPS, frozenset(stride.CHANGES), stride.candidates),
    Pass("output_channels", channels.OPS, frozenset(channels.CHANGES), channels.candidates),
    Pass("row_tiles", tiling.OPS, frozenset(tiling.ROWS_CHANGES), tiling.rows),
    Pass("column_tiles", tiling.OPS, frozenset(tiling.COLS_CHANGES), tiling.cols),
    Pass("input_channels", partial.OPS, frozenset(partial.CIN_CHANGES), partial.cin_split),
    Pass("kernel_split", partial.OPS, frozenset(partial.KERNEL_CHANGES), partial.kernel_split),
    Pass("matmul_rows", matmul.OPS, frozenset(matmul.ROWS_CHANGES), matmul.rows),
    Pass("matmul_cols", matmul.OPS, frozenset(matmul.COLS_CHANGES), matmul.cols),
)


@dataclass(frozen=True)
class Lowering:
    """One node of the original graph, rewritten: how, and what it costs."""

    node: str
    op_type: str
    display: str
    fixed: tuple            # the violations it resolved (their messages)
    steps: tuple            # what each pass did, in order
    extra_ops: int          # nodes added
    extra_bytes: int        # bytes of the new intermediate activations
    extra_params: int       # parameter bytes added (slice bounds, split weights) minus removed

    def __str__(self) -> str:
        return (f"{self.display} `{self.node}` lowered automatically: {'; '.join(self.steps)}."
                f" Cost: +{self.extra_ops} ops, +{self.extra_bytes} bytes of intermediate"
                f" activations, {self.extra_params:+d} bytes of parameters.")


@dataclass
class LowerResult:
    model: onnx.ModelProto
    lowerings: list
    notes: dict             # node -> reasons a pass could not apply
    kept: dict              # node left as exported -> the rules lowering cannot fix there


def lower_model(model, values, nodes, target) -> LowerResult:
    """Lower every node of ``model`` that breaks a rule of ``target``.

    ``values``: name -> object with ``shape`` and ``dtype`` (the packer's measured values);
    ``nodes``: the runtime's nodes in execution order (decoded attributes), matching
    ``model.graph.node``. Returns the new model (``model`` itself is not changed).
    """
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ctx = Ctx(target, {k: tuple(v.shape) for k, v in values.items()},
              {k: np.dtype(v.dtype).name for k, v in values.items()}, inits)
    ctx.node_names = {n.name for n in nodes}
    protos = {tuple(p.output): p for p in model.graph.node}
    out, lowerings, kept = [], [], {}
    for rn in nodes:
        node = LNode(rn.op_type, rn.domain, rn.name, list(rn.inputs), list(rn.outputs),
                     dict(rn.attrs), protos.get(tuple(rn.outputs)))
        errs = ctx.errors(node)
        new, steps = _lower(node, ctx, errs, 0) if errs else ([node], [])
        left = {v.rule for n in new for v in ctx.errors(n)} if steps else set()
        if left:
            # something no pass fixes (bit widths, an unsupported op...): the layer stays as
            # exported and is reported by its own name, with only what lowering cannot fix
            kept[node.name] = {v.rule for v in errs if v.rule in left} or {v.rule for v in errs}
            new, steps = [node], []
        if steps:
            lowerings.append(_record(node, new, steps, errs, ctx))
        out += new
    if not lowerings:
        return LowerResult(model, [], ctx.notes, kept)
    return LowerResult(_write(model, out, ctx), lowerings, ctx.notes, kept)


def _lower(node, ctx, errs, depth):
    """``(nodes, steps)``: ``node`` rewritten until it fits (or no pass helps)."""
    if not errs or depth > MAX_DEPTH:
        return [node], []
    rules_of = _rules(ctx.target)
    choice = fallback = None
    for p in PASSES:
        if node.op_type not in p.ops:
            continue
        rules = {v.rule for v in errs if v.rule in rules_of and rules_of[v.rule].names & p.changes}
        if not rules:
            continue
        progress = None           # this pass's most split rewrite that shrank the violation
        for count, rw in enumerate(p.candidates(node, ctx)):
            if not all(ctx.target.supports(n.op_type) for n in rw.nodes):
                break             # the target lacks an op this pass writes (Concat, Pad...)
            left = [v for n in rw.nodes for v in ctx.errors(n, rw) if v.rule in rules]
            if not left:
                choice = (p, rw)
                break
            if _progress(errs, left, rules):
                progress = (p, rw)
            if count + 1 >= MAX_CANDIDATES:
                break
        if choice:
            break
        fallback = fallback or progress       # the first pass that helped at all
    choice = choice or fallback
    if choice is None:
        return [node], []
    p, rw = choice
    ctx.commit(rw)
    nodes, steps = [], [f"{p.name}: {rw.how}"]
    for n in rw.nodes:
        sub, more = _lower(n, ctx, ctx.errors(n), depth + 1)
        nodes += sub
        steps += more
    return nodes, steps


def _rules(target) -> dict:
    """``"<op>.<rule id>"`` -> Rule, as violations name them."""
    return {f"{op}.{r.id}": r for op, spec in target.ops.items() for r in spec.rules}


def _size(value) -> float:
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return max(value)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 1


def _progress(errs, left, rules) -> bool:
    """The addressed violations got smaller (or some vanished) and none grew."""
    before = {r: max(_size(v.value) for v in errs if v.rule == r) for r in rules}
    after = {}
    for v in left:
        after[v.rule] = max(after.get(v.rule, 0), _size(v.value))
    return all(after.get(r, 0) <= before[r] for r in rules) and \
        any(after.get(r, -1) < before[r] for r in rules)


def _record(node, new, steps, errs, ctx) -> Lowering:
    made = {o for n in new for o in n.outputs} - set(node.outputs)
    act = sum(math.prod(ctx.shapes[o]) * np.dtype(ctx.dtypes[o]).itemsize for o in made)
    used = {i for n in new for i in n.inputs if i in ctx.inits}
    old = {i for i in node.inputs if i in ctx.inits}
    params = sum(ctx.inits[i].nbytes for i in used - old) - sum(ctx.inits[i].nbytes
                                                                for i in old - used)
    counts = Counter(steps)
    text = tuple(s if counts[s] == 1 else f"{s} (x{counts[s]})" for s in dict.fromkeys(steps))
    return Lowering(node.name, node.op_type, ctx.target.display(node.op_type),
                    tuple(v.message for v in errs), text, len(new) - 1, act, params)


def _write(model, nodes, ctx) -> onnx.ModelProto:
    """``model`` with ``nodes`` as its graph; initializers no node reads are dropped."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    del g.node[:]
    for n in nodes:
        if n.proto is not None:
            g.node.append(n.proto)
        else:
            g.node.append(helper.make_node(n.op_type, n.inputs, n.outputs, name=n.name,
                                           domain=n.domain or None, **n.attrs))
    read = {i for n in nodes for i in n.inputs if i} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in read]
    have = {t.name for t in kept}
    del g.initializer[:]
    g.initializer.extend(kept)
    for name in sorted(read - have):
        if name in ctx.inits and name not in {i.name for i in g.input}:
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(ctx.inits[name]),
                                                         name))
    del g.value_info[:]
    # the lowered graph is cut for the planned sizes: declare them (the batch axis stays free)
    for vi in g.input:
        if vi.name in ctx.shapes:
            for axis, d in enumerate(vi.type.tensor_type.shape.dim):
                if axis > 0 and not d.HasField("dim_value"):
                    d.dim_value = ctx.shapes[vi.name][axis]
    if not any(o.domain in ("", "ai.onnx") for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("", 13))
    return m


__all__ = ["PASSES", "Lowering", "LowerResult", "MAX_DEPTH", "lower_model"]
