"""Declared attribute schemas of the runtime's ops, and the checks every model file passes
before any kernel is compiled.

Each kernel family file (``kernels/*.py``) declares, beside its kernels, one :class:`OpSchema`
per op with :func:`schema`::

    schema("Conv2dInt", inputs=(2, 3), check=_conv_check, memory=_conv_memory,
           **LAYER_ATTRS, kernel_shape=Ints(1, MAX_SPATIAL, length=(1, 3)), ...)

- ``attrs``: one :class:`Spec` per attribute (type and range). :func:`check_attrs` applies them
  to the decoded attributes of a node: a value of the wrong type or out of range is a
  :class:`~linger.errors.ModelFileError` naming the node, the attribute, the value and the range.
  Required/unknown attributes are checked by the loader against the kernel's signature.
- ``inputs``: ``(least, most)`` input count; the first ``least`` may not be omitted (``""``),
  unless ``required(attrs, n_inputs)`` lists the positions that may not.
- ``check(attrs, consts, where)``: consistency of the attributes with each other and with the
  shapes of the inputs known at load time (initializers: weights, biases, shape vectors).
- ``memory(attrs, ins, fast) -> bytes``: an upper estimate of what the node allocates (outputs
  and temporaries) for the actual input shapes, checked before the node runs against the
  session's ``max_memory_bytes`` (:mod:`linger.runtime.budget`). It also checks the geometry
  (a window larger than the padded input...) so that nothing is allocated for a bad shape.

The same schema serves the plain and the fast kernels (a fast preparer never sees a node the
schema refused) and the packed-file reader (a packed file is rebuilt into the same graph and
loaded by :func:`linger.runtime.graph.load_graph`). The ranges are written out for other
executors (the C engine) in docs/reliability.md.

Ops without a schema entry (ops added after this layer) still get the generic checks of
:func:`check_attrs`: an attribute named ``bits*`` must be an int in ``BITS``, ``exp*`` one in
``EXP``, every integer attribute must fit int32 (``ATTR_INT``); their memory is estimated as
four times their inputs.
Every new op must add its entry (``tests/test_hostile.py`` lists the ops that lack one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from ..errors import ModelFileError

#: Bit widths of integer values: 2..32 bits (stored in int8/int16/int32).
BITS = (2, 32)
#: Exponents (``real = q * 2**-exp``): each fits int8, a shift derived from three fits int16.
EXP = (-127, 127)
#: Kernel sizes, strides, dilations and paddings of one spatial axis.
MAX_SPATIAL = 1 << 16
#: Any other integer attribute: fits int32.
ATTR_INT = (-(1 << 31), (1 << 31) - 1)
#: Axes (of a tensor of rank <= 8, negative counting from the end).
AXIS = (-8, 8)
#: Values in one list attribute.
MAX_LIST = 1 << 16
#: Elements of a tensor attribute (``Constant``): 64 Mi.
MAX_TENSOR_ATTR = 1 << 26


class Spec:
    """Type and range of one attribute; ``check(value) -> None or a reason``."""

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def check(self, value):  # pragma: no cover - overridden
        raise NotImplementedError


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class Int(Spec):
    """An integer in ``[lo, hi]``."""

    lo: int = ATTR_INT[0]
    hi: int = ATTR_INT[1]

    def describe(self) -> str:
        return f"an int in [{self.lo}, {self.hi}]"

    def check(self, value):
        if not _is_int(value):
            return f"must be {self.describe()}, got {type(value).__name__} {value!r:.60}"
        if not self.lo <= value <= self.hi:
            return f"must be {self.describe()}, got {value}"
        return None


@dataclass(frozen=True)
class Ints(Spec):
    """A list of integers, each in ``[lo, hi]``, of a length in ``length`` (inclusive)."""

    lo: int = ATTR_INT[0]
    hi: int = ATTR_INT[1]
    length: tuple = (0, MAX_LIST)

    def describe(self) -> str:
        return (f"a list of {self.length[0]}..{self.length[1]} ints, each in"
                f" [{self.lo}, {self.hi}]")

    def check(self, value):
        if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
            return f"must be {self.describe()}, got {type(value).__name__} {value!r:.60}"
        if not self.length[0] <= len(value) <= self.length[1]:
            return f"must be {self.describe()}, got {len(value)} values"
        bad = [v for v in value if not self.lo <= v <= self.hi]
        if bad:
            return f"must be {self.describe()}, got {list(value)!r:.80}"
        return None


@dataclass(frozen=True)
class Float(Spec):
    """A finite float (ints are accepted too)."""

    def describe(self) -> str:
        return "a finite float"

    def check(self, value):
        if not isinstance(value, (float, int, np.floating, np.integer)) or isinstance(value, bool) \
                or not math.isfinite(value):
            return f"must be {self.describe()}, got {value!r:.60}"
        return None


@dataclass(frozen=True)
class Floats(Spec):
    """A list of finite floats."""

    def describe(self) -> str:
        return f"a list of at most {MAX_LIST} finite floats"

    def check(self, value):
        if not isinstance(value, (list, tuple)) or len(value) > MAX_LIST \
                or any(Float().check(v) for v in value):
            return f"must be {self.describe()}, got {value!r:.60}"
        return None


@dataclass(frozen=True)
class Str(Spec):
    """A string, one of ``choices`` (empty: any)."""

    choices: tuple = ()

    def describe(self) -> str:
        return f"one of {list(self.choices)}" if self.choices else "a string"

    def check(self, value):
        if not isinstance(value, str) or (self.choices and value not in self.choices):
            return f"must be {self.describe()}, got {value!r:.60}"
        return None


@dataclass(frozen=True)
class Tensor(Spec):
    """A tensor attribute of at most :data:`MAX_TENSOR_ATTR` elements."""

    def describe(self) -> str:
        return f"a tensor of at most {MAX_TENSOR_ATTR} elements"

    def check(self, value):
        if not isinstance(value, np.ndarray) or value.size > MAX_TENSOR_ATTR:
            return f"must be {self.describe()}, got {type(value).__name__}"
        return None


def Bits() -> Int:
    """Bit width of an integer value."""
    return Int(*BITS)


def Exp() -> Int:
    """An exponent."""
    return Int(*EXP)


def Flag() -> Int:
    """0 or 1."""
    return Int(0, 1)


def Axis() -> Int:
    """An axis of a tensor of rank <= 8 (negative: from the end)."""
    return Int(*AXIS)


def layer_attrs() -> dict:
    """The exponents and bits of an integer layer ``x (exp_x, bits_x), W (exp_w, bits_w) ->
    y (exp_o, bits_o)``."""
    return dict(exp_x=Exp(), exp_w=Exp(), exp_o=Exp(), bits_x=Bits(), bits_w=Bits(),
                bits_o=Bits())


class In(NamedTuple):
    """What the memory estimate of a node sees of one input at run time."""

    shape: tuple          # canonical shape (N, C, ...)
    dtype: np.dtype       # canonical dtype
    value: object         # the array when it is a canonical one (shape vectors...), else None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class OpSchema:
    """The declared contract of one op (see the module doc)."""

    attrs: dict
    inputs: tuple = (0, 1 << 16)
    check: Callable | None = None
    memory: Callable | None = None
    required: Callable | None = None   # (attrs, n_inputs) -> positions that need a value


#: (domain, op_type) -> OpSchema
SCHEMAS: dict = {}


def schema(op_type: str, domain: str = "ai.linger", *, inputs=(0, 1 << 16), check=None,
           memory=None, required=None, **attrs) -> OpSchema:
    """Declare the schema of ``(domain, op_type)`` (one entry per op, beside its kernel)."""
    key = (domain, op_type)
    if key in SCHEMAS:
        raise ValueError(f"schema of {key} declared twice")
    SCHEMAS[key] = OpSchema(dict(attrs), tuple(inputs), check, memory, required)
    return SCHEMAS[key]


def _generic(name, value):
    """The rule an attribute of an op without schema gets from its name and type."""
    if name.startswith("bits"):
        return (Ints(*BITS) if isinstance(value, (list, tuple)) else Bits()).check(value)
    if name.startswith("exp"):
        return (Ints(*EXP) if isinstance(value, (list, tuple)) else Exp()).check(value)
    if _is_int(value):
        return Int().check(value)
    if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
        return Ints().check(value)
    if isinstance(value, np.ndarray):
        return Tensor().check(value)
    return None


def check_attrs(op_type: str, domain: str, attrs: dict, where: str) -> None:
    """Type and range of every attribute of one node (its schema, or the generic rules)."""
    sch = SCHEMAS.get((domain, op_type))
    for name, value in attrs.items():
        spec = sch.attrs.get(name) if sch is not None else None
        why = spec.check(value) if spec is not None else _generic(name, value)
        if why:
            raise ModelFileError(f"{where}: attribute '{name}' {why}")


def check_inputs(op_type: str, domain: str, inputs, attrs: dict, where: str) -> None:
    """Input count and required (non-omitted) inputs."""
    sch = SCHEMAS.get((domain, op_type))
    if sch is None:
        return
    least, most = sch.inputs
    if not least <= len(inputs) <= most:
        raise ModelFileError(f"{where} has {len(inputs)} inputs; {op_type} takes"
                             f" {least}..{most}")
    needed = range(least) if sch.required is None else sch.required(attrs, len(inputs))
    omitted = [k for k in needed if not inputs[k]]
    if omitted:
        raise ModelFileError(f"{where}: required input(s) {omitted} are omitted (empty name)")


def validate_node(node, initializers: dict, where: str) -> None:
    """Every load-time check of one node: attributes, inputs, consistency with known shapes."""
    check_attrs(node.op_type, node.domain, node.attrs, where)
    check_inputs(node.op_type, node.domain, node.inputs, node.attrs, where)
    sch = SCHEMAS.get((node.domain, node.op_type))
    if sch is not None and sch.check is not None:
        consts = [initializers.get(i) if i else None for i in node.inputs]
        try:
            sch.check(node.attrs, consts, where)
        except ModelFileError:
            raise
        except Exception as e:  # a check that trips over what it checks: a gap, not a crash
            raise ModelFileError(f"{where}: its schema check failed ({type(e).__name__}: {e});"
                                 f" please report it with the model") from e


def node_memory(node, ins, fast: bool) -> int:
    """Bytes node ``node`` may allocate for inputs ``ins`` (a list of :class:`In` or None)."""
    sch = SCHEMAS.get((node.domain, node.op_type))
    if sch is None or sch.memory is None:
        return 4 * sum(i.nbytes for i in ins if i is not None)
    try:
        return int(sch.memory(node.attrs, ins, fast))
    except ModelFileError:
        raise
    except Exception as e:  # an estimate that trips over its inputs: a gap, not a crash
        raise ModelFileError(f"its memory estimate failed ({type(e).__name__}: {e}); please"
                             f" report it with the model") from e


# -- helpers the kernel families' schemas share ----------------------------------------------
def nbytes(shape, itemsize: int = 8) -> int:
    """Bytes of an array of ``shape`` (python ints: no overflow)."""
    return math.prod(int(s) for s in shape) * itemsize


def need(cond: bool, where: str, message: str) -> None:
    """Raise ModelFileError(``where: message``) unless ``cond``."""
    if not cond:
        raise ModelFileError(f"{where}: {message}")


def const_dtype(arr, expected, where: str, what: str) -> None:
    """An initializer's dtype must be ``expected``."""
    if arr is not None and arr.dtype != np.dtype(expected):
        raise ModelFileError(f"{where}: {what} is {arr.dtype}, expected {np.dtype(expected)}")


def window_out(length: int, pads: tuple, kernel: int, stride: int, dilation: int,
               where: str) -> int:
    """Output length of a sliding window: ``floor((L + pb + pe - d*(k-1) - 1) / s) + 1``."""
    span = dilation * (kernel - 1) + 1
    padded = length + pads[0] + pads[1]
    if padded < span:
        raise ModelFileError(f"{where}: spatial size {length} (+ pads {list(pads)} ="
                             f" {padded}) is smaller than the (dilated) kernel extent {span}")
    return (padded - span) // stride + 1


def spatial_lengths(attrs, nd: int, where: str, names=("strides", "dilations")) -> None:
    """Per-axis attributes hold ``nd`` values, ``pads`` ``2 * nd``."""
    for name in names:
        v = attrs.get(name)
        need(v is None or len(v) == nd, where,
             f"{name} {v} needs {nd} values (one per spatial axis)")
    pads = attrs.get("pads")
    need(pads is None or len(pads) == 2 * nd, where,
         f"pads {pads} needs {2 * nd} values (all begins, then all ends)")
    ks = attrs.get("kernel_shape")
    need(ks is None or len(ks) == nd, where, f"kernel_shape {ks} needs {nd} values")


def per_axis(attrs, name: str, nd: int, default: int) -> list:
    v = attrs.get(name)
    return [default] * nd if v is None else [int(x) for x in v]


def pad_pairs(attrs, nd: int) -> list:
    p = attrs.get("pads")
    p = [0] * (2 * nd) if p is None else [int(x) for x in p]
    return list(zip(p[:nd], p[nd:]))


def broadcast(shapes, where: str) -> tuple:
    """numpy broadcast of shapes, or ModelFileError."""
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError as e:
        raise ModelFileError(f"{where}: input shapes {[list(s) for s in shapes]} do not"
                             f" broadcast: {e}") from None



def broadcast_memory(factor: int) -> Callable:
    """Memory estimate of an element-wise op: ``factor`` int64/float64 arrays of the broadcast
    shape of its inputs."""
    def memory(attrs, ins, fast):
        return factor * nbytes(broadcast([i.shape for i in ins if i is not None], "inputs"))
    return memory


def sum_memory(factor: int) -> Callable:
    """Memory estimate of an op whose output is about the size of all its inputs together
    (concatenation, layout changes): ``factor`` int64/float64 copies of them."""
    def memory(attrs, ins, fast):
        return factor * sum(nbytes(i.shape) for i in ins if i is not None)
    return memory


def markdown_table() -> str:
    """The declared ranges of every op as a markdown table (docs/reliability.md holds a copy
    that a test keeps identical)."""
    rows = ["| op | inputs | attributes |", "|---|---|---|"]
    for (domain, op), sch in sorted(SCHEMAS.items(), key=lambda kv: (kv[0][0] == "", kv[0])):
        attrs = "; ".join(f"`{k}` " + v.describe().replace("an int in ", "int ")
                          .replace("a list of ", "").replace(" ints, each in ", " ints ")
                          for k, v in sch.attrs.items()) or "none"
        least, most = sch.inputs
        count = f"{least}" if least == most else f"{least}..{most}"
        rows.append(f"| `{domain or 'ai.onnx'}::{op}` | {count} | {attrs} |")
    return "\n".join(rows) + "\n"
