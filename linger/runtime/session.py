"""``InferenceSession``: run a linger ONNX graph with numpy, shaped like onnxruntime's."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError, LingerError, ModelFileError
from .graph import Graph, NodeArg, load_graph


class InferenceSession:
    """Execute a linger ONNX model on numpy arrays, bit-exact with the trained model's ``eval()``.

    ``source``: a file path, the serialized bytes or an ``onnx.ModelProto``. ``sess_options`` and
    ``providers`` are accepted for onnxruntime compatibility and ignored.

    >>> import numpy as np
    >>> from onnx import TensorProto, helper
    >>> nodes = [helper.make_node("Quant", ["x"], ["q"], domain="ai.linger", exp=4, bits=8),
    ...          helper.make_node("Dequant", ["q"], ["y"], domain="ai.linger", exp=4, bits=8)]
    >>> graph = helper.make_graph(nodes, "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
    ...                                                 helper.make_opsetid("ai.linger", 1)])
    >>> sess = InferenceSession(model)
    >>> [(a.name, a.shape, a.type) for a in sess.get_inputs()]
    [('x', ['N', 3], 'tensor(float)')]
    >>> sess.run(None, {"x": np.array([[0.1, -0.05, 100.0]], np.float32)})[0]
    array([[ 0.125 , -0.0625,  7.9375]], dtype=float32)
    """

    def __init__(self, source, sess_options=None, providers=None):
        self._graph: Graph = load_graph(source)
        self._value_names = (set(self._graph.initializers)
                             | {a.name for a in self._graph.inputs}
                             | {o for n in self._graph.nodes for o in n.outputs if o})
        self._plans: dict = {}

    def get_inputs(self) -> list[NodeArg]:
        """The inputs to feed (initializers excluded), in graph order."""
        return list(self._graph.inputs)

    def get_outputs(self) -> list[NodeArg]:
        """The graph outputs, in graph order."""
        return list(self._graph.outputs)

    def run(self, output_names, input_feed, run_options=None) -> list[np.ndarray]:
        """Outputs named in ``output_names`` (``None`` or empty: all graph outputs, in order).

        Any value of the graph may be named, not only graph outputs. Only the nodes those
        outputs depend on run. Raises :class:`~linger.errors.InputError` for unknown, missing or
        mis-typed/mis-shaped inputs and unknown output names.
        """
        if output_names is None or (not isinstance(output_names, str) and not output_names):
            output_names = [o.name for o in self._graph.outputs]
        elif isinstance(output_names, str):
            raise InputError(f"output_names must be a list of names or None, got the string"
                             f" {output_names!r}; write [{output_names!r}]")
        output_names = list(output_names)
        unknown = [n for n in output_names if n not in self._value_names]
        if unknown:
            raise InputError(f"unknown output names {unknown}; the model's outputs are"
                             f" {[o.name for o in self._graph.outputs]}")
        values = self._execute(self._check_feed(input_feed), tuple(output_names))
        return [np.array(values[n]) for n in output_names]  # copies: the caller owns them

    def run_with_intermediates(self, input_feed) -> dict[str, np.ndarray]:
        """Every value of the graph by name: inputs, initializers and every node output.

        Used to compare layer by layer with the PyTorch model. Treat the arrays as read-only.
        """
        return self._execute(self._check_feed(input_feed), None)

    # -- internals ---------------------------------------------------------------------------
    def _check_feed(self, feed) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise InputError(f"input_feed must be a dict {{name: numpy array}}, got"
                             f" {type(feed).__name__}")
        expected = {a.name: a for a in self._graph.inputs}
        listing = ", ".join(f"'{a.name}' ({a.type}, shape {a.shape})"
                            for a in self._graph.inputs)
        unknown = [k for k in feed if k not in expected]
        if unknown:
            raise InputError(f"unknown input names {unknown}; the model's inputs are {listing}")
        missing = [k for k in expected if k not in feed]
        if missing:
            raise InputError(f"missing inputs {missing}; the model's inputs are {listing}")
        symbols: dict = {}
        for name, arg in expected.items():
            _check_one(arg, feed[name], symbols)
        return dict(feed)

    def _plan(self, wanted):
        """(nodes to run, per node the values no longer needed after it) for these outputs."""
        if wanted not in self._plans:
            needed, nodes = set(wanted), []
            for node in reversed(self._graph.nodes):
                if any(o in needed for o in node.outputs):
                    nodes.append(node)
                    needed.update(i for i in node.inputs if i)
            nodes.reverse()
            last = {}
            for k, node in enumerate(nodes):
                for i in node.inputs:
                    last[i] = k
            frees = [[] for _ in nodes]
            for name, k in last.items():
                if name and name not in wanted:
                    frees[k].append(name)
            self._plans[wanted] = (nodes, frees)
        return self._plans[wanted]

    def _execute(self, feed, wanted):
        values = dict(self._graph.initializers)
        values.update(feed)
        if wanted is None:  # keep everything
            nodes, frees = self._graph.nodes, [()] * len(self._graph.nodes)
        else:
            nodes, frees = self._plan(wanted)
        for node, free in zip(nodes, frees):
            _run_node(node, values)
            for name in free:  # drop activations as soon as nothing reads them (memory)
                values.pop(name, None)
        return values


def _check_one(arg: NodeArg, value, symbols: dict) -> None:
    """dtype, rank and static/symbolic dims of one input against its declaration."""
    where = f"input '{arg.name}'"
    if not isinstance(value, np.ndarray):
        raise InputError(f"{where}: expected a numpy array of dtype {arg.dtype}, got"
                         f" {type(value).__name__}; wrap it with np.asarray(..., dtype=...)")
    if arg.dtype is not None and value.dtype != arg.dtype:
        raise InputError(f"{where}: expected dtype {arg.dtype} ({arg.type}), got {value.dtype};"
                         f" convert with .astype(np.{arg.dtype.name})")
    if arg.shape is None:
        return
    if value.ndim != len(arg.shape):
        raise InputError(f"{where}: expected rank {len(arg.shape)} with shape {arg.shape}, got"
                         f" shape {list(value.shape)}")
    for axis, (want, got) in enumerate(zip(arg.shape, value.shape)):
        if isinstance(want, int) and want > 0 and want != got:
            raise InputError(f"{where}: dimension {axis} must be {want} (shape {arg.shape}), got"
                             f" shape {list(value.shape)}")
        if isinstance(want, str) and want:
            seen = symbols.setdefault(want, (got, arg.name))
            if seen[0] != got:
                raise InputError(f"{where}: dimension {axis} ('{want}') is {got}, but input"
                                 f" '{seen[1]}' gave '{want}' = {seen[0]}")


def _run_node(node, values) -> None:
    args = [values[i] if i else None for i in node.inputs]
    try:
        outs = node.fn(args, **node.attrs)
    except LingerError as e:  # a kernel's own message: add where it happened
        raise type(e)(f"{node.where}: {e}") from e
    except MemoryError:
        raise
    except Exception as e:  # numpy error on a graph the loader could not fully check
        shapes = [None if a is None else f"{a.dtype}{list(a.shape)}" for a in args]
        raise ModelFileError(f"{node.where} failed on inputs {shapes}: {type(e).__name__}:"
                             f" {e}") from e
    used = [k for k, o in enumerate(node.outputs) if o]  # "" marks an unused optional output
    if used and used[-1] >= len(outs):
        raise ModelFileError(f"{node.where} declares output '{node.outputs[used[-1]]}' at"
                             f" position {used[-1]}; the runtime's kernel produces only"
                             f" {len(outs)} output(s)")
    for name, arr in zip(node.outputs, outs):
        if name:
            values[name] = arr
