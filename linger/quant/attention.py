"""Attention from the integer ops that exist: ``F.linear`` with parameter weights,
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``.

``F.linear(x, w, b)`` on a quantized ``x`` with ``w``/``b`` parameters (or views of them, such as
the q/k/v slices of ``in_proj_weight``) is the ``LinearInt`` of ``nn.Linear``: weights at
``parameter_bits``, bias int32 at ``n_x + n_w``, output statistic at ``out_bits``.

:class:`QMultiheadAttention` (``linger.init`` converts ``nn.MultiheadAttention``; same parameters
and state_dict keys) computes, per head, with quantized ops only::

    q = F.linear(query, W_q, b_q) * (1 / sqrt(d))       LinearInt, iqMul (int16 constant)
    k, v = F.linear(key, W_k, b_k), ...                 LinearInt (x2)
    per head h (columns of q, k, v; 3-d tensors only, as the chips need):
        p_h = softmax(q_h @ k_h^T, mask_h)              MatMulInt, SoftmaxInt with a bool mask
        o_h = p_h @ v_h                                 MatMulInt
    o = F.linear(cat(o_h), W_out, b_out)                iqCat, LinearInt

``attn_mask`` (2-d or 3-d) and ``key_padding_mask`` may be bool (True = not attended) or float
with values 0 and ``-inf`` (what PyTorch's mask helpers produce); other float values are additive
biases that this integer softmax cannot take (:class:`~linger.errors.UnsupportedError`). A query
whose keys are all masked gets probability 0 everywhere (PyTorch gives NaN). ``batch_first``
either way; ``need_weights`` returns the head-averaged probabilities (``iqMean``). Refused at
``linger.init``: ``add_bias_kv``, ``add_zero_attn``.

:class:`QTransformerEncoderLayer` (converted from ``nn.TransformerEncoderLayer``, its children are
converted too) runs the layer's own blocks (``norm_first`` either way) without PyTorch's fused
inference path, which would bypass the quantized ops.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import iqmath, numerics
from ..errors import ExportError, UnsupportedError
from . import trace
from .base import int_values
from .functions import fake_quant
from .ops_common import (OpCall, fallback, fq, from_int, int_const, is_q, param_like, to_int,
                         weight_fake, weight_int)
from .layers import QUANT_CLASSES
from .ops_tensor import quant_tensor
from .qtensor import QTensor, register


# -- F.linear with parameter weights -------------------------------------------------------------

_QUANT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH_LINEAR = os.path.join("torch", "nn", "modules", "linear.py")


def _from_float_linear_layer() -> bool:
    """True when the caller is the forward of an ``nn.Linear`` left in float (not in
    ``quant_modules``, or passed to ``linger.disable_quant``): it stays float."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_QUANT_DIR):
        f = f.f_back
    return f is not None and f.f_code.co_filename.endswith(_TORCH_LINEAR)


def _linear(func, args, kwargs):
    x = args[0]
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    if not is_q(x) or not param_like(w) or w.dim() != 2 or not (b is None or param_like(b)) \
            or _from_float_linear_layer():
        return fallback(func, args, kwargs)
    call = OpCall.start("linear", "matmul", stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    pbits, obits = call.cfg.parameter_bits, call.cfg.out_bits
    if call.training:
        wf, nw = weight_fake(w.to(x.dtype), pbits)
        bf = None if b is None else fake_quant(b.to(x.dtype), x.raw_exp + nw, numerics.BIAS_BITS)
        y = F.linear(x.plain(), wf, bf)
        exp = call.observe(y, obits)
        return QTensor.wrap(fq(y, exp, obits), exp, obits)
    nx, no = x.int_exp(), call.stored_exp()
    qw, nw = weight_int(w, pbits)
    qb = None if b is None else numerics.quantize_bias(b.detach().double(), nx, nw)
    acc = F.linear(int_values(x), torch.from_numpy(qw.astype(np.float64)).to(x.device),
                   None if qb is None else qb.to(x.device))  # exact integers in float64
    q = numerics.requantize(acc, nx + nw - no, obits)
    out = QTensor.wrap(numerics.dequantize(q, no).to(x.dtype), no, obits)
    ins = [x, int_const(qw, pbits)]
    if qb is not None:
        ins.append(int_const(qb.cpu().numpy(), numerics.BIAS_BITS))
    call.record("LinearInt", ins, out, {"exp_x": nx, "exp_w": nw, "exp_o": no, "bits_x": x.bits,
                                        "bits_w": pbits, "bits_o": obits})
    return out


register([F.linear], _linear)


# -- masks ----------------------------------------------------------------------------------------

def _bool_mask(m: torch.Tensor, what: str) -> torch.Tensor:
    """A bool mask (True = excluded) from a bool one or a float one holding 0 / -inf."""
    m = m.plain() if isinstance(m, QTensor) else m
    if m.dtype == torch.bool:
        return m
    if not m.is_floating_point() or bool(((m != 0) & (m != float("-inf"))).any()):
        raise UnsupportedError(
            f"{what} holds values other than 0 and -inf (an additive bias); the integer softmax"
            f" takes only masks. Pass a bool mask (True = not attended), or add the bias to the"
            f" scores yourself before a quantized softmax")
    return m == float("-inf")


def _mask_shape(m, what, n, h, lq, s):
    """``m`` arranged to broadcast over the scores (N, H, L, S)."""
    if what == "key_padding_mask":
        if tuple(m.shape) != (n, s):
            raise UnsupportedError(f"key_padding_mask must have shape (N, S) = {(n, s)}, got"
                                   f" {tuple(m.shape)}")
        return m.reshape(n, 1, 1, s), [0, 1, 1, -1]
    if m.dim() == 2:
        return m, None
    return m.reshape(n, h, lq, s), [-1, h, lq, s]


def attention_mask(attn_mask, key_padding_mask, n, h, lq, s):
    """``(bool tensor or None, graph value name or None)``: the combined mask, broadcastable to
    the (N, H, L, S) scores, and its name in the graph being exported."""
    rec = trace.current()
    parts = []
    for m, what in ((attn_mask, "attn_mask"), (key_padding_mask, "key_padding_mask")):
        if m is None:
            continue
        traced = rec is not None and isinstance(m, QTensor)  # a model input (or computed)
        if traced and m.dtype != torch.bool:
            raise ExportError(f"{what} of '{rec.module_path()}' is a float graph value; export"
                              f" needs a bool mask (True = not attended) as the model input")
        b, shape = _mask_shape(_bool_mask(m, what), what, n, h, lq, s)
        parts.append((b, m if traced else None, shape))
    if not parts:
        return None, None
    mask = parts[0][0] if len(parts) == 1 else parts[0][0] | parts[1][0]
    if rec is None:
        return mask, None
    if all(t is None for _, t, _ in parts):
        return mask, rec.constant(mask.cpu().numpy(), base="mask")
    names = []
    for b, t, shape in parts:
        if t is None:
            names.append(rec.constant(b.cpu().numpy(), base="mask"))
        elif shape is None:
            names.append(rec.name_of(t))
        else:
            name = rec.unique(f"{rec.module_path()}.mask_reshape")
            rec.emit("Reshape", [rec.name_of(t), rec.constant(shape, np.int64)],
                     [f"{name}:out"], name=name)
            rec.value_info[f"{name}:out"] = (np.dtype(np.bool_), tuple(b.shape))
            names.append(f"{name}:out")
    if len(names) == 1:
        return mask, names[0]
    name = rec.unique(f"{rec.module_path()}.mask_or")
    rec.emit("Or", names, [f"{name}:out"], name=name)
    rec.value_info[f"{name}:out"] = (np.dtype(np.bool_), tuple(mask.shape))
    return mask, f"{name}:out"


def head_mask(mask, mask_name, i: int):
    """The mask of head ``i`` (N, L, S)-broadcastable, from the (N|1, H|1, L|1, S) one."""
    if mask is None:
        return None, None
    if mask.dim() < 4:  # (L, S): the same for every head and sample
        return mask, mask_name
    head = min(i, mask.shape[1] - 1)
    m = mask[:, head]
    rec = trace.current()
    if rec is None:
        return m, None
    name = rec.unique(f"{rec.module_path()}.mask_head{i}")
    rec.emit("Gather", [mask_name, rec.constant([head], np.int64)], [f"{name}:g"], name=name,
             axis=1)                                                    # (N, 1, L, S)
    rec.value_info[f"{name}:g"] = (np.dtype(np.bool_), tuple(mask[:, head:head + 1].shape))
    rec.emit("Squeeze", [f"{name}:g", rec.constant([1], np.int64)], [f"{name}:out"],
             name=rec.unique(name + ".squeeze"))
    rec.value_info[f"{name}:out"] = (np.dtype(np.bool_), tuple(m.shape))
    return m, f"{name}:out"


def masked_softmax(x: QTensor, mask, mask_name) -> QTensor:
    """Softmax over the last axis with ``mask`` (bool, True = excluded): ``SoftmaxInt`` with the
    mask as its second input (:func:`linger.iqmath.softmax`)."""
    if mask is None:
        return torch.softmax(x, -1)
    call = OpCall.start("softmax", "softmax", stateful=False)
    if call is None:  # switched off or disabled: float, the dequant boundary
        return fallback(torch.Tensor.masked_fill, (x, mask, float("-inf")), {}).softmax(-1)
    bits = 8 if x.bits <= 8 else 16
    if call.training:
        y = torch.softmax(x.plain().masked_fill(mask, float("-inf")), -1).nan_to_num(0.0)
        return QTensor.wrap(fq(y, bits - 1, bits), bits - 1, bits)
    n, axis = x.int_exp(), x.dim() - 1
    q = iqmath.softmax(to_int(x), n, axis, bits - 1, bits, mask.cpu().numpy())
    out = from_int(q, bits - 1, bits, x)
    rec = trace.current()
    if rec is not None:
        from ..onnx.recorder import DOMAIN
        rec.emit("SoftmaxInt", [rec.name_of(x), mask_name], [out], domain=DOMAIN,
                 name=rec.unique(f"{rec.module_path()}.softmax"), axis=axis, exp_x=n,
                 bits_x=x.bits, exp_o=bits - 1, bits_o=bits)
    return out


# -- modules --------------------------------------------------------------------------------------

class _ConvertedOnly:
    """What ``linger.init`` needs of a converted module that owns no quantization buffers."""

    def _linger_setup(self, cfg, name: str = "") -> None:
        self.linger_cfg, self.linger_name = cfg, name

    def _where(self) -> str:
        return f"{type(self).__name__} '{self.linger_name or '<root>'}'"


class QMultiheadAttention(_ConvertedOnly, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` computed with linger's integer ops (module docstring)."""

    onnx_ops_doc = ("LinearInt, iqMul, Slice, Transpose, MatMulInt, SoftmaxInt (mask: Reshape, Or,"
                    " Gather, Squeeze), iqCat; iqMean for the weights")

    def _check_options(self):
        if self.bias_k is not None or self.add_zero_attn:
            raise UnsupportedError(f"{self._where()}: add_bias_kv / add_zero_attn are not"
                                   f" supported; build the layer without them")

    def _in(self, x, name):
        return x if is_q(x) else quant_tensor(self, x, name=name, bits=self.linger_cfg.data_bits)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if is_causal and attn_mask is None:
            raise UnsupportedError(f"{self._where()}: is_causal needs the causal attn_mask too"
                                   f" (as PyTorch's own layers pass it)")
        if query.dim() != 3:
            raise UnsupportedError(f"{self._where()}: unbatched (2-d) input; add the batch axis")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q_in, k_in, v_in = self._in(query, "query"), self._in(key, "key"), self._in(value, "value")
        e, h = self.embed_dim, self.num_heads
        d = e // h
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight[:e], self.in_proj_weight[e:2 * e], \
                self.in_proj_weight[2 * e:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e:2 * e], b[2 * e:])
        n, lq, s = q_in.shape[0], q_in.shape[1], k_in.shape[1]
        # per head on 3-d tensors (the chips run matmul and transpose up to 3-d):
        qp = F.linear(q_in, wq, bq) * (1.0 / math.sqrt(d))                  # (N, L, E)
        kp, vp = F.linear(k_in, wk, bk), F.linear(v_in, wv, bv)             # (N, S, E)
        mask, mask_name = attention_mask(attn_mask, key_padding_mask, n, h, lq, s)
        outs, probs = [], []
        for i in range(h):
            cols = slice(i * d, (i + 1) * d)
            scores = torch.matmul(qp[..., cols], kp[..., cols].transpose(1, 2))  # (N, L, S)
            m, m_name = head_mask(mask, mask_name, i)
            p = F.dropout(masked_softmax(scores, m, m_name), self.dropout, self.training)
            probs.append(p)
            outs.append(torch.matmul(p, vp[..., cols]))                      # (N, L, d)
        o = torch.cat(outs, -1) if h > 1 else outs[0]                       # (N, L, E)
        o = F.linear(o, self.out_proj.weight, self.out_proj.bias)
        if not self.batch_first:
            o = o.transpose(0, 1)
        if not need_weights:
            return o, None
        p = torch.stack(probs, 1)                                           # (N, H, L, S)
        return o, (p.mean(1) if average_attn_weights else p)


class QTransformerEncoderLayer(_ConvertedOnly, nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` without the fused inference path (module docstring)."""

    onnx_ops_doc = "its children's ops and the attention's, iqAdd (residuals)"

    linger_convert_children = True

    def _check_options(self):
        pass

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))


class QTransformerEncoder(_ConvertedOnly, nn.TransformerEncoder):
    """``nn.TransformerEncoder``: its layers in turn (and ``norm``), without PyTorch's mask
    canonicalisation and nested-tensor path, so bool masks stay masks (graph inputs included)."""

    linger_convert_children = True
    onnx_ops_doc = "its layers' ops"

    def _check_options(self):
        pass

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=bool(is_causal))
        return self.norm(x) if self.norm is not None else x


#: float class -> converted class (merged into ``linger.quant.layers.QUANT_CLASSES``).
ATTENTION_CLASSES = {nn.MultiheadAttention: QMultiheadAttention,
                     nn.TransformerEncoderLayer: QTransformerEncoderLayer,
                     nn.TransformerEncoder: QTransformerEncoder}
for _f, _q in ATTENTION_CLASSES.items():  # linger.init converts them by default
    QUANT_CLASSES.setdefault(_f, _q)
