"""Lazy package attributes (PEP 562), so that ``linger --help`` and the torch-free commands do
not import what they never use (torch, onnx, matplotlib).

A package lists ``name -> submodule`` and sets ``__getattr__ = lazy(__name__, table)``; the
submodule is imported the first time the name is read (``from pkg import name`` too).

>>> import types, sys
>>> pkg = types.ModuleType("demo_pkg")
>>> pkg.__getattr__ = lazy("json", {"dumps": "json"})   # a real module stands in for a submodule
>>> pkg.__getattr__("dumps")([1])
'[1]'
"""

from __future__ import annotations

import importlib
import sys


def lazy(package: str, table: dict):
    """A module ``__getattr__`` that imports ``table[name]`` (absolute, or relative to
    ``package`` when it starts with a dot) and caches the attribute in the package."""
    def __getattr__(name):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        owner = sys.modules.get(package)
        if owner is not None:
            setattr(owner, name, value)
        return value
    return __getattr__
