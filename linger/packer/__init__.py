"""The packer: check an exported linger ONNX model against a target chip, plan its memory and
write one binary model file that ``linger.runtime.InferenceSession`` runs bit-exactly.

Imports numpy, onnx and the standard library only -- never torch (a test checks it).

Typical use::

    from linger import packer
    res = packer.check("model.onnx", target="venus")       # every violation, memory plan
    for v in res.violations: print(v)
    res = packer.pack("model.onnx", "model.bin", target="venus", report_html="model.html")
    print(res.summary())
    sess = linger.runtime.InferenceSession("model.bin")     # same outputs as the ONNX

Pieces: :mod:`.graphinfo` (shapes by running the graph), :mod:`linger.targets` (profiles and
the checker), :mod:`.lower` (exact rewrites of layers over a limit), :mod:`.planner` and
:mod:`.plancheck` (memory), :mod:`linger.packfile` (the file format and its reader),
:mod:`.report` (text and HTML), :mod:`.cli` (``linger pack`` / ``linger check``).
The file format, limits and planner are described in ``docs/packer.md``.
"""

import sys as _sys

from ..packfile import format, reader
from ..packfile.format import FORMAT_VERSION, MAGIC, PackedModel
from ..packfile.reader import is_packed, load_model_proto, read, read_file
from .pack import CheckResult, PackResult, check, pack
from .plancheck import PlanError, check_plan
from .planner import MemoryPlan, plan_memory

# The file format moved to linger.packfile (shared by packer, runtime and C engine); the old
# module paths stay importable for code written against them.
_sys.modules[__name__ + ".format"], _sys.modules[__name__ + ".reader"] = format, reader

__all__ = ["FORMAT_VERSION", "MAGIC", "CheckResult", "MemoryPlan", "PackResult", "PackedModel",
           "PlanError", "check", "check_plan", "is_packed", "load_model_proto", "pack",
           "plan_memory", "read", "read_file"]
