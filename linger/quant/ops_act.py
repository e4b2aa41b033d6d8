"""Quantized activations beside those of :mod:`.ops_nonlinear`: hard-sigmoid, hard-swish, PReLU,
LeakyReLU, ELU; and every dropout variant (identity in eval).

Eval runs the integer algorithms of :mod:`linger.iqops` (see its docstring for the formulas):

- ``F.hardsigmoid`` / ``nn.Hardsigmoid``: ``relu6(x + 3) / 6`` in Q15 by exact rational
  rounding, fixed output grid ``bits - 1`` (Q7 for int8), like sigmoid; stateless;
- ``F.hardswish`` / ``nn.Hardswish``: ``x * hardsigmoid_q15(x)``, output statistic;
- ``F.prelu`` / ``nn.PReLU``: slopes quantized like weights (``parameter_bits``, one exponent),
  ``F.leaky_relu`` / ``nn.LeakyReLU``: the slope as an int16 constant; output statistic;
- ``F.elu`` / ``nn.ELU``: the softmax ``exp`` table for ``x <= 0``, ``alpha`` as an int16
  constant; output statistic.

Training runs the float op (with the quantized slopes) and fake-quantizes its output on the grid
eval uses. Dropout variants (``F.dropout1d/2d/3d``, ``F.alpha_dropout``,
``F.feature_alpha_dropout`` and their modules) return their input unchanged in eval -- nothing is
exported; in training the float op's output is put back on the input's grid, as ``F.dropout``
(:mod:`.functional`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import iqops
from .functions import fake_quant
from .ops_common import (OpCall, fallback, fq, from_int, inplace, int_const, is_number, is_q,
                         to_int, weight_fake, weight_int)
from .ops_nonlinear import _FLOAT, _gate
from .qtensor import QTensor, _run_plain, register

#: Bits of number constants (LeakyReLU slope, ELU alpha), as for ``x * 0.3``.
CONST_BITS = 16

_FLOAT["hardsigmoid"] = lambda v, kw: F.hardsigmoid(v)
_FLOAT["hardswish"] = lambda v, kw: F.hardswish(v)

_HSIG = lambda f, a, k: _gate(f, a, k, "hardsigmoid", "iqHardSigmoid",  # noqa: E731
                              iqops.hardsigmoid, True)
_HSWISH = lambda f, a, k: _gate(f, a, k, "hardswish", "iqHardSwish",  # noqa: E731
                                iqops.hardswish, False)


def _prelu_like(func, args, kwargs, slope, const_bits, op: str):
    """``x >= 0 ? x : slope * x`` with ``slope`` a tensor (PReLU, ``const_bits=None``: the
    owner's ``parameter_bits``) or a number (LeakyReLU)."""
    x = args[0]
    call = OpCall.start(op, "prelu", stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    const_bits = const_bits or call.cfg.parameter_bits
    bits = x.bits
    axis = 1 if x.dim() >= 2 else 0
    w = slope if isinstance(slope, torch.Tensor) else torch.tensor(float(slope))
    if call.training:
        wf, _ = weight_fake(w.to(x.device, x.dtype), const_bits)
        y = F.prelu(x.plain(), wf.reshape(-1)) if wf.numel() > 1 else \
            torch.where(x.plain() >= 0, x.plain(), x.plain() * wf.reshape(()))
        exp = call.observe(y, bits)
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    qa, na = weight_int(w.reshape(-1) if w.numel() > 1 else w.reshape(()), const_bits)
    n, no = x.int_exp(), call.stored_exp()
    out = from_int(iqops.prelu(to_int(x), n, qa, na, no, bits, axis), no, bits, x)
    call.record("iqPReLU", [x, int_const(qa, const_bits)], out,
                {"axis": axis, "exp_x": n, "bits_x": bits, "exp_w": na, "bits_w": const_bits,
                 "exp_o": no, "bits_o": bits})
    return out


def _prelu(func, args, kwargs):
    x = args[0]
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    if not is_q(x) or not isinstance(w, torch.Tensor) or isinstance(w, QTensor):
        return fallback(func, args, kwargs)
    return _prelu_like(func, args, kwargs, w, None, "prelu")


def _leaky_relu(func, args, kwargs):
    x = args[0]
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    if not is_q(x) or not is_number(slope):
        return fallback(func, args, kwargs)
    return _prelu_like(func, args, kwargs, slope, CONST_BITS, "leaky_relu")


def _elu(func, args, kwargs):
    x = args[0]
    alpha = args[1] if len(args) > 1 else kwargs.get("alpha", 1.0)
    if not is_q(x) or not is_number(alpha):
        return fallback(func, args, kwargs)
    call = OpCall.start("elu", "elu", stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    bits = x.bits
    qa, na = weight_int(torch.tensor(float(alpha)), CONST_BITS)
    if call.training:
        y = F.elu(x.plain(), float(qa) * 2.0 ** -na)
        exp = call.observe(y, bits)
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    n, no = x.int_exp(), call.stored_exp()
    out = from_int(iqops.elu(to_int(x), n, qa, na, no, bits), no, bits, x)
    call.record("iqELU", [x], out, {"alpha_q": int(qa), "exp_alpha": na, "exp_x": n,
                                    "bits_x": bits, "exp_o": no, "bits_o": bits})
    return out


def _dropout_variant(func, args, kwargs):
    """Identity in eval (the input itself: nothing to export); training: the float op, then back
    onto the input's grid (dropped-and-rescaled values leave it)."""
    x = args[0]
    p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
    training = kwargs.get("training", args[2] if len(args) > 2 else True)
    if not training or p == 0:
        return x
    if x.bits is None:
        return fallback(func, args, kwargs)
    y = _run_plain(func, args, kwargs)
    return QTensor.wrap(fake_quant(y, x.exp, x.bits), x.exp, x.bits)


register([F.hardsigmoid], _HSIG)
register([F.hardswish], _HSWISH)
register([F.prelu, torch.prelu], _prelu)
register([F.leaky_relu], _leaky_relu)
register([F.leaky_relu_], inplace(_leaky_relu))
register([F.elu], _elu)
register([F.elu_], inplace(_elu))
register([F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout],
         _dropout_variant)
