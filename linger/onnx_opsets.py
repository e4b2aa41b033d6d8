"""Move a graph between ONNX opset 11/12 and opset 13 forms (numpy + onnx only, never torch).

linger writes and executes the opset >= 13 forms of the standard ops. The original linger's users
export with ``opset_version=11`` or ``12``, so:

- :func:`downgrade` (used by ``linger.onnx.export(..., opset_version=11/12)``) rewrites an
  opset-13 graph into the older forms, and
- :func:`upgrade` (used by the runtime and the packer when they read a file) rewrites an opset
  11/12 graph back into the opset-13 forms their kernels follow.

The forms that differ between opset 11/12 and 13, and how each is rewritten (every rewrite moves
values without changing them, so it is exact on integers and floats alike):

==========================================  ===========================================
opset 13+                                   opset 11/12
==========================================  ===========================================
``Squeeze(x, axes)`` / ``Unsqueeze``        ``Squeeze(x; axes=[...])`` / ``Unsqueeze``
``Split(x, split; axis)``                   ``Split(x; axis, split=[...])``
``ReduceSum(x, axes; keepdims)``            ``ReduceSum(x; axes=[...], keepdims)``
``Reduce*(x, axes)`` (opset 18 forms)       ``Reduce*(x; axes=[...])``
``Softmax(x; axis=a)`` (one axis)           ``Transpose`` a to the last axis, ``Softmax(axis=-1)``,
                                            ``Transpose`` back (opset 11/12 Softmax flattens
                                            ``x`` to 2-D at ``axis``); the same for LogSoftmax
``Resize(x, "", scales)`` (no roi)          ``Resize(x, roi=[], scales)`` (roi required before 13)
==========================================  ===========================================

Reading opset 11/12, a Softmax/LogSoftmax/Hardmax becomes ``Shape``, ``Flatten(axis)``,
``Softmax(axis=-1)``, ``Reshape`` back: the older semantics, exactly, for every axis.

The axes/split inputs moved into attributes must be constants (initializers or ``Constant``
nodes); linger's exporter always writes them so. A node whose op does not exist in the target
opset is refused with an error naming it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._names import unique_name
from .errors import ExportError, ModelFileError

#: The opset whose standard-op forms the runtime kernels and the exporter use.
NATIVE_OPSET = 13
#: The oldest opsets ``downgrade`` and ``upgrade`` handle.
OLD_OPSETS = (11, 12)

_AXES_INPUT_13 = {"Squeeze": "axes", "Unsqueeze": "axes", "Split": "split", "ReduceSum": "axes"}
_REDUCE_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
_SOFTMAX = ("Softmax", "LogSoftmax", "Hardmax")


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``""`` / ``ai.onnx``) opset version, 0 when absent."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 0


def downgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """A copy of ``model`` (default-domain opset 13..17) rewritten for ``opset`` 11 or 12.

    >>> from onnx import helper, TensorProto as T
    >>> g = helper.make_graph([helper.make_node("Squeeze", ["x", "ax"], ["y"], name="sq")], "g",
    ...     [helper.make_tensor_value_info("x", T.FLOAT, [1, 3])],
    ...     [helper.make_tensor_value_info("y", T.FLOAT, [3])],
    ...     [helper.make_tensor("ax", T.INT64, [1], [0])])
    >>> m = downgrade(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), 11)
    >>> m.graph.node[0].attribute[0].name, list(m.graph.node[0].attribute[0].ints), len(m.graph.node[0].input)
    ('axes', [0], 1)
    """
    if opset not in OLD_OPSETS:
        raise ExportError(f"opset_version={opset}: linger writes opset 11, 12 or >= 13")
    src = default_opset(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    consts = _constants(g)
    ranks = _ranks(model)
    nodes = []
    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        moved = _AXES_INPUT_13.get(n.op_type) or ("axes" if n.op_type in _REDUCE_18 and src >= 18
                                                  else None)
        if moved and len(n.input) > 1 and n.input[1]:
            values = consts.get(n.input[1])
            if values is None:
                raise ExportError(f"node '{n.name}' ({n.op_type}): its {moved} input"
                                  f" '{n.input[1]}' is computed, not a constant, so it cannot"
                                  f" become an opset-{opset} attribute; export with"
                                  f" opset_version >= 13")
            n = _with_attr(n, [n.input[0]] + list(n.input[2:]), moved,
                           [int(v) for v in values.reshape(-1)])
            nodes.append(n)
        elif n.op_type in _SOFTMAX:
            nodes.extend(_softmax_down(n, ranks, opset))
        elif n.op_type in ("ArgMax", "ArgMin") and opset < 12 \
                and _attr_int(n, "select_last_index", 0) == 0:
            # opset 12 added select_last_index; 0 (the first index) is what opset 11 does
            keep = [a for a in n.attribute if a.name != "select_last_index"]
            del n.attribute[:]
            n.attribute.extend(keep)
            nodes.append(n)
        elif n.op_type == "Resize" and (len(n.input) < 2 or not n.input[1]):
            # opset 11/12 Resize requires its roi input; an empty one means "whole tensor"
            roi = f"{n.name or n.output[0]}.roi"
            g.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), roi))
            ins = list(n.input) + [""] * (2 - len(n.input))
            nodes.append(_with_attr(n, [ins[0], roi] + ins[2:], "", None))
        else:
            _require_schema(n, opset)
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    _drop_unused_initializers(g)
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = opset
    out.ir_version = 7  # the IR version of the onnx 1.7/1.8 releases that introduced opsets 12/13
    return out


def upgrade(model: onnx.ModelProto, where: str = "<model>") -> onnx.ModelProto:
    """``model`` with its opset-11/12 standard ops rewritten into the opset-13 forms (the model
    itself when it is already opset >= 13 or uses no standard op). Opsets below 11 are refused."""
    src = default_opset(model)
    if src >= NATIVE_OPSET or not any(n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model
    if src < OLD_OPSETS[0]:
        raise ModelFileError(f"{where} uses ONNX opset {src or 'none'}; linger reads opset 11,"
                             f" 12 and >= 13. Re-export it with opset_version >= 11")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    taken = {v for n in g.node for v in list(n.input) + list(n.output)} | \
        {t.name for t in g.initializer} | {v.name for v in g.input}
    nodes = []
    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        moved = _AXES_INPUT_13.get(n.op_type)
        attr = next((a for a in n.attribute if a.name == moved), None) if moved else None
        if attr is not None:
            name = unique_name(taken, f"{n.name or n.output[0]}.{moved}")
            g.initializer.append(numpy_helper.from_array(np.array(list(attr.ints), np.int64),
                                                         name))
            nodes.append(_with_attr(n, [n.input[0], name] + list(n.input[1:]), moved, None))
        elif n.op_type in _SOFTMAX:
            nodes.extend(_softmax_up(n, taken, g))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = NATIVE_OPSET
    return out


# -- helpers ----------------------------------------------------------------------------------
def _constants(g) -> dict:
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
                elif a.name == "value_ints":
                    consts[n.output[0]] = np.array(list(a.ints), np.int64)
    return consts


def _ranks(model) -> dict:
    """Value name -> rank, from the graph's declarations and ONNX shape inference."""
    g = model.graph
    try:  # custom-domain nodes stop inference locally; the exporter declares their outputs
        inferred = list(onnx.shape_inference.infer_shapes(model).graph.value_info)
    except Exception:
        inferred = []
    return {v.name: len(v.type.tensor_type.shape.dim)
            for v in list(g.input) + inferred + list(g.value_info) + list(g.output)
            if v.type.tensor_type.HasField("shape")}


def _with_attr(n, inputs, attr_name, ints):
    """A copy of node ``n`` with ``inputs``, attribute ``attr_name`` set to ``ints`` (or
    removed when ``ints`` is None)."""
    attrs = [a for a in n.attribute if a.name != attr_name]
    new = helper.make_node(n.op_type, inputs, list(n.output), name=n.name, domain=n.domain,
                           doc_string=n.doc_string or None)
    new.attribute.extend(attrs)
    if ints is not None:
        new.attribute.append(helper.make_attribute(attr_name, ints))
    return new


def _attr_int(n, name, default):
    return next((helper.get_attribute_value(a) for a in n.attribute if a.name == name), default)


def _softmax_down(n, ranks, opset):
    axis = _attr_int(n, "axis", -1)
    rank = ranks.get(n.input[0])
    if axis == -1 or (rank is not None and axis == rank - 1):
        return [n]  # over the last axis the old and new semantics agree
    if rank is None:
        raise ExportError(f"node '{n.name}' ({n.op_type} over axis {axis}): the rank of its"
                          f" input is unknown, so it cannot be rewritten for opset {opset};"
                          f" export with opset_version >= 13")
    axis %= rank
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]  # a swap is its own inverse
    t_in, t_out = f"{n.name}.to_last:out", f"{n.name}.last:out"
    return _same_doc(n, [
        helper.make_node("Transpose", [n.input[0]], [t_in], name=f"{n.name}.to_last", perm=perm),
        helper.make_node(n.op_type, [t_in], [t_out], name=f"{n.name}.last", axis=-1),
        helper.make_node("Transpose", [t_out], [n.output[0]], name=f"{n.name}.back", perm=perm)])


def _same_doc(n, nodes):
    for m in nodes:  # the float-tail mark (linger.onnx.float_tail) travels with the rewrite
        m.doc_string = n.doc_string
    return nodes


def _softmax_up(n, taken, g):
    axis = _attr_int(n, "axis", 1)
    base = n.name or n.output[0]
    shape, flat, soft = (unique_name(taken, f"{base}.{s}") for s in ("shape", "flat", "soft"))
    return _same_doc(n, [
        helper.make_node("Shape", [n.input[0]], [shape], name=shape),
        helper.make_node("Flatten", [n.input[0]], [flat], name=flat, axis=axis),
        helper.make_node(n.op_type, [flat], [soft], name=soft, axis=-1),
        helper.make_node("Reshape", [soft, shape], [n.output[0]], name=n.name or base)])


def _require_schema(n, opset):
    try:
        onnx.defs.get_schema(n.op_type, opset)
    except Exception:
        raise ExportError(f"node '{n.name}' ({n.op_type}) has no definition in ONNX opset"
                          f" {opset}; export with opset_version >= 13") from None


def _drop_unused_initializers(g):
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
