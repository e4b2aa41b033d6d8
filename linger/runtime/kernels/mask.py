"""Standard ONNX ``Or`` on bool tensors: combines attention masks (True = not attended)."""

from __future__ import annotations

import numpy as np

from ...errors import ModelFileError
from .. import schema as S
from . import kernel


def _or_memory(attrs, ins, fast):
    """The broadcast result, one byte per element (checks that the shapes broadcast)."""
    try:
        shape = np.broadcast_shapes(*(i.shape for i in ins if i is not None))
    except ValueError:
        raise ModelFileError(f"Or inputs {[list(i.shape) for i in ins]} do not broadcast")
    return S.nbytes(shape, 1)


S.schema("Or", "", inputs=(2, 2), memory=_or_memory)


@kernel("Or", domain="")
def logical_or(inputs):
    """``a | b`` with numpy broadcasting; both inputs bool."""
    a, b = inputs
    if a.dtype != np.bool_ or b.dtype != np.bool_:
        raise ModelFileError(f"Or takes bool inputs, got {a.dtype} and {b.dtype}")
    return [np.logical_or(a, b)]
