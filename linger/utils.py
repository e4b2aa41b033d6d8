"""The original linger's ``linger.utils`` names that scripts import (docs/migration.md)."""

from __future__ import annotations

import logging

from .compat import PlatFormQuant, QuantMode

#: The logger linger writes to (``logging.getLogger("linger")``).
logger = logging.getLogger("linger")


def get_device(model):
    """The device of ``model``'s first parameter or buffer (CPU for a model without any)."""
    import torch

    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


__all__ = ["QuantMode", "PlatFormQuant", "logger", "get_device"]
