"""Recorder: builds ONNX nodes from what the quantized model actually computes in one forward.

Quantized layers call :meth:`Recorder.node`; QTensor layout ops call :meth:`Recorder.layout_op`;
ops without a quantized version call :meth:`Recorder.float_op` (the dequant boundary). Values are
identified by the Python identity of the tensors that carry them during the traced forward pass.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .. import numerics
from ..errors import ExportError
from ..quant.qtensor import QTensor
from .._names import unique_name

#: The custom domain of linger's quantized operators.
DOMAIN = "ai.linger"

_NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
               np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int16): TensorProto.INT16,
               np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
               np.dtype(np.bool_): TensorProto.BOOL}


def value_dtype(t: torch.Tensor) -> np.dtype:
    """numpy dtype a traced value has in the ONNX graph (integers for quantized values)."""
    if isinstance(t, QTensor) and t.bits is not None:
        return np.dtype(numerics.int_dtype(t.bits))
    return np.dtype(str(t.dtype).replace("torch.", ""))


class Recorder:
    def __init__(self, root: torch.nn.Module):
        self.paths = {id(m): name for name, m in root.named_modules()}
        self.stack: list[str] = []
        self.values: dict[int, str] = {}
        self.keep: list = []  # keeps traced tensors alive so their ids stay unique
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.value_info: dict[str, tuple] = {}
        self._used_names: set[str] = set()
        self._const_count = 0

    # -- naming --------------------------------------------------------------------------------
    def module_path(self, module=None) -> str:
        if module is not None and id(module) in self.paths:
            return self.paths[id(module)] or "model"
        return self.stack[-1] if self.stack and self.stack[-1] else "model"

    def unique(self, base: str) -> str:
        return unique_name(self._used_names, base)

    # -- values --------------------------------------------------------------------------------
    def bind(self, t: torch.Tensor, name: str) -> str:
        """Give tensor ``t`` the graph value ``name`` (and remember its type and shape)."""
        self.values[id(t)] = name
        self.keep.append(t)
        self.value_info[name] = (value_dtype(t), tuple(t.shape))
        return name

    def alias(self, out: torch.Tensor, src: torch.Tensor) -> None:
        self.values[id(out)] = self.name_of(src)
        self.keep.append(out)

    def name_of(self, t) -> str:
        if isinstance(t, torch.Tensor) and id(t) in self.values:
            return self.values[id(t)]
        if isinstance(t, QTensor) and t.bits is not None:
            raise ExportError(
                f"a quantized value used in '{self.module_path()}' was not produced by a traced"
                f" op (was it created outside the model's forward, or cached from an earlier"
                f" call?); linger can only export values computed during the export forward")
        return self.constant(t)

    def constant(self, value, dtype=None, base="const") -> str:
        """An initializer holding ``value`` (tensor, array or Python number)."""
        if isinstance(value, torch.Tensor):
            arr = value.detach().cpu().numpy() if not isinstance(value, QTensor) \
                else value.plain().detach().cpu().numpy()
        else:
            arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype == np.float64 and not isinstance(value, torch.Tensor):
            arr = arr.astype(np.float32)
        self._const_count += 1
        name = self.unique(f"{self.module_path()}.{base}{self._const_count}")
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        if isinstance(value, torch.Tensor):
            self.values[id(value)] = name
            self.keep.append(value)
        return name

    def parameter(self, name: str, q: torch.Tensor, bits: int) -> str:
        """An integer initializer (weights, biases), shared when a module runs several times."""
        if name not in self.initializers:
            arr = q.detach().cpu().numpy().astype(numerics.int_dtype(bits))
            self.initializers[name] = numpy_helper.from_array(arr, name)
        return name

    # -- nodes ---------------------------------------------------------------------------------
    def emit(self, op_type, inputs, outputs, *, name, domain="", **attrs) -> onnx.NodeProto:
        """Append a node. ``inputs``: value names; ``outputs``: tensors to bind (or names)."""
        out_names = []
        for i, o in enumerate(outputs):
            if isinstance(o, str):
                out_names.append(o)
            else:
                out_names.append(self.bind(o, f"{name}:{i}" if len(outputs) > 1 else f"{name}:out"))
        node = helper.make_node(op_type, list(inputs), out_names, name=name, domain=domain,
                                **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return node

    def node(self, module, op_type, inputs, outputs, attrs, params=None):
        """Called by quantized layers: one custom-domain node with integer initializers."""
        path = self.module_path(module)
        suffix = {"Quant": ".quant", "Requant": ".requant"}.get(op_type, "")
        name = self.unique(path + suffix)
        in_names = [self.name_of(t) for t in inputs]
        for pname, (q, bits) in (params or {}).items():
            in_names.append(self.parameter(f"{path}.{pname}", q, bits))
        self.emit(op_type, in_names, outputs, name=name, domain=DOMAIN, **attrs)

    def dequant(self, x: QTensor) -> str:
        """A Dequant node for quantized ``x`` (reused if ``x`` was already dequantized)."""
        key = ("dq", id(x))
        if key in self.values:
            return self.values[key]
        name = self.unique(f"{self.name_of(x).split(':')[0]}.dequant")
        out_dtype = TensorProto.DOUBLE if x.bits > 24 else TensorProto.FLOAT
        node = helper.make_node("Dequant", [self.name_of(x)], [f"{name}:out"], name=name,
                                domain=DOMAIN, exp=x.int_exp(), bits=x.bits)
        self.nodes.append(node)
        self.values[key] = f"{name}:out"
        self.value_info[f"{name}:out"] = (np.dtype(np.float64 if out_dtype == TensorProto.DOUBLE
                                                   else np.float32), tuple(x.shape))
        return f"{name}:out"

    def float_name(self, t) -> str:
        """Name of ``t`` as a float value: dequantized first when it is quantized."""
        if isinstance(t, QTensor) and t.bits is not None:
            return self.dequant(t)
        return self.name_of(t)

    # -- hooks used by QTensor ops -------------------------------------------------------------
    def layout_op(self, func, args, kwargs, out):
        from .layout import emit_layout
        emit_layout(self, func, args, kwargs, out)

    def clip(self, x, out, qlo: int, qhi: int):
        dt = numerics.int_dtype(x.bits)
        info = np.iinfo(dt)
        lo, hi = max(qlo, info.min), min(qhi, info.max)
        name = self.unique(f"{self.module_path()}.clip")
        self.emit("Clip", [self.name_of(x), self.constant(lo, dt), self.constant(hi, dt)],
                  [out], name=name)

    def float_op(self, func, args, kwargs, out):
        from .layout import emit_float
        return emit_float(self, func, args, kwargs, out)
