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

from .config import (SWITCH_FUNCTIONS, QuantConfig, SetBnMomentumUpdate, SetFunctionBmmQuant,
                     SetIQTensorAdd, SetIQTensorCat, SetIQTensorClamp, SetIQTensorDiv,
                     SetIQTensorGelu, SetIQTensorLayerNorm, SetIQTensorLogSoftmax, SetIQTensorMean,
                     SetIQTensorMul, SetIQTensorSigmoid, SetIQTensorSilu, SetIQTensorSoftmax,
                     SetIQTensorStack, SetIQTensorSub, SetIQTensorSum, SetIQTensorTanh)
from .compat import (PlatFormQuant, QuantMode, SetCastorBiasInt16,  # the original's names
                     SetFunctionChannelShuffleQuant, SetFunctionLinearQuant, SetIQCat2AddZero,
                     SetIQTensorVar, SetPlatFormQuant, SetTFQuant, config_save_to_yaml)
from .errors import (ConfigError, ExportError, InputError, LingerError, ModelFileError,
                     NotCalibratedError, NumericError, TargetError, UnsupportedError,
                     UnsupportedOperatorError)

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily: these modules import torch)
_LAZY = {
    "init": "linger.quant.api",
    "quant_module": "linger.quant.api",
    "disable_quant": "linger.quant.api",
    "QTensor": "linger.quant.qtensor",
    "normalize_layers": "linger.quant.normalize",
    "normalize_module": "linger.quant.normalize",
    "disable_normalize": "linger.quant.normalize",
    "trace_layers": "linger.quant.fuse",
    "quant_tensor": "linger.quant.ops_tensor",
    "wb_analyse": "linger.analysis",
    "Dumper": "linger.analysis",
    "check": "linger.modelcheck",
    # the original linger's names (docs/migration.md)
    **{n: "linger.quant.normalize" for n in (
        "NormalizeConv1d", "NormalizeConv2d", "NormalizeConvTranspose1d",
        "NormalizeConvTranspose2d", "NormalizeLinear", "NormalizeBatchNorm1d",
        "NormalizeBatchNorm2d", "NormalizeLayerNorm", "NormalizeEmbedding", "NormalizeFastGRU",
        "NormalizeFastLSTM")},
    **{n: "linger.quant.legacy" for n in (
        "NormalizeConvBN1d", "NormalizeConvBN2d", "NormalizeConvTransposeBN2d", "EmptyBatchNorm",
        "FuseBNIntoConv", "FuseConvBNAheadRelu", "channel_shuffle", "from_torch_tensor",
        "quant_module_by_type", "quant_tensor_getlayer", "constrain", "calibration",
        "fix_dequant")},
}
_LAZY_MODULES = ("onnx", "runtime", "quant", "analysis", "validate", "packer", "targets", "ops",
                 "utils", "compat")

__all__ = sorted(list(_LAZY) + list(_LAZY_MODULES) + list(SWITCH_FUNCTIONS) + [
    "QuantConfig", "LingerError", "ConfigError", "UnsupportedError", "NotCalibratedError",
    "ExportError", "ModelFileError", "InputError", "NumericError", "TargetError",
    "QuantMode", "PlatFormQuant", "SetPlatFormQuant", "SetIQTensorVar", "SetFunctionLinearQuant",
    "SetFunctionChannelShuffleQuant", "SetIQCat2AddZero", "SetCastorBiasInt16", "SetTFQuant",
    "config_save_to_yaml", "UnsupportedOperatorError"])


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
