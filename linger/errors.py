"""The exceptions linger raises for anything a user can cause.

Every message says what was expected, what was received, where (layer path or graph node) and
what to do. All derive from :class:`LingerError` so a caller can catch them in one place.
"""


class LingerError(Exception):
    """Base class of every error linger raises on purpose."""


class ConfigError(LingerError, ValueError):
    """A setting is outside what linger supports (bits, module types, option combinations)."""


class UnsupportedError(LingerError, TypeError):
    """A layer, option or op has no exact quantized implementation."""


class NotCalibratedError(LingerError, RuntimeError):
    """A quantized layer was evaluated or exported before it saw any training statistics."""


class ExportError(LingerError, RuntimeError):
    """The model could not be written as a linger ONNX graph."""


class ModelFileError(LingerError, ValueError):
    """A model file (ONNX or packed) is malformed, truncated or uses something unknown."""


class InputError(LingerError, ValueError):
    """Arrays given to the runtime do not match the model's inputs (name, shape, dtype)."""


class NumericError(LingerError, ValueError):
    """NaN or infinity met where a finite value is required (inputs, weights, ranges)."""


class TargetError(ConfigError):
    """A layer, graph or memory plan does not fit the target chip (``.violations`` lists all)."""

    def __init__(self, message: str, violations=()):
        super().__init__(message)
        self.violations = list(violations)


class ResourceError(LingerError, MemoryError):
    """A model (or an input) would need more memory than the session allows
    (``InferenceSession(..., max_memory_bytes=...)``), or more than the machine has."""
