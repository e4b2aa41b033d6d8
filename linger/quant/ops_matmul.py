"""Quantized ``matmul`` / ``bmm`` / ``@`` on QTensors (switch ``linger.SetFunctionBmmQuant``).

Eval: ``q_o = sat(rs(q_a @ q_b, n_a + n_b - n_o))`` with an exact accumulator (float64 BLAS while
every partial sum stays below 2**53, int64 otherwise) and ``n_o`` from the output statistic.
An ``nn.Parameter`` operand is quantized like a weight (the owner's ``parameter_bits``). Operands
of more than 16 bits, or float activations, fall back to float.
"""

from __future__ import annotations

import torch

from .. import iqmath
from .ops_common import (OpCall, const_fake, const_int, fallback, fq, from_int, is_q,
                         param_like, to_int)
from .qtensor import QTensor, register

T = torch.Tensor


def _ok(v) -> bool:
    if isinstance(v, QTensor):
        return v.bits is not None and v.bits <= 16
    return param_like(v)  # a parameter, or a view of one (``w.t()``)


def _matmul(func, args, kwargs):
    a = args[0]
    b = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
    if func in (T.__rmatmul__,):
        a, b = b, a
    if "out" in kwargs or not (_ok(a) and _ok(b)) or not (is_q(a) or is_q(b)):
        return fallback(func, args, kwargs)
    call = OpCall.start("matmul", "matmul", stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    like = a if is_q(a) else b
    bits = max(v.bits for v in (a, b) if is_q(v))
    pbits = call.cfg.parameter_bits
    if call.training:
        fa, fb = (v.plain() if is_q(v) else const_fake(v, pbits)[0] for v in (a, b))
        y = torch.matmul(fa, fb)
        exp = call.observe(y, bits)
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    no = call.stored_exp()
    ints, ins, attrs = [], [], {}
    for tag, v in (("x", a), ("y", b)):
        if is_q(v):
            q, n, vb, node_in = to_int(v), v.int_exp(), v.bits, v
        else:
            q, n, node_in = const_int(v, pbits)  # exponent of the whole parameter
            vb = pbits
        ints.append(q)
        ins.append(node_in)
        attrs.update({f"exp_{tag}": n, f"bits_{tag}": vb})
    q = iqmath.matmul(ints[0], attrs["exp_x"], ints[1], attrs["exp_y"], no, bits)
    out = from_int(q, no, bits, like)
    call.record("MatMulInt", ins, out, dict(attrs, exp_o=no, bits_o=bits))
    return out


register([T.matmul, torch.matmul, T.__matmul__, T.__rmatmul__, T.bmm, torch.bmm], _matmul)
