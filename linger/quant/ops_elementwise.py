"""Quantized element-wise arithmetic, concatenation, clamping and reductions on QTensors.

=============  =====================================================================  ==========
op             eval integer algorithm (:mod:`linger.iqmath`)                          output grid
=============  =====================================================================  ==========
add, sub       ``sat(sat32(rs(qx, nx-no)) +/- sat32(rs(qy, ny-no)))``                 statistic
mul            ``sat(rs(qx * qy, nx + ny - no))``                                      statistic
div by const   mul by ``1/c`` quantized to int16 (own exponent)                        statistic
cat, stack     ``sat(rs(q_i, n_i - no))`` then concatenate                             ``min(n_i)``
clamp, clip    ``clip(q, ceil(lo 2**n), floor(hi 2**n))`` (standard ``Clip``)           input's
sum            ``sat(rs(sum q, n - no))``                                               statistic
mean           ``sat(rs(sum q * m, t + n - no))``, ``m = rhu(2**t / k)``                statistic
=============  =====================================================================  ==========

Constants: a Python number or ``nn.Parameter`` added/subtracted is quantized on the output grid
(int32); one multiplied is quantized like a weight (numbers to int16, parameters to the owner's
``parameter_bits``), at the exponent of the whole parameter when it is a view of one, so a
slice ``pos[:, :t]`` has the same integers at every ``t`` (exported as the whole parameter's
integers and a ``Slice``: :func:`ops_common.const_int`). Anything else that is not a quantized value (a float activation, a plain
tensor) makes the op fall back to float (dequant boundary). In-place forms (``x += y``,
``x.add_(y)``, ``x.clamp_()``) update ``x`` as torch does (see :func:`ops_common.inplace`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import iqmath, numerics
from . import scope, trace
from .functional import clip_on_grid
from .functions import _HALF, _fits, fake_requant, pow2, remembered_bounds, saturates
from .ops_common import (OpCall, const_fake, const_int, fallback, fq, from_int, inplace,
                         is_number, is_q, param_like, to_int)
from .ops_tensor import quant_tensor
from .qtensor import QTensor, register

T = torch.Tensor


def _funcs(*names_and_objs):
    out = []
    for f in names_and_objs:
        if isinstance(f, tuple):  # (owner, attribute) that may not exist in this torch version
            f = getattr(*f, None)
        if f is not None:
            out.append(f)
    return out


def _const(v):
    """A supported constant operand (Python number, nn.Parameter or a view of a parameter or
    buffer: :func:`ops_common.param_like`), else None."""
    if is_number(v):
        return torch.tensor(float(v), dtype=torch.float64)
    if param_like(v):
        return v
    return None


def _like(*vals):
    return next(v for v in vals if is_q(v))


def _out_bits(*vals) -> int:
    return max(v.bits for v in vals if is_q(v))


# -- add / sub ----------------------------------------------------------------------------------

def _addsub(func, args, kwargs, subtract: bool, reverse: bool = False):
    a = args[0]
    b = args[1] if len(args) > 1 else kwargs.get("other")
    if kwargs.get("alpha", 1) != 1 or "out" in kwargs or len(args) > 2:
        return fallback(func, args, kwargs)
    if reverse:  # Tensor.__rsub__(x, c) computes c - x
        a, b = b, a
    if not (is_q(a) or is_q(b)) or not all(is_q(v) or _const(v) is not None for v in (a, b)):
        return fallback(func, args, kwargs)
    op = "sub" if subtract else "add"
    call = OpCall.start(op, op, stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    bits = _out_bits(a, b)
    like = _like(a, b)
    if call.training:
        fa, fb = (v.plain() if is_q(v) else _const(v).to(like.device, like.dtype) for v in (a, b))
        s = fa - fb if subtract else fa + fb
        exp = call.observe(s, bits)
        if is_q(a) and is_q(b) and _sum_on_grid(s, fa, a, fb, b, exp, bits, subtract):
            return QTensor.adopt(s, exp, bits)
        # each operand on the output grid, as in eval (fake_requant: no work where exact)
        ra, rb = (fake_requant(f, v.raw_exp, v.bits, exp, 32) if is_q(v) else fq(f, exp, 32)
                  for f, v in ((fa, a), (fb, b)))
        if ra is not fa or rb is not fb:  # (else the sum is s itself)
            s = ra - rb if subtract else ra + rb
        # on the output grid: only saturation is left (none, if s's bounds say so); s is a
        # fresh sum, and so is its clamp
        return QTensor.adopt(fake_requant(s, exp, 32, exp, bits), exp, bits)
    no = call.stored_exp()
    ints, ins, attrs = [], [], {}
    for tag, v in (("x", a), ("y", b)):
        if is_q(v):
            q, n, vb = to_int(v), v.int_exp(), v.bits
            ins.append(v)
        else:  # constant on the output grid, int32 (a slice: the whole parameter, then Slice)
            q, n, c = const_int(_const(v), 32, exp=no)
            vb = 32
            ins.append(c)
        ints.append(q)
        attrs.update({f"exp_{tag}": n, f"bits_{tag}": vb})
    q = iqmath.add(ints[0], attrs["exp_x"], ints[1], attrs["exp_y"], no, bits, subtract)
    out = from_int(q, no, bits, like)
    call.record("iqSub" if subtract else "iqAdd", ins, out,
                dict(attrs, exp_o=no, bits_o=bits))
    return out


def _sum_on_grid(s, fa, a, fb, b, exp, bits: int, subtract: bool) -> bool:
    """The training add/sub of two quantized operands in place of the general path, when it
    applies (CPU, int exponents, 8/16-bit output, each operand either exact on the output grid
    or rounded onto the coarser output grid, and the batch's bounds proving that the sum cannot
    saturate). Then it writes, unrecorded, ``s = (qa +/- qb) * 2**-n`` into the fresh sum ``s``
    (``qa = floor(a * 2**n + 0.5)``, or ``a * 2**n`` when exact; the same values as rounding
    each operand and adding: a power-of-two scale does not change a rounding) and returns True;
    ``s``'s own add/sub node gives each operand the straight-through gradient the rounding
    has. Returns False (nothing written) when the general path must run."""
    if not isinstance(exp, int) or bits > 16 or not -60 <= exp <= 60 \
            or s.dtype not in (torch.float32, torch.float64):
        return False
    rounds = []
    for v in (a, b):
        e, vb = v.raw_exp, v.bits
        if not isinstance(e, int):
            return False
        if exp < e:                                  # coarser output grid: a rounding
            rounds.append(True)
        elif _fits(e, vb, exp, 24):                  # finer: 24-bit integers after scaling
            rounds.append(False)
        else:
            return False
    if not any(rounds):
        return False                                 # s is already the sum on the grid
    bounds = remembered_bounds(s)
    # each rounding moves an operand by at most half a step of the output grid, so the sum
    # stays within one step of s's bounds (two steps: margin for s's own float rounding)
    if bounds is None or saturates(bounds[0] - 2.0 ** (1 - exp), bounds[1] + 2.0 ** (1 - exp),
                                   exp, bits):
        return False
    up = 2.0 ** exp
    d = s.detach()
    da, db = fa.detach(), fb.detach()
    if rounds[0]:
        torch.add(_HALF, da, alpha=up, out=d).floor_()
    else:
        torch.mul(da, up, out=d)
    t = torch.add(_HALF, db, alpha=up).floor_() if rounds[1] else db * up
    (d.sub_ if subtract else d.add_)(t)
    d.mul_(pow2(-exp, d.dtype))
    return True


# -- mul / div ----------------------------------------------------------------------------------

def _mul_like(func, args, kwargs, a, b, op: str, op_type: str, param: bool = False):
    """``a * b`` with ``a`` quantized; ``b`` quantized or a constant (given as float tensor):
    ``param`` (a model parameter or a view of one) -> ``parameter_bits``, else 16 bits."""
    call = OpCall.start(op, op, stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    bits = _out_bits(a, b)
    const_bits = call.cfg.parameter_bits if param else 16
    if call.training:
        fb = b.plain() if is_q(b) else const_fake(b.to(a.device, a.dtype), const_bits)[0]
        y = a.plain() * fb
        exp = call.observe(y, bits)
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    no = call.stored_exp()
    if is_q(b):
        qb, nb, bb, b_in = to_int(b), b.int_exp(), b.bits, b
    else:
        qb, nb, b_in = const_int(b, const_bits)
        bb = const_bits
    q = iqmath.mul(to_int(a), a.int_exp(), qb, nb, no, bits)
    out = from_int(q, no, bits, a)
    call.record(op_type, [a, b_in], out, {"exp_x": a.int_exp(), "bits_x": a.bits, "exp_y": nb,
                                         "bits_y": bb, "exp_o": no, "bits_o": bits})
    return out


def _mul(func, args, kwargs):
    a = args[0]
    b = args[1] if len(args) > 1 else kwargs.get("other")
    if "out" in kwargs or len(args) > 2:
        return fallback(func, args, kwargs)
    if not is_q(a):
        a, b = b, a
    if not is_q(a) or not (is_q(b) or _const(b) is not None):
        return fallback(func, args, kwargs)
    return _mul_like(func, args, kwargs, a, b if is_q(b) else _const(b), "mul", "iqMul",
                     param=param_like(b))


def _div(func, args, kwargs):
    a = args[0]
    b = args[1] if len(args) > 1 else kwargs.get("other")
    if (not is_q(a) or not is_number(b) or float(b) == 0.0 or not math.isfinite(float(b))
            or kwargs.get("rounding_mode") is not None or "out" in kwargs):
        return fallback(func, args, kwargs)
    recip = torch.tensor(1.0 / float(b), dtype=torch.float64)
    return _mul_like(func, args, kwargs, a, recip, "div", "iqDiv")


# -- cat / stack --------------------------------------------------------------------------------

def _cat(func, args, kwargs, new_axis: bool):
    tensors = list(args[0] if args else kwargs.get("tensors", kwargs.get("seq")))
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
    if "out" in kwargs or not tensors or not any(is_q(t) for t in tensors) \
            or not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
        return fallback(func, args, kwargs)
    op = "stack" if new_axis else "cat"
    call = OpCall.start(op, op, stateful=False)
    if call is None:
        return fallback(func, args, kwargs)
    like = _like(*tensors)
    data_bits = _out_bits(*tensors)
    if not all(is_q(t) or param_like(t) for t in tensors):
        # a float activation (e.g. the model's input, U-Net style) gets its own quantization
        # point, as linger.quant_tensor: statistic `<site>_in<i>` of the owner, Quant node
        site = call.key if trace.current() is not None else scope.site_key(call.frame, op)
        tensors = [t if is_q(t) or param_like(t) else
                   quant_tensor(call.frame.module, t, name=f"{site}_in{i}", bits=data_bits)
                   for i, t in enumerate(tensors)]
    # a parameter operand (class token...) is quantized like a weight at the data bits, with the
    # exponent of the whole parameter it is a view of
    consts = {i: (const_fake(t.to(like.dtype), data_bits) if call.training
                  else const_int(t, data_bits)) for i, t in enumerate(tensors) if not is_q(t)}
    exps = [t.int_exp() if is_q(t) else int(consts[i][1]) for i, t in enumerate(tensors)]
    bits_in = [t.bits if is_q(t) else data_bits for t in tensors]
    no, bits = iqmath.cat_format(exps, bits_in)
    axis = int(dim) % (tensors[0].dim() + (1 if new_axis else 0))
    join = torch.stack if new_axis else torch.cat
    if call.training:
        y = join([fq(t.plain() if is_q(t) else consts[i][0], no, bits)
                  for i, t in enumerate(tensors)], axis)
        return QTensor.wrap(y, no, bits)
    ints = [to_int(t) if is_q(t) else consts[i][0] for i, t in enumerate(tensors)]
    q = iqmath.cat(ints, exps, no, bits, axis, new_axis)
    out = from_int(q, no, bits, like)
    ins = [t if is_q(t) else consts[i][2] for i, t in enumerate(tensors)]
    call.record("iqCat", ins, out, {"axis": axis, "new_axis": int(new_axis),
                                    "exp_inputs": exps, "bits_inputs": bits_in,
                                    "exp_o": no, "bits_o": bits})
    return out


# -- clamp --------------------------------------------------------------------------------------

def _clamp(func, args, kwargs):
    x = args[0]
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = args[2] if len(args) > 2 else kwargs.get("max")
    if (not is_q(x) or "out" in kwargs or not all(v is None or is_number(v) for v in (lo, hi))
            or (lo is None and hi is None)):
        return fallback(func, args, kwargs)
    if OpCall.start("clamp", "clamp", stateful=False) is None:
        return fallback(func, args, kwargs)
    n = x.int_exp()
    qlo = math.ceil(lo * 2.0 ** n) if lo is not None else numerics.qmin(x.bits)
    qhi = math.floor(hi * 2.0 ** n) if hi is not None else numerics.qmax(x.bits)
    qlo, qhi = max(qlo, numerics.qmin(x.bits)), min(qhi, numerics.qmax(x.bits))
    return clip_on_grid(x, qlo * 2.0 ** -n, max(qlo, qhi) * 2.0 ** -n)


# -- sum / mean ---------------------------------------------------------------------------------

def _reduce_args(args, kwargs):
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
    keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    if isinstance(dim, (list, tuple)):
        dim = tuple(int(d) for d in dim)
        dim = dim or None
    return dim, keepdim


def _axes_list(x, dim) -> list:
    if dim is None:
        return list(range(x.dim()))
    dims = dim if isinstance(dim, tuple) else (dim,)
    return sorted(int(d) % x.dim() for d in dims)


def _sum(func, args, kwargs):
    x = args[0]
    if not is_q(x) or kwargs.get("dtype") is not None or "out" in kwargs:
        return fallback(func, args, kwargs)
    dim, keepdim = _reduce_args(args, kwargs)
    call = OpCall.start("sum", "sum", stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    bits = x.bits
    if call.training:
        y = x.plain().sum() if dim is None and not keepdim else \
            x.plain().sum(_axes_list(x, dim), keepdim=keepdim)
        exp = call.observe(y, bits)
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    no, axes = call.stored_exp(), _axes_list(x, dim)
    out = from_int(iqmath.reduce_sum(to_int(x), x.int_exp(), no, bits, axes, keepdim), no, bits, x)
    call.record("iqSum", [x], out, {"axes": axes, "keepdims": int(keepdim), "exp_x": x.int_exp(),
                                    "bits_x": bits, "exp_o": no, "bits_o": bits})
    return out


def _mean(func, args, kwargs):
    x = args[0]
    if not is_q(x) or x.bits > 16 or kwargs.get("dtype") is not None or "out" in kwargs:
        return fallback(func, args, kwargs)
    dim, keepdim = _reduce_args(args, kwargs)
    call = OpCall.start("mean", "mean", stateful=True)
    if call is None:
        return fallback(func, args, kwargs)
    axes, bits = _axes_list(x, dim), x.bits
    if call.training:
        y = x.plain().mean(axes, keepdim=keepdim) if axes else x.plain()
        exp = call.observe(y, bits)
        return QTensor.wrap(fq(y, exp, bits), exp, bits)
    n, no = x.int_exp(), call.stored_exp()
    out = from_int(iqmath.reduce_mean(to_int(x), n, no, bits, axes, keepdim), no, bits, x)
    call.record("iqMean", [x], out, {"axes": axes, "keepdims": int(keepdim), "exp_x": n,
                                     "bits_x": bits, "exp_o": no, "bits_o": bits})
    return out


# -- channel shuffle (layout) -------------------------------------------------------------------

def _channel_shuffle(func, args, kwargs):
    """``(N, C, *) -> (N, g, C/g, *) -> swap 1,2 -> (N, C, *)``: pure layout, exponent kept; written
    with the QTensor layout ops so export records Reshape/Transpose/Reshape."""
    x = args[0]
    groups = int(args[1] if len(args) > 1 else kwargs["groups"])
    if not isinstance(x, QTensor) or (x.bits is None and trace.current() is None):
        return fallback(func, args, kwargs)
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


_ADD = lambda f, a, k: _addsub(f, a, k, False)  # noqa: E731
_SUB = lambda f, a, k: _addsub(f, a, k, True)  # noqa: E731
register(_funcs(T.add, torch.add, T.__add__, T.__radd__), _ADD)
register(_funcs(T.__iadd__, T.add_), inplace(_ADD))
register(_funcs(T.sub, torch.sub, T.__sub__, (T, "subtract"), (torch, "subtract")), _SUB)
register(_funcs(T.__isub__, T.sub_, (T, "subtract_")), inplace(_SUB))
register(_funcs(T.__rsub__, (torch, "rsub")), lambda f, a, k: _addsub(f, a, k, True, True))
register(_funcs(T.mul, torch.mul, T.__mul__, T.__rmul__, (T, "multiply"), (torch, "multiply")),
         _mul)
register(_funcs(T.__imul__, T.mul_, (T, "multiply_")), inplace(_mul))
register(_funcs(T.div, torch.div, T.__truediv__, (T, "divide"), (torch, "divide"),
                (T, "true_divide"), (torch, "true_divide")), _div)
register(_funcs(T.__itruediv__, T.div_, (T, "divide_"), (T, "true_divide_")), inplace(_div))
register(_funcs(torch.cat, (torch, "concat"), (torch, "concatenate")),
         lambda f, a, k: _cat(f, a, k, False))
register([torch.stack], lambda f, a, k: _cat(f, a, k, True))
register(_funcs(T.clamp, torch.clamp, T.clip, torch.clip), _clamp)
register(_funcs(T.clamp_, (T, "clip_")), inplace(_clamp))
register(_funcs(T.sum, torch.sum), _sum)
register(_funcs(T.mean, torch.mean), _mean)
register(_funcs(torch.channel_shuffle, (torch.nn.functional, "channel_shuffle")),
         _channel_shuffle)
