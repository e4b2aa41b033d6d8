"""Validated configuration: what a quantized layer is configured with, and the per-op switches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import numerics
from .errors import ConfigError

#: What happens when a quantized value reaches a torch op linger has no quantized version of.
#: ``"dequant"``: the op runs in float on the dequantized value (export writes a Dequant node
#: there); ``"error"``: raise :class:`~linger.errors.UnsupportedError` naming the op and layer.
UNSUPPORTED_POLICIES = ("dequant", "error", "float")


@dataclass(frozen=True)
class QuantConfig:
    """Bit widths and statistics settings of one quantized layer.

    ``data_bits``: activations entering the layer (8 or 16). ``parameter_bits``: weights (4, 8, 16).
    ``out_bits``: the layer's output (8, 16, 32). ``momentum``: weight of the newest batch in the
    running range, ``r <- (1 - m) * r + m * max|x|`` (the first batch sets ``r`` directly).
    """

    data_bits: int = 8
    parameter_bits: int = 8
    out_bits: int = 8
    momentum: float = 0.1
    on_unsupported: str = "dequant"

    def __post_init__(self):
        _check_choice("data_bits", self.data_bits, numerics.DATA_BITS)
        _check_choice("parameter_bits", self.parameter_bits, numerics.PARAM_BITS)
        _check_choice("out_bits", self.out_bits, numerics.OUT_BITS)
        if not (0.0 < float(self.momentum) <= 1.0):
            raise ConfigError(f"momentum must be in (0, 1], got {self.momentum}; 0.1 is a good default")
        _check_choice("on_unsupported", self.on_unsupported, UNSUPPORTED_POLICIES)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_choice(name, value, allowed):
    if value not in allowed or isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")


@dataclass
class Switches:
    """Which functional/tensor ops are quantized when they meet a quantized value.

    A switched-off op runs in float on the dequantized value (a documented Dequant boundary).
    Set through ``linger.SetIQTensorAdd(False)`` and its siblings.
    """

    flags: dict = field(default_factory=lambda: {
        "add": True, "sub": True, "mul": True, "div": True, "cat": True, "stack": True,
        "clamp": True, "sigmoid": True, "tanh": True, "softmax": True, "log_softmax": True,
        "sum": True, "mean": True, "layer_norm": True, "matmul": True, "gelu": True, "silu": True,
        "hardsigmoid": True, "hardswish": True, "prelu": True, "elu": True, "resample": True,
        "pool": True,
    })
    bn_momentum_update: bool = False

    def enabled(self, op: str) -> bool:
        return self.flags.get(op, False)

    def set(self, op: str, value: bool) -> None:
        if op not in self.flags:
            raise ConfigError(f"unknown switch {op!r}; known: {sorted(self.flags)}")
        if not isinstance(value, bool):
            raise ConfigError(f"switch {op!r} takes True or False, got {value!r}")
        self.flags[op] = value


SWITCHES = Switches()


def _setter(name: str, *ops: str):
    def setter(enable: bool = True) -> None:
        for op in ops:
            SWITCHES.set(op, enable)
    setter.__name__ = setter.__qualname__ = name
    setter.__doc__ = (f"Quantize ``{'``, ``'.join(ops)}`` on quantized values (True, the default)"
                      f" or run {'it' if len(ops) == 1 else 'them'} in float on the dequantized values"
                      f" (False: a Dequant boundary in the exported graph). Checked at call time.")
    return setter


SetIQTensorAdd = _setter("SetIQTensorAdd", "add")
SetIQTensorSub = _setter("SetIQTensorSub", "sub")
SetIQTensorMul = _setter("SetIQTensorMul", "mul")
SetIQTensorDiv = _setter("SetIQTensorDiv", "div")
SetIQTensorCat = _setter("SetIQTensorCat", "cat")
SetIQTensorStack = _setter("SetIQTensorStack", "stack")
SetIQTensorClamp = _setter("SetIQTensorClamp", "clamp")
SetIQTensorSigmoid = _setter("SetIQTensorSigmoid", "sigmoid")
SetIQTensorTanh = _setter("SetIQTensorTanh", "tanh")
SetIQTensorSoftmax = _setter("SetIQTensorSoftmax", "softmax")
SetIQTensorLogSoftmax = _setter("SetIQTensorLogSoftmax", "log_softmax")
SetIQTensorSum = _setter("SetIQTensorSum", "sum")
SetIQTensorMean = _setter("SetIQTensorMean", "mean")
SetIQTensorLayerNorm = _setter("SetIQTensorLayerNorm", "layer_norm")
SetIQTensorGelu = _setter("SetIQTensorGelu", "gelu")
SetIQTensorSilu = _setter("SetIQTensorSilu", "silu")
SetFunctionBmmQuant = _setter("SetFunctionBmmQuant", "matmul")


def SetBnMomentumUpdate(enable: bool = True, *, disable=None) -> None:
    """Original linger name: freeze the BatchNorm running statistics during QAT when True
    (``SWITCHES.bn_momentum_update``). Checked by the quantized BatchNorm layers.
    ``disable=True`` (the original's keyword: momentum updates disabled) is the same request."""
    if disable is not None:
        enable = disable
    if not isinstance(enable, bool):
        raise ConfigError(f"SetBnMomentumUpdate takes True or False, got {enable!r}")
    SWITCHES.bn_momentum_update = enable


#: The switch functions, exported at the top level of ``linger``.
SWITCH_FUNCTIONS = tuple(n for n in dir() if n.startswith("Set"))
