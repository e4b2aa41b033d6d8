"""The kernel registry: one plain numpy function per ONNX op, keyed by ``(domain, op_type)``.

A kernel is ``fn(inputs, **attrs) -> list[np.ndarray]``: ``inputs`` holds the node's input arrays
in order (``None`` for an omitted optional input), ``attrs`` the node's attributes decoded to
python ints, floats, strings, lists and numpy arrays. Kernels never modify their inputs and import
numpy (and :mod:`linger.numerics`) only — never torch.

The loader checks every node against its kernel's signature, so a keyword parameter without a
default is a *required* attribute and an attribute the signature does not name is refused with
an error naming the node (accept ``**attrs`` only where ignoring attributes is harmless).

Checklist: adding an op
-----------------------
1. Write the semantics (formula, dtypes, attributes) in ``docs/onnx_ops.md`` first.
2. Add the kernel to the family file in this package that fits, or create a new file
   ``linger/runtime/kernels/<family>.py``: every module here whose name does not start with
   ``_`` is imported automatically, nothing else to edit.
3. Decorate it: ``@kernel("MyOpInt")`` (custom domain ``ai.linger``) or
   ``@kernel("Relu", domain="")`` (standard ONNX). Docstring = the formula.
4. Integer outputs use ``numerics.int_dtype(bits)``; sums go through BLAS only in the float dtype
   ``numerics.acc_float_dtype_for`` allows; rounding and saturation come from
   :mod:`linger.numerics` (``requantize``, ``rounded_div``...), never re-derived here.
5. Check input dtypes/shapes the op relies on with ``_common.check_dtype`` (raise
   :class:`~linger.errors.ModelFileError`, never ``assert``); the session adds the node's name.
6. Declare its schema beside it: ``schema("MyOpInt", inputs=(least, most), check=...,
   memory=..., exp_x=Exp(), bits_x=Bits(), ...)`` (:mod:`linger.runtime.schema`): the type and
   range of every attribute, their consistency with the weights, and the memory estimate the
   session checks before the node runs. Without it the op gets only generic checks, and
   ``tests/test_hostile.py`` lists it as missing; copy the new row of
   ``schema.markdown_table()`` into docs/reliability.md.
7. Test it in ``tests/test_runtime_*.py`` against an outside reference (onnxruntime for standard
   ops, a torch/python computation for custom ones) with ``np.array_equal``.
8. Optional, for speed: a *fast* version, ``@fast("MyOpInt")`` on a preparer
   ``prep(attrs, args) -> FastOp | None`` that works on the float32 channels-last form
   (:mod:`._fast`). It must give the plain kernel's bits: prove each float32 step exact from the
   constants it sees (return ``None`` where it cannot), and add the op to the fast-vs-plain
   tests of ``tests/test_runtime_fast.py``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

#: The custom op domain of linger graphs and the version of it this runtime implements.
LINGER_DOMAIN = "ai.linger"
LINGER_OPSET_VERSION = 1
#: Standard ONNX ops: the oldest default-domain opset whose op signatures the kernels follow
#: (axes/split/pads given as inputs).
MIN_ONNX_OPSET = 13

#: (domain, op_type) -> kernel function.
KERNELS: dict[tuple[str, str], Callable] = {}
#: (domain, op_type) -> preparer of the op's fast version (see :mod:`._fast`).
FAST: dict[tuple[str, str], Callable] = {}


def kernel(op_type: str, domain: str = LINGER_DOMAIN, *, pass_num_outputs: bool = False):
    """Register ``fn`` as the kernel of ``(domain, op_type)``.

    ``pass_num_outputs=True``: the session passes ``num_outputs=<the node's output count>`` when
    the node has no such attribute (ONNX ``Split`` before opset 18 infers its pieces that way).
    """
    def register(fn):
        key = (domain, op_type)
        if key in KERNELS:
            raise ValueError(f"kernel for {key} registered twice ({KERNELS[key].__module__} and"
                             f" {fn.__module__})")
        fn.pass_num_outputs = pass_num_outputs
        KERNELS[key] = fn
        return fn
    return register


def fast(op_type: str, domain: str = LINGER_DOMAIN):
    """Register ``prep`` as the preparer of the fast version of ``(domain, op_type)``.

    ``prep(attrs, args)`` runs when a session compiles the graph (once per set of wanted
    outputs): ``attrs`` the node's attributes, ``args[i]`` a :class:`._fast.Arg` (the initializer
    or ``None``, the dtype when known before running) or ``None`` for an omitted input. It returns
    a :class:`._fast.FastOp`, or ``None`` when the plain kernel must run (an exactness bound
    fails, weights are not constant...).
    """
    def register(prep):
        key = (domain, op_type)
        if key in FAST:
            raise ValueError(f"fast version of {key} registered twice")
        FAST[key] = prep
        return prep
    return register


def supported_ops() -> list[str]:
    """Sorted ``domain::op_type`` names of every registered kernel (for error messages)."""
    return sorted(f"{d or 'ai.onnx'}::{op}" for d, op in KERNELS)


def _import_families():
    # Every public module of this package is an op family; importing it registers its kernels.
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_families()
