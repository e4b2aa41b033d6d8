"""Torch twins of the numerics core: fake quantization with a straight-through gradient, the
exponent rule on tensors (no host sync), and the running range statistic.

The eval path does not use these fake-quant functions: it computes on exact integers with
:mod:`linger.numerics`, exactly as the runtime does. Training uses them because they are fast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import numerics


def exponent_for_range_t(r: torch.Tensor, bits: int) -> torch.Tensor:
    """Tensor version of :func:`linger.numerics.exponent_for_range` (int32, same device).

    ``n = floor(log2(qmax / r))`` settled by exact ``ldexp`` comparisons; ``r == 0`` gives
    ``ZERO_RANGE_EXP``; clipped to ``[MIN_EXP, MAX_EXP]``. Tested equal to the scalar version.
    """
    r = r.detach().double()
    top = float(numerics.qmax(bits))
    safe = torch.where(r > 0, r, torch.ones_like(r))
    n = torch.floor(torch.log2(top / safe))
    n = torch.where(torch.ldexp(safe, n + 1) <= top, n + 1, n)
    n = torch.where(torch.ldexp(safe, n) > top, n - 1, n)
    n = torch.where(r > 0, n, torch.full_like(n, numerics.ZERO_RANGE_EXP))
    return n.clamp(numerics.MIN_EXP, numerics.MAX_EXP).to(torch.int32)


class _FakeQuant(torch.autograd.Function):
    """``y = clamp(floor(x * 2**n + 0.5)) * 2**-n``; gradient 1 inside the range, 0 where clamped."""

    @staticmethod
    def forward(ctx, x, exp, bits):
        scale = torch.exp2(exp.to(x.dtype))
        v = x * scale
        q = torch.floor(v + 0.5)
        lo, hi = numerics.qmin(bits), numerics.qmax(bits)
        inside = (q >= lo) & (q <= hi)
        ctx.save_for_backward(inside)
        return q.clamp_(lo, hi) / scale

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
