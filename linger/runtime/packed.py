"""A packed model file (``linger pack``) as the runtime's graph pieces, with numpy alone.

The packed file already holds decoded attributes, tensors and I/O records
(:mod:`linger.packfile.reader` checks every byte of it), so no ONNX object is built: a deployment
that runs only ``.bin`` files needs numpy and linger, not onnx. The result is the same graph the
ONNX path builds from the exported model (``tests/test_install.py`` checks the outputs agree).
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelFileError

#: ONNX ``TensorProto`` element types -> numpy (the numeric ones a graph input/output can have)
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
              7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def graph_parts(data: bytes, where: str):
    """``(opsets, used domains, nodes, initializers, inputs, outputs, where)`` of the packed
    model in ``data``; a damaged file is a ModelFileError (from the reader) naming ``where``."""
    from ..packfile.reader import read
    from .graph import bind, node_arg

    pm = read(data, where)
    names = [t.name for t in pm.tensors]

    def ref(ids):
        return [names[i] if i >= 0 else "" for i in ids]

    nodes = []
    for op in pm.ops:
        label = f"{where}: node '{op.name}' ({op.domain or 'ai.onnx'}::{op.op_type})"
        attrs = {name: value for name, _, value in op.attrs}
        nodes.append(bind(op.name, op.op_type, op.domain, ref(op.inputs), ref(op.outputs),
                          attrs, label))
    inits = {}
    for tid, arr in pm.params.items():
        arr = np.ascontiguousarray(arr)
        if arr.base is not None:   # own the memory: read-only then means constant (iqrnn's cache)
            arr = arr.copy()
        arr.setflags(write=False)  # shared by every run: a kernel or caller must not edit it
        inits[names[tid]] = arr

    def arg(io):
        if io.elem_type not in ELEM_TYPES:
            raise ModelFileError(f"{where}: graph value '{names[io.tensor]}' has element type"
                                 f" {io.elem_type}, which the runtime does not support")
        return node_arg(names[io.tensor], None if io.dims is None else list(io.dims),
                        np.dtype(ELEM_TYPES[io.elem_type]))
    opsets = {d if d != "ai.onnx" else "": v for d, v in pm.opsets}
    used = {op.domain for op in pm.ops}
    return (opsets, used, nodes, inits, [arg(i) for i in pm.inputs],
            [arg(o) for o in pm.outputs], where)
