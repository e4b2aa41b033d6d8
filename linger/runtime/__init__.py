"""linger's integer runtime: executes exported linger ONNX graphs with numpy only (never torch).

Usage mirrors onnxruntime::

    sess = linger.runtime.InferenceSession("model.onnx")
    [y] = sess.run(None, {sess.get_inputs()[0].name: x})       # x: np.float32 array
    per_layer = sess.run_with_intermediates({"input": x})       # every value, by name

Kernels are registered in :mod:`linger.runtime.kernels` (see its checklist to add an op).
"""

from .graph import NodeArg
from .kernels import KERNELS, LINGER_DOMAIN, kernel
from .session import InferenceSession

__all__ = ["InferenceSession", "NodeArg", "KERNELS", "LINGER_DOMAIN", "kernel"]
