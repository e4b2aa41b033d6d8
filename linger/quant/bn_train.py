"""Training forward of the quantized BatchNorm as one autograd function.

The layer computes, per channel (see :class:`~linger.quant.layers.QBatchNorm2d`)::

    mean, var = batch statistics of x (exact: x is on its grid), or the running ones (frozen)
    a  = gamma / sqrt(var + eps)          c  = clamp(beta - mean * a)     (normalize bias value)
    aq = fake_quant(a, n_a, weight bits)  cq = fake_quant(c, n_x + n_a, 32)
    y  = x * aq + cq

Written with autograd ops that is some forty small per-channel ops, each a graph node; here the
per-channel values are computed without a graph and the backward is written out. It gives the
gradients autograd gives (straight-through ``aq``/``cq``, the clamp's mask, the chain rule
through the batch statistics)::

    G_aq = sum(g * x)   G_cq = sum(g)                  (one fused kernel, with g * aq)
    G_c  = G_cq * inside(c) * unclamped(c)   G_a = G_aq * inside(a) - mean * G_c
    d gamma = G_a / s   d beta = G_c         (s = sqrt(var + eps))
    d mean  = -a G_c    d var  = -G_a a / (2 s**2)
    dx = g * aq + d mean / N + d var * 2 (x - mean) / N

When nothing saturates (``inside`` and ``unclamped`` all true, the usual case) this is exactly
the float BatchNorm backward with ``gamma`` plus ``(aq - a) * g``, so it runs as torch's fused
``native_batch_norm_backward`` and one ``addcmul_``.

Batch statistics: ``var = (N S2 - S1**2) / N**2`` in float64 from the exact sums
``S1 = sum x``, ``S2 = sum x**2``. The input is on its grid (a quantized value), so every term
is an integer times a power of two and mean and variance come out correctly rounded -- more
exact than the float32 mean and Welford variance of ``Tensor.var``, and much faster. On the CPU
the sums run in float32 over chunks short enough to be exact (``k * 2**(2b-2) <= 2**24``), only
the partial sums in float64; elsewhere in float64 throughout. Under DistributedDataParallel the
sums are all-reduced for the running statistics, so every rank keeps the same ones (the batch
itself is normalized with its own statistics, as torch's BatchNorm does).

On the CPU the per-channel arithmetic runs in numpy (the same IEEE float32 operations in the
same order as the torch formula, so the same values, at a fraction of the dispatch cost);
elsewhere in torch with exponents as device tensors. One implementation serves both (``xp``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist

from .. import numerics
from ..errors import NumericError
from . import two_stage
from .functions import (_FAST_DTYPES, _distributed, _ste_backward, _ste_bounds, channel_affine,
                        exponent_for_range_t, exponent_for_range_value, observe_bounds, pow2,
                        saturates, scalar_path)
from .qtensor import QTensor


def batchnorm_train(bn, xq):
    """Training forward of quantized BatchNorm ``bn`` on its quantized input ``xq``: the
    quantized output (a QTensor); updates the running statistics unless they are frozen."""
    out = [None]
    y = _BNTrain.apply(xq.plain(), bn.weight, bn.bias, (bn, xq.raw_exp, xq.bits, out))
    if out[0] is None:             # not fused: y = x * aq + cq, quantized by the layer
        return bn.quant_output_train(y, owned=True)
    return QTensor.adopt(y, out[0], bn.linger_cfg.out_bits)   # the function's fresh output


class _BNTrain(torch.autograd.Function):
    """``x * aq + cq``, on the CPU fused with the output quantization (see :func:`_fused_out`)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, args):
        bn, exp_x, bits_x, out = args
        frozen = two_stage.bn_stats_frozen()
        if x.dtype in _FAST_DTYPES and scalar_path(x):
            return _forward_cpu(ctx, bn, x, gamma, beta, exp_x, bits_x, frozen, out)
        if frozen:  # linger.SetBnMomentumUpdate(True): train with the running statistics
            mean, var = bn.running_mean.detach(), bn.running_var.detach()
        else:
            mean, var, run_mean, run_var, n = batch_moments(x, None, False)
            _update_running(bn, run_mean, run_var, n, False)
        s, a, unclamped, na, aq, inside_a, cq, inside_c = _quantized_affine(
            torch, bn, gamma.detach(), beta.detach(), mean, var, exp_x)
        ctx.plain, ctx.frozen, ctx.eps, ctx.on_cpu = False, frozen, bn.eps, False
        ctx.out_mask = None
        ctx.per_channel = (mean, a, s, aq, inside_a, inside_c, unclamped)
        ctx.save_for_backward(x, gamma, aq, cq)
        return channel_affine(x, aq, cq)

    @staticmethod
    def backward(ctx, g):
        x, gamma, aq_t, cq_t = ctx.saved_tensors
        mean, a, s, aq, inside_a, inside_c, unclamped = ctx.per_channel
        shape = [1, -1] + [1] * (x.dim() - 2)        # broadcast over (N, C, *)
        need = ctx.needs_input_grad
        t = torch.from_numpy if ctx.on_cpu else (lambda v: v)
        if ctx.out_mask is not None:                 # the fused output quantization saturated
            y = channel_affine(x, aq_t, cq_t)        # recomputed: (N, C, *) like x
            g = _ste_backward(g, y, ctx.out_mask)
        if ctx.plain:
            gx, g_gamma, g_beta = torch.ops.aten.native_batch_norm_backward(
                g, x, gamma, None, None, t(mean), t(1.0 / s), True, ctx.eps,
                [True, need[1], need[2]])
            gx.addcmul_(g, t(aq - a).view(shape))
            return (gx if need[0] else None), g_gamma, g_beta, None
        if ctx.on_cpu:
            one = torch.ones_like(aq_t)
            gx, g_aq, g_cq = torch.ops.aten.native_batch_norm_backward(  # g*aq, sum g x, sum g
                g, x, aq_t, torch.zeros_like(aq_t), one, None, None, False, 0.0,
                [need[0], True, True])
            g_aq, g_cq = g_aq.numpy(), g_cq.numpy()
        else:  # CUDA's eval-mode batch_norm_backward asserts on absent saved statistics
            dims = [0] + list(range(2, x.dim()))
            gx = g * aq_t.view(shape) if need[0] else None
            g_aq, g_cq = (g * x).sum(dims), g.sum(dims)
        g_c = g_cq * inside_c
        if unclamped is not None:
            g_c = g_c * unclamped
        g_a = g_aq * inside_a - mean * g_c
        if need[0] and not ctx.frozen:
            n = x.numel() // x.shape[1]
            g_var = -(g_a * a) / (2.0 * s * s)
            k, b = t(g_var * (2.0 / n)), t((-a * g_c) / n)    # d var * 2/N, d mean / N
            gx.add_((x - t(mean).view(shape)).mul_(k.view(shape))).add_(b.view(shape))
        return gx, t(g_a / s), t(g_c), None


def _forward_cpu(ctx, bn, x, gamma, beta, exp_x, bits_x, frozen, out):
    """:class:`_BNTrain`'s forward on the CPU: per-channel values in numpy, the output
    quantization fused when it can be (:func:`_fused_out`)."""
    if isinstance(exp_x, torch.Tensor):              # a CPU exponent: reading it costs nothing
        exp_x = int(exp_x)
    d = x.detach()
    red = _channel_reductions(d, exp_x, bits_x, frozen)
    if frozen:  # linger.SetBnMomentumUpdate(True): train with the running statistics
        mean, var = bn.running_mean.detach().numpy(), bn.running_var.detach().numpy()
    else:
        mean, var, run_mean, run_var, n = batch_moments(d, red, True)
        _update_running(bn, run_mean, run_var, n, True)
    s, a, unclamped, na, aq, inside_a, cq, inside_c = _quantized_affine(
        np, bn, gamma.detach().numpy(), beta.detach().numpy(), mean, var, exp_x)
    # nothing saturated: the backward is torch's own BatchNorm backward plus (aq - a) * g
    # (aq, cq and their masks are halves of one array each: numpy path of _quantized_affine)
    ctx.plain = not frozen and bool(inside_a.base.all()) \
        and (unclamped is None or bool(unclamped.all()))
    ctx.frozen, ctx.eps, ctx.on_cpu, ctx.out_mask = frozen, bn.eps, True, None
    ctx.per_channel = (mean, a, s, aq, inside_a, inside_c, unclamped)
    aq_t, cq_t = torch.from_numpy(aq), torch.from_numpy(cq)
    ctx.save_for_backward(x, gamma, aq_t, cq_t)
    fused = _fused_out(ctx, bn, x, exp_x + na, aq, cq, red)
    if fused is not None:
        q, out[0] = fused
        return q
    return channel_affine(x, aq_t, cq_t)


def _quantized_affine(xp, bn, gamma, beta, mean, var, exp_x):
    """``(s, a, unclamped, na, aq, inside_a, cq, inside_c)``: the per-channel scale ``a`` and
    bias ``c`` (clamped by normalize_bias_value, ``unclamped`` its mask or None), fake-quantized
    (``na``: the exponent of ``a``; ``inside_*``: not saturated). numpy arrays (``xp`` numpy)
    or tensors (``xp`` torch)."""
    s = xp.sqrt(var + bn.eps)
    a = gamma / s
    c = beta - mean * a
    spec = two_stage.spec_of(bn)                     # normalize_bias_value: clamp c
    vb = None if spec is None else spec.bias
    unclamped = None
    if vb is not None:
        unclamped = (c >= -vb) & (c <= vb)
        c = xp.minimum(xp.maximum(c, -vb), vb) if xp is np else c.clamp(-vb, vb)
    na = _weight_exp(bn, a, xp is np)
    if xp is np:  # both in one pass: halves of one array
        aq, inside_a, cq, inside_c = _fq_pair(a, c, na, exp_x + na,
                                              bn.linger_cfg.parameter_bits, numerics.BIAS_BITS)
    else:
        aq, inside_a = _fq(a, na, bn.linger_cfg.parameter_bits)
        cq, inside_c = _fq(c, exp_x + na, numerics.BIAS_BITS)
    return s, a, unclamped, na, aq, inside_a, cq, inside_c


def _fused_out(ctx, bn, x, exp_y: int, aq, cq, red):
    """The output quantization of ``y = x * aq + cq`` without materializing ``y`` (CPU).

    When every ``y`` is exact (``|q_x q_a| + |q_c| <= 2**24`` on the grid ``2**-exp_y``), the
    batch's min and max of ``y`` follow from the per-channel min and max of ``x`` (an affine map
    per channel), so the output exponent ``n`` is known before ``y`` exists, and one fused kernel
    writes ``y * 2**n + 0.5 = x * (aq 2**n) + (cq 2**n + 0.5)`` -- rounded once, exactly as
    ``fake_quant`` rounds ``y * 2**n + 0.5`` -- followed by floor (and clamp if anything
    saturates) and the scale back. Returns ``(q, n)``, or None when a condition fails (then the
    caller materializes ``y`` and quantizes it the usual way)."""
    if not -60 <= exp_y <= 60:
        return None
    cmin, cmax = red[2], red[3]                          # per channel, x's dtype
    k = len(aq)
    wb64 = aq.base.astype(np.float64)                    # (aq, cq): halves of one array
    aq64, cq64 = wb64[:k], wb64[k:]
    p1, p2 = aq64 * cmin, aq64 * cmax                    # exact in float64
    lo = float((np.minimum(p1, p2) + cq64).min())
    hi = float((np.maximum(p1, p2) + cq64).max())
    x_abs = max(-float(cmin.min()), float(cmax.max()))
    mag = np.abs(wb64)
    if not (x_abs * float(mag[:k].max()) + float(mag[k:].max())) * 2.0 ** exp_y <= 2.0 ** 24:
        return None                                      # some y may not be exact
    cfg = bn.linger_cfg
    bits = cfg.out_bits
    buf = bn._buffers
    n = observe_bounds(buf["output_range"], buf["output_ready"], buf["output_exp"], lo, hi,
                       bits, cfg.momentum, two_stage.output_min_exp(bn, bits),
                       bn.__dict__.get(two_stage.AHEAD_RELU_ATTR, False),
                       lambda: f"{bn._where()}: output contains NaN or infinity; check the data"
                               f" and the learning rate (quantization needs finite values)")
    wb64 *= 2.0 ** n
    wb64[k:] += 0.5
    wb = wb64.astype(aq.dtype)
    if not (wb == wb64).all():
        return None          # aq * 2**n left the float range or cq * 2**n + 0.5 is not a float
    sat = saturates(lo, hi, n, bits)
    if sat:
        ctx.out_mask = _ste_bounds(n, bits, x.dtype)
    wb = torch.from_numpy(wb)
    v = channel_affine(x, wb[:k], wb[k:])                # y * 2**n + 0.5
    v.floor_()
    if sat:
        v.clamp_(numerics.qmin(bits), numerics.qmax(bits))
    return v.mul_(pow2(-n, v.dtype)), n


def _weight_exp(bn, a, on_cpu: bool):
    """Exponent of the per-channel scale ``a``, like a weight's (base.QuantMixin.weight_exp)."""
    bits = bn.linger_cfg.parameter_bits
    floor = two_stage.weight_min_exp(bn, bits)       # normalize_weight_value, if set
    if not on_cpu:
        n = exponent_for_range_t(a.abs().amax(), bits)
        return n if floor is None else n.clamp_min(floor)
    m = float(np.abs(a).max())
    if not math.isfinite(m):
        raise NumericError(f"{bn._where()}: weights contain NaN or infinity (the BatchNorm"
                           f" scale gamma / sqrt(var + eps)); check the data and learning rate")
    n = exponent_for_range_value(m, bits)
    return n if floor is None else max(n, floor)


def _fq(t: torch.Tensor, exp, bits):
    """``(fake-quantized values, inside mask)`` of a small tensor (the tensor path; numpy's is
    :func:`_fq_pair`): the arithmetic of ``functions._FakeQuantMask`` (int ``exp``) or
    ``functions._FakeQuantT`` (tensor ``exp``)."""
    if isinstance(exp, torch.Tensor):
        e = exp.to(t.dtype)
        up, down = torch.exp2(e), torch.exp2(-e)
    else:
        up, down = 2.0 ** exp, 2.0 ** -exp
    v = torch.floor(t * up + 0.5)
    q = v.clamp(numerics.qmin(bits), numerics.qmax(bits))
    return q * down, q == v


_FQ_CONSTANTS: dict = {}


def _fq_pair(a, c, exp_a: int, exp_c: int, bits_a: int, bits_c: int):
    """:func:`_fq` of ``a`` and of ``c`` in numpy, in one pass over both arrays:
    the same float operations with per-element constants (powers of two and the integer
    bounds, as the arrays' dtype rounds them), so the same values. The results are the halves
    of one array (``.base``)."""
    k = len(a)
    key = (k, a.dtype, exp_a, exp_c, bits_a, bits_c)
    const = _FQ_CONSTANTS.get(key)
    if const is None:
        if len(_FQ_CONSTANTS) > 1024:
            _FQ_CONSTANTS.clear()
        rows = [[2.0 ** exp_a, 2.0 ** exp_c], [numerics.qmin(bits_a), numerics.qmin(bits_c)],
                [numerics.qmax(bits_a), numerics.qmax(bits_c)],
                [2.0 ** -exp_a, 2.0 ** -exp_c]]
        const = _FQ_CONSTANTS[key] = [np.repeat(np.array(r, dtype=a.dtype), k) for r in rows]
    up, lo, hi, down = const
    v = np.floor(np.concatenate([a, c]) * up + 0.5)
    q = np.minimum(np.maximum(v, lo), hi)
    inside = q == v
    q *= down
    return q[:k], inside[:k], q[k:], inside[k:]


# -- batch statistics ---------------------------------------------------------------------------

#: the dimensions a per-channel statistic reduces, by rank: all but dim 1
_REDUCE_DIMS = {r: [0] + list(range(2, r)) for r in range(2, 9)}


def _channel_reductions(x: torch.Tensor, exp, bits, frozen: bool):
    """Per-channel ``(S1, S2, min, max)`` of ``x`` as numpy arrays (``S1, S2`` in float64, None
    when ``frozen``; min and max in ``x``'s dtype): the sums over ``(sample, channel)`` rows in
    float32 when that is exact (:func:`_exact_rows`), else in float64. CPU only."""
    d = x.detach()
    dims = _REDUCE_DIMS[x.dim()]
    rows = None if frozen else _exact_rows(d, exp, bits)
    if rows is not None:
        xv, shape = rows                                 # (N * C * chunks, k), (N, C, -1)
        a = xv.numpy()
        s1 = xv.sum(1).numpy().reshape(shape).sum(axis=(0, 2), dtype=np.float64)
        s2 = np.einsum("ij,ij->i", a, a).reshape(shape).sum(axis=(0, 2), dtype=np.float64)
    elif not frozen:
        xx = d.to(torch.float64, copy=True)              # (squared in place below)
        s1, s2 = xx.sum(dims).numpy(), xx.square_().sum(dims).numpy()
    else:
        s1 = s2 = None
    return s1, s2, d.amin(dims).numpy(), d.amax(dims).numpy()


def batch_moments(x: torch.Tensor, red, on_cpu: bool):
    """``(mean, var, run_mean, run_var, n)`` per channel (dim 1), in ``x``'s dtype: numpy arrays
    on the CPU (from ``red``, :func:`_channel_reductions`), tensors elsewhere. ``run_*``/``n``:
    over all DDP ranks (else the same)."""
    n = x.numel() // x.shape[1]
    if on_cpu:
        s1, s2 = red[0], red[1]
    else:
        dims = _REDUCE_DIMS[x.dim()]
        xx = x.detach().to(torch.float64, copy=True)     # (squared in place below)
        s1, s2 = xx.sum(dims), xx.square_().sum(dims)
    mean, var = _mean_var(s1, s2, n, x.dtype, on_cpu)
    if not _distributed():
        return mean, var, mean, var, n
    tot = torch.cat([torch.as_tensor(s1), torch.as_tensor(s2),
                     torch.full((1,), float(n), dtype=torch.float64, device=x.device)])
    dist.all_reduce(tot)                                 # exact: sums of exact terms
    c = s1.shape[0]
    if on_cpu:
        tot = tot.numpy()
        ng = int(tot[-1])
    else:
        ng = tot[-1]                                     # stays on the device: no sync
    gmean, gvar = _mean_var(tot[:c], tot[c:2 * c], ng, x.dtype, on_cpu)
    return mean, var, gmean, gvar, ng


def _mean_var(s1, s2, n, dtype, on_cpu: bool):
    """``S1 / N`` and ``(N S2 - S1**2) / N**2`` in float64, rounded once to ``dtype`` (``n``: an
    int, or a float64 device tensor under DDP on the tensor path)."""
    mean, var = s1 / n, (n * s2 - s1 * s1) / (n * n if isinstance(n, torch.Tensor) else
                                              float(n) * n)
    if on_cpu:
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        return mean.astype(np_dtype), np.maximum(var, 0.0).astype(np_dtype)
    return mean.to(dtype), var.clamp_min(0.0).to(dtype)


def _exact_rows(x: torch.Tensor, exp, bits):
    """``(x viewed as rows of k elements, (N, C, -1))`` for float32 ``x = q * 2**-exp``,
    ``|q| <= 2**(b-1)``, with rows short enough that float32 row sums of ``x`` and of ``x**2`` are
    exact: ``k * 2**(2b-2) <= 2**24`` (every partial sum of squares is an integer of at most 24
    bits times ``2**-2exp``; ``x**2`` a normal float32). None when no such chunking exists."""
    if not isinstance(exp, int) or bits is None or bits > 12 or not -50 <= exp <= 60 \
            or x.dim() < 3 or x.dtype != torch.float32:
        return None
    length = x.numel() // (x.shape[0] * x.shape[1])
    k_max = (1 << 24) >> (2 * bits - 2)
    k = length if length <= k_max else _divisor_at_most(length, k_max)
    if k < 32:
        return None
    return x.reshape(-1, k), (x.shape[0], x.shape[1], -1)


def _divisor_at_most(n: int, limit: int) -> int:
    for k in range(limit, 0, -1):
        if n % k == 0:
            return k
    return 1


def _update_running(bn, mean, var, n: int, on_cpu: bool):
    """nn.BatchNorm's update, ``r <- (1 - m) r + m * batch`` with the unbiased variance
    (momentum None: cumulative average): the same float operations in the same order as
    ``running.mul_(1 - m).add_(batch * m)``. (Called from the autograd function's forward,
    where no graph is recorded.)"""
    if on_cpu:  # numpy on views of the buffers
        count = bn.num_batches_tracked.numpy()
        count += 1
        m = bn.momentum if bn.momentum is not None else 1.0 / float(count)
        f = mean.dtype.type
        rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
        rm[...] = rm * f(1 - m) + mean * f(m)
        rv[...] = rv * f(1 - m) + (var * f(n / max(n - 1, 1))) * f(m)
        return
    bn.num_batches_tracked.add_(1)
    m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    unbiased_factor = n / max(n - 1, 1) if not isinstance(n, torch.Tensor) else \
        (n / (n - 1).clamp_min(1)).to(var.dtype)      # DDP on the tensor path: no sync
    upd = torch._foreach_mul([mean, var * unbiased_factor], m)
    torch._foreach_mul_([bn.running_mean, bn.running_var], 1 - m)
    torch._foreach_add_([bn.running_mean, bn.running_var], upd)
