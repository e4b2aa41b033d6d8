"""ONNX export of quantized models (imports torch and onnx)."""

from .export import DEFAULT_OPSET, export
from .recorder import DOMAIN

__all__ = ["export", "DOMAIN", "DEFAULT_OPSET"]
