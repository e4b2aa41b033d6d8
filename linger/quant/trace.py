"""The hook through which quantized modules and quantized values report what they compute.

The exporter installs a recorder for the duration of one forward pass; modules and
:class:`~linger.quant.qtensor.QTensor` ops call :func:`current` and, when a recorder is active,
describe each op they executed. The graph is thus built from what actually happened in the
forward pass. Without a recorder nothing is recorded and nothing costs anything.

A thread-local stack of module paths is kept while a recorder is active, so every recorded op is
named after the PyTorch module that ran it (``backbone.3.conv``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

_state = threading.local()


def current():
    """The active recorder, or None."""
    return getattr(_state, "recorder", None)


@contextmanager
def recording(recorder):
    """Install ``recorder`` for the duration of the block (not re-entrant)."""
    if current() is not None:
        raise RuntimeError("a linger export is already running in this thread")
    _state.recorder = recorder
    try:
        yield recorder
    finally:
        _state.recorder = None


def refuse_foreign_export(where) -> None:
    """Raise :class:`~linger.errors.ExportError` when a quantized module runs inside
    ``torch.onnx.export`` (TorchScript or dynamo) rather than ``linger.onnx.export``: torch's
    exporter would silently write a float fake-quant graph instead of linger's integer ops.
    ``where``: the module's description, or a function giving it (called only to raise).

    Checked at every quantized layer's input; nothing is patched in torch.
    """
    import torch

    if current() is None and torch.onnx.is_in_onnx_export():
        if callable(where):
            where = where()
        from ..errors import ExportError
        raise ExportError(
            f"torch.onnx.export was called on a model converted by linger.init ({where}): torch's"
            f" exporter would write a float fake-quant graph, not linger's integer operators."
            f" Call linger.onnx.export(model, args, f, input_names=..., output_names=...,"
            f" opset_version=...) instead: it takes the same arguments")
