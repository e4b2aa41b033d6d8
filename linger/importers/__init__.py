"""Importers: ONNX files written by other toolchains, translated into linger's graph semantics.

- :mod:`.thinker`: files the original linger 1.x exported (custom domain ``thinker``, opsets 11
  and 12). The runtime and the packer call it on every file they read (``read_model``).

Numpy and onnx only, never torch (the runtime imports this package).
"""
