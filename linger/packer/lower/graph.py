"""The graph the lowering passes rewrite, and the builder each pass writes its nodes with.

A pass never edits the graph: it returns a :class:`Rewrite` (new nodes, the shapes of the values
they make, new initializers) built with a :class:`Builder`; the driver checks the new nodes
against the target and only then commits them. Shapes of new values are computed from the op
geometry here (the lowered graph is measured again by running it before it is planned, so a
wrong formula here cannot reach the packed file unnoticed: the checker would see the measured
shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import numerics
from ...targets import check_op, from_node

CONV_OPS = ("Conv1dInt", "Conv2dInt")
DECONV_OPS = ("ConvTranspose1dInt", "ConvTranspose2dInt")


@dataclass
class LNode:
    """One node: ``attrs`` decoded (ints, lists); ``proto`` the original NodeProto while the node
    is unchanged (it is written back as it was read)."""

    op_type: str
    domain: str
    name: str
    inputs: list
    outputs: list
    attrs: dict
    proto: object = None


@dataclass
class Rewrite:
    """A node's replacement: ``nodes`` in execution order (the last writes the node's output),
    the shapes/dtypes of the values they create, new initializers, and ``how`` in words."""

    nodes: list
    values: dict
    inits: dict
    how: str = ""


class Ctx:
    """Shapes, dtypes and initializers of the graph being lowered, and the target."""

    def __init__(self, target, shapes: dict, dtypes: dict, inits: dict):
        self.target = target
        self.shapes = dict(shapes)          # name -> tuple
        self.dtypes = dict(dtypes)          # name -> numpy dtype name
        self.inits = dict(inits)            # name -> ndarray
        self.names = set(shapes) | set(inits)
        self.node_names: set = set()
        self.notes: dict = {}               # node name -> why a pass could not apply

    def commit(self, rw: Rewrite) -> None:
        for name, (shape, dtype) in rw.values.items():
            self.shapes[name], self.dtypes[name] = shape, dtype
        self.inits.update(rw.inits)
        self.names.update(rw.values)
        self.node_names.update(n.name for n in rw.nodes)

    def params(self, node):
        """``(W, B or None)`` of a layer node when both are initializers, else ``None`` (a
        weight computed in the graph is not split: the node is reported as it is)."""
        w = self.inits.get(node.inputs[1]) if len(node.inputs) > 1 else None
        bname = node.inputs[2] if len(node.inputs) > 2 else ""
        if w is None or (bname and bname not in self.inits):
            return None
        return w, (self.inits[bname] if bname else None)

    def note(self, node, why: str) -> None:
        self.notes.setdefault(node.name, []).append(why)

    def errors(self, node, extra=None) -> list:
        """Error-severity violations of one node (``extra``: a Rewrite whose values it reads)."""
        def look(table, name):
            if extra is not None and name in extra.values:
                return extra.values[name][0 if table == "s" else 1]
            return (self.shapes if table == "s" else self.dtypes)[name]
        ins = [look("s", i) if i else None for i in node.inputs]
        in_dt = [look("d", i) if i else None for i in node.inputs]
        outs = [look("s", o) for o in node.outputs if o]
        out_dt = [look("d", o) for o in node.outputs if o]
        q = from_node(node.op_type, node.attrs, ins, in_dt, outs, out_dt)
        return [v for v in check_op(self.target, node.op_type, node.name, q)
                if v.severity == "error"]


class Builder:
    """Writes the nodes of one rewrite of ``node``: names derive from the node's name, every
    new value gets its shape and dtype as it is created."""

    def __init__(self, ctx: Ctx, node: LNode, tag: str):
        self.ctx, self.node, self.tag = ctx, node, tag
        self.rw = Rewrite([], {}, {})
        self._nodes: set = set()              # node names taken by this rewrite

    # -- names and lookups ----------------------------------------------------------------------
    @staticmethod
    def _fresh(base: str, *taken) -> str:
        """``base``, or ``base_1``, ``base_2``... : the first name in none of ``taken``."""
        name, k = base, 1
        while any(name in t for t in taken):
            name, k = f"{base}_{k}", k + 1
        return name

    def value_name(self, suffix: str) -> str:
        return self._fresh(f"{self.node.outputs[0]}/{self.tag}{suffix}", self.ctx.names,
                           self.rw.values, self.rw.inits)

    def node_name(self, suffix: str) -> str:
        name = self._fresh(f"{self.node.name}/{self.tag}{suffix}", self.ctx.node_names,
                           self._nodes)
        self._nodes.add(name)
        return name

    def shape(self, name) -> tuple:
        if name in self.rw.values:
            return self.rw.values[name][0]
        return self.ctx.shapes[name]

    def dtype(self, name) -> str:
        if name in self.rw.values:
            return self.rw.values[name][1]
        return self.ctx.dtypes[name]

    def init(self, array: np.ndarray, suffix: str) -> str:
        name = self.value_name(suffix)
        self.rw.inits[name] = array
        self.rw.values[name] = (tuple(array.shape), array.dtype.name)
        return name

    def emit(self, op_type, inputs, attrs, shape, dtype, suffix, out=None, domain=None) -> str:
        """Append a node; ``out``: the name of its output (default: a fresh one)."""
        out = out or self.value_name(suffix)
        if domain is None:
            domain = "" if op_type in ("Slice", "Concat", "Pad") else "ai.linger"
        self.rw.nodes.append(LNode(op_type, domain, self.node_name(suffix), list(inputs), [out],
                                   dict(attrs)))
        self.rw.values[out] = (tuple(int(s) for s in shape), np.dtype(dtype).name)
        return out

    # -- the ops the passes write ----------------------------------------------------------------
    def slice(self, x, axes, starts, ends, steps=None, suffix="slice", out=None) -> str:
        """``x[start:end:step]`` along ``axes`` (standard ONNX Slice, int64 parameter inputs)."""
        steps = list(steps or [1] * len(axes))
        shape = list(self.shape(x))
        for a, s, e, st in zip(axes, starts, ends, steps):
            shape[a] = len(range(s, min(e, shape[a]), st))
        args = [x] + [self.init(np.array(v, dtype=np.int64), f"{suffix}.{k}")
                      for k, v in (("starts", starts), ("ends", ends), ("axes", axes),
                                   ("steps", steps))]
        return self.emit("Slice", args, {}, shape, self.dtype(x), suffix, out)

    def concat(self, parts, axis, out=None, suffix="cat") -> str:
        if len(parts) == 1 and out is None:
            return parts[0]
        shape = list(self.shape(parts[0]))
        shape[axis] = sum(self.shape(p)[axis] for p in parts)
        return self.emit("Concat", parts, {"axis": axis}, shape, self.dtype(parts[0]), suffix,
                         out)

    def pad(self, x, begins, ends, suffix="pad") -> str:
        """Zero padding: ``begins``/``ends`` one per axis of ``x``."""
        shape = [s + b + e for s, b, e in zip(self.shape(x), begins, ends)]
        pads = self.init(np.array(list(begins) + list(ends), dtype=np.int64), f"{suffix}.pads")
        return self.emit("Pad", [x, pads], {}, shape, self.dtype(x), suffix)

    def conv(self, like: LNode, x, w: np.ndarray, b, attrs: dict, suffix, out=None) -> str:
        """A node of ``like``'s op type on ``x`` with weight ``w``, bias ``b`` (array or None)
        and ``like``'s attributes updated by ``attrs``."""
        a = {**like.attrs, **attrs}
        a["kernel_shape"] = list(w.shape[2:])
        inputs = [x, self.init(w, f"{suffix}.weight")]          # a view: copied when written
        if b is not None:
            inputs.append(self.init(b, f"{suffix}.bias"))
        shape = conv_out_shape(like.op_type, self.shape(x), w.shape, a)
        return self.emit(like.op_type, inputs, a, shape, numerics.int_dtype(a["bits_o"]), suffix,
                         out)

    def add32(self, x, y, exp, suffix="acc") -> str:
        """``sat32(x + y)`` of two int32 values at exponent ``exp`` (iqAdd with no shift)."""
        attrs = {"exp_x": exp, "bits_x": 32, "exp_y": exp, "bits_y": 32, "exp_o": exp,
                 "bits_o": 32}
        return self.emit("iqAdd", [x, y], attrs, self.shape(x), np.int32, suffix)

    def requant(self, x, exp_in, bits_in, exp, bits, out=None, suffix="requant") -> str:
        attrs = {"exp_in": exp_in, "bits_in": bits_in, "exp": exp, "bits": bits}
        return self.emit("Requant", [x], attrs, self.shape(x), numerics.int_dtype(bits), suffix,
                         out)

    def done(self, how: str) -> Rewrite:
        self.rw.how = how
        return self.rw


# -- geometry -------------------------------------------------------------------------------------
def spatial_attrs(node: LNode, nd: int):
    """``(kernel, strides, dilations, begins, ends)`` of a conv-like node as lists."""
    a = node.attrs
    pads = list(a.get("pads") or [0] * (2 * nd))
    return (list(a["kernel_shape"]), list(a.get("strides") or [1] * nd),
            list(a.get("dilations") or [1] * nd), pads[:nd], pads[nd:])


def conv_out_shape(op_type, x_shape, w_shape, attrs) -> tuple:
    nd = len(w_shape) - 2
    k = list(w_shape[2:])
    s = list(attrs.get("strides") or [1] * nd)
    d = list(attrs.get("dilations") or [1] * nd)
    pads = list(attrs.get("pads") or [0] * (2 * nd))
    sp = []
    for i in range(nd):
        size = x_shape[2 + i]
        if op_type in DECONV_OPS:
            op = list(attrs.get("output_padding") or [0] * nd)[i]
            sp.append((size - 1) * s[i] + d[i] * (k[i] - 1) + 1 - pads[i] - pads[nd + i] + op)
        else:
            sp.append((size + pads[i] + pads[nd + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1)
    cout = w_shape[0] if op_type not in DECONV_OPS else w_shape[1] * int(attrs.get("group", 1))
    return (x_shape[0], cout, *sp)


def window(start: int, length: int, size: int):
    """An input window ``[start, start + length)`` of an axis of ``size`` elements (``start`` may
    be negative, the end past the axis: that part is zero padding) as ``(slice_begin, slice_end,
    pad_begin, pad_end)``; ``None`` when the window holds no element of the axis."""
    end = start + length
    if end <= 0 or start >= size:
        return None
    return max(start, 0), min(end, size), max(-start, 0), max(end - size, 0)


def pieces(total: int, n: int) -> list:
    """``[(begin, end)]``: ``total`` split into ``n`` contiguous parts of sizes differing by <= 1
    (larger ones first)."""
    base, extra = divmod(total, n)
    out, at = [], 0
    for i in range(n):
        size = base + (i < extra)
        out.append((at, at + size))
        at += size
    return [p for p in out if p[1] > p[0]]


def chunks(total: int, size: int) -> list:
    """``[(begin, end)]`` of ``size`` elements each (the last smaller)."""
    return [(i, min(i + size, total)) for i in range(0, total, size)]
