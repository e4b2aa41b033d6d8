"""ONNX export of quantized models (imports torch and onnx)."""

from .export import DEFAULT_OPSET  # noqa: I001  (before .compat: `export` must end up the function)
from .recorder import DOMAIN
from .compat import export, export_debug, parser_dequant

__all__ = ["export", "export_debug", "parser_dequant", "DOMAIN", "DEFAULT_OPSET"]
