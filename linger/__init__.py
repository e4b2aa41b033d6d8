"""linger: quantization-aware training for int8 microcontroller NPUs, with an integer runtime
that reproduces the trained model's eval outputs bit for bit.

Typical use::

    import linger
    model = linger.init(model)          # one line: the model is now quantization-aware
    ...train as usual...
    linger.onnx.export(model.eval(), x, "model.onnx")
    sess = linger.runtime.InferenceSession("model.onnx")
"""

__version__ = "0.1.0"

from .config import QuantConfig  # noqa: E402
from .errors import (ConfigError, ExportError, InputError, LingerError, ModelFileError,  # noqa: E402
                     NotCalibratedError, NumericError, UnsupportedError)
from .quant.api import disable_quant, init, quant_module  # noqa: E402
from .quant import functional as _functional  # noqa: E402,F401  (registers handlers)
from .quant.qtensor import QTensor  # noqa: E402

__all__ = [
    "init", "quant_module", "disable_quant", "QTensor", "QuantConfig", "LingerError",
    "ConfigError", "UnsupportedError", "NotCalibratedError", "ExportError", "ModelFileError",
    "InputError", "NumericError",
]
