"""Standard ONNX ``Or`` on bool tensors: combines attention masks (True = not attended)."""

from __future__ import annotations

import numpy as np

from ...errors import ModelFileError
from . import kernel


@kernel("Or", domain="")
def logical_or(inputs):
    """``a | b`` with numpy broadcasting; both inputs bool."""
    a, b = inputs
    if a.dtype != np.bool_ or b.dtype != np.bool_:
        raise ModelFileError(f"Or takes bool inputs, got {a.dtype} and {b.dtype}")
    return [np.logical_or(a, b)]
