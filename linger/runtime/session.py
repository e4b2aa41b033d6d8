"""``InferenceSession``: run a linger ONNX graph with numpy, shaped like onnxruntime's."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from .budget import Budget
from .graph import Graph, NodeArg, load_graph
from .program import compile_program, execute


class InferenceSession:
    """Execute a linger ONNX model on numpy arrays, bit-exact with the trained model's ``eval()``.

    ``source``: a file path, the serialized bytes or an ``onnx.ModelProto``. ``sess_options`` and
    ``providers`` are accepted for onnxruntime compatibility and ignored. ``fast=False`` runs
    every node with its plain kernel: the reference the fast path (docs/runtime.md) is tested
    against, bit for bit, and a way to rule it out when investigating a difference.
    ``max_memory_bytes`` (default 4 GiB): before each node runs, the memory it may allocate
    (estimated from its input shapes, :mod:`linger.runtime.schema`) plus what the run holds
    must stay below it, else :class:`~linger.errors.ResourceError` names the node and the size.

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

    def __init__(self, source, sess_options=None, providers=None, *, fast: bool = True,
                 max_memory_bytes: int | None = None):
        self._graph: Graph = load_graph(source)
        self._fast = bool(fast)
        self._budget = Budget(max_memory_bytes)
        self._value_names = (set(self._graph.initializers)
                             | {a.name for a in self._graph.inputs}
                             | {o for n in self._graph.nodes for o in n.outputs if o})
        self._plans: dict = {}
        self._inputs = {a.name: a for a in self._graph.inputs}

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

    def profile(self, input_feed, repeat: int = 10) -> dict[str, float]:
        """Mean seconds per op type over ``repeat`` runs of the graph outputs (after one
        warm-up run), slowest first. A Relu/Clip folded into its producer counts under
        ``"Conv2dInt+Relu"``..., layout conversions of the fast path under ``"<convert>"``."""
        feed = self._check_feed(input_feed)
        wanted = tuple(o.name for o in self._graph.outputs)
        self._execute(feed, wanted)
        totals: dict = {}
        for _ in range(repeat):
            self._execute(feed, wanted, totals)
        return dict(sorted(((k, v / repeat) for k, v in totals.items()), key=lambda kv: -kv[1]))

    # -- internals ---------------------------------------------------------------------------
    def _check_feed(self, feed) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise InputError(f"input_feed must be a dict {{name: numpy array}}, got"
                             f" {type(feed).__name__}")
        expected = self._inputs
        if len(feed) != len(expected) or any(k not in feed for k in expected):
            listing = ", ".join(f"'{a.name}' ({a.type}, shape {a.shape})"
                                for a in self._graph.inputs)
            unknown = [k for k in feed if k not in expected]
            if unknown:
                raise InputError(f"unknown input names {unknown}; the model's inputs are"
                                 f" {listing}")
            missing = [k for k in expected if k not in feed]
            raise InputError(f"missing inputs {missing}; the model's inputs are {listing}")
        symbols: dict = {}
        for name, arg in expected.items():
            _check_one(arg, feed[name], symbols)
        return dict(feed)

    def _program(self, wanted):
        """The compiled steps for these wanted values (``None``: every value), cached."""
        program = self._plans.get(wanted)
        if program is None:
            program = self._plans[wanted] = compile_program(self._graph, wanted, self._fast)
        return program

    def _execute(self, feed, wanted, profile=None):
        return execute(self._program(wanted), self._graph.initializers, feed, profile,
                       self._budget)


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
