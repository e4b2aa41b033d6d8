"""Translate an ONNX model exported by the original linger 1.x (domain ``thinker``) into a linger
graph (domain ``ai.linger``, ONNX opset 13) that the runtime runs and the packer packs.

The original's nodes carry float ``scale_*`` attributes (``real = q / scale``, a power of two) and
``platform_quant="luna_quant"`` (round half up). Each node becomes:

- the linger op with the same integer semantics where they agree (Quant, Dequant, Requant,
  Conv1d/Conv2d/ConvTranspose2d, Linear, Bmm, BatchNorm, AvgPool, add, mul, cat, sum, clamp,
  embedding, the standard layout ops) with ``exp = log2(scale)``;
- an op running the original's own algorithm where linger's differs
  (:mod:`linger.runtime.kernels.luna`): ``SoftmaxLuna``, ``LayerNormLuna``, ``LSTMLuna``,
  ``GRULuna``, and ``LutInt`` for element-wise functions of one or two integers (sigmoid, tanh,
  add/div by a float constant, div of two tensors): their table is the original algorithm
  evaluated on every possible input, here, at import.

Anything else (another rounding mode, a scale that is not a power of two, an attribute whose
meaning is not documented, an op whose tables are not published) is refused with a
:class:`~linger.errors.ModelFileError` naming the node and the attribute. Node names are kept
(helper nodes get ``<name>.<role>``), so the packer's report names the original's nodes.
Reference: docs/migration.md, "Importing models exported by the original linger".
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import numerics
from ..errors import LingerError, ModelFileError
from ..runtime.kernels import luna

DOMAIN = "thinker"
LINGER = "ai.linger"
#: Default-domain opset of the translated graph (axes/split as inputs).
OPSET = 13
#: Attributes that select nothing in the integer semantics (the original's own bookkeeping).
_INERT = {"platform_quant", "castor_mode", "data_bits", "parameter_bits"}


def is_thinker_model(model: onnx.ModelProto) -> bool:
    """Whether ``model`` uses the original's ``thinker`` op domain."""
    return any(o.domain == DOMAIN for o in model.opset_import) or any(
        n.domain == DOMAIN for n in model.graph.node)


def import_thinker(model: onnx.ModelProto, where: str = "<ModelProto>") -> onnx.ModelProto:
    """The linger graph computing what the original computed on ``model`` (see module doc)."""
    return _Importer(model, where).run()


def _scalar_attr(a):
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if a.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(v)
    if isinstance(v, (list, tuple)) or type(v).__name__.startswith("Repeated"):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
    return v


class _Importer:
    def __init__(self, model, where):
        self.model, self.where = model, where
        g = model.graph
        self.arrays = {}                    # constant values: initializers and Constant outputs
        for t in g.initializer:
            try:
                self.arrays[t.name] = numpy_helper.to_array(t)
            except Exception as e:
                raise ModelFileError(f"{where}: initializer '{t.name}' cannot be read: {e}") from e
        self.bits = {name: _bits_of(a.dtype) for name, a in self.arrays.items()}
        for v in g.input:
            if v.name not in self.arrays:
                et = v.type.tensor_type.elem_type
                dt = np.dtype(helper.tensor_dtype_to_np_dtype(et)) if et else np.float32
                self.bits[v.name] = _bits_of(dt)
        self.uses = Counter(i for n in g.node for i in n.input if i)
        self.uses.update(o.name for o in g.output)
        self.taken = set(self.arrays) | {v.name for v in g.input} | {
            o for n in g.node for o in n.output} | {n.name for n in g.node}
        self.nodes, self.inits = [], []
        self.deferred = {}                  # Requant output -> (input, bits_in, exp_in, exp, bits)

    # -- driver -----------------------------------------------------------------------------------
    def run(self):
        g = self.model.graph
        for index, node in enumerate(g.node):
            self.node, self.name = node, node.name or f"#{index}"
            self.label = f"{self.where}: node '{self.name}' ({node.domain or 'ai.onnx'}::" \
                         f"{node.op_type})"
            if node.domain == DOMAIN:
                handler = getattr(self, f"_t_{node.op_type}", None)
                if handler is None:
                    raise ModelFileError(
                        f"{self.label}: the original's op {node.op_type} cannot be imported;"
                        f" supported: {', '.join(supported_ops())}")
            elif node.domain in ("", "ai.onnx"):
                handler = self._standard
            else:
                raise ModelFileError(f"{self.label}: domain '{node.domain}' is not part of a"
                                     f" model the original exported")
            try:
                handler()
            except LingerError:
                raise
            except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
                raise ModelFileError(f"{self.label}: malformed attributes or inputs"
                                     f" ({type(e).__name__}: {e})") from e
        used = {i for n in self.nodes for i in n.input} | {o.name for o in g.output}
        inits = [t for t in g.initializer if t.name in used] + self.inits
        dropped = {t.name for t in g.initializer} - used     # e.g. BatchNorm's running stats
        graph = helper.make_graph(self.nodes, g.name or "imported",
                                  [v for v in g.input if v.name not in dropped], list(g.output),
                                  inits)
        out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                      helper.make_opsetid(LINGER, 1)],
                                producer_name="linger (imported from the original linger)")
        out.ir_version = max(int(self.model.ir_version), 7)
        helper.set_model_props(out, {"linger.imported_from": self.model.producer_name
                                     or DOMAIN})
        return out

    # -- helpers ----------------------------------------------------------------------------------
    def refuse(self, what: str):
        raise ModelFileError(f"{self.label}: {what}")

    def attrs(self, allowed, required=()):
        """The node's attributes, refusing unknown ones, a rounding other than luna_quant and
        missing required ones."""
        out = {a.name: _scalar_attr(a) for a in self.node.attribute}
        unknown = sorted(set(out) - set(allowed) - _INERT)
        if unknown:
            self.refuse(f"attribute '{unknown[0]}' = {out[unknown[0]]!r} is not one the importer"
                        f" can reproduce (known: {sorted(set(allowed) | _INERT)})")
        pq = out.get("platform_quant", "luna_quant")
        if pq != "luna_quant":
            self.refuse(f"attribute 'platform_quant' = {pq!r}: only 'luna_quant' (round half up)"
                        f" is defined in the original")
        missing = [r for r in required if r not in out]
        if missing:
            self.refuse(f"lacks the attribute '{missing[0]}'")
        return out

    def exp(self, a, key):
        """``log2`` of the power-of-two scale attribute ``key``."""
        v = a.get(key)
        if v is None:
            self.refuse(f"lacks the attribute '{key}'")
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            self.refuse(f"attribute '{key}' = {v!r} is not a positive scale")
        m, e = math.frexp(float(v))
        if m != 0.5:
            self.refuse(f"attribute '{key}' = {v!r} is not a power of two; the original only"
                        f" exports power-of-two scales (luna_quant)")
        return e - 1

    def int_bits(self, name, what="input"):
        b = self.bits.get(name)
        if b is None:
            self.refuse(f"{what} '{name}' is not an integer tensor (the original's op needs its"
                        f" quantized input)")
        return b

    def fresh(self, base):
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def emit(self, op, inputs, outputs, role=None, domain=LINGER, **attrs):
        name = self.name if role is None else self.fresh(f"{self.name}.{role}")
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name,
                                           domain=domain, **attrs))

    def const(self, role, array):
        name = self.fresh(f"{self.name}.{role}")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        self.arrays[name] = np.asarray(array)
        self.bits[name] = _bits_of(np.asarray(array).dtype)
        return name

    def inputs(self, lo, hi=None):
        ins = list(self.node.input)
        hi = lo if hi is None else hi
        if not lo <= len(ins) <= hi:
            self.refuse(f"has {len(ins)} inputs, expected {lo}" + (f" to {hi}" if hi != lo
                                                                     else ""))
        return ins

    def out_stage(self, a, op, inputs, exp_x, exp_w, bits, **layer):
        """A conv/linear-like layer: integer output at ``scale_o`` with ``o_bits``, or (no
        ``o_bits``) the float accumulator ``acc / (scale_x * scale_w)``."""
        out = self.node.output[0]
        if "o_bits" in a:
            exp_o, bits_o = self.exp(a, "scale_o"), int(a["o_bits"])
            self.emit(op, inputs, [out], exp_x=exp_x, exp_w=exp_w, exp_o=exp_o, bits_o=bits_o,
                      **bits, **layer)
            self.bits[out] = bits_o
        else:
            acc = self.fresh(f"{out}.acc")
            self.emit(op, inputs, [acc], exp_x=exp_x, exp_w=exp_w, exp_o=exp_x + exp_w,
                      bits_o=32, **bits, **layer)
            self.emit("Dequant", [acc], [out], "dequant", exp=exp_x + exp_w, bits=32)
            self.bits[out] = None

    def float_const(self, name):
        """The value of a float constant operand (initializer or Constant node), else None."""
        arr = self.arrays.get(name)
        if arr is not None and np.issubdtype(arr.dtype, np.floating):
            return arr
        return None

    def lut(self, x, fn, bits_o=8, y=None):
        """Emit ``LutInt``: ``fn`` evaluated on every integer ``x`` (and ``y``) can hold."""
        out = self.node.output[0]
        if x in self.deferred and y is None:   # fold the Requant feeding only this node
            x, bx, e_in, e_mid, b_mid = self.deferred.pop(x)
            inner = fn

            def fn(q):
                return inner(numerics.requantize(q, e_in - e_mid, b_mid))
        else:
            bx = self.int_bits(x)
            if x in self.deferred:
                self.flush(x)
        qx = np.arange(-(1 << (bx - 1)), 1 << (bx - 1), dtype=np.int64)
        if y is None:
            if bx > 16:
                self.refuse(f"input '{x}' has {bx} bits; element-wise tables go up to 16 bits")
            table = fn(qx)
            ins = [x]
            extra = {}
        else:
            by = self.int_bits(y)
            if bx + by > 16:
                self.refuse(f"inputs have {bx} + {by} bits; two-input tables go up to 16 bits"
                            f" in all")
            qy = np.arange(-(1 << (by - 1)), 1 << (by - 1), dtype=np.int64)
            table = fn(qx[:, None], qy[None, :]).reshape(-1)
            ins = [x, y]
            extra = {"bits_y": by}
        table = np.asarray(table).astype(numerics.int_dtype(bits_o))
        self.emit("LutInt", ins + [self.const("table", table)], [out], bits_x=bx,
                  bits_o=bits_o, **extra)
        self.bits[out] = bits_o

    def flush(self, name):
        """Emit a deferred Requant (its output turned out to be needed as a tensor)."""
        x_in, b_in, e_in, e_mid, b_mid = self.deferred.pop(name)
        self.nodes.append(helper.make_node("Requant", [x_in], [name], name=self.fresh(
            f"{name}.requant"), domain=LINGER, exp_in=e_in, bits_in=b_in, exp=e_mid, bits=b_mid))

    # -- boundary ops -------------------------------------------------------------------------
    def _t_Quant(self):
        a = self.attrs({"scale_x"}, ["data_bits"])
        (x,) = self.inputs(1)
        if self.bits.get(x) is not None:
            self.refuse(f"input '{x}' is already an integer tensor")
        bits = int(a["data_bits"])
        self.emit("Quant", [x], self.node.output, exp=self.exp(a, "scale_x"), bits=bits)
        self.bits[self.node.output[0]] = bits

    def _t_Dequant(self):
        a = self.attrs({"scale_o", "scale_x"})
        (x,) = self.inputs(1)
        key = "scale_o" if "scale_o" in a else "scale_x"
        self.emit("Dequant", [x], self.node.output, exp=self.exp(a, key),
                  bits=self.int_bits(x))
        self.bits[self.node.output[0]] = None

    def _t_Requant(self):
        a = self.attrs({"scale_x", "scale_o", "o_bits"}, ["o_bits"])
        (x,) = self.inputs(1)
        args = (x, self.int_bits(x), self.exp(a, "scale_x"), self.exp(a, "scale_o"),
                int(a["o_bits"]))
        out = self.node.output[0]
        self.bits[out] = args[4]
        self.deferred[out] = args   # emitted when read as a tensor, folded into a table else
        readers = [n for n in self.model.graph.node if out in n.input]
        if self.uses[out] != 1 or not readers or readers[0].op_type not in ("iqSigmoid",
                                                                             "iqTanh"):
            self.flush(out)

    # -- layers -------------------------------------------------------------------------------
    def _conv(self, op, nd, transpose=False):
        allowed = {"scale_x", "scale_w", "scale_o", "o_bits", "dilations", "group",
                   "kernel_shape", "pads", "strides"} | ({"output_padding"} if transpose else set())
        a = self.attrs(allowed, ["scale_x", "scale_w"])
        ins = self.inputs(2, 3)
        layer = {k: a[k] for k in ("kernel_shape", "strides", "pads", "dilations") if k in a}
        for k, v in layer.items():
            if len(v) != (2 * nd if k == "pads" else nd):
                self.refuse(f"attribute '{k}' = {v} does not fit a {nd}-d convolution")
        layer["group"] = int(a.get("group", 1))
        if transpose and "output_padding" in a:
            layer["output_padding"] = a["output_padding"]
        bits = {"bits_x": self.int_bits(ins[0]), "bits_w": self.int_bits(ins[1], "weight")}
        self.out_stage(a, op, ins, self.exp(a, "scale_x"), self.exp(a, "scale_w"), bits, **layer)

    def _t_Conv1dInt(self):
        self._conv("Conv1dInt", 1)

    def _t_Conv2dInt(self):
        self._conv("Conv2dInt", 2)

    def _t_ConvTranspose2dInt(self):
        self._conv("ConvTranspose2dInt", 2, transpose=True)

    def _t_LinearInt(self):
        a = self.attrs({"scale_x", "scale_w", "scale_o", "o_bits"})
        ins = self.inputs(2, 3)
        bits = {"bits_x": self.int_bits(ins[0]), "bits_w": self.int_bits(ins[1], "weight")}
        self.out_stage(a, "LinearInt", ins, self.exp(a, "scale_x"), self.exp(a, "scale_w"),
                       bits)

    def _t_BmmInt(self):
        a = self.attrs({"scale_x", "scale_y", "scale_o", "o_bits"}, ["o_bits"])
        x, y = self.inputs(2)
        out = self.node.output[0]
        self.emit("MatMulInt", [x, y], [out], exp_x=self.exp(a, "scale_x"),
                  bits_x=self.int_bits(x), exp_y=self.exp(a, "scale_y"), bits_y=self.int_bits(y),
                  exp_o=self.exp(a, "scale_o"), bits_o=int(a["o_bits"]))
        self.bits[out] = int(a["o_bits"])

    def _t_BatchNorm2dInt(self):
        a = self.attrs({"scale_x", "scale_w", "scale_o", "o_bits"}, ["o_bits"])
        ins = self.inputs(3, 5)    # running mean/var ride along unused
        bits = {"bits_x": self.int_bits(ins[0]), "bits_w": self.int_bits(ins[1], "weight")}
        self.out_stage(a, "BatchNormInt", ins[:3], self.exp(a, "scale_x"),
                       self.exp(a, "scale_w"), bits)

    def _t_AvgPool2dInt(self):
        a = self.attrs({"kernel_shape", "strides", "pads", "ceil_mode", "scale_x", "scale_o",
                        "o_bits"}, ["kernel_shape", "o_bits"])
        (x,) = self.inputs(1)
        if int(a.get("ceil_mode", 0)):
            self.refuse("attribute 'ceil_mode' = 1: the original's window sum for a window past"
                        " the input end is not documented")
        exp = self.exp(a, "scale_x")
        if "scale_o" in a and self.exp(a, "scale_o") != exp:
            self.refuse(f"attribute 'scale_o' = {a['scale_o']} differs from 'scale_x' ="
                        f" {a['scale_x']}; the original's AvgPool2dInt keeps the input scale")
        bits = self.int_bits(x)
        if int(a["o_bits"]) != bits:
            self.refuse(f"attribute 'o_bits' = {a['o_bits']} differs from the input's {bits}"
                        f" bits; the original keeps them")
        layer = {k: a[k] for k in ("strides", "pads") if k in a}
        out = self.node.output[0]
        self.emit("AvgPoolInt", [x], [out], kernel_shape=a["kernel_shape"], exp=exp, bits=bits,
                  count_include_pad=1, **layer)
        self.bits[out] = bits

    def _t_Gather(self):
        a = self.attrs({"scale_w", "scale_o", "o_bits"})
        w, idx = self.inputs(2)
        exp_w = self.exp(a, "scale_w")
        if "scale_o" in a and self.exp(a, "scale_o") != exp_w:
            self.refuse("attribute 'scale_o' differs from 'scale_w'; the original's embedding"
                        " returns the table's integers at the table's scale")
        out = self.node.output[0]
        self.emit("EmbeddingInt", [idx, w], [out], exp_w=exp_w,
                  bits_w=self.int_bits(w, "weight"))
        self.bits[out] = self.bits[w]

    # -- element-wise ---------------------------------------------------------------------------
    def _binary(self, op):
        a = self.attrs({"scale_x", "scale_y", "scale_o", "mode"})
        if op == "iqAdd" and a.get("mode", "Non_t710_mode") != "Non_t710_mode":
            self.refuse(f"attribute 'mode' = {a['mode']!r}: only 'Non_t710_mode' is documented")
        x, y = self.inputs(2)
        return a, x, y

    def _t_iqAdd(self):
        a, x, y = self._binary("iqAdd")
        ex, eo = self.exp(a, "scale_x"), self.exp(a, "scale_o")
        c = self.float_const(y)
        if c is not None:   # x + float constant, computed in float by the original
            c = self.one_value(c, y)
            self.lut(x, self.float_fn(lambda v, k: (v + k), ex, c, eo, "add"))
            return
        out = self.node.output[0]
        self.emit("iqAdd", [x, y], [out], exp_x=ex, bits_x=self.int_bits(x),
                  exp_y=self.exp(a, "scale_y"), bits_y=self.int_bits(y), exp_o=eo, bits_o=8)
        self.bits[out] = 8

    def _t_iqMul(self):
        a, x, y = self._binary("iqMul")
        if self.float_const(y) is not None:
            self.refuse(f"input '{y}' is a float constant; the original's iqMul multiplies by"
                        f" an int8 constant")
        out = self.node.output[0]
        self.emit("iqMul", [x, y], [out], exp_x=self.exp(a, "scale_x"), bits_x=self.int_bits(x),
                  exp_y=self.exp(a, "scale_y"), bits_y=self.int_bits(y),
                  exp_o=self.exp(a, "scale_o"), bits_o=8)
        self.bits[out] = 8

    def _t_iqDiv(self):
        a, x, y = self._binary("iqDiv")
        ex, eo = self.exp(a, "scale_x"), self.exp(a, "scale_o")
        c = self.float_const(y)
        if c is not None:
            c = self.one_value(c, y)
            if c == 0:
                self.refuse(f"input '{y}' divides by the constant 0")
            self.lut(x, self.float_fn(lambda v, k: v / k, ex, c, eo, "div"))
            return
        ey = self.exp(a, "scale_y")
        if abs(ey + eo - ex) > 40:
            self.refuse(f"scales put x / y {abs(ey + eo - ex)} bits away from the output grid"
                        f" (scale_x, scale_y, scale_o = {a['scale_x']}, {a['scale_y']},"
                        f" {a['scale_o']})")
        self.lut(x, lambda qx, qy: _div_table(qx, qy, ex, ey, eo), y=y)

    def one_value(self, c, name):
        if c.size != 1:
            self.refuse(f"input '{name}' is a float tensor of shape {list(c.shape)}; the"
                        f" original only adds/divides by a float scalar")
        return float(c.reshape(-1)[0])

    def float_fn(self, op, ex, c, eo, what):
        """``sat8(floor(op(q / 2**ex, c) * 2**eo + 0.5))`` as the original computed it in float;
        refused where float32 and float64 evaluation could disagree."""
        def fn(q):
            r32 = _float_eval(op, q, ex, c, eo, np.float32)
            r64 = _float_eval(op, q, ex, c, eo, np.float64)
            if not np.array_equal(r32, r64):
                bad = int(q[np.argmax(r32 != r64)])
                self.refuse(f"{what} by the float constant {c!r}: the original computed"
                            f" (x {'+' if what == 'add' else '/'} c) in float, and float32 and"
                            f" float64 give different integers (at input {bad}); its result"
                            f" cannot be reproduced")
            return r64
        return fn

    def _t_iqSum(self):
        a = self.attrs({"scale_x", "scale_o", "dims"})
        (x,) = self.inputs(1)
        out = self.node.output[0]
        attrs = dict(exp_x=self.exp(a, "scale_x"), bits_x=self.int_bits(x),
                     exp_o=self.exp(a, "scale_o"), bits_o=8, keepdims=0)
        if "dims" in a:
            self.emit("iqSum", [x], [out], axes=list(a["dims"]), **attrs)
        else:   # x.sum(): every element
            flat = self.fresh(f"{x}.flat")
            self.emit("Reshape", [x, self.const("shape", np.array([-1], np.int64))], [flat],
                      "flatten", domain="")
            self.emit("iqSum", [flat], [out], axes=[0], **attrs)
        self.bits[out] = 8

    def _t_iqCat(self):
        ins = list(self.node.input)
        keys = {f"scale_x_{i}" for i in range(len(ins))}
        a = self.attrs(keys | {"scale_o", "dim"}, ["dim"])
        out = self.node.output[0]
        self.emit("iqCat", ins, [out], axis=int(a["dim"]),
                  exp_inputs=[self.exp(a, f"scale_x_{i}") for i in range(len(ins))],
                  bits_inputs=[self.int_bits(i) for i in ins], exp_o=self.exp(a, "scale_o"),
                  bits_o=8)
        self.bits[out] = 8

    def _t_iqClamp(self):
        a = self.attrs({"scale_x", "scale_o", "min", "max"}, ["min", "max"])
        (x,) = self.inputs(1)
        ex, eo = self.exp(a, "scale_x"), self.exp(a, "scale_o")
        # floor(clamp(v, lo, hi) * s + 0.5) = clamp(rhu(v * s), rhu(lo * s), rhu(hi * s))
        lo = max(-128, math.floor(float(a["min"]) * 2.0 ** eo + 0.5))
        hi = min(127, math.floor(float(a["max"]) * 2.0 ** eo + 0.5))
        out = self.node.output[0]
        mid = self.fresh(f"{out}.requant")
        self.emit("Requant", [x], [mid], "requant", exp_in=ex, bits_in=self.int_bits(x), exp=eo,
                  bits=8)
        self.emit("Clip", [mid, self.const("min", np.array(lo, np.int8)),
                           self.const("max", np.array(hi, np.int8))], [out], domain="")
        self.bits[out] = 8

    def _unary_table(self, fn_q7, lo):
        a = self.attrs({"scale_x", "scale_o"})
        (x,) = self.inputs(1)
        if self.exp(a, "scale_o") != 7:
            self.refuse(f"attribute 'scale_o' = {a.get('scale_o')}: the original's"
                        f" {self.node.op_type} always outputs Q7 (scale_o = 128)")
        ex = self.exp(a, "scale_x")
        self.lut(x, lambda q: np.maximum(fn_q7(luna.to_q11(q, ex)), lo))

    def _t_iqSigmoid(self):
        self._unary_table(luna.sigmoid_q7, 0)

    def _t_iqTanh(self):
        self._unary_table(luna.tanh_q7, -128)

    # -- rows -----------------------------------------------------------------------------------
    def _t_SoftmaxInt(self):
        a = self.attrs({"scale_x", "scale_o", "o_bits", "dim"}, ["dim"])
        (x,) = self.inputs(1)
        out = self.node.output[0]
        attrs = dict(axis=int(a["dim"]), exp_x=self.exp(a, "scale_x"), bits_x=self.int_bits(x))
        if "o_bits" in a:
            self.emit("SoftmaxLuna", [x], [out], exp_o=self.exp(a, "scale_o"),
                      bits_o=int(a["o_bits"]), **attrs)
            self.bits[out] = int(a["o_bits"])
        else:   # the Q15 probabilities as floats
            q15 = self.fresh(f"{out}.q15")
            self.emit("SoftmaxLuna", [x], [q15], exp_o=15, bits_o=16, **attrs)
            self.emit("Dequant", [q15], [out], "dequant", exp=15, bits=16)
            self.bits[out] = None

    def _t_LogSoftmaxInt(self):
        self.refuse("the original's LogSoftmaxInt takes its natural logarithm from a table"
                    " (luna_logn_int's log2_table) that is not published, so its integers"
                    " cannot be reproduced; replace log_softmax by softmax in the model, or"
                    " re-train and export it with this linger")

    def _t_LayerNormInt(self):
        a = self.attrs({"scale_x", "scale_w", "scale_o", "o_bits"}, ["o_bits"])
        x, w, b = self.inputs(3)
        if int(a["o_bits"]) != 8:
            self.refuse(f"attribute 'o_bits' = {a['o_bits']}: the original's LayerNormInt"
                        f" always saturates to int8")
        if self.bits.get(w) != 16:
            self.refuse(f"weight '{w}' must be int16 (the original forces parameter_bits=16)")
        out = self.node.output[0]
        self.emit("LayerNormLuna", [x, w, b], [out], exp_x=self.exp(a, "scale_x"),
                  bits_x=self.int_bits(x), exp_w=self.exp(a, "scale_w"),
                  exp_o=self.exp(a, "scale_o"), bits_o=8)
        self.bits[out] = 8

    # -- recurrent --------------------------------------------------------------------------------
    def _rnn(self, op, middle_names):
        a = self.attrs({"input_size", "hidden_size", "num_layers", "batch_first", "dropout",
                        "go_forward", "scale_i", "scale_h", "scale_iw", "scale_hw", "scale_o",
                        "o_bits"}, ["hidden_size"])
        if int(a.get("num_layers", 1)) != 1:
            self.refuse(f"attribute 'num_layers' = {a['num_layers']}: the original exports one"
                        f" node per layer and direction")
        ins = list(self.node.input)
        k = len(ins)
        while k > 1 and ins[k - 1] in self.arrays and self.bits.get(ins[k - 1]) is not None:
            k -= 1
        weights, middle = ins[k:], ins[1:k]
        if len(weights) not in (2, 4):
            self.refuse(f"expects W_ih, W_hh and optional B_ih, B_hh initializers last; found"
                        f" {len(weights)} integer initializers")
        roles = middle_names.get(len(middle))
        if roles is None:
            self.refuse(f"has {len(middle)} inputs between X and the weights; the original's"
                        f" {self.node.op_type} has {sorted(middle_names)}")
        given = dict(zip(roles, middle))
        exp_h = self.exp(a, "scale_h")
        if "o_bits" in a and self.exp(a, "scale_o") != exp_h:
            self.refuse(f"attribute 'scale_o' = {a['scale_o']} differs from 'scale_h' ="
                        f" {a['scale_h']}: the original's engine feeds the output back as the"
                        f" hidden state, its simulation requantizes it; they disagree here")
        state = []
        fourth = given.get("c0") if op == "LSTMLuna" else given.get("h0")   # Q7 cell / hidden
        for role, src, exp, bits in (("h0", given.get("h0"), exp_h, 8), ("s0", fourth, 7, 16)):
            if not src:
                state.append("")
                continue
            if self.bits.get(src) is not None:
                self.refuse(f"state input '{src}' must be a float tensor, as the original exports"
                            f" it")
            q = self.fresh(f"{src}.q{exp}")
            self.emit("Quant", [src], [q], f"{role}_quant", exp=exp, bits=bits)
            state.append(q)
        x = ins[0]
        outs = list(self.node.output)
        self.emit(op, [x, given.get("lengths", "")] + state + weights, outs,
                  hidden_size=int(a["hidden_size"]), batch_first=int(a.get("batch_first", 0)),
                  go_forward=int(a.get("go_forward", 1)), exp_x=self.exp(a, "scale_i"),
                  bits_x=self.int_bits(x), exp_iw=self.exp(a, "scale_iw"),
                  exp_hw=self.exp(a, "scale_hw"), exp_h=exp_h,
                  exp_o=self.exp(a, "scale_o") if "o_bits" in a else 0,
                  bits_o=int(a.get("o_bits", 0)))
        for i, o in enumerate(outs):
            self.bits[o] = int(a["o_bits"]) if i == 0 and "o_bits" in a else None

    def _t_LSTMInt(self):
        self._rnn("LSTMLuna", {0: (), 1: ("lengths",), 2: ("h0", "c0"),
                                  3: ("lengths", "h0", "c0")})

    def _t_GRUInt(self):
        self._rnn("GRULuna", {0: ()})

    def _t_GRUInt_Is8_Is64(self):
        self._rnn("GRULuna", {1: ("lengths",)})

    def _t_GRUInt_Is8_Is64_If32(self):
        self._rnn("GRULuna", {2: ("lengths", "h0")})

    # -- standard ops -----------------------------------------------------------------------------
    def _standard(self):
        node = self.node
        ins, op = list(node.input), node.op_type
        a = {x.name: _scalar_attr(x) for x in node.attribute}
        if op in ("Squeeze", "Unsqueeze") and "axes" in a:
            axes = a.pop("axes")
            ins = ins[:1] + [self.const("axes", np.array(axes, np.int64))]
        elif op == "Split" and "split" in a:
            ins = ins[:1] + [self.const("split", np.array(a.pop("split"), np.int64))]
        for k in ins:
            if k in self.deferred:
                self.flush(k)
        self.nodes.append(helper.make_node(op, ins, list(node.output), name=self.name,
                                           domain="", **{k: _proto_value(node, k)
                                                         for k in a}))
        if op == "Constant":
            arr = a.get("value")
            if arr is not None:
                self.arrays[node.output[0]] = arr
            self.bits[node.output[0]] = _bits_of(np.asarray(arr).dtype) if arr is not None \
                else None
            return
        src = self.bits.get(ins[0]) if ins else None
        for o in node.output:
            self.bits[o] = None if op == "Shape" else src


def _proto_value(node, key):
    for a in node.attribute:
        if a.name == key:
            return helper.get_attribute_value(a)
    raise KeyError(key)


def _bits_of(dtype) -> int | None:
    dtype = np.dtype(dtype)
    if dtype in (np.int8, np.int16, np.int32):
        return dtype.itemsize * 8
    return None


def _float_eval(op, q, ex, c, eo, ft):
    """``clip(floor(op(q * 2**-ex, c) * 2**eo + 0.5), -128, 127)`` with every step rounded to
    ``ft`` (float32 or float64), as a tensor library would compute it."""
    v = op(q.astype(ft) * ft(2.0 ** -ex), ft(c)).astype(ft)
    v = (v * ft(2.0 ** eo)).astype(ft) + ft(0.5)
    return np.clip(np.floor(v.astype(ft)), -128, 127).astype(np.int64)


def _div_table(qx, qy, ex, ey, eo):
    """``sat8(floor((qx / 2**ex) / (qy / 2**ey) * 2**eo + 0.5))`` exactly: with ``k = ey + eo -
    ex`` and the sign moved to the numerator, ``floor((2 qx 2^k + qy) / (2 qy))`` (``k < 0``:
    ``floor((2 qx + qy 2^-k) / (2 qy 2^-k))``) in int64.

    Division by 0 gives 127 (x > 0), -128 (x < 0) or 0 (0 / 0): the original's float division
    gave +-inf (saturated to the same values) or NaN there.
    """
    qx, qy = np.broadcast_arrays(np.asarray(qx, np.int64), np.asarray(qy, np.int64))
    k = int(ey) + int(eo) - int(ex)
    num = np.where(qy < 0, -qx, qx)
    den = np.abs(qy)
    if k >= 0:
        num = num << k
    else:
        den = den << -k
    safe = np.where(den == 0, 1, den)
    q = (2 * num + safe) // (2 * safe)
    zero = np.where(qx > 0, 127, np.where(qx < 0, -128, 0))
    return np.where(qy == 0, zero, np.clip(q, -128, 127))


def supported_ops() -> list[str]:
    """The original's ``thinker::`` ops the importer translates."""
    return sorted(k[3:] for k in dir(_Importer) if k.startswith("_t_"))

