"""Quantized layer normalization: the layer :class:`QLayerNorm` and ``F.layer_norm`` on QTensors.

Eval (:func:`linger.iqmath.layer_norm`): exact integer sums ``S1 = sum q``, ``S2 = sum q**2`` over
the ``k`` normalized elements, ``z = rhu(2**10 (k q - S1) / sqrt(k S2 - S1**2 + eps_q))`` with an
exact integer square root (Q10, scale-free), then the affine part as a layer:
``q_o = sat(rs(z * q_w + q_b, 10 + n_w - n_o))``. ``gamma`` is quantized to **int16** (as the
reference chip), ``beta`` to int32 at exponent ``10 + n_w``, ``eps_q = rhu(eps 2**(2 n_x) k**2)`` is
written into the graph as an integer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import iqmath, numerics
from . import trace
from .base import QuantMixin
from .layers import QUANT_CLASSES
from .ops_common import OpCall, fallback, fq, from_int, int_const, is_q, to_int, weight_fake, \
    weight_int
from .qtensor import QTensor, register

#: Bits of the layer-norm scale ``gamma`` (the normalized value is Q10, so 8-bit gammas would
#: cost accuracy for no memory worth saving).
GAMMA_BITS = 16


def _train(x: torch.Tensor, shape, weight, bias, eps):
    """Float layer norm with fake-quantized gamma (int16) and beta (int32 at 10 + n_w)."""
    w, b = weight, bias
    if w is not None:
        w, nw = weight_fake(w, GAMMA_BITS)
        nb = nw + iqmath.LN_Q
    else:
        nb = iqmath.LN_Q
    if b is not None:
        b = fq(b, nb, numerics.BIAS_BITS)
    return F.layer_norm(x, shape, w, b, eps)


def _eval(x: QTensor, ndim: int, weight, bias, eps, no: int, bits: int):
    """Integer layer norm: ``(q_o numpy, attrs, params {name: (int array, bits)})``."""
    n = x.int_exp()
    count = int(np.prod(x.shape[x.dim() - ndim:]))
    eps_q = iqmath.layer_norm_eps(eps, n, count)
    if weight is None and bias is not None:
        weight = torch.ones_like(bias)
    qw, nw, qb, params = None, 0, None, {}
    if weight is not None:
        qw, nw = weight_int(weight, GAMMA_BITS)
        params["weight"] = (qw, GAMMA_BITS)
    if bias is not None:
        qb = np.rint(numerics.quantize(bias.detach().double(), iqmath.LN_Q + nw,
                                       numerics.BIAS_BITS).cpu().numpy()).astype(np.int64)
        params["bias"] = (qb, numerics.BIAS_BITS)
    q = iqmath.layer_norm(to_int(x), ndim, eps_q, qw, nw, qb, no, bits)
    attrs = {"axis": -ndim, "eps_q": eps_q, "exp_x": n, "bits_x": x.bits, "exp_w": nw,
             "bits_w": GAMMA_BITS, "exp_o": no, "bits_o": bits}
    return q, attrs, params


class QLayerNorm(QuantMixin, nn.LayerNorm):
    """``nn.LayerNorm`` quantized: input at ``data_bits``, gamma int16, output at ``out_bits``."""

    onnx_op = "LayerNormInt"

    def forward(self, x):
        xq = self.quant_input(x)
        shape = tuple(self.normalized_shape)
        if self.training:
            return self.quant_output_train(_train(xq.plain(), shape, self.weight, self.bias,
                                                  self.eps))
        bits = self.linger_cfg.out_bits
        q, attrs, params = _eval(xq, len(shape), self.weight, self.bias, self.eps,
                                 self._stored_exp("output"), bits)
        out = from_int(q, attrs["exp_o"], bits, xq)
        rec = trace.current()
        if rec is not None:
            rec.node(self, self.onnx_op, [xq], [out], attrs,
                     {k: (torch.from_numpy(v), b) for k, (v, b) in params.items()})
        return out


def _layer_norm(func, args, kwargs):
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    p = dict(zip(names, args))
    p.update(kwargs)
    x, weight, bias = p["input"], p.get("weight"), p.get("bias")
    consts_ok = all(v is None or (isinstance(v, torch.Tensor) and not isinstance(v, QTensor))
                    for v in (weight, bias))
    if not is_q(x) or x.bits > 16 or not consts_ok:  # sums of squares of int32 overflow int64
        return fallback(func, args, kwargs)
    call = OpCall.start("layer_norm", "layer_norm", stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    shape = tuple(int(s) for s in p["normalized_shape"])
    eps = float(p.get("eps", 1e-5))
    bits = x.bits
    if call.training:
        y = _train(x.plain(), shape, weight, bias, eps)
        exp = call.observe(y, bits)
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    q, attrs, params = _eval(x, len(shape), weight, bias, eps, call.stored_exp(), bits)
    out = from_int(q, attrs["exp_o"], bits, x)
    call.record("LayerNormInt", [x] + [int_const(v, b) for v, b in params.values()], out, attrs)
    return out


register([F.layer_norm], _layer_norm)
QUANT_CLASSES.setdefault(nn.LayerNorm, QLayerNorm)  # linger.init converts nn.LayerNorm by default
