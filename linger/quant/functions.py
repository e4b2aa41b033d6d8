"""Torch twins of the numerics core: fake quantization with a straight-through gradient, the
exponent rule on tensors (no host sync), and the running range statistic.

The eval path does not use these fake-quant functions: it computes on exact integers with
:mod:`linger.numerics`, exactly as the runtime does. Training uses them because they are fast.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .. import numerics


def exponent_for_range_t(r: torch.Tensor, bits: int) -> torch.Tensor:
    """Tensor version of :func:`linger.numerics.exponent_for_range` (int32, same device).

    ``n = floor(log2(qmax / r))``, the largest ``n`` with ``r * 2**n <= qmax``, computed exactly
    from the binary representations (no host sync, no ``log2`` rounding): with
    ``r = m * 2**e`` and ``qmax = m_q * 2**e_q`` (``frexp``, mantissas in [0.5, 1)),
    ``r * 2**n <= qmax`` holds iff ``n <= e_q - e`` when ``m <= m_q`` and ``n <= e_q - e - 1``
    otherwise. ``r == 0`` gives ``ZERO_RANGE_EXP``; clipped to ``[MIN_EXP, MAX_EXP]``. Tested
    equal to the scalar version on boundaries and random values.
    """
    r = r.detach()
    if not r.is_floating_point():
        r = r.double()
    m_q, e_q = _frexp_qmax(bits)
    m, e = torch.frexp(r)
    # m_q is exact in float32 for bits <= 24; for 32 bits it rounds to 1.0 there, which no
    # float32 mantissa reaches, so the comparison stays exact in every case linger uses.
    n = (e_q - e) - (m > m_q).to(e.dtype)
    n = torch.where(r > 0, n, numerics.ZERO_RANGE_EXP)
    return n.clamp_(numerics.MIN_EXP, numerics.MAX_EXP).to(torch.int32)


def _frexp_qmax(bits: int):
    """``(m_q, e_q)`` with ``qmax(bits) = m_q * 2**e_q``, ``0.5 <= m_q < 1`` (Python numbers)."""
    return math.frexp(numerics.qmax(bits))


class _FakeQuant(torch.autograd.Function):
    """``y = clamp(floor(x * 2**n + 0.5)) * 2**-n``; gradient 1 inside the range, 0 where clamped.

    Multiplying by ``2**-n`` equals dividing by ``2**n`` exactly (powers of two), and is faster.
    """

    @staticmethod
    def forward(ctx, x, exp, bits):
        e = exp.to(x.dtype)
        v = x * torch.exp2(e)
        v.add_(0.5).floor_()                         # round half up, in place
        q = v.clamp(numerics.qmin(bits), numerics.qmax(bits))
        ctx.save_for_backward(q == v)                 # True where not saturated
        return q.mul_(torch.exp2(-e))

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def fake_quant(x: torch.Tensor, exp: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize ``x`` to ``bits`` bits at exponent ``exp`` (a 0-dim integer tensor)."""
    return _FakeQuant.apply(x, exp, bits)


def batch_absmax(x: torch.Tensor) -> torch.Tensor:
    """``max|x|`` over the whole tensor, reduced (max) over DistributedDataParallel ranks so every
    rank keeps identical statistics."""
    m = x.detach().abs().amax().float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m


@torch.no_grad()
def update_range(running: torch.Tensor, ready: torch.Tensor, batch_max: torch.Tensor,
                 momentum: float) -> None:
    """Running range, in place: the first batch sets it, later ones blend with ``momentum``.

    ``r <- max_1`` on the first batch, then ``r <- (1 - m) * r + m * max_t``. Unlike an EMA that
    starts at 0, the statistic is usable (and equals what eval will use) from the first batch on.
    """
    blended = running * (1.0 - momentum) + batch_max * momentum
    running.copy_(torch.where(ready, blended, batch_max))
    ready.fill_(True)
