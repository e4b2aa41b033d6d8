"""Rewrite a linger graph into standard ONNX that computes linger's integers **exactly**.

The QDQ form (:mod:`linger.onnx.qdq`) is close to linger but not equal: its float ops round, and
QuantizeLinear rounds half to even. This form is equal, in any ONNX runtime, because every value
is an integer held in a float tensor and every float operation on it is proven exact from the
constants the graph holds:

- **representation**: an integer tensor of ``bits <= 24`` is float32, of more bits float64 (both
  hold every such integer exactly); graph inputs and outputs keep linger's float32 signature;
- **sums** (Conv, ConvTranspose, Gemm/MatMul, ReduceSum, window sums): a sum of integer terms is
  exact in float32 in *any* summation order when the sum of their magnitudes is at most
  ``2**24`` (float64: ``2**53``). The bound is taken from the weights themselves and the input's
  bits (``|x| <= 2**(bits - 1)``). A convolution over the bound is split into limbs of its input
  and/or weights (``x = 2**L xh + xl``), each limb convolution exact, recombined in float64;
- **rounding shifts** ``rs(a, s) = floor((a + 2**(s-1)) / 2**s)``: ``Add``, ``Mul`` by
  ``2**-s`` (a power of two: exact), ``Floor``; saturation is ``Clip``; left shifts are ``Mul``;
- **element-wise integer functions of one input** (sigmoid, tanh, SiLU, GELU, Requant...): a
  ``Gather`` from a table of every possible input value (``2**bits`` entries), filled by running
  the runtime's own kernel on them: equal by construction;
- **divisions** (average pooling, softmax): ``floor((2a + b) / 2b)`` in float64: when the true
  quotient is not an integer it lies at least ``1/(2b)`` from one, far above float64's error.

- **GRU/LSTM**: unrolled over the time steps (fixed in the graph), the gates through the tables,
  lengths as masks, the reverse direction through a per-sequence ``GatherElements``.

Refused, naming the node (use the linger graph and linger's runtime for them): ``LayerNormInt``
(integer square root), ``LogSoftmaxInt`` (integer logarithm), recurrences and means over an axis
whose length is not fixed in the graph, and any op this module has no rule for.

Extend: add ``RULES[op_type] = fn(ctx, node, attrs)``, or the op's name to :data:`UNARY` when it
is an element-wise function of one integer input. numpy and onnx only.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import iqmath, numerics
from ..errors import ExportError
from .._names import unique_name

DOMAIN = "ai.linger"
F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
#: element-wise ai.linger ops of one integer input (a table of every input value is exact)
UNARY = {"Requant", "iqSigmoid", "iqTanh", "iqSiLU", "iqGELU", "iqHardSigmoid", "iqHardSwish",
         "iqELU"}
#: largest input width tabulated (2**16 entries)
MAX_TABLE_BITS = 16
_FLOAT = {False: TensorProto.FLOAT, True: TensorProto.DOUBLE}
_NP = {False: np.float32, True: np.float64}
_ONNX_INT = {TensorProto.INT8: 8, TensorProto.INT16: 16, TensorProto.INT32: 32,
             TensorProto.UINT8: 8}


class _Ctx:
    """The graph being written: nodes, new initializers, and the bits of every integer tensor."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.bits: dict[str, int] = {}          # integer tensor -> bits (its float width)
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self._names = {n.name for n in g.node} | {v.name for v in g.input} | set(self.inits)
        self._names |= {o for n in g.node for o in n.output}
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                                for d in v.type.tensor_type.shape.dim]
                       for v in list(g.input) + list(g.value_info) + list(g.output)}

    def fresh(self, base: str) -> str:
        return unique_name(self._names, base)

    def const(self, base: str, arr) -> str:
        name = self.fresh(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def num(self, base: str, v, wide: bool) -> str:
        return self.const(base, _NP[wide](v))

    def add(self, op: str, inputs, name: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(f"{name}.{op.lower()}")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.fresh(name),
                                           **attrs))
        return out

    def wide(self, name: str) -> bool:
        """Whether integer tensor ``name`` is held in float64."""
        return self.bits[name] > 24

    def cast(self, name: str, wide: bool, node: str) -> str:
        """``name`` as float64 (``wide``) or float32; integer tensors only."""
        if self.wide(name) == wide:
            return name
        return self.add("Cast", [name], f"{node}.cast", to=_FLOAT[wide])

    def rs_sat(self, a: str, shift: int, bits: int, wide: bool, node: str,
               out: str | None = None, sat: bool = True) -> str:
        """``sat_bits(rs(a, shift))`` for an integer-valued float tensor ``a`` of width ``wide``
        (exact while ``|a| + 2**(shift-1) <= 2**24`` resp. ``2**53``, checked by the callers)."""
        shift = int(shift)
        if shift > 0:
            a = self.add("Add", [a, self.num(f"{node}.half", 2.0 ** (shift - 1), wide)], node)
            a = self.add("Mul", [a, self.num(f"{node}.scale", 2.0 ** -shift, wide)], node)
            a = self.add("Floor", [a], node)
        elif shift < 0:
            a = self.add("Mul", [a, self.num(f"{node}.scale", 2.0 ** -shift, wide)], node)
        if sat:
            a = self.add("Clip", [a, self.num(f"{node}.lo", numerics.qmin(bits), wide),
                                  self.num(f"{node}.hi", numerics.qmax(bits), wide)], node)
        return a

    def finish(self, a: str, wide: bool, bits: int, out: str, node: str) -> str:
        """Write integer tensor ``out`` (``bits``) from ``a`` held at width ``wide``."""
        self.bits[out] = bits
        want = bits > 24
        if want != wide:
            return self.add("Cast", [a], f"{node}.cast", out=out, to=_FLOAT[want])
        return self.add("Identity", [a], f"{node}.out", out=out)


def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif a.type == onnx.AttributeProto.INTS:
            v = [int(i) for i in v]
        out[a.name] = v
    return out


def _refuse(node, why: str):
    raise ExportError(f"format='exact': node '{node.name}' ({node.op_type}) {why}; export"
                      f" format='linger' and run it with linger.runtime instead")


def _max_abs(bits: int) -> int:
    return 1 << (int(bits) - 1)


# -- boundary ops -------------------------------------------------------------------------------

def _quant(ctx, n, a):
    """``sat(rhu(float64(x) * 2**exp))``: clip before rounding gives the same integers."""
    x = ctx.add("Cast", [n.input[0]], f"{n.name}.cast", to=TensorProto.DOUBLE)
    x = ctx.add("Mul", [x, ctx.num(f"{n.name}.scale", 2.0 ** a["exp"], True)], n.name)
    x = ctx.add("Clip", [x, ctx.num(f"{n.name}.lo", numerics.qmin(a["bits"]), True),
                         ctx.num(f"{n.name}.hi", numerics.qmax(a["bits"]), True)], n.name)
    x = ctx.add("Add", [x, ctx.num(f"{n.name}.half", 0.5, True)], n.name)
    x = ctx.add("Floor", [x], n.name)
    ctx.finish(x, True, a["bits"], n.output[0], n.name)


def _dequant(ctx, n, a):
    wide = ctx.wide(n.input[0])
    ctx.add("Mul", [n.input[0], ctx.num(f"{n.name}.scale", 2.0 ** -a["exp"], wide)], n.name,
            out=n.output[0])


def _unary(ctx, n, a):
    """A ``Gather`` from the table of the runtime kernel's output for every input value."""
    from ..runtime.kernels import KERNELS
    bits_in = int(a.get("bits_x", a.get("bits_in", 0)))
    if not 0 < bits_in <= MAX_TABLE_BITS:
        _refuse(n, f"has a {bits_in}-bit input; tables cover inputs up to {MAX_TABLE_BITS} bits")
    lo = numerics.qmin(bits_in)
    domain = np.arange(lo, numerics.qmax(bits_in) + 1).astype(numerics.int_dtype(bits_in))
    fn = KERNELS[(DOMAIN, n.op_type)]
    table = fn([domain], **a)[0].astype(np.int64)
    bits_out = int(a.get("bits_o", a.get("bits")))
    wide = bits_out > 24
    x = ctx.cast(n.input[0], True, n.name) if ctx.wide(n.input[0]) else n.input[0]
    idx = ctx.add("Sub", [x, ctx.num(f"{n.name}.offset", lo, ctx.wide(n.input[0]))], n.name)
    idx = ctx.add("Cast", [idx], f"{n.name}.index", to=TensorProto.INT64)
    tab = ctx.const(f"{n.name}.table", table.astype(_NP[wide]))
    ctx.bits[n.output[0]] = bits_out
    ctx.add("Gather", [tab, idx], n.name, out=n.output[0], axis=0)


# -- layers -------------------------------------------------------------------------------------

def _limbs(values: np.ndarray, count: int, base: int):
    """``values`` (integers) as ``count`` limbs in ``base``, low first: ``sum(l_i * base**i)``;
    the low limbs lie in ``[0, base)``, the top one keeps the sign (floor division)."""
    out, rest = [], values.astype(np.int64)
    for _ in range(count - 1):
        low = np.mod(rest, base)
        out.append(low)
        rest = (rest - low) // base
    out.append(rest)
    return out


def _x_limbs(ctx, x: str, count: int, base: int, node: str):
    """Graph-side :func:`_limbs` of a float32 activation (every step exact: integers < 2**24
    and powers of two)."""
    out, rest = [], x
    for _ in range(count - 1):
        hi = ctx.add("Floor", [ctx.add("Mul", [rest, ctx.num(f"{node}.inv_base", 1 / base,
                                                                 False)], node)], node)
        low = ctx.add("Sub", [rest, ctx.add("Mul", [hi, ctx.num(f"{node}.base", float(base),
                                                                  False)], node)], node)
        out.append(low)
        rest = hi
    out.append(rest)
    return out


def _limb_plan(out_bound, absw, xbits: int):
    """``(limb bits, x limbs, w limbs)`` with the fewest partial ops whose every partial sum fits
    float32, or None. A value of ``b`` bits takes ``ceil(b / L)`` limbs of ``L`` bits."""
    wbits = int(absw.max(initial=0)).bit_length() + 1
    plans = []
    for lb in range(8, 2, -1):
        for split_x in (False, True):
            for split_w in (False, True):
                nx = -(-xbits // lb) if split_x else 1
                nw = -(-wbits // lb) if split_w else 1
                xl = (1 << lb) if split_x else 1 << (xbits - 1)
                wl = np.minimum(absw, 1 << lb) if split_w else absw
                if int(out_bound(wl).max(initial=0)) * xl <= F32_EXACT:
                    plans.append((nx * nw, -lb, nx, nw))
    if not plans:
        return None
    _, neg_lb, nx, nw = min(plans)
    return -neg_lb, nx, nw


def _weighted_sum(ctx, n, a, w: np.ndarray, b, out_bound, emit, bias_shape):
    """``sat_o(rs(op(x, W) + B, exp_x + exp_w - exp_o))`` exactly, for x = ``n.input[0]``.

    ``out_bound(absw)``: per output channel, the sum of ``|w|`` over the weights feeding one
    output (times ``max|x|`` it bounds every partial sum); ``emit(x, w, bias)`` writes
    ``op(x, w) + bias`` in float32 (``bias`` None: no bias). Fast form when it fits float32:
    bias and rounding constant folded into the op's bias, then ``Mul``/``Floor``/``Clip`` in
    float32. Otherwise limbs of ``x`` and/or ``w`` (:func:`_limb_plan`) until each partial op fits,
    recombined, biased and requantized in float64.
    """
    shift = a["exp_x"] + a["exp_w"] - a["exp_o"]
    bits_o, xmax = a["bits_o"], _max_abs(a["bits_x"])
    w = w.astype(np.int64)
    bsum = out_bound(np.abs(w))
    bias = np.zeros(bsum.shape, np.int64) if b is None else b.astype(np.int64).reshape(-1)
    half = (1 << (shift - 1)) if shift > 0 else 0
    x = ctx.cast(n.input[0], False, n.name)
    if int((bsum * xmax + np.abs(bias + half)).max(initial=0)) <= F32_EXACT and bits_o <= 24:
        acc = emit(x, w, (bias + half).astype(np.float32))
        if shift > 0:  # the rounding constant is already in the bias
            acc = ctx.add("Mul", [acc, ctx.num(f"{n.name}.scale", 2.0 ** -shift, False)], n.name)
            acc = ctx.add("Floor", [acc], n.name)
            acc = ctx.rs_sat(acc, 0, bits_o, False, n.name)
        else:
            acc = ctx.rs_sat(acc, shift, bits_o, False, n.name)
        ctx.finish(acc, False, bits_o, n.output[0], n.name)
        return
    plan = _limb_plan(out_bound, np.abs(w), int(a["bits_x"]))
    if plan is None:
        _refuse(n, "has sums that no split into limbs of 3 or more bits keeps exact")
    lb, nx, nw = plan
    xs = _x_limbs(ctx, x, nx, 1 << lb, n.name) if nx > 1 else [x]
    ws = _limbs(w, nw, 1 << lb) if nw > 1 else [w]
    total = None
    for i, xi in enumerate(xs):
        for j, wj in enumerate(ws):
            part = ctx.add("Cast", [emit(xi, wj, None)], n.name, to=TensorProto.DOUBLE)
            if i + j:
                part = ctx.add("Mul", [part, ctx.num(f"{n.name}.limb", 2.0 ** (lb * (i + j)),
                                                     True)], n.name)
            total = part if total is None else ctx.add("Add", [total, part], n.name)
    if b is not None:
        total = ctx.add("Add", [total, ctx.const(f"{n.name}.bias_acc", bias.astype(np.float64)
                                                 .reshape(bias_shape))], n.name)
    out = ctx.rs_sat(total, shift, bits_o, True, n.name)
    ctx.finish(out, True, bits_o, n.output[0], n.name)


def _conv_attrs(a, transpose: bool) -> dict:
    keys = ("kernel_shape", "strides", "pads", "dilations", "group")
    keys += ("output_padding",) if transpose else ()
    return {k: a[k] for k in keys if k in a}


def _conv_emit(ctx, n, op, attrs):
    def emit(x, w, bias):
        ins = [x, ctx.const(f"{n.name}.weight", w.astype(np.float32))]
        if bias is not None:
            ins.append(ctx.const(f"{n.name}.bias", bias))
        return ctx.add(op, ins, n.name, **attrs)
    return emit


def _conv(ctx, n, a):
    w = ctx.inits[n.input[1]]                        # (Cout, Cin/group, k...)
    b = ctx.inits[n.input[2]] if len(n.input) > 2 and n.input[2] else None
    _weighted_sum(ctx, n, a, w, b, lambda aw: aw.reshape(aw.shape[0], -1).sum(axis=1),
                  _conv_emit(ctx, n, "Conv", _conv_attrs(a, False)),
                  [-1] + [1] * (w.ndim - 2))


def _conv_transpose(ctx, n, a):
    w = ctx.inits[n.input[1]]                        # (Cin, Cout/group, k...)
    b = ctx.inits[n.input[2]] if len(n.input) > 2 and n.input[2] else None
    group = int(a.get("group", 1))

    def bound(aw):  # output channel g*cpg + j sums |w| over its group's inputs and the kernel
        cin, cpg = aw.shape[0], aw.shape[1]
        return aw.reshape(group, cin // group, cpg, -1).sum(axis=(1, 3)).reshape(-1)
    _weighted_sum(ctx, n, a, w, b, bound, _conv_emit(ctx, n, "ConvTranspose",
                                                     _conv_attrs(a, True)),
                  [-1] + [1] * (w.ndim - 2))


def _linear(ctx, n, a):
    w = ctx.inits[n.input[1]]                        # (out, in)
    b = ctx.inits[n.input[2]] if len(n.input) > 2 and n.input[2] else None

    def emit(x, wi, bias):
        y = ctx.add("MatMul", [x, ctx.const(f"{n.name}.weight_t", wi.T.astype(np.float32))],
                    n.name)
        return y if bias is None else ctx.add("Add", [y, ctx.const(f"{n.name}.bias", bias)],
                                               n.name)
    _weighted_sum(ctx, n, a, w, b, lambda aw: aw.sum(axis=1), emit, [-1])


def _batchnorm(ctx, n, a):
    """``sat_o(rs(x * W[c] + B[c], exp_x + exp_w - exp_o))``: a 1x1 depthwise product."""
    w = ctx.inits[n.input[1]].astype(np.int64)
    b = ctx.inits[n.input[2]].astype(np.int64)
    shape = [-1] + [1] * (len(ctx.shapes.get(n.input[0]) or [0, 0, 0, 0]) - 2)
    shift = a["exp_x"] + a["exp_w"] - a["exp_o"]
    half = (1 << (shift - 1)) if shift > 0 else 0
    bound = int((np.abs(w) * _max_abs(a["bits_x"]) + np.abs(b + half)).max(initial=0))
    wide = bound > F32_EXACT or a["bits_o"] > 24
    if bound > F64_EXACT:
        _refuse(n, f"has products up to {bound}, beyond float64's exact integers")
    x = ctx.cast(n.input[0], wide, n.name)
    y = ctx.add("Mul", [x, ctx.const(f"{n.name}.weight", w.astype(_NP[wide]).reshape(shape))],
                n.name)
    y = ctx.add("Add", [y, ctx.const(f"{n.name}.bias", b.astype(_NP[wide]).reshape(shape))],
                n.name)
    ctx.finish(ctx.rs_sat(y, shift, a["bits_o"], wide, n.name), wide, a["bits_o"],
               n.output[0], n.name)


def _avgpool(ctx, n, a):
    """``floor((2s + k) / (2k))``: ``s`` the window sum (a depthwise ones convolution, exact),
    ``k`` its element count (a constant, or the same convolution over ones without padding)."""
    k = [int(v) for v in a["kernel_shape"]]
    nd = len(k)
    if a.get("ceil_mode"):
        _refuse(n, "uses ceil_mode=1")
    shape = ctx.shapes.get(n.input[0])
    if not shape or shape[1] is None:
        _refuse(n, "has an input whose channel count is not in the graph")
    c = shape[1]
    if math.prod(k) * _max_abs(a["bits"]) > F32_EXACT:
        _refuse(n, "has window sums beyond float32's exact integers")
    attrs = {"kernel_shape": k, "strides": a.get("strides", [1] * nd),
             "pads": a.get("pads", [0] * 2 * nd), "group": c}
    ones = ctx.const(f"{n.name}.ones", np.ones([c, 1] + k, np.float32))
    x = ctx.cast(n.input[0], False, n.name)
    s = ctx.add("Cast", [ctx.add("Conv", [x, ones], n.name, **attrs)], n.name,
                to=TensorProto.DOUBLE)
    if a.get("count_include_pad", 0) or not any(attrs["pads"]):
        cnt = ctx.num(f"{n.name}.count", math.prod(k), True)
    else:
        filled = ctx.add("ConstantOfShape", [ctx.add("Shape", [x], n.name)], n.name,
                         value=numpy_helper.from_array(np.ones(1, np.float32)))
        cnt = ctx.add("Cast", [ctx.add("Conv", [filled, ones], n.name, **attrs)], n.name,
                      to=TensorProto.DOUBLE)
    two = ctx.num(f"{n.name}.two", 2.0, True)
    num = ctx.add("Add", [ctx.add("Mul", [s, two], n.name), cnt], n.name)
    q = ctx.add("Floor", [ctx.add("Div", [num, ctx.add("Mul", [cnt, two], n.name)], n.name)],
                n.name)
    ctx.finish(q, True, a["bits"], n.output[0], n.name)


def _global_avgpool(ctx, n, a):
    """``floor((2s + L) / (2L))`` over the whole spatial extent of the input it is given (a
    dynamic axis): ``s`` a float64 ReduceSum (exact below 2**53), ``L`` the product of the actual
    spatial sizes read with ``Shape``."""
    shape = ctx.shapes.get(n.input[0])
    if not shape or len(shape) < 3:
        _refuse(n, "has an input whose rank is not in the graph")
    x = ctx.cast(n.input[0], True, n.name)
    axes = ctx.const(f"{n.name}.axes", np.arange(2, len(shape), dtype=np.int64))
    s = ctx.add("ReduceSum", [x, axes], n.name, keepdims=1)                 # (N, C, 1...)
    sizes = ctx.add("Cast", [ctx.add("Shape", [x], n.name, start=2)], n.name,
                    to=TensorProto.DOUBLE)
    length = ctx.add("ReduceProd", [sizes], n.name, keepdims=1)             # (1,) L
    two = ctx.num(f"{n.name}.two", 2.0, True)
    num = ctx.add("Add", [ctx.add("Mul", [s, two], n.name), length], n.name)
    q = ctx.add("Floor", [ctx.add("Div", [num, ctx.add("Mul", [length, two], n.name)], n.name)],
                n.name)
    ctx.finish(q, True, a["bits"], n.output[0], n.name)


# -- tensor arithmetic -------------------------------------------------------------------------

def _operand(ctx, name: str, bits: int, node: str):
    """An integer operand and its bound: a graph tensor, or an initializer made float."""
    if name in ctx.inits and name not in ctx.bits:
        v = ctx.inits[name].astype(np.int64)
        big = int(np.abs(v).max(initial=0))
        wide = big > F32_EXACT
        return ctx.const(f"{node}.const", v.astype(_NP[wide])), wide, big
    return name, ctx.wide(name), _max_abs(bits)


def _rs(ctx, name, wide, bound, shift, node):
    """``rs(x, shift)`` (no saturation) at the width that keeps it exact; returns (name, wide)."""
    need = bound * 2 ** max(0, -shift) + (2 ** (shift - 1) if shift > 0 else 0)
    w = wide or need > F32_EXACT
    x = ctx.add("Cast", [name], f"{node}.cast", to=TensorProto.DOUBLE) if w and not wide else name
    return ctx.rs_sat(x, shift, 32, w, node, sat=False), w


def _add_sub(op):
    def rule(ctx, n, a):
        """``sat_o(sat32(rs(x, exp_x - exp_o)) +- sat32(rs(y, exp_y - exp_o)))``."""
        parts, sums = [], 0
        for i, e, b in ((0, a["exp_x"], a["bits_x"]), (1, a["exp_y"], a["bits_y"])):
            v, wide, bound = _operand(ctx, n.input[i], b, n.name)
            v, wide = _rs(ctx, v, wide, bound, e - a["exp_o"], n.name)
            moved = bound * 2 ** max(0, a["exp_o"] - e)                   # |rs(v)| bound
            if moved >= 2 ** 31:                                          # sat32 can act
                if not wide:
                    v = ctx.add("Cast", [v], n.name, to=TensorProto.DOUBLE)
                    wide = True
                v = ctx.rs_sat(v, 0, 32, True, n.name)
            parts.append((v, wide))
            sums += min(moved, 2 ** 31)
        wide = any(w for _, w in parts) or a["bits_o"] > 24 or sums > F32_EXACT
        xs = [ctx.add("Cast", [v], n.name, to=TensorProto.DOUBLE) if wide and not w else v
              for v, w in parts]
        y = ctx.add(op, xs, n.name)
        ctx.finish(ctx.rs_sat(y, 0, a["bits_o"], wide, n.name), wide, a["bits_o"], n.output[0],
                   n.name)
    return rule


def _product(op):
    def rule(ctx, n, a):
        """``sat_o(rs(x op y, exp_x + exp_y - exp_o))`` (MatMul: exact sums by the bound)."""
        x, wx, bx = _operand(ctx, n.input[0], a["bits_x"], n.name)
        y, wy, by = _operand(ctx, n.input[1], a["bits_y"], n.name)
        k = 1
        if op == "MatMul":
            shape = ctx.shapes.get(n.input[0]) or []
            k = shape[-1] if shape and shape[-1] else None
            if k is None and n.input[1] in ctx.inits:
                k = ctx.inits[n.input[1]].shape[-2]
            if k is None:
                _refuse(n, "has an inner dimension that is not fixed in the graph")
        shift = a["exp_x"] + a["exp_y"] - a["exp_o"]
        bound = k * bx * by + (2 ** (shift - 1) if shift > 0 else 0)
        if bound > F64_EXACT:
            _refuse(n, f"has sums up to {bound}, beyond float64's exact integers")
        wide = bound > F32_EXACT or wx or wy or a["bits_o"] > 24
        xs = [ctx.add("Cast", [v], n.name, to=TensorProto.DOUBLE) if wide and not w else v
              for v, w in ((x, wx), (y, wy))]
        acc = ctx.add(op, xs, n.name)
        ctx.finish(ctx.rs_sat(acc, shift, a["bits_o"], wide, n.name), wide, a["bits_o"],
                   n.output[0], n.name)
    return rule


def _cat(ctx, n, a):
    """Each input moved to the output grid and saturated, then Concat (stack: Unsqueeze first)."""
    wide = a["bits_o"] > 24
    xs = []
    for name, e, b in zip(n.input, a["exp_inputs"], a["bits_inputs"]):
        v, w, bound = _operand(ctx, name, b, n.name)
        v, w = _rs(ctx, v, w, bound, e - a["exp_o"], n.name)
        v = ctx.rs_sat(v, 0, a["bits_o"], w, n.name)
        if w != wide:
            v = ctx.add("Cast", [v], n.name, to=_FLOAT[wide])
        if a.get("new_axis"):
            v = ctx.add("Unsqueeze", [v, ctx.const(f"{n.name}.axis", np.array([a["axis"]]))],
                        n.name)
        xs.append(v)
    ctx.finish(ctx.add("Concat", xs, n.name, axis=a["axis"]), wide, a["bits_o"], n.output[0],
               n.name)


def _reduced_count(ctx, n, axes):
    shape = ctx.shapes.get(n.input[0])
    if not shape:
        return None
    dims = [shape[ax] for ax in axes] if axes else shape
    return None if any(d is None or d == 0 for d in dims) else math.prod(dims)


def _sum_mean(mean: bool):
    def rule(ctx, n, a):
        """iqSum: ``sat_o(rs(S, exp_x - exp_o))``; iqMean: ``sat_o(rs(S * m, t + exp_x -
        exp_o))`` with ``(m, t) = mean_multiplier(k)``; the sum in float64."""
        axes = [int(v) for v in a.get("axes", [])]
        k = _reduced_count(ctx, n, axes)
        if mean and k is None:
            _refuse(n, "averages over an axis whose length is not fixed in the graph")
        x = ctx.cast(n.input[0], True, n.name)
        ins = [x] + ([ctx.const(f"{n.name}.axes", np.array(axes, np.int64))] if axes else [])
        s = ctx.add("ReduceSum", ins, n.name, keepdims=int(a.get("keepdims", 0)))
        shift = a["exp_x"] - a["exp_o"]
        if mean:
            m, t = iqmath.mean_multiplier(k)
            if k * _max_abs(a["bits_x"]) * m > F64_EXACT:
                _refuse(n, "has a mean product beyond float64's exact integers")
            s = ctx.add("Mul", [s, ctx.num(f"{n.name}.m", m, True)], n.name)
            shift += t
        ctx.finish(ctx.rs_sat(s, shift, a["bits_o"], True, n.name), True, a["bits_o"],
                   n.output[0], n.name)
    return rule


def _softmax(ctx, n, a):
    """``e = EXP_Q20(x - max)`` from a table over ``x - max`` in ``[-(2**bits - 1), 0]``;
    ``p15 = floor((e * 2**16 + S) / 2S)``, ``S = sum e``; ``sat_o(rs(p15, 15 - exp_o))``."""
    bits, axis = int(a["bits_x"]), int(a["axis"])
    if bits > MAX_TABLE_BITS:
        _refuse(n, f"has a {bits}-bit input; tables cover inputs up to {MAX_TABLE_BITS} bits")
    if len(n.input) > 1 and n.input[1]:
        _refuse(n, "has an attention mask input (no exact rule for a masked softmax yet)")
    e_tab, _ = iqmath._exp_q20(-np.arange(1 << bits, dtype=np.int64), int(a["exp_x"]), 0)
    x = ctx.cast(n.input[0], False, n.name)
    if ctx.opset >= 18:
        mx = ctx.add("ReduceMax", [x, ctx.const(f"{n.name}.axis", np.array([axis]))], n.name,
                     keepdims=1)
    else:
        mx = ctx.add("ReduceMax", [x], n.name, axes=[axis], keepdims=1)
    idx = ctx.add("Cast", [ctx.add("Sub", [mx, x], n.name)], n.name, to=TensorProto.INT64)
    e = ctx.add("Gather", [ctx.const(f"{n.name}.exp_table", e_tab.astype(np.float64)), idx],
                n.name, axis=0)
    total = ctx.add("ReduceSum", [e, ctx.const(f"{n.name}.axes", np.array([axis]))], n.name,
                    keepdims=1)
    num = ctx.add("Add", [ctx.add("Mul", [e, ctx.num(f"{n.name}.q16", 2.0 ** 16, True)],
                                  n.name), total], n.name)
    den = ctx.add("Mul", [total, ctx.num(f"{n.name}.two", 2.0, True)], n.name)
    p15 = ctx.add("Floor", [ctx.add("Div", [num, den], n.name)], n.name)
    ctx.finish(ctx.rs_sat(p15, iqmath.PROB_Q - a["exp_o"], a["bits_o"], True, n.name), True,
               a["bits_o"], n.output[0], n.name)


def _lut(ctx, n, a):
    """``LutInt`` (imported original models): the same table, indexed by ``Gather``."""
    *args, table = n.input
    t = ctx.inits[table].astype(np.int64)
    bits_o = int(a["bits_o"])
    wide = bits_o > 24
    idx = None
    for name, bits in zip(args, (int(a["bits_x"]), int(a.get("bits_y", 0)))):
        v = ctx.add("Add", [ctx.cast(name, True, n.name), ctx.num(f"{n.name}.offset",
                                                                  1 << (bits - 1), True)], n.name)
        if idx is None:
            idx = v
        else:
            scaled = ctx.add("Mul", [idx, ctx.num(f"{n.name}.stride", 2.0 ** a["bits_y"], True)],
                             n.name)
            idx = ctx.add("Add", [scaled, v], n.name)
    idx = ctx.add("Cast", [idx], n.name, to=TensorProto.INT64)
    ctx.bits[n.output[0]] = bits_o
    ctx.add("Gather", [ctx.const(f"{n.name}.table", t.astype(_NP[wide])), idx], n.name,
            out=n.output[0], axis=0)


def _embedding(ctx, n, a):
    w = ctx.inits[n.input[1]]
    wide = a["bits_w"] > 24
    ctx.bits[n.output[0]] = a["bits_w"]
    ctx.add("Gather", [ctx.const(f"{n.name}.weight", w.astype(_NP[wide])), n.input[0]], n.name,
            out=n.output[0], axis=0)


# -- recurrent ops, unrolled over a fixed number of steps ---------------------------------------

class _Steps:
    """Graph builders for the integer recurrence of :mod:`linger.iqrnn` on float-held integers
    (one ``_Steps`` per GRUInt/LSTMInt node)."""

    def __init__(self, ctx, node):
        self.ctx, self.node = ctx, node.name

    def c(self, base, arr):
        return self.ctx.const(f"{self.node}.{base}", arr)

    def op(self, op, *inputs, **attrs):
        return self.ctx.add(op, list(inputs), self.node, **attrs)

    def wide(self, x):
        return self.op("Cast", x, to=TensorProto.DOUBLE)

    def narrow(self, x):
        return self.op("Cast", x, to=TensorProto.FLOAT)

    def rs_sat(self, x, shift, bits, wide):
        return self.ctx.rs_sat(x, shift, bits, wide, self.node)

    def gate(self, fn, x):
        """``fn(sat16(x))`` for float32 ``x`` through a 65536-entry table (``fn`` from
        :mod:`linger.iqmath`)."""
        from ..iqrnn import _lut
        table = _lut(fn)
        order = np.concatenate([table[1 << 15:], table[:1 << 15]])       # index x + 32768
        idx = self.op("Add", self.rs_sat(x, 0, 16, False), self.ctx.num(
            f"{self.node}.offset", 1 << 15, False))
        return self.op("Gather", self.c(f"{fn.__name__}_table", order.astype(np.float32)),
                       self.op("Cast", idx, to=TensorProto.INT64), axis=0)

    def affine_q11(self, x, bits_x: int, w, b, exp_x: int, exp_w: int):
        """``sat16(rs(x W^T + b, exp_x + exp_w - 11))`` for float32 ``x`` (exact: float32 when
        the sum of ``|w|`` per output times ``2**(bits_x - 1)`` plus the bias fits ``2**24``,
        else float64)."""
        w = w.astype(np.int64)
        shift = int(exp_x) + int(exp_w) - iqmath.GATE_Q
        half = (1 << (shift - 1)) if shift > 0 else 0
        bias = np.zeros(w.shape[0], np.int64) if b is None else b.astype(np.int64)
        bound = int((np.abs(w).sum(axis=1) * _max_abs(bits_x) + np.abs(bias)).max()) + half
        if bound > F64_EXACT:
            raise ExportError(f"format='exact': node '{self.node}' has gate sums up to {bound},"
                              f" beyond float64's exact integers")
        wide = bound > F32_EXACT
        xin = self.wide(x) if wide else x
        acc = self.op("MatMul", xin, self.c("w_t", w.T.astype(_NP[wide])))
        acc = self.op("Add", acc, self.c("b", bias.astype(_NP[wide])))
        out = self.rs_sat(acc, shift, 16, wide)
        return self.narrow(out) if wide else out

    def product_rs(self, a, b, shift: int, bits: int):
        """``sat_bits(rs(a * b, shift))`` of float32 integers whose product may pass 2**24."""
        return self.narrow(self.rs_sat(self.op("Mul", self.wide(a), self.wide(b)), shift,
                                       bits, True))

    def reverse(self, seq, rev_idx, steps: int):
        """Each sequence of time-major ``seq`` reversed within its length (``rev_idx`` (T, N)
        from the lengths), or the whole time axis when there are no lengths."""
        if rev_idx is not None:
            idx = self.op("Expand", self.op("Unsqueeze", rev_idx, self.c("ax2", np.array([2]))),
                          self.op("Shape", seq))
            return self.op("GatherElements", seq, idx, axis=0)
        return self.op("Slice", seq, self.c("rs", np.array([steps - 1])),
                       self.c("re", np.array([-steps - 1])), self.c("ra", np.array([0])),
                       self.c("rstep", np.array([-1])))

    def split(self, x, parts: int, axis: int):
        """``parts`` equal pieces of ``x`` along ``axis``."""
        outs = [self.ctx.fresh(f"{self.node}.part") for _ in range(parts)]
        attrs = {"num_outputs": parts} if self.ctx.opset >= 18 else {}
        self.ctx.nodes.append(helper.make_node("Split", [x], outs, name=self.ctx.fresh(self.node),
                                               axis=axis, **attrs))
        return outs


def _rnn(ctx, n, a):
    """GRUInt/LSTMInt unrolled: the steps of :func:`linger.iqrnn.gru_step` /
    :func:`linger.iqrnn.lstm_step` over the fixed number of time steps, lengths as masks."""
    mode = "LSTM" if n.op_type == "LSTMInt" else "GRU"
    st = _Steps(ctx, n)
    bf, hs = bool(a["batch_first"]), int(a["hidden_size"])
    layers, dirs = int(a["num_layers"]), 2 if a["bidirectional"] else 1
    shape = ctx.shapes.get(n.input[0]) or []
    steps = shape[1 if bf else 0] if len(shape) == 3 else None
    if not steps:
        _refuse(n, "has a time axis whose length is not fixed in the graph")
    bits_h, exp_h = int(a["bits_h"]), int(a["exp_h"])
    head = 4 if mode == "LSTM" else 3
    lengths = n.input[1] or None
    h0, c0 = n.input[2] or None, (n.input[3] or None) if mode == "LSTM" else None
    per = 4 if a["has_bias"] else 2
    params = [ctx.inits.get(p) for p in n.input[head:]]
    if any(p is None for p in params):
        _refuse(n, "has weights that are not initializers")
    x = ctx.cast(n.input[0], False, n.name)
    if bf:
        x = st.op("Transpose", x, perm=[1, 0, 2])                              # (T, N, F)
    t_col = st.c("t", np.arange(steps, dtype=np.int64).reshape(steps, 1))
    active = rev_idx = None
    if lengths:
        lens = st.op("Unsqueeze", lengths, st.c("ax0", np.array([0])))       # (1, N)
        active = st.op("Less", t_col, lens)                                   # (T, N) bool
        back = st.op("Sub", st.op("Sub", lens, st.c("one", np.array(1, np.int64))), t_col)
        rev_idx = st.op("Where", active, back, t_col)                          # (T, N)
    zero = st.c("zero", np.zeros(1, np.float32))
    inp, bits_in, exp_in = x, int(a["bits_x"]), int(a["exp_x"])
    h_last, c_last = [], []

    def state(init, k):
        if init is None:
            shp = st.op("Shape", x)
            batch = st.op("Slice", shp, st.c("s1", np.array([1])), st.c("s2", np.array([2])))
            return st.op("ConstantOfShape", st.op("Concat", batch, st.c("hs", np.array([hs])),
                                                  axis=0),
                         value=numpy_helper.from_array(np.zeros(1, np.float32)))
        sl = st.op("Gather", ctx.cast(init, False, n.name), st.c(f"k{k}", np.array(k)), axis=0)
        return sl

    for layer in range(layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh = params[k * per], params[k * per + 1]
            b_ih, b_hh = (params[k * per + 2], params[k * per + 3]) if per == 4 else (None, None)
            exp_ih, exp_hh = a["exp_w"][2 * k], a["exp_w"][2 * k + 1]
            seq = st.reverse(inp, rev_idx, steps) if d == 1 else inp
            gi = st.affine_q11(seq, bits_in, w_ih, b_ih, exp_in, exp_ih)          # (T, N, GH)
            gis = st.split(gi, steps, 0)
            h, c = state(h0, k), (state(c0, k) if mode == "LSTM" else None)
            ys = []
            for t in range(steps):
                g_t = st.op("Squeeze", gis[t], st.c("sq0", np.array([0])))       # (N, GH)
                gh = st.affine_q11(h, bits_h, w_hh, b_hh, exp_h, exp_hh)
                if mode == "GRU":
                    gi_r, gi_z, gi_n = st.split(g_t, 3, 1)
                    gh_r, gh_z, gh_n = st.split(gh, 3, 1)
                    r = st.gate(iqmath.sigmoid_q15, st.op("Add", gi_r, gh_r))
                    z = st.gate(iqmath.sigmoid_q15, st.op("Add", gi_z, gh_z))
                    rn = st.product_rs(r, gh_n, iqmath.PROB_Q, 32)
                    nn_ = st.gate(iqmath.tanh_q15, st.op("Add", gi_n, rn))
                    one = st.c("q15", np.array(1 << iqmath.PROB_Q, np.float64))
                    acc = st.op("Add", st.op("Mul", st.op("Sub", one, st.wide(z)), st.wide(nn_)),
                                st.op("Mul", st.wide(z), st.op("Mul", st.wide(h), st.c(
                                    "hshift", np.array(2.0 ** (iqmath.PROB_Q - exp_h))))))
                    h_new = st.narrow(st.rs_sat(acc, 2 * iqmath.PROB_Q - exp_h, bits_h, True))
                else:
                    g = st.rs_sat(st.op("Add", g_t, gh), 0, 16, False)
                    gi_i, gi_f, gi_g, gi_o = st.split(g, 4, 1)
                    i_, f_, o_ = (st.gate(iqmath.sigmoid_q15, v) for v in (gi_i, gi_f, gi_o))
                    gg = st.gate(iqmath.tanh_q15, gi_g)
                    fc = st.op("Mul", st.op("Mul", st.wide(f_), st.wide(c)), st.c(
                        "c16", np.array(16.0)))
                    cacc = st.op("Add", fc, st.op("Mul", st.wide(i_), st.wide(gg)))
                    c_new = st.narrow(st.rs_sat(cacc, 2 * iqmath.PROB_Q - 11, 16, True))
                    tc = st.gate(iqmath.tanh_q15, c_new)
                    h_new = st.product_rs(o_, tc, 2 * iqmath.PROB_Q - exp_h, bits_h)
                if active is not None:
                    act = st.op("Unsqueeze", st.op("Gather", active, st.c(f"t{t}", np.array(t)),
                                                   axis=0), st.c("ax1", np.array([1])))
                    if mode == "LSTM":
                        c = st.op("Where", act, c_new, c)
                    h = st.op("Where", act, h_new, h)
                    y_t = st.op("Where", act, h_new, zero)
                else:
                    h, y_t = h_new, h_new
                    if mode == "LSTM":
                        c = c_new
                ys.append(st.op("Unsqueeze", y_t, st.c("ax0", np.array([0]))))
            y = st.op("Concat", *ys, axis=0)                                       # (T, N, H)
            outs.append(st.reverse(y, rev_idx, steps) if d == 1 else y)
            h_last.append(st.op("Unsqueeze", h, st.c("ax0", np.array([0]))))
            if mode == "LSTM":
                c_last.append(st.op("Unsqueeze", c, st.c("ax0", np.array([0]))))
        inp = outs[0] if dirs == 1 else st.op("Concat", *outs, axis=2)
        bits_in, exp_in = bits_h, exp_h
    y = st.op("Transpose", inp, perm=[1, 0, 2]) if bf else inp
    ctx.finish(y, False, bits_h, n.output[0], n.name)
    ctx.finish(st.op("Concat", *h_last, axis=0), False, bits_h, n.output[1], n.name)
    if mode == "LSTM" and len(n.output) > 2 and n.output[2]:
        ctx.finish(st.op("Concat", *c_last, axis=0), False, 16, n.output[2], n.name)


RULES = {
    "Quant": _quant, "Dequant": _dequant,
    "Conv1dInt": _conv, "Conv2dInt": _conv,
    "ConvTranspose1dInt": _conv_transpose, "ConvTranspose2dInt": _conv_transpose,
    "LinearInt": _linear, "BatchNormInt": _batchnorm, "AvgPoolInt": _avgpool,
    "GlobalAvgPoolInt": _global_avgpool,
    "iqAdd": _add_sub("Add"), "iqSub": _add_sub("Sub"),
    "iqMul": _product("Mul"), "iqDiv": _product("Mul"), "MatMulInt": _product("MatMul"),
    "iqCat": _cat, "iqSum": _sum_mean(False), "iqMean": _sum_mean(True),
    "SoftmaxInt": _softmax, "EmbeddingInt": _embedding, "GRUInt": _rnn, "LSTMInt": _rnn,
    "LutInt": _lut,
}
_WHY = {"LayerNormInt": "needs an exact integer square root",
        "LogSoftmaxInt": "needs an integer logarithm of sums up to 2**31"}
#: standard ops whose integer data inputs pass through unchanged (values are the same numbers)
_PASS = {"Relu", "Clip", "MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
         "Concat", "Split", "Slice", "Pad", "Expand", "Gather", "Identity", "Shape", "Constant",
         "Add", "Sub", "Mul", "Div", "Neg", "Abs"}
_DATA_INTS = (np.int8, np.int16, np.int32, np.uint8)


def _standard(ctx, n):
    """A default-domain node: integer-typed initializers it reads become float; the output has
    the bits of its first integer input."""
    node = onnx.NodeProto()
    node.CopyFrom(n)
    if n.op_type == "Constant":
        t = numpy_helper.to_array(n.attribute[0].t) if n.attribute[0].name == "value" else None
        if t is not None and t.dtype in _DATA_INTS:
            bits = t.dtype.itemsize * 8
            del node.attribute[:]
            node.attribute.append(helper.make_attribute(
                "value", numpy_helper.from_array(t.astype(_NP[bits > 24]))))
            ctx.bits[n.output[0]] = bits
        ctx.nodes.append(node)
        return
    bits = None
    for i, name in enumerate(n.input):
        if name in ctx.bits:
            bits = bits or ctx.bits[name]
        elif name in ctx.inits and ctx.inits[name].dtype in _DATA_INTS:
            v = ctx.inits[name]
            node.input[i] = ctx.const(f"{n.name}.const", v.astype(_NP[v.dtype.itemsize > 3]))
            bits = bits or v.dtype.itemsize * 8
    if bits is not None and n.op_type != "Shape":
        for o in (n.output if n.op_type == "Split" else n.output[:1]):
            ctx.bits[o] = bits
    ctx.nodes.append(node)


def to_exact(model: onnx.ModelProto) -> onnx.ModelProto:
    """The standard-ONNX twin of a linger graph (see the module docstring)."""
    g = model.graph
    ctx = _Ctx(model)
    ctx.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if ctx.opset < 13:
        raise ExportError(f"format='exact' needs opset_version >= 13, got {ctx.opset}")
    for v in g.input:
        et = v.type.tensor_type.elem_type
        if et in _ONNX_INT:
            ctx.bits[v.name] = _ONNX_INT[et]
    for n in g.node:
        if n.domain == DOMAIN:
            a = _attrs(n)
            if n.op_type in RULES:
                RULES[n.op_type](ctx, n, a)
            elif n.op_type in UNARY:
                _unary(ctx, n, a)
            else:
                _refuse(n, _WHY.get(n.op_type, "has no exact standard-ONNX form yet"))
        elif n.domain in ("", "ai.onnx") and n.op_type in _PASS:
            _standard(ctx, n)
        else:
            _refuse(n, "is not an op this exporter knows")
    for v in g.output:  # an integer graph output keeps its integer type
        if v.name in ctx.bits and v.type.tensor_type.elem_type in _ONNX_INT:
            inner = ctx.fresh(v.name + ".exact")
            for node in ctx.nodes:
                node.output[:] = [inner if o == v.name else o for o in node.output]
                node.input[:] = [inner if i == v.name else i for i in node.input]
            ctx.add("Cast", [inner], f"{v.name}.cast", out=v.name,
                    to=v.type.tensor_type.elem_type)
    used = {i for node in ctx.nodes for i in node.input}
    inits = [i for i in g.initializer if i.name in used] + \
        [i for i in ctx.new_inits if i.name in used]
    graph = helper.make_graph(ctx.nodes, g.name + "_exact", list(g.input), list(g.output), inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)],
                            producer_name="linger", producer_version=model.producer_version)
    out.ir_version = model.ir_version
    return out
