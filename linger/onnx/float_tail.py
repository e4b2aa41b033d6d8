"""The float tail: layers kept float with ``linger.disable_quant`` *after* the last quantized one.

The original linger's two-stage tutorial keeps the classifier float
(``linger.disable_quant(model.last_fc)``). Its graph is integer up to a ``Dequant`` and float32
after it: ``Gemm``/``MatMul``/``Conv``/``Sigmoid``/``Tanh``/``Softmax``/``LogSoftmax`` nodes
marked with the doc string :data:`linger.validate.TAIL_DOC`. The runtime runs them in float32
(numpy), PyTorch in float32 (its own BLAS); summation order differs between the two libraries, so
the tail's outputs agree to a few ulps, not bit for bit. ``linger validate`` reports the integer part bit-exact and
the tail's largest difference (docs/export.md, "Float tail").

A float layer whose result is quantized again (a float island *between* quantized layers) is
refused: everything after it would inherit the float differences.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ExportError
from ..quant.qtensor import QTensor
from ..validate import TAIL_DOC

_T = torch.Tensor
_UNARY = {torch.sigmoid: "Sigmoid", _T.sigmoid: "Sigmoid", F.sigmoid: "Sigmoid",
          torch.tanh: "Tanh", _T.tanh: "Tanh", F.tanh: "Tanh"}
_SOFTMAX = {F.softmax: "Softmax", torch.softmax: "Softmax", _T.softmax: "Softmax",
            F.log_softmax: "LogSoftmax", torch.log_softmax: "LogSoftmax",
            _T.log_softmax: "LogSoftmax"}
_CONV = {F.conv1d: 1, F.conv2d: 2}


def emit(rec, func, args, kwargs, out):
    """Write ``func`` as float32 tail nodes and return the traced result, or None when ``func``
    is not a float-tail op (the caller then refuses it)."""
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32:
        return None
    base = rec.module_path()
    res = QTensor.wrap(out, None, None)
    if func is F.linear:
        p = _params(("input", "weight", "bias"), args, kwargs)
        x, w, b = rec.float_name(p["input"]), rec.float_name(p["weight"]), p.get("bias")
        if p["input"].dim() == 2:
            ins = [x, w] + ([rec.float_name(b)] if b is not None else [])
            _node(rec, "Gemm", ins, res, base, transB=1)
        else:  # (..., in) @ W^T (+ b)
            wt = rec.constant(p["weight"].detach().t().contiguous(), np.float32, "weight_t")
            if b is None:
                _node(rec, "MatMul", [x, wt], res, base)
            else:
                name = rec.unique(f"{base}.matmul")
                _node(rec, "MatMul", [x, wt], f"{name}:out", base, name=name)
                rec.value_info[f"{name}:out"] = (np.dtype(np.float32), tuple(out.shape))
                _node(rec, "Add", [f"{name}:out", rec.float_name(b)], res, base)
        return res
    if func in _CONV:
        nd = _CONV[func]
        p = _params(("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                    args, kwargs)
        if isinstance(p.get("padding"), str):
            raise ExportError(f"float conv in '{base}' with padding={p['padding']!r}: give"
                              f" the padding as numbers to export it")

        def tup(v, d):
            v = d if v is None else v
            return list(v) if isinstance(v, (tuple, list)) else [int(v)] * nd
        pad = tup(p.get("padding"), 0)
        ins = [rec.float_name(p["input"]), rec.float_name(p["weight"])]
        if p.get("bias") is not None:
            ins.append(rec.float_name(p["bias"]))
        _node(rec, "Conv", ins, res, base, kernel_shape=list(p["weight"].shape[2:]),
              strides=tup(p.get("stride"), 1), pads=pad + pad,
              dilations=tup(p.get("dilation"), 1), group=int(p.get("groups") or 1))
        return res
    if func in _UNARY:
        _node(rec, _UNARY[func], [rec.float_name(args[0])], res, base)
        return res
    if func in _SOFTMAX:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None or kwargs.get("dtype") is not None:
            raise ExportError(f"{func.__name__} in '{base}' needs an explicit dim (and no"
                              f" dtype) to be exported")
        _node(rec, _SOFTMAX[func], [rec.float_name(args[0])], res, base, axis=int(dim))
        return res
    return None


def _params(names, args, kwargs):
    p = dict(zip(names, args))
    p.update({k: v for k, v in kwargs.items() if k in names})
    return p


def _node(rec, op, inputs, out, base, name=None, **attrs):
    node = rec.emit(op, inputs, [out], name=name or rec.unique(f"{base}.{op.lower()}"), **attrs)
    node.doc_string = TAIL_DOC


def check_no_island(model) -> None:
    """Refuse a graph whose float tail feeds an integer (ai.linger) node again."""
    tail, origin = set(), {}
    for n in model.graph.node:
        src = next((origin[i] for i in n.input if i in tail), None)
        if n.doc_string == TAIL_DOC:
            src = src or n.name
        if src is None:
            continue
        if n.domain not in ("", "ai.onnx"):
            raise ExportError(
                f"'{n.name}' ({n.op_type}) quantizes a value computed in float by '{src}' (a"
                f" layer kept float with linger.disable_quant): a float layer between quantized"
                f" layers cannot be reproduced bit for bit. Quantize '{src}', or keep float only"
                f" the layers after the last quantized one")
        for o in n.output:
            tail.add(o)
            origin[o] = src
