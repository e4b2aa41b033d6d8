"""linger: quantization-aware training for int8 microcontroller NPUs, with an integer runtime
that reproduces the trained model's eval outputs bit for bit.

Typical use::

    import linger
    model = linger.init(model)          # one line: the model is now quantization-aware
    ...train as usual, then model.eval()...
    linger.onnx.export(model, x, "model.onnx")
    sess = linger.runtime.InferenceSession("model.onnx")

The training-side names (``init``, ``QTensor``, ``onnx``...) import torch on first use only, so
``import linger.runtime`` stays numpy-only.
"""

import importlib

from .config import QuantConfig
from .errors import (ConfigError, ExportError, InputError, LingerError, ModelFileError,
                     NotCalibratedError, NumericError, UnsupportedError)

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily: these modules import torch)
_LAZY = {
    "init": "linger.quant.api",
    "quant_module": "linger.quant.api",
    "disable_quant": "linger.quant.api",
    "QTensor": "linger.quant.qtensor",
}
_LAZY_MODULES = ("onnx", "runtime", "quant")

__all__ = sorted(list(_LAZY) + list(_LAZY_MODULES) + [
    "QuantConfig", "LingerError", "ConfigError", "UnsupportedError", "NotCalibratedError",
    "ExportError", "ModelFileError", "InputError", "NumericError"])


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"linger.{name}")
    else:
        raise AttributeError(f"module 'linger' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
