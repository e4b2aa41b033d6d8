"""Convert a linger graph into standard QDQ ONNX (QuantizeLinear / DequantizeLinear + float ops).

Every ``ai.linger`` node becomes "dequantize the integer inputs, run the float op, quantize the
result": the same scales and the same graph, executable by onnxruntime and any standard tool.

How close it is to linger's integer semantics: the float op sums in float32 instead of exact
integers, and QuantizeLinear rounds half to *even* where linger rounds half *up*; so a value that
lands exactly on .5 (or within float32 error of it) can differ by one integer step. The largest
difference of the final outputs is therefore one step of each output's scale per requantization
on the path; ``tests/test_onnx_qdq.py`` measures it on a residual CNN (numbers in docs/export.md).

Extend: add ``RULES[op_type] = fn(ctx, node)`` for a new ``ai.linger`` op. This module uses numpy
and onnx only.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import numerics
from ..errors import ExportError
from .._names import unique_name

DOMAIN = "ai.linger"
QDQ_OPSET = 21  # int16/int32 QuantizeLinear need opset 21

_INT_TYPES = {8: TensorProto.INT8, 16: TensorProto.INT16, 32: TensorProto.INT32}


class _Ctx:
    def __init__(self, model: onnx.ModelProto):
        self.inits = {i.name: i for i in model.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
                      list(model.graph.input) + list(model.graph.value_info)}

    def fresh(self, base):
        return unique_name(self._names, base)

    def const(self, base, arr):
        name = self.fresh(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def scale(self, base, exp):
        return self.const(f"{base}.scale", np.float32(2.0 ** -int(exp)))


    def add(self, op, inputs, outputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=self.fresh(name), **attrs))
        return outputs[0]

    def zero(self, base, bits):
        """Zero point 0 of the integer type: symmetric quantization. Explicit, because
        onnxruntime's fused QLinear* kernels take the integer type from it."""
        return self.const(f"{base}.zp", np.zeros((), numerics.int_dtype(_storage_bits(bits))))

    def dq(self, value, exp, bits, name):
        out = self.fresh(f"{name}.dq")
        return self.add("DequantizeLinear", [value, self.scale(name, exp), self.zero(name, bits)],
                        [out], name=out)

    def q(self, value, exp, bits, out, name):
        return self.add("QuantizeLinear", [value, self.scale(name, exp), self.zero(name, bits)],
                        [out], name=f"{name}.q")


def _storage_bits(bits):
    return 8 if bits <= 8 else 16 if bits <= 16 else 32


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _quant(ctx, n, a):
    ctx.q(n.input[0], a["exp"], a["bits"], n.output[0], n.name)


def _dequant(ctx, n, a):
    out = ctx.add("DequantizeLinear", [n.input[0], ctx.scale(n.name, a["exp"]),
                                       ctx.zero(n.name, a["bits"])],
                  [ctx.fresh(n.name + ".dq32") if a["bits"] > 24 else n.output[0]], name=n.name)
    if a["bits"] > 24:
        ctx.add("Cast", [out], [n.output[0]], name=n.name + ".cast", to=TensorProto.DOUBLE)


def _requant(ctx, n, a):
    f = ctx.dq(n.input[0], a["exp_in"], a["bits_in"], n.name)
    ctx.q(f, a["exp"], a["bits"], n.output[0], n.name)


def _weighted(float_op):
    def rule(ctx, n, a):
        x = ctx.dq(n.input[0], a["exp_x"], a["bits_x"], n.name)
        w = ctx.dq(n.input[1], a["exp_w"], a["bits_w"], n.name + ".weight")
        b = ctx.dq(n.input[2], a["exp_x"] + a["exp_w"], 32, n.name + ".bias") \
            if len(n.input) > 2 and n.input[2] else None
        y = float_op(ctx, n, a, x, w, b)
        ctx.q(y, a["exp_o"], a["bits_o"], n.output[0], n.name)
    return rule


_CONV_KEYS = ("kernel_shape", "strides", "pads", "dilations", "group")


def _conv(ctx, n, a, x, w, b):
    attrs = {k: a[k] for k in _CONV_KEYS}
    return ctx.add("Conv", [x, w] + ([b] if b else []), [ctx.fresh(n.name + ".f")],
                   name=n.name + ".conv", **attrs)


def _conv_transpose(ctx, n, a, x, w, b):
    attrs = {k: a[k] for k in _CONV_KEYS}
    attrs["output_padding"] = a["output_padding"]
    return ctx.add("ConvTranspose", [x, w] + ([b] if b else []), [ctx.fresh(n.name + ".f")],
                   name=n.name + ".convt", **attrs)


def _linear(ctx, n, a, x, w, b):
    del w  # MatMul wants (in, out): store the integer weight transposed instead
    wq = numpy_helper.to_array(ctx.inits[n.input[1]]).T.copy()
    wt = ctx.dq(ctx.const(n.name + ".weightT", wq), a["exp_w"], a["bits_w"], n.name + ".wT")
    rank = ctx.ranks.get(n.input[0], 2)
    x2 = x
    if rank > 2:  # (..., in) -> (M, in): onnxruntime's MatMul+Add fusion mishandles N-D QDQ
        flat = ctx.const(n.name + ".flat", np.array([-1, wq.shape[0]], np.int64))
        x2 = ctx.add("Reshape", [x, flat], [ctx.fresh(n.name + ".x2")], name=n.name + ".flat")
    y = ctx.add("MatMul", [x2, wt], [ctx.fresh(n.name + ".mm")], name=n.name + ".matmul")
    if b:
        y = ctx.add("Add", [y, b], [ctx.fresh(n.name + ".f")], name=n.name + ".add")
    if rank > 2:  # back to (..., out)
        shape = ctx.add("Shape", [x], [ctx.fresh(n.name + ".shape")], name=n.name + ".shape",
                        end=-1)
        out = ctx.const(n.name + ".outdim", np.array([wq.shape[1]], np.int64))
        full = ctx.add("Concat", [shape, out], [ctx.fresh(n.name + ".oshape")],
                       name=n.name + ".oshape", axis=0)
        y = ctx.add("Reshape", [y, full], [ctx.fresh(n.name + ".y")], name=n.name + ".unflat")
    return y


def _batchnorm(ctx, n, a, x, w, b):
    rank = ctx.ranks.get(n.input[0], 4)
    # (C, 1, ..., 1): broadcast the per-channel factors over (N, C, *spatial)
    shape = ctx.const(n.name + ".cshape", np.array([-1] + [1] * (rank - 2), np.int64))
    ws = ctx.add("Reshape", [w, shape], [ctx.fresh(n.name + ".w2")], name=n.name + ".wr")
    bs = ctx.add("Reshape", [b, shape], [ctx.fresh(n.name + ".b2")], name=n.name + ".br")
    y = ctx.add("Mul", [x, ws], [ctx.fresh(n.name + ".mul")], name=n.name + ".mul")
    return ctx.add("Add", [y, bs], [ctx.fresh(n.name + ".f")], name=n.name + ".add")


def _avgpool(ctx, n, a):
    x = ctx.dq(n.input[0], a["exp"], a["bits"], n.name)
    y = ctx.add("AveragePool", [x], [ctx.fresh(n.name + ".f")], name=n.name + ".pool",
                kernel_shape=a["kernel_shape"], strides=a["strides"], pads=a["pads"],
                count_include_pad=a["count_include_pad"])
    ctx.q(y, a["exp"], a["bits"], n.output[0], n.name)


def _global_avgpool(ctx, n, a):
    x = ctx.dq(n.input[0], a["exp"], a["bits"], n.name)
    y = ctx.add("GlobalAveragePool", [x], [ctx.fresh(n.name + ".f")], name=n.name + ".pool")
    ctx.q(y, a["exp"], a["bits"], n.output[0], n.name)


def _embedding(ctx, n, a):
    ctx.add("Gather", [n.input[1], n.input[0]], [n.output[0]], name=n.name, axis=0)


def _binary(op):
    def rule(ctx, n, a):
        x = ctx.dq(n.input[0], a["exp_x"], a["bits_x"], n.name + ".x")
        y = ctx.dq(n.input[1], a["exp_y"], a["bits_y"], n.name + ".y")
        f = ctx.add(op, [x, y], [ctx.fresh(n.name + ".f")], name=f"{n.name}.{op.lower()}")
        ctx.q(f, a["exp_o"], a["bits_o"], n.output[0], n.name)
    return rule


def _unary(build):
    """``build(ctx, n, a, x) -> float value``: dq the input, build the float op, q the result."""
    def rule(ctx, n, a):
        x = ctx.dq(n.input[0], a["exp_x"], a["bits_x"], n.name + ".x")
        ctx.q(build(ctx, n, a, x), a["exp_o"], a["bits_o"], n.output[0], n.name)
    return rule


def _op(op, **attrs):
    return lambda ctx, n, a, x: ctx.add(op, [x], [ctx.fresh(n.name + ".f")],
                                        name=f"{n.name}.{op.lower()}",
                                        **{k: (a[v] if isinstance(v, str) else v)
                                           for k, v in attrs.items()})


def _silu(ctx, n, a, x):
    s = _op("Sigmoid")(ctx, n, a, x)
    return ctx.add("Mul", [x, s], [ctx.fresh(n.name + ".f")], name=n.name + ".mul")


def _reduce(op):
    def build(ctx, n, a, x):
        axes = ctx.const(n.name + ".axes", np.array(a["axes"], np.int64))
        return ctx.add(op, [x, axes], [ctx.fresh(n.name + ".f")], name=f"{n.name}.reduce",
                       keepdims=a["keepdims"])
    return build


def _cat(ctx, n, a):
    parts = []
    for i, (v, e, b) in enumerate(zip(n.input, a["exp_inputs"], a["bits_inputs"])):
        f = ctx.dq(v, e, b, f"{n.name}.in{i}")
        if a.get("new_axis"):
            axes = ctx.const(f"{n.name}.axes{i}", np.array([a["axis"]], np.int64))
            f = ctx.add("Unsqueeze", [f, axes], [ctx.fresh(f"{n.name}.u{i}")],
                        name=f"{n.name}.unsqueeze{i}")
        parts.append(f)
    y = ctx.add("Concat", parts, [ctx.fresh(n.name + ".f")], name=n.name + ".concat",
                axis=a["axis"])
    ctx.q(y, a["exp_o"], a["bits_o"], n.output[0], n.name)


def _layernorm(ctx, n, a):
    x = ctx.dq(n.input[0], a["exp_x"], a["bits_x"], n.name + ".x")
    ins = [x]
    ins.append(ctx.dq(n.input[1], a["exp_w"], a["bits_w"], n.name + ".w")
               if len(n.input) > 1 and n.input[1] else None)
    ins.append(ctx.dq(n.input[2], a["exp_w"] + 10, 32, n.name + ".b")
               if len(n.input) > 2 and n.input[2] else None)
    rank = ctx.ranks.get(n.input[0], 2)
    axis = a["axis"] if a["axis"] >= 0 else rank + a["axis"]
    if ins[1] is None:  # LayerNormalization needs a scale: ones
        raise ExportError(f"node '{n.name}': LayerNorm without weight has no QDQ form yet")
    y = ctx.add("LayerNormalization", [i for i in ins if i is not None],
                [ctx.fresh(n.name + ".f")], name=n.name + ".ln", axis=axis,
                epsilon=1e-5)
    ctx.q(y, a["exp_o"], a["bits_o"], n.output[0], n.name)


RULES = {
    "Quant": _quant, "Dequant": _dequant, "Requant": _requant,
    "Conv1dInt": _weighted(_conv), "Conv2dInt": _weighted(_conv),
    "ConvTranspose1dInt": _weighted(_conv_transpose),
    "ConvTranspose2dInt": _weighted(_conv_transpose),
    "LinearInt": _weighted(_linear), "BatchNormInt": _weighted(_batchnorm),
    "AvgPoolInt": _avgpool, "GlobalAvgPoolInt": _global_avgpool, "EmbeddingInt": _embedding,
    "iqAdd": _binary("Add"), "iqSub": _binary("Sub"), "iqMul": _binary("Mul"),
    "iqDiv": _binary("Mul"), "MatMulInt": _binary("MatMul"), "iqCat": _cat,
    "iqSum": _unary(_reduce("ReduceSum")), "iqMean": _unary(_reduce("ReduceMean")),
    "iqSigmoid": _unary(_op("Sigmoid")), "iqTanh": _unary(_op("Tanh")),
    "iqSiLU": _unary(_silu), "iqGELU": _unary(_op("Gelu")),
    "SoftmaxInt": _unary(_op("Softmax", axis="axis")),
    "LogSoftmaxInt": _unary(_op("LogSoftmax", axis="axis")),
    "LayerNormInt": _layernorm,
}


def to_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every ``ai.linger`` node of ``model`` with standard ops; returns a new model."""
    ctx = _Ctx(model)
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        ctx._names.add(v.name)
    for node in model.graph.node:
        ctx._names.add(node.name)
    for node in model.graph.node:
        if node.domain != DOMAIN:
            ctx.nodes.append(node)
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise ExportError(f"node '{node.name}' ({node.op_type}) has no QDQ form yet; export"
                              f" with format='linger' (the integer graph) instead")
        rule(ctx, node, _attrs(node))
    g = model.graph
    graph = helper.make_graph(ctx.nodes, g.name, list(g.input), list(g.output),
                              initializer=list(g.initializer) + ctx.new_inits)
    out = helper.make_model(graph, producer_name="linger-qdq",
                            opset_imports=[helper.make_opsetid("", QDQ_OPSET)])
    out.ir_version = max(model.ir_version, 10)
    return out
