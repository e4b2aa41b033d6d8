"""Validator: compare every intermediate tensor of PyTorch eval with the integer runtime.

``capture(model, args)`` runs the export trace and returns, for every graph value, what PyTorch
computed (integers for quantized values, floats otherwise), keyed by the ONNX value names.
``compare(reference, actual, order)`` walks the graph order and reports the first value whose
numbers differ: node, shape, how many elements differ and by how much. The comparison is exact
(``numpy.array_equal``): linger's promise is bit-exactness, not closeness.

The one exception is a *float tail* (layers kept float with ``linger.disable_quant`` after the last
quantized one, nodes marked :data:`TAIL_DOC`): its values are float32 computed by two different
BLAS libraries, so they are reported apart, with their largest difference, and do not make the
report fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


#: doc_string of the nodes of a float tail (written by :mod:`linger.onnx.float_tail`).
TAIL_DOC = "linger float tail: float32, not bit-exact"


def tail_values(model) -> set:
    """Names of the values computed by float-tail nodes of ``model`` (ModelProto) and by
    everything downstream of them."""
    tail = set()
    for n in model.graph.node:
        if n.doc_string == TAIL_DOC or any(i in tail for i in n.input):
            tail.update(n.output)
    return tail


@dataclass
class Mismatch:
    name: str
    shape: tuple
    differing: int
    total: int
    max_abs_diff: float

    def __str__(self):
        return (f"first difference at '{self.name}' shape {self.shape}: {self.differing} of"
                f" {self.total} elements differ, largest difference {self.max_abs_diff:g}")


@dataclass
class Report:
    compared: int = 0
    mismatches: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    tail_compared: int = 0          # float-tail values (float32, not bit-exact by design)
    tail_max_abs_diff: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def __str__(self):
        tail = (f"\nfloat tail: {self.tail_compared} float32 values, largest difference"
                f" {self.tail_max_abs_diff:g} (not bit-exact by design, docs/export.md)"
                if self.tail_compared else "")
        if self.ok:
            extra = f" ({len(self.missing)} values not in the reference)" if self.missing else ""
            return f"bit-exact: {self.compared} values compared, all equal{extra}{tail}"
        lines = [str(self.mismatches[0])]
        if len(self.mismatches) > 1:
            lines.append(f"{len(self.mismatches) - 1} later values differ too: "
                         + ", ".join(m.name for m in self.mismatches[1:6])
                         + (" ..." if len(self.mismatches) > 6 else ""))
        return "\n".join(lines) + tail


def compare(reference: dict, actual: dict, order, tail=()) -> Report:
    """Compare ``actual`` against ``reference`` value by value, in graph ``order``; the values in
    ``tail`` (float tail) only update ``tail_compared`` / ``tail_max_abs_diff``."""
    rep = Report()
    for name in order:
        if name not in reference or name not in actual:
            if name in actual:
                rep.missing.append(name)
            continue
        a, b = np.asarray(reference[name]), np.asarray(actual[name])
        if name in tail and a.shape == b.shape:
            rep.tail_compared += 1
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            rep.tail_max_abs_diff = max(rep.tail_max_abs_diff, float(np.nanmax(diff, initial=0)))
            continue
        rep.compared += 1
        if a.shape != b.shape:
            rep.mismatches.append(Mismatch(name, b.shape, b.size, b.size, float("inf")))
        elif not np.array_equal(a, b):
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            rep.mismatches.append(Mismatch(name, a.shape, int((diff != 0).sum()), a.size,
                                           float(np.nanmax(diff))))
    return rep


def capture(model, args, input_names=None, output_names=None):
    """(ONNX model, {value name: array}) from one eval forward of ``model`` on ``args``."""
    from .onnx.export import trace

    inputs = args if isinstance(args, (tuple, list)) else (args,)
    graph, rec = trace(model, inputs, input_names, output_names)
    values = {}
    for t in rec.keep:
        name = rec.values.get(id(t))
        if name is not None and name not in values and name in rec.value_info:
            values[name] = _as_graph_array(t, rec.value_info[name][0])
    return graph, values


def _as_graph_array(t, dtype):
    from .quant.qtensor import QTensor

    if isinstance(t, QTensor) and t.bits is not None:
        q = t.plain().detach().double().cpu().numpy() * 2.0 ** t.int_exp()
        return q.astype(dtype)
    arr = t.plain() if isinstance(t, QTensor) else t
    return arr.detach().cpu().numpy().astype(dtype)


def save_reference(model, args, path, input_names=None) -> None:
    """Save the model's ONNX export (``path`` + ``.onnx``) and its per-value PyTorch results
    (``path`` as .npz, inputs included) for ``linger validate`` on another machine."""
    import onnx

    graph, values = capture(model, args, input_names)
    onnx.save(graph, str(path) + ".onnx")
    np.savez(str(path) + ".npz", **{f"value:{k}": v for k, v in values.items()},
             **{f"input:{i.name}": values[i.name] for i in graph.graph.input})


def validate_files(onnx_path, reference_npz) -> Report:
    """Run the runtime on the saved inputs and compare every value with the saved reference."""
    from .runtime import InferenceSession

    ref = load_reference(reference_npz)
    feeds = {k[len("input:"):]: v for k, v in ref.items() if k.startswith("input:")}
    values = {k[len("value:"):]: v for k, v in ref.items() if k.startswith("value:")}
    sess = InferenceSession(onnx_path)
    actual = sess.run_with_intermediates(feeds)
    from .runtime.graph import read_model
    return compare(values, actual, list(actual), tail_values(read_model(onnx_path)[0]))


def load_reference(path):
    """The ``.npz`` written by :func:`save_reference`; a missing, unreadable or foreign file is an
    :class:`~linger.errors.InputError` (``linger validate`` exits 2 on it, 1 only for values
    that differ). Arrays are read with ``allow_pickle=False``: nothing in the file is executed."""
    from .errors import InputError

    if not os.path.isfile(path):
        raise InputError(f"reference file '{path}' does not exist; write it with"
                         f" linger.validate.save_reference(model, x, path)")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array (.npy), not an archive of arrays")
        with archive:  # every member is read (and its CRC checked) now
            ref = {k: archive[k] for k in archive.files}
    except Exception as e:  # zip, zlib, header and pickle errors have many types
        raise InputError(f"reference file '{path}' is not a readable .npz archive"
                         f" ({type(e).__name__}: {e}); write it with"
                         f" linger.validate.save_reference") from None
    if not any(k.startswith("input:") for k in ref):
        raise InputError(f"reference file '{path}' holds no 'input:*' arrays ({len(ref)}"
                         f" arrays: {sorted(ref)[:5]}); it was not written by"
                         f" linger.validate.save_reference")
    return ref


def validate_model(model, args, input_names=None) -> Report:
    """Export ``model`` in memory, run it in the runtime and compare every intermediate value."""
    from .runtime import InferenceSession

    graph, values = capture(model, args, input_names)
    sess = InferenceSession(graph)
    feeds = {i.name: values[i.name] for i in graph.graph.input}
    actual = sess.run_with_intermediates(feeds)
    return compare(values, actual, list(actual), tail_values(graph))
