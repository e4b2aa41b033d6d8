"""Training side: quantized values, layers and the ``init`` entry point (imports torch)."""

from . import functional  # noqa: F401  (registers the QTensor handlers of functional ops)
