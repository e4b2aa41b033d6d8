"""Quantized non-linear functions on QTensors: sigmoid, tanh, SiLU, GELU, softmax, log-softmax.

Eval runs the integer algorithms of :mod:`linger.iqmath` (tables of :mod:`linger.iqtables`):

- ``sigmoid``/``tanh``: input to int16 Q11, 1/16-segment piecewise-linear table to Q15, then to
  the fixed output grid ``n_o = bits - 1`` (Q7 for int8: sigmoid in ``[0, 127]``, tanh in
  ``[-128, 127]``); stateless;
- ``silu``/``gelu``: ``q * gate_q15(x11)`` (sigmoid, resp. the Gaussian CDF ``Phi``), rounding
  shift to the output statistic's grid; GELU's ``approximate='tanh'`` trains with the tanh form
  but evaluates the exact-erf table;
- ``softmax``: ``x - max`` in Q16, ``exp`` through a ``2**f`` table to Q20, exact rounded division
  by the sum to Q15, fixed output grid ``n_o = bits - 1``; stateless;
- ``log_softmax``: ``(x - max) - ln(sum)`` in Q16 (``log2`` table), output statistic.

Output bits: 8 for int8 inputs, 16 otherwise. Training runs the float function and fake-quantizes
its output on the same grid (straight-through gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import iqmath
from .ops_common import OpCall, fallback, fq, from_int, inplace, is_q, to_int
from .qtensor import QTensor, register

T = torch.Tensor


def _out_bits(x) -> int:
    return 8 if x.bits <= 8 else 16


def _gate(func, args, kwargs, op: str, op_type: str, int_fn, fixed: bool):
    x = args[0]
    if not is_q(x) or kwargs.get("out") is not None:
        return fallback(func, args, kwargs)
    call = OpCall.start(op, op, stateful=not fixed)
    if call is None:
        return fallback(func, args, kwargs)
    bits = _out_bits(x)
    if call.training:
        y = _FLOAT[op](x.plain(), kwargs)  # out of place, also for sigmoid_ / inplace=True
        exp = bits - 1 if fixed else call.observe(y, bits)
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    n = x.int_exp()
    no = bits - 1 if fixed else call.stored_exp()
    out = from_int(int_fn(to_int(x), n, no, bits), no, bits, x)
    call.record(op_type, [x], out, {"exp_x": n, "bits_x": x.bits, "exp_o": no, "bits_o": bits})
    return out


def _softmax(func, args, kwargs, log: bool):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if not is_q(x) or dim is None or kwargs.get("dtype") is not None:
        return fallback(func, args, kwargs)  # dim=None is torch's deprecated implicit choice
    op = "log_softmax" if log else "softmax"
    call = OpCall.start(op, op, stateful=log)
    if call is None:
        return fallback(func, args, kwargs)
    bits = _out_bits(x)
    axis = int(dim) % x.dim()
    if call.training:
        y = (torch.log_softmax if log else torch.softmax)(x.plain(), axis)
        exp = call.observe(y, bits) if log else bits - 1
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    n = x.int_exp()
    no = call.stored_exp() if log else bits - 1
    q = (iqmath.log_softmax if log else iqmath.softmax)(to_int(x), n, axis, no, bits)
    out = from_int(q, no, bits, x)
    call.record("LogSoftmaxInt" if log else "SoftmaxInt", [x], out,
                {"axis": axis, "exp_x": n, "bits_x": x.bits, "exp_o": no, "bits_o": bits})
    return out


_FLOAT = {
    "sigmoid": lambda v, kw: torch.sigmoid(v),
    "tanh": lambda v, kw: torch.tanh(v),
    "silu": lambda v, kw: F.silu(v),
    "gelu": lambda v, kw: F.gelu(v, approximate=kw.get("approximate", "none")),
}

_SIGMOID = lambda f, a, k: _gate(f, a, k, "sigmoid", "iqSigmoid", iqmath.sigmoid, True)  # noqa
_TANH = lambda f, a, k: _gate(f, a, k, "tanh", "iqTanh", iqmath.tanh, True)  # noqa: E731
register([T.sigmoid, torch.sigmoid, F.sigmoid], _SIGMOID)
register([T.sigmoid_, torch.sigmoid_], inplace(_SIGMOID))
register([T.tanh, torch.tanh, F.tanh], _TANH)
register([T.tanh_, torch.tanh_], inplace(_TANH))
register([F.silu], lambda f, a, k: _gate(f, a, k, "silu", "iqSiLU", iqmath.silu, False))
register([F.gelu], lambda f, a, k: _gate(f, a, k, "gelu", "iqGELU", iqmath.gelu, False))
register([F.softmax, T.softmax, torch.softmax], lambda f, a, k: _softmax(f, a, k, False))
register([F.log_softmax, T.log_softmax, torch.log_softmax],
         lambda f, a, k: _softmax(f, a, k, True))
