"""Torch twins of the numerics core for training: fake quantization with a straight-through
gradient, the running range statistic and its exponent, exact batch statistics for BatchNorm.

The eval path does not use these functions: it computes on exact integers with
:mod:`linger.numerics`, exactly as the runtime does. Training uses them because they are fast.

Two ways to carry an exponent
-----------------------------
*Scalar path* (tensors on the CPU, eager mode): exponents are Python ints and a running range is
read and written as a Python float, with the float32 (or float64) rounding of the tensor formula
emulated step by step, so the buffers hold exactly what the tensor path would write. Reading a
CPU tensor is no device synchronisation, and a few Python operations cost less than the dozen
0-dim tensor ops they replace. NaN or infinity in a batch raises NumericError at once.

*Tensor path* (every other device, code traced by ``torch.compile``, or inside
:func:`tensor_path`): exponents are 0-dim int32 tensors on the device and nothing is read back,
so a training step never waits for the device. NaN or infinity in a batch is then detected
lazily: it makes the running range NaN/inf (the blend keeps it so), and the first eval forward
or export raises NumericError naming the layer.

Both paths compute the same numbers: the tests run both on the CPU and compare bit for bit.

Fake quantization
-----------------
``y = clamp(floor(x * 2**n + 0.5), qmin, qmax) * 2**-n``; the gradient is 1 where the value is
inside the range (``qmin - 0.5 <= x * 2**n < qmax + 0.5``) and 0 where the clamp saturates. One
autograd function per use; the backward is one fused kernel (``hardtanh_backward`` with those
bounds) for data widths up to 16 bits. Multiplying by ``2**-n`` equals dividing by ``2**n``
exactly (powers of two). torch's own ``fake_quantize_per_tensor_affine`` is not used: it rounds
half to even (``nearbyint``), and exact ties are common here -- a conv output lies on the grid
``2**-(n_x + n_w)``, so requantizing it hits ``.5`` exactly for about one value in ``2**shift``.
"""

from __future__ import annotations

import math
import threading
import weakref
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from .. import numerics
from ..errors import NumericError

_FORCE_TENSOR_PATH = [False]
_FAST_DTYPES = (torch.float32, torch.float64)


@contextmanager
def tensor_path(enabled: bool = True):
    """Use the tensor path on every device inside the block (tests and benchmarks run the
    GPU code path on the CPU this way)."""
    old = _FORCE_TENSOR_PATH[0]
    _FORCE_TENSOR_PATH[0] = enabled
    try:
        yield
    finally:
        _FORCE_TENSOR_PATH[0] = old


def scalar_path(t: torch.Tensor) -> bool:
    """True when statistics of ``t`` are handled as Python numbers (CPU, eager)."""
    return t.is_cpu and not _FORCE_TENSOR_PATH[0] and not torch.compiler.is_compiling()


_DIST = dist.is_available()


def _distributed() -> bool:
    return _DIST and dist.is_initialized() and dist.get_world_size() > 1


# -- the exponent rule on tensors ---------------------------------------------------------------

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
    m_q, e_q = math.frexp(numerics.qmax(bits))
    m, e = torch.frexp(r)
    # m_q is exact in float32 for bits <= 24; for 32 bits it rounds to 1.0 there, which no
    # float32 mantissa reaches, so the comparison stays exact in every case linger uses.
    n = (e_q - e) - (m > m_q).to(e.dtype)
    n = torch.where(r > 0, n, numerics.ZERO_RANGE_EXP)
    return n.clamp_(numerics.MIN_EXP, numerics.MAX_EXP).to(torch.int32)


# -- fake quantization --------------------------------------------------------------------------

def fake_quant(x: torch.Tensor, exp, bits: int, owned: bool = False) -> torch.Tensor:
    """Fake-quantize ``x`` to ``bits`` bits at exponent ``exp`` (int, or 0-dim integer tensor).

    ``owned=True``: ``x`` is a fresh result no one else holds (a layer's float output), which may
    then be overwritten with its quantized values instead of allocating a new tensor."""
    if isinstance(exp, torch.Tensor):
        if exp.device.type != "cpu" or not scalar_path(x):
            return _FakeQuantT.apply(x, exp, bits)
        exp = int(exp)                 # a CPU exponent on the CPU: reading it costs nothing
    exp = int(exp)
    if x.dtype in _FAST_DTYPES:
        if _inside(x, exp, bits):      # nothing saturates: rounding only, gradient 1
            return _round_untracked(x, exp, owned)
        if bits <= 16:
            return _FakeQuant.apply(x, exp, bits)
    return _FakeQuantMask.apply(x, exp, bits)


def fake_requant(x: torch.Tensor, exp_from, bits_from: int, exp_to, bits_to: int):
    """``fake_quant(x, exp_to, bits_to)`` for ``x`` known to lie on the grid ``2**-exp_from``
    with ``bits_from``-bit integers (a QTensor's values): same result and gradient, less work.

    Same or finer grid: nothing to round, so ``x`` itself when every value fits (and
    ``x * 2**n < 2**23``, where ``floor(v + 0.5)`` is exact in float32) or when the batch's
    bounds show that nothing saturates, else one clamp.
    Coarser grid: a rounding without clamp when ``bits_to >= bits_from`` (nothing can saturate),
    else the full fake quantization.
    """
    if isinstance(exp_from, torch.Tensor) or isinstance(exp_to, torch.Tensor) \
            or x.dtype not in _FAST_DTYPES:
        return fake_quant(x, exp_to, bits_to)
    exp_from, exp_to = int(exp_from), int(exp_to)
    if exp_to >= exp_from:
        if _fits(exp_from, bits_from, exp_to, bits_to) and \
                (x.dtype == torch.float64 or _fits(exp_from, bits_from, exp_to, 24)) \
                or _inside(x, exp_to, bits_to):
            return x
        if bits_to <= 16:
            return _FakeClamp.apply(x, exp_to, bits_to)
        return fake_quant(x, exp_to, bits_to)
    if bits_to >= bits_from:
        return _FakeRound.apply(x, exp_to)
    return fake_quant(x, exp_to, bits_to)


def _fits(exp_from: int, bits_from: int, exp_to: int, bits_to: int) -> bool:
    """Every ``bits_from``-bit integer at ``exp_from`` is a ``bits_to``-bit integer at
    ``exp_to >= exp_from`` (multiplied by ``2**(exp_to - exp_from)``)."""
    d = exp_to - exp_from
    return d >= 0 and numerics.qmin(bits_from) * 2 ** d >= numerics.qmin(bits_to) \
        and numerics.qmax(bits_from) * 2 ** d <= numerics.qmax(bits_to)


_BOUNDS: dict = {}


def _ste_bounds(exp: int, bits: int, dtype) -> tuple:
    """``(lo, hi)`` for ``hardtanh_backward``, which passes the gradient where ``lo < x < hi``:
    ``x * 2**n`` in ``[qmin - 0.5, qmax + 0.5)``, the values that round into the range. Exact
    for bits <= 16 (``qmin - 0.5`` has 17 significant bits). Cached per (exp, bits, dtype)."""
    key = (exp, bits, dtype)
    b = _BOUNDS.get(key)
    if b is None:
        s = 2.0 ** -exp
        lo, hi = (numerics.qmin(bits) - 0.5) * s, (numerics.qmax(bits) + 0.5) * s
        if dtype == torch.float64:
            lo = math.nextafter(lo, -math.inf)
        else:
            lo = float(np.nextafter(np.float32(lo), np.float32(-np.inf)))
        b = _BOUNDS[key] = (lo, hi)
    return b


_HALF = torch.tensor(0.5)  # a CPU scalar: broadcasts to any device and dtype


_POW2: dict = {}


def pow2(n: int, dtype) -> torch.Tensor:
    """``2**n`` as a 0-dim CPU tensor of ``dtype`` (cached): ``x.mul_(pow2(-n, x.dtype))`` is
    ``x.mul_(2.0 ** -n)`` -- the same rounding of the same float -- without converting a Python
    number on every call (which costs more than the multiplication of a small tensor)."""
    key = (n, dtype)
    t = _POW2.get(key)
    if t is None:
        t = _POW2[key] = torch.tensor(2.0 ** n, dtype=dtype)
    return t


def _scaled_plus_half(x: torch.Tensor, exp: int) -> torch.Tensor:
    """``x * 2**exp + 0.5`` as a new tensor in one pass (``0.5 + 2**exp * x``): the product is
    exact (a power of two), so the single rounding of the sum is the one
    ``x.mul(2**exp).add_(0.5)`` makes, in half the memory traffic."""
    return torch.add(_HALF, x, alpha=2.0 ** exp)


def _ste_backward(grad, x, bounds):
    return torch.ops.aten.hardtanh_backward(grad, x, bounds[0], bounds[1])


class _FakeQuant(torch.autograd.Function):
    """Scalar exponent, bits <= 16: ``clamp(floor(x * 2**n + 0.5)) * 2**-n`` in four passes
    (one allocating), backward one fused pass (``hardtanh_backward`` on the saved input)."""

    @staticmethod
    def forward(ctx, x, exp, bits):
        q = _scaled_plus_half(x, exp)                # x * 2**n + 0.5, rounded once
        q.floor_().clamp_(numerics.qmin(bits), numerics.qmax(bits))  # round half up, saturate
        ctx.save_for_backward(x)
        ctx.bounds = _ste_bounds(exp, bits, x.dtype)
        return q.mul_(2.0 ** -exp)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _ste_backward(grad, x, ctx.bounds), None, None


class _FakeQuantMask(torch.autograd.Function):
    """Scalar exponent, any width and dtype (32-bit biases): the mask is saved, as in
    :class:`_FakeQuantT`."""

    @staticmethod
    def forward(ctx, x, exp, bits):
        v = _scaled_plus_half(x, exp).floor_()
        q = v.clamp(numerics.qmin(bits), numerics.qmax(bits))
        ctx.save_for_backward(q == v)                # True where not saturated
        return q.mul_(2.0 ** -exp)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class _FakeQuantT(torch.autograd.Function):
    """Tensor exponent (device path, torch.compile): the same arithmetic with ``2**n`` as a
    device tensor."""

    @staticmethod
    def forward(ctx, x, exp, bits):
        e = exp.to(device=x.device, dtype=x.dtype)
        v = x * torch.exp2(e)
        v.add_(0.5).floor_()
        q = v.clamp(numerics.qmin(bits), numerics.qmax(bits))
        ctx.save_for_backward(q == v)
        return q.mul_(torch.exp2(-e))

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


class _FakeClamp(torch.autograd.Function):
    """``x`` already on the grid ``2**-n``: fake quantization is the saturating clamp alone."""

    @staticmethod
    def forward(ctx, x, exp, bits):
        s = 2.0 ** -exp
        ctx.save_for_backward(x)
        ctx.bounds = _ste_bounds(exp, bits, x.dtype)
        return torch.clamp(x, numerics.qmin(bits) * s, numerics.qmax(bits) * s)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _ste_backward(grad, x, ctx.bounds), None, None


def _round_untracked(x: torch.Tensor, exp: int, owned: bool) -> torch.Tensor:
    """``floor(x * 2**n + 0.5) * 2**-n`` with gradient 1 everywhere (a rounding that cannot
    saturate), without an autograd function: the rounding is written, unrecorded, into ``x``
    itself when it is ``owned`` (a fresh result of an op, nothing else holds it), else into a
    recorded ``clone`` of ``x`` (written through ``detach()``, which shares the memory and the
    version counter); autograd then passes the gradient through unchanged, as the
    straight-through estimator does. Only the values change in place, so an op that saved ``x``
    for its backward would still be caught by autograd's version check."""
    if not x.requires_grad:
        return _FakeRound.forward(None, x, exp)
    if not owned or x.grad_fn is None:               # (a leaf is never written)
        x = x.clone()
    d = x.detach()                                   # same memory and version counter
    torch.add(_HALF, d, alpha=2.0 ** exp, out=d)
    d.floor_().mul_(pow2(-exp, d.dtype))
    return x


class _FakeRound(torch.autograd.Function):
    """Rounding onto a coarser grid that cannot saturate: gradient 1 everywhere."""

    @staticmethod
    def forward(ctx, x, exp):
        return _scaled_plus_half(x, exp).floor_().mul_(pow2(-exp, x.dtype))

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def clip(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``x.clamp(lo, hi)`` with Python-number bounds and clamp's gradient (1 where
    ``lo <= x <= hi``, 0 outside) as one fused backward kernel; autograd's own clamp backward
    is a ``where`` that is an order of magnitude slower on the CPU."""
    if not x.requires_grad or not torch.is_grad_enabled() or x.dtype not in _FAST_DTYPES:
        return torch.clamp(x, lo, hi)
    return _Clip.apply(x, float(lo), float(hi))


class _Clip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        if x.dtype == torch.float64:
            ctx.bounds = (math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf))
        else:  # the float32 neighbours outside [lo, hi] as clamp rounds them (to float32)
            ctx.bounds = (float(np.nextafter(np.float32(lo), np.float32(-np.inf))),
                          float(np.nextafter(np.float32(hi), np.float32(np.inf))))
        return torch.clamp(x, lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _ste_backward(grad, x, ctx.bounds), None, None


# -- bounds of the last statistic: skip the clamp and the gradient mask when nothing saturates

_SEEN = threading.local()


def _remember(x: torch.Tensor, lo: float, hi: float) -> None:
    """Keep the min/max just read from ``x`` (scalar path) for :func:`_inside`."""
    _SEEN.ref, _SEEN.version, _SEEN.bounds = weakref.ref(x), x._version, (lo, hi)


def remembered_bounds(x: torch.Tensor):
    """``(min, max)`` the last statistic read from ``x`` if ``x`` is that tensor, unchanged
    since; else None."""
    ref = getattr(_SEEN, "ref", None)
    if ref is None or ref() is not x or x._version != _SEEN.version:
        return None
    return _SEEN.bounds


def _inside(x: torch.Tensor, exp: int, bits: int) -> bool:
    """True when ``x`` is the tensor whose min/max the last statistic read (unchanged since)
    and none of its values saturates at ``(exp, bits)``: every ``x * 2**exp`` lies in
    ``[qmin - 0.5, qmax + 0.5)``. Then fake quantization is a rounding with gradient 1
    everywhere (the usual case: the exponent comes from the running range of these values)."""
    ref = getattr(_SEEN, "ref", None)
    if ref is None or ref() is not x or x._version != _SEEN.version:
        return False
    return not saturates(*_SEEN.bounds, exp, bits)


# -- running range statistic --------------------------------------------------------------------

def batch_absmax(x: torch.Tensor) -> torch.Tensor:
    """``max|x|`` over the whole tensor (float32, same device), reduced (max) over
    DistributedDataParallel ranks so every rank keeps identical statistics."""
    m = x.detach().abs().amax().float()
    if _distributed():
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m


_SMALL = 1 << 15  # below this many elements one aminmax call beats two reductions


def _bounds(x: torch.Tensor) -> tuple:
    """``(min, max)`` of ``x`` as Python floats (exact), remembered for :func:`_inside`. CPU
    float32/float64: numpy's reductions on the same memory (faster than torch's here; both
    return NaN when ``x`` has one)."""
    if x.dtype in _FAST_DTYPES and x.numel():
        a = x.numpy(force=True)                      # a view: x is on the CPU
        lo, hi = float(a.min()), float(a.max())
        _remember(x, lo, hi)
        return lo, hi
    d = x.detach()
    if d.numel() <= _SMALL:
        lo_t, hi_t = torch.aminmax(d)
        lo, hi = float(lo_t), float(hi_t)
    else:                                            # two reductions, no |x| temporary
        lo, hi = float(d.amin()), float(d.amax())
    _remember(x, lo, hi)
    return lo, hi


def _absmax_value(x: torch.Tensor, nonneg: bool = False, weights: bool = False) -> float:
    """Scalar-path twin of :func:`batch_absmax` (of ``relu(x)`` when ``nonneg``), as a float.
    ``weights``: ``max|w|`` in the weights' own dtype and of this rank only (weights are the
    same on every rank, and a collective there would depend on the call order)."""
    lo, hi = _bounds(x)
    return _absmax_of(lo, hi, nonneg) if weights else _batch_absmax_of(lo, hi, nonneg)


def _absmax_of(lo: float, hi: float, nonneg: bool) -> float:
    if hi != hi or lo != lo:
        return math.nan
    return max(hi, 0.0) if nonneg else max(hi, -lo)


def _batch_absmax_of(lo: float, hi: float, nonneg: bool) -> float:
    """:func:`batch_absmax` from a batch's min and max: float32, the maximum over DDP ranks."""
    m = float(np.float32(_absmax_of(lo, hi, nonneg)))
    if _distributed():
        t = torch.tensor(m, dtype=torch.float32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        m = float(t)
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


def _blend_value(r: float, ready: bool, m: float, momentum: float, dtype) -> float:
    """:func:`update_range` on Python numbers, rounding like the tensor formula: ``running``
    (dtype ``R``) times a scalar in ``R``, the float32 batch maximum times a scalar in float32,
    the sum in ``R``. Each float32 operation is computed in float64 and rounded once, which is
    the correctly rounded float32 result (float64 has more than 2 * 24 + 2 bits)."""
    f32 = np.float32
    if dtype == torch.float64:
        if not ready:
            return m
        if not (abs(r) < 1e38 and abs(m) < 1e38):   # near float32 overflow: let numpy say inf
            with np.errstate(over="ignore", invalid="ignore"):
                return float(np.float64(r) * (1.0 - momentum)
                             + np.float64(f32(m) * f32(momentum)))
        return r * (1.0 - momentum) + float(f32(m * _momentum_f32(momentum)[1]))
    if not ready:
        return float(f32(m))
    if not (abs(r) < 1e38 and abs(m) < 1e38):       # near float32 overflow: let numpy say inf
        with np.errstate(over="ignore", invalid="ignore"):
            return float(f32(r) * f32(1.0 - momentum) + f32(f32(m) * f32(momentum)))
    keep, take = _momentum_f32(momentum)
    return float(f32(float(f32(r * keep)) + float(f32(m * take))))


_MOMENTUM_F32: dict = {}


def _momentum_f32(momentum: float) -> tuple:
    """``(1 - momentum, momentum)`` rounded to float32 (as Python floats), cached."""
    c = _MOMENTUM_F32.get(momentum)
    if c is None:
        c = _MOMENTUM_F32[momentum] = (float(np.float32(1.0 - momentum)),
                                       float(np.float32(momentum)))
    return c


def exponent_for_range_value(r: float, bits: int) -> int:
    """:func:`linger.numerics.exponent_for_range` for a finite float, by ``frexp`` (the rule of
    :func:`exponent_for_range_t`: ``r = m * 2**e``, ``qmax = m_q * 2**e_q``,
    ``n = e_q - e - (m > m_q)``); exact, and cheaper than ``log2`` plus corrections."""
    if r <= 0.0:
        return numerics.ZERO_RANGE_EXP
    m_q, e_q = _QMAX_FREXP.get(bits) or _QMAX_FREXP.setdefault(
        bits, math.frexp(numerics.qmax(bits)))
    m, e = math.frexp(r)
    n = e_q - e - (m > m_q)
    return numerics.MIN_EXP if n < numerics.MIN_EXP else min(n, numerics.MAX_EXP)


_QMAX_FREXP: dict = {}


def observe(running: torch.Tensor, ready: torch.Tensor, exp_buf: torch.Tensor, x: torch.Tensor,
            bits: int, momentum: float, min_exp=None, nonneg: bool = False, where=None):
    """Update a running range with batch ``x`` (of ``relu(x)`` when ``nonneg``), store and
    return the exponent ``max(floor(log2(qmax / r)), min_exp)``.

    Scalar path: returns an int and raises NumericError (message ``where()``) for NaN/inf.
    Tensor path: returns a 0-dim int32 tensor and never reads the device (see module docstring).
    """
    if not scalar_path(x):
        m = batch_absmax(x.clamp_min(0) if nonneg else x)
        update_range(running, ready, m.to(running.device), momentum)
        exp = exponent_for_range_t(running, bits)
        if min_exp is not None:
            exp = exp.clamp_min(min_exp)
        exp_buf.copy_(exp)
        return exp
    lo, hi = _bounds(x)
    return observe_bounds(running, ready, exp_buf, lo, hi, bits, momentum, min_exp, nonneg, where)


def observe_bounds(running, ready, exp_buf, lo: float, hi: float, bits: int, momentum: float,
                   min_exp=None, nonneg: bool = False, where=None) -> int:
    """Scalar path of :func:`observe` for a batch whose min and max are already known."""
    m = _batch_absmax_of(lo, hi, nonneg)
    was_ready = bool(ready)
    r = _blend_value(float(running), was_ready, m, momentum, running.dtype) \
        if math.isfinite(m) else m
    if not math.isfinite(r):
        raise NumericError(where() if where is not None else "NaN or infinity in a batch")
    exp = exponent_for_range_value(r, bits)
    if min_exp is not None:
        exp = max(exp, int(min_exp))
    running.fill_(r)
    if not was_ready:
        ready.fill_(True)
    if not was_ready or int(exp_buf) != exp:
        exp_buf.fill_(exp)
    return exp


def saturates(lo: float, hi: float, exp: int, bits: int) -> bool:
    """Some value in ``[lo, hi]`` saturates at ``(exp, bits)``: ``x * 2**exp`` outside
    ``[qmin - 0.5, qmax + 0.5)``."""
    s = 2.0 ** exp                                   # exact products in float64
    top = 1 << (bits - 1)                            # -qmin, qmax + 1
    return not (lo * s >= -top - 0.5 and hi * s < top - 0.5)


def weight_exponent(w: torch.Tensor, bits: int, min_exp=None, where=None):
    """``max(floor(log2(qmax / max|w|)), min_exp)`` from the current weights: an int on the
    scalar path (NaN/inf raise NumericError with ``where()``), a 0-dim tensor otherwise."""
    if not scalar_path(w):
        exp = exponent_for_range_t(w.detach().abs().amax(), bits)
        return exp if min_exp is None else exp.clamp_min(min_exp)
    m = _absmax_value(w, weights=True)
    if not math.isfinite(m):
        raise NumericError(where() if where is not None else "weights contain NaN or infinity")
    exp = exponent_for_range_value(m, bits)
    return exp if min_exp is None else max(exp, int(min_exp))


# -- per-channel affine ------------------------------------------------------------------------

_AFFINE_CONSTS: dict = {}


def channel_affine(x: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``y = x * a + c`` per channel (dim 1 of ``(N, C, *)``), ``a``, ``c`` of shape ``(C,)``.

    On the CPU this is one fused kernel with a fused backward: inference-mode ``batch_norm``
    with mean 0, variance 1 and eps 0 computes ``x * (1 / sqrt(1)) * a + (c - 0 * a)``, the same
    numbers (``x * a`` is exact for quantized ``x`` and ``a``). Elsewhere (GPU libraries may
    compute ``1 / sqrt(1)`` with a reciprocal square-root approximation) and under
    ``torch.compile``: the explicit formula.
    """
    if x.dim() >= 2 and x.dtype in _FAST_DTYPES and scalar_path(x):
        key = (x.shape[1], x.dtype)
        zo = _AFFINE_CONSTS.get(key)
        if zo is None:
            zo = _AFFINE_CONSTS[key] = (torch.zeros(x.shape[1], dtype=x.dtype),
                                        torch.ones(x.shape[1], dtype=x.dtype))
        return torch.batch_norm(x, a, c, zo[0], zo[1], False, 0.0, 0.0, False)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return x * a.view(shape) + c.view(shape)
