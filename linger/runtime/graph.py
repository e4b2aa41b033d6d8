"""Loading an ONNX file into a checked, topologically ordered list of nodes bound to kernels.

Everything a malformed or unsupported file can get wrong is found here, before any input is
seen, and reported as :class:`~linger.errors.ModelFileError` naming the file or the node.
onnx is imported only to read an ONNX model: a packed file (``linger pack``) is decoded by
:mod:`.packed` with numpy alone, so a deployment needs numpy and linger, nothing else.
"""

from __future__ import annotations

import heapq
import inspect
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelFileError
from . import schema
from .kernels import (KERNELS, LINGER_DOMAIN, LINGER_OPSET_VERSION, MIN_ONNX_OPSET,
                      supported_ops)


@dataclass(frozen=True)
class NodeArg:
    """A graph input or output as onnxruntime describes it.

    ``shape``: list of ints, or ``str`` for a symbolic dimension, ``None`` for an unknown one;
    ``None`` altogether when the rank is unknown. ``type``: e.g. ``'tensor(float)'``.
    ``dtype``: the numpy dtype (``None`` if the element type is not declared).
    """

    name: str
    shape: list | None
    type: str
    dtype: np.dtype | None = field(default=None, compare=False)


@dataclass(frozen=True, eq=False)
class Node:
    """One node, its attributes decoded and its kernel looked up."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]       # "" marks an omitted optional input
    outputs: tuple[str, ...]
    attrs: dict
    fn: object

    @property
    def where(self) -> str:
        return f"node '{self.name}' ({self.domain or 'ai.onnx'}::{self.op_type})"


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[NodeArg]
    outputs: list[NodeArg]
    source: str                   # file path or "<bytes>" / "<ModelProto>", for messages


def load_graph(source) -> Graph:
    """Read ``source`` (path, bytes or ``onnx.ModelProto``; an ONNX model or a model packed by
    ``linger pack``) and check it completely."""
    packed = _packed_bytes(source)
    if packed is not None:  # a file written by `linger pack`: decoded without onnx
        from .packed import graph_parts
        opsets, used, nodes, inits, inputs, outputs, where = graph_parts(*packed)
        check_opsets(opsets, used, where)
        return _assemble(nodes, inits, inputs, outputs, where)
    from onnx import numpy_helper

    model, where = read_model(source)
    if not model.HasField("graph") or not model.graph.output:
        raise ModelFileError(f"{where} is not an ONNX model (no graph or no graph outputs);"
                             f" the file may be empty, truncated or of another format")
    check_opsets({o.domain if o.domain != "ai.onnx" else "": o.version
                  for o in model.opset_import},
                 {n.domain if n.domain != "ai.onnx" else "" for n in model.graph.node}, where)
    g = model.graph
    inits = {}
    for t in g.initializer:
        try:
            arr = numpy_helper.to_array(t)
            arr.setflags(write=False)  # shared by every run: a kernel or caller must not edit it
            inits[t.name] = arr
        except Exception as e:  # external data missing, bad raw length...
            raise ModelFileError(f"{where}: initializer '{t.name}' cannot be read: {e}") from e
    nodes = [_bind(n, i, where) for i, n in enumerate(g.node)]
    inputs = [_node_arg(v, where) for v in g.input if v.name not in inits]
    outputs = [_node_arg(v, where) for v in g.output]
    return _assemble(nodes, inits, inputs, outputs, where)


def _assemble(nodes, inits, inputs, outputs, where) -> Graph:
    """The checked graph (ONNX or packed source): every attribute against its op's schema,
    before any kernel compiles; nodes in a valid order; every graph output produced."""
    for node in nodes:
        schema.validate_node(node, inits, f"{where}: {node.where}")
    known = {v.name for v in inputs} | set(inits)
    nodes = _topological(nodes, known, where)
    produced = known | {o for n in nodes for o in n.outputs}
    missing = [o.name for o in outputs if o.name not in produced]
    if missing:
        raise ModelFileError(f"{where}: graph outputs {missing} are produced by no node")
    return Graph(nodes, inits, inputs, outputs, where)


_PACKED_MAGIC = b"LINGERPK"  # = linger.packfile.format.MAGIC; an ONNX load never imports it


def _packed_bytes(source):
    """``(bytes, description)`` when ``source`` is a packed model (bytes or a path), else None."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return (bytes(source), "<bytes>") if bytes(source[:8]) == _PACKED_MAGIC else None
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        with open(source, "rb") as f:
            if f.read(8) != _PACKED_MAGIC:
                return None
            f.seek(0)
            return f.read(), f"'{os.fspath(source)}'"
    return None


def read_model(source):
    """``source``: path, bytes or ModelProto (ONNX, or a file written by ``linger pack``) ->
    ``(ModelProto, description for messages)``; anything unreadable is a ModelFileError.
    A model exported by the original linger (domain ``thinker``) comes back translated into
    linger's semantics (:mod:`linger.importers.thinker`); any other opset-11/12 graph comes back
    in its opset-13 form (:func:`linger.onnx_opsets.upgrade`)."""
    model, where = _read_model(source)
    from ..importers.thinker import import_thinker, is_thinker_model
    if is_thinker_model(model):
        model = import_thinker(model, where)
    from ..onnx_opsets import upgrade
    return upgrade(model, where), where


def _read_model(source):
    loaded = sys.modules.get("onnx")  # a ModelProto can only come from an imported onnx
    if loaded is not None and isinstance(source, loaded.ModelProto):
        return source, "<ModelProto>"
    import onnx

    if isinstance(source, (bytes, bytearray, memoryview)):
        where = "<bytes>"
        if bytes(source[:8]) == _PACKED_MAGIC:  # a file written by `linger pack`
            from ..packfile.reader import load_model_proto
            return load_model_proto(source, where), where
        try:
            return onnx.load_from_string(bytes(source)), where
        except Exception as e:
            raise ModelFileError(f"{where}: not a readable ONNX model: {e}") from e
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise ModelFileError(f"model file '{where}' does not exist or is not a file")
        with open(where, "rb") as f:
            packed = f.read(8) == _PACKED_MAGIC
        if packed:  # a file written by `linger pack`: the same graph, rebuilt from its sections
            from ..packfile.reader import load_model_proto
            with open(where, "rb") as f:
                return load_model_proto(f.read(), f"'{where}'"), f"'{where}'"
        try:
            return onnx.load(where), f"'{where}'"
        except Exception as e:  # protobuf DecodeError, external data errors, ...
            raise ModelFileError(f"'{where}' is not a readable ONNX model: {type(e).__name__}:"
                                 f" {e}. Re-export it with linger.onnx.export") from e
    raise ModelFileError(f"expected a file path, bytes or onnx.ModelProto, got"
                         f" {type(source).__name__}")


def check_opsets(versions: dict, used: set, where):
    """``versions``: domain -> opset version imported ("" for ai.onnx); ``used``: the domains
    of the nodes."""
    if "" in used and versions.get("", 0) < MIN_ONNX_OPSET:
        raise ModelFileError(f"{where} uses ONNX opset {versions.get('', 'none')}; the runtime"
                             f" needs opset >= {MIN_ONNX_OPSET}. Re-export with"
                             f" opset_version >= {MIN_ONNX_OPSET}")
    if LINGER_DOMAIN in versions and versions[LINGER_DOMAIN] > LINGER_OPSET_VERSION:
        raise ModelFileError(f"{where} uses {LINGER_DOMAIN} opset {versions[LINGER_DOMAIN]};"
                             f" this runtime implements version {LINGER_OPSET_VERSION}."
                             f" Upgrade linger")


def _bind(n, index, where) -> Node:
    domain = "" if n.domain == "ai.onnx" else n.domain
    name = n.name or f"#{index}"
    label = f"{where}: node '{name}' ({domain or 'ai.onnx'}::{n.op_type})"
    kernel_for(domain, n.op_type, label)
    try:
        attrs = {a.name: _attr_value(a, label) for a in n.attribute}
    except ModelFileError:
        raise
    except Exception as e:  # a tensor attribute with a bad raw length, bytes not UTF-8...
        raise ModelFileError(f"{label}: an attribute cannot be decoded: {type(e).__name__}:"
                             f" {e}") from e
    return bind(name, n.op_type, domain, n.input, n.output, attrs, label)


def kernel_for(domain: str, op_type: str, label: str):
    """The kernel registered for ``domain::op_type``, or a ModelFileError listing the ops."""
    fn = KERNELS.get((domain, op_type))
    if fn is None:
        raise ModelFileError(f"{label} is not supported by the linger runtime (domain"
                             f" '{domain}', op_type '{op_type}'). Supported ops: "
                             + ", ".join(supported_ops()))
    return fn


def bind(name, op_type, domain, inputs, outputs, attrs: dict, label) -> Node:
    """A node with decoded attributes, bound to its kernel after checking them against the
    kernel's signature."""
    fn = kernel_for(domain, op_type, label)
    _check_signature(fn, attrs, label)
    if fn.pass_num_outputs and "num_outputs" not in attrs:
        attrs["num_outputs"] = len(outputs)
    return Node(name, op_type, domain, tuple(inputs), tuple(outputs), attrs, fn)


def _attr_value(a, label):
    from onnx import AttributeProto, helper, numpy_helper

    if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise ModelFileError(f"{label}: attribute '{a.name}' holds a subgraph; control flow is"
                             f" not supported")
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if a.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(v)
    if isinstance(v, (list, tuple)) or type(v).__name__.startswith("Repeated"):
        return [x.decode("utf-8") if isinstance(x, bytes) else x for x in v]
    return v


_SIGNATURES: dict = {}


def _check_signature(fn, attrs, label):
    """Attributes must match the kernel's keyword parameters: required ones present, no
    unknown ones (a kernel taking ``**attrs`` accepts anything)."""
    if fn not in _SIGNATURES:
        params = list(inspect.signature(fn).parameters.values())[1:]  # skip `inputs`
        _SIGNATURES[fn] = (
            any(p.kind is p.VAR_KEYWORD for p in params),
            {p.name for p in params if p.kind is not p.VAR_KEYWORD},
            {p.name for p in params if p.default is p.empty and p.kind is not p.VAR_KEYWORD})
    open_ended, allowed, required = _SIGNATURES[fn]
    missing = sorted(required - set(attrs))
    if missing:
        raise ModelFileError(f"{label} lacks required attributes {missing}")
    unknown = sorted(set(attrs) - allowed)
    if unknown and not open_ended:
        raise ModelFileError(f"{label} has attributes {unknown} the runtime does not implement;"
                             f" supported: {sorted(allowed)}")


def _node_arg(v, where="<model>") -> NodeArg:
    from onnx import helper

    t = v.type.tensor_type
    dtype = None
    if v.type.HasField("tensor_type") and t.elem_type:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        except Exception:  # KeyError for a number ONNX does not define
            raise ModelFileError(f"{where}: graph value '{v.name}' has element type"
                                 f" {t.elem_type}, which ONNX does not define (1 = float,"
                                 f" 3 = int8...); re-export the model") from None
    shape = None
    if t.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else
                 (d.dim_param if d.HasField("dim_param") else None) for d in t.shape.dim]
    return node_arg(v.name, shape, dtype)


def node_arg(name: str, shape, dtype) -> NodeArg:
    """A NodeArg with onnxruntime's type string (``tensor(float)``...) for ``dtype``."""
    type_str = "unknown" if dtype is None else f"tensor({_ORT_NAMES.get(dtype.name, dtype.name)})"
    return NodeArg(name, shape, type_str, dtype)


_ORT_NAMES = {"float32": "float", "float64": "double", "float16": "float16"}


def _topological(nodes, known, where):
    """Nodes in an order where every input is defined first: the stored order when it already is
    (the usual case), else Kahn's order, ties broken by stored position. Undefined inputs and
    cycles are refused."""
    producer = {}
    for n in nodes:
        for o in filter(None, n.outputs):
            if o in producer or o in known:
                raise ModelFileError(f"{where}: value '{o}' is produced twice (by {n.where})")
            producer[o] = n
    for n in nodes:
        for i in filter(None, n.inputs):
            if i not in known and i not in producer:
                raise ModelFileError(f"{where}: {n.where} reads '{i}', which is no graph input,"
                                     f" initializer or node output")
    defined = set(known)
    for n in nodes:
        if not all(i in defined for i in filter(None, n.inputs)):
            break
        defined.update(filter(None, n.outputs))
    else:
        return list(nodes)
    # Kahn: a node is ready once every node producing one of its inputs has been placed.
    index = {o: k for k, n in enumerate(nodes) for o in filter(None, n.outputs)}
    deps = [{index[i] for i in filter(None, n.inputs) if i in index} for n in nodes]
    waiting = [len(d) for d in deps]
    users = [[] for _ in nodes]
    for k, d in enumerate(deps):
        for p in d:
            users[p].append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        k = heapq.heappop(ready)
        ordered.append(nodes[k])
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(ordered) < len(nodes):
        stuck = next(n for k, n in enumerate(nodes) if waiting[k])
        raise ModelFileError(f"{where}: the graph has a cycle through {stuck.where}")
    return ordered
