"""Target chips as data: profiles (memories, supported ops, limits) and the conformity checker.

A *target profile* is one TOML or JSON file per chip (built-in: ``venus`` -- the default --
``venusA`` and ``arcs``; custom profiles: see ``docs/packer.md``). The same checker runs on
PyTorch layers at ``linger.init(model, target=...)`` and on exported graphs in ``linger check``
and ``linger pack``; every violation names the layer, the value, the limit and a fix.

This package imports only the standard library (it is used by the numpy-only packer).

>>> t = load_target("arcs")
>>> t.memories["share"].capacity, t.memories["psram"].capacity
(393216, 8388608)
>>> available_targets()
['venus', 'venusA', 'arcs']
"""

from .check import Violation, check_op, raise_if_errors
from .layers import check_layers
from .profile import (MEMORY_KINDS, Memory, OpSpec, Rule, Target, available_targets,
                      load_target)
from .quantities import from_module, from_node

DEFAULT_TARGET = "venus"

__all__ = ["DEFAULT_TARGET", "MEMORY_KINDS", "Memory", "OpSpec", "Rule", "Target", "Violation",
           "available_targets", "check_layers", "check_op", "from_module", "from_node",
           "load_target", "raise_if_errors"]
