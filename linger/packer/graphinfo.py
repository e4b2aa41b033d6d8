"""The graph the packer works on: nodes in execution order and every value's shape and size.

Shapes are measured, not inferred: the graph runs once in the integer runtime on zeros at the
planned input shapes (symbolic dimensions resolved by ``dims``; a symbolic batch axis defaults
to 1, the chip runs one sample at a time), so every size the checker and the planner see is
exactly what the runtime computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, LingerError, ModelFileError
from ..runtime.graph import Graph, load_graph, read_model

#: Ops whose output is a view of their first input: same bytes, no copy (the planner aliases).
ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


@dataclass
class Value:
    """One tensor of the graph."""

    name: str
    shape: tuple
    dtype: np.dtype
    kind: str                     # "input", "param" or "activation"
    producer: int | None = None   # step index of the node writing it
    consumers: list = field(default_factory=list)   # step indices reading it
    is_output: bool = False
    alias_of: str | None = None   # the value whose bytes this one reuses (reshape-like op)

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * self.dtype.itemsize


@dataclass
class PackGraph:
    model: "onnx.ModelProto"      # as read (opsets, declared input/output shapes)
    graph: Graph                  # runtime view: nodes in execution order, decoded attributes
    values: dict                  # name -> Value, in id order: inputs, params, node outputs
    dims: dict                    # symbolic dimension -> value used for planning
    source: str

    @property
    def nodes(self):
        return self.graph.nodes


def load(source, dims=None) -> PackGraph:
    """Read, check and measure an exported linger ONNX model for packing."""
    model, where = read_model(source)
    graph = load_graph(model)
    graph.source = where
    dims = dict(dims or {})
    shapes = {a.name: _input_shape(a, dims, where) for a in graph.inputs}
    from ..runtime.budget import DEFAULT_MAX_MEMORY, size_text
    for a in graph.inputs:  # a hostile declared shape must not allocate before the budget
        size = math.prod(shapes[a.name]) * np.dtype(a.dtype or np.float32).itemsize
        if size > DEFAULT_MAX_MEMORY:
            raise InputError(f"{where}: input '{a.name}' of shape {list(shapes[a.name])} would"
                             f" take {size_text(size)}, above the runtime's default limit"
                             f" {size_text(DEFAULT_MAX_MEMORY)}; check its declared shape")
    feed = {a.name: np.zeros(shapes[a.name], dtype=a.dtype or np.float32)
            for a in graph.inputs}
    from ..runtime import InferenceSession
    try:
        measured = InferenceSession(model).run_with_intermediates(feed)
    except LingerError as e:
        raise ModelFileError(f"{where}: the graph cannot run at the planned shapes"
                             f" {dict((k, list(v.shape)) for k, v in feed.items())}: {e}") from e
    values = build_values([a.name for a in graph.inputs], graph.initializers,
                          graph.nodes, [o.name for o in graph.outputs], measured)
    return PackGraph(model, graph, values, dims, where)


def build_values(inputs, params, nodes, outputs, arrays) -> dict:
    """Every value with its lifetime facts, in id order: inputs, parameters, node outputs.

    ``nodes``: objects with ``op_type``, ``inputs``, ``outputs`` in execution order; ``arrays``:
    name -> array (or anything with ``shape`` and ``dtype``) for inputs and node outputs;
    ``params``: name -> array. Unused parameters are dropped.
    """
    values: dict[str, Value] = {}
    for name in inputs or ():
        values[name] = _value(name, arrays[name], "input")
    for name, arr in params.items():
        values[name] = _value(name, arr, "param")
    for k, node in enumerate(nodes):
        for i in node.inputs:
            if i:
                values[i].consumers.append(k)
        for o in node.outputs:
            if o:
                v = _value(o, arrays[o], "activation")
                v.producer = k
                src = node.inputs[0] if node.inputs else ""
                if node.op_type in ALIAS_OPS and src and values[src].kind != "param":
                    v.alias_of = values[src].alias_of or src
                values[o] = v
    for o in outputs:
        values[o].is_output = True
    used = {i for n in nodes for i in n.inputs if i}
    return {k: v for k, v in values.items() if v.kind != "param" or k in used or v.is_output}


def _input_shape(arg, dims, where) -> tuple:
    if arg.shape is None:
        raise InputError(f"{where}: input '{arg.name}' has no declared shape; re-export the model"
                         f" with linger.onnx.export")
    shape = []
    for axis, d in enumerate(arg.shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(int(dims[d]))
        elif axis == 0:  # the batch axis: the chip runs one sample at a time
            shape.append(1)
            if isinstance(d, str) and d:
                dims[d] = 1
        else:
            raise InputError(f"{where}: dimension {axis} of input '{arg.name}' (shape"
                             f" {arg.shape}) is symbolic ({d!r}); give the size to plan for,"
                             f" e.g. --dim {d or 'NAME'}=100")
    return tuple(shape)


def _value(name, arr, kind) -> Value:
    return Value(name, tuple(int(s) for s in arr.shape), np.dtype(arr.dtype), kind)
