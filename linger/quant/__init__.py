"""Training side: quantized values, layers and the ``init`` entry point (imports torch)."""
