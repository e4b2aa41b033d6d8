"""The GRU/LSTM recurrence in training: one autograd node per direction.

Forward computes, step by step, the float twin of :func:`linger.iqrnn.gru_step` /
:func:`linger.iqrnn.lstm_step` with fake quantization at every integer point. The values are
identical to composing :func:`linger.quant.functions.fake_quant` calls (tests/test_rnn_train.py
checks it with ``torch.equal``); backward is written out by hand with the straight-through
estimator (the gradient of a fake quantization is 1 where it did not saturate, 0 where it did).

Why it looks the way it does: a keyword-spotting LSTM (49 steps of batch 32, 128 units) spends
its time in per-op overhead (an element-wise op on a (32, 512) tensor costs 2-4 us, mostly
dispatch) and in memory traffic, so the code minimises ops per step and large temporaries:

- The loop works in *integer units* where that saves ops: ``W_hh`` and ``b_hh`` are scaled by
  ``2**11`` once (the LSTM also carries ``h`` as integers, ``W_hh`` scaled by ``2**(11 - exp_h)``:
  the same products), so the matmul gives the Q11 gate values times ``2**11`` (scaling by a power
  of two commutes with every float rounding, so the products and sums are those of the
  real-valued matmul times ``2**11``, exactly); sums of values on the same grid are exact
  integers and need no rounding; ``round(x * 2**e)`` is one ``add(0.5, x, alpha=2**e)`` and one
  ``floor_``.
- Where every partial sum of ``gq + W_hh h + b_hh`` is provably exact (:func:`_gate_bounds`: the
  grids and the weights' absolute row sums, once per call; the usual case), the LSTM's gates
  are one ``addmm`` onto ``gq + b_hh + 1/2`` (formed a few steps at a time) and a ``floor``,
  with ``W_hh`` laid out as the BLAS runs fastest: any summation order gives the same value.
- The layer's input projection is formed in the node where it is exact too
  (:func:`projected_direction`, :func:`_projection_bound`): ``b_ih`` then joins the rounding
  offset (no pass adding it, no column sum for ``db_ih``), and a bound on the gates often
  replaces the pass over them that looks for saturation.
- Constants are 0-dim tensors (an op with a Python float converts it to a tensor first); views
  and small buffers are made once per call; the loops run in inference mode (less dispatch).
- Clamps that cannot act are skipped: the weights' absolute row sums bound ``W_hh h + b_hh``
  for every state on the hidden grid, once per call (:func:`_hh_bound`).
- Nothing per step computes a saturation mask (a bool op costs 4x a float op). The forward keeps
  the *unclamped* integer values of the quantization points that saturated somewhere (one
  reduction each after the loop) and backward derives the masks as float 0/1; the LSTM also
  keeps the activations it computed (tanh of gate g in the sigmoid buffer's place for g) and
  the states after every step, the GRU (tighter on memory) recomputes them.
- Backward works by runs of :data:`_CHUNK` steps: for a run it computes, with a few ops over the
  whole run (into buffers that stay in cache), the per-step factors that turn the gradient
  reaching ``h'`` (and ``c'``) into the gate gradients; the step loop is then about five ops
  and the ``dgh @ W_hh`` product; ``dgi`` (written by the steps themselves for an LSTM whose
  recurrent gates never saturated), ``dW_hh`` and ``db_hh`` per run.

With lengths (``active`` given) the factors are multiplied by the 0/1 "step counts" mask, so the
loop stays the same; the carried states are kept, as they are not the step outputs.

The input gates arrive unquantized (or are formed here): the node rounds them onto Q11 itself
(no separate autograd node keeping its input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import iqrnn, numerics
from ..iqmath import GATE_Q, PROB_Q
from ..iqrnn import CELL_BITS, CELL_Q

_I16 = (numerics.qmin(16), numerics.qmax(16))  # the Q11 gate pre-activations are int16
_Q15 = 2.0 ** -PROB_Q  # one unit of the activations' grid (a Python float: a scalar argument)
_CHUNK = 8  # backward: steps whose factors are computed together (their temporaries stay cached)


class _Consts:
    """The 0-dim constants of one call, in the data's dtype and device."""

    def __init__(self, like: torch.Tensor, exp_h: int):
        def c(v):
            return torch.tensor(v, dtype=like.dtype, device=like.device)
        self.zero, self.one, self.half = c(0.0), c(1.0), c(0.5)
        self.gate, self.prob = c(2.0 ** -GATE_Q), c(2.0 ** -PROB_Q)
        self.cell, self.h = c(2.0 ** -CELL_Q), c(2.0 ** -exp_h)


def _round_gates(gi: torch.Tensor, half: torch.Tensor, out=None) -> torch.Tensor:
    """The input gates on Q11, integer units: ``floor(gi * 2**11 + half)``. ``half`` is 1/2, or
    ``2**11 b_ih + 1/2`` when ``gi`` comes without its bias (:func:`_projection_bound`: the
    sum is exact, so this is ``round((gi + b_ih) * 2**11)``)."""
    return torch.add(half, gi, alpha=2.0 ** GATE_Q, out=out).floor_()


def _round(x: torch.Tensor, scale: float, k: _Consts, out=None) -> torch.Tensor:
    """``floor(x * scale + 0.5)`` (``scale`` a power of two, so ``x * scale`` is exact and the sum
    is rounded once, as in :func:`linger.numerics.round_half_up`)."""
    return torch.add(k.half, x, alpha=scale, out=out).floor_()


def _clamp_mask(raw: torch.Tensor, lo: int, hi: int, may_saturate: bool = True):
    """``(clamp(raw, lo, hi), 1.0 where raw was inside else 0.0)``: a fake quantization's value
    (in integer units) and its straight-through mask; ``(raw, None)`` when nothing saturated
    (checked with one reduction, unless ``may_saturate`` is False). Treat the values as
    read-only."""
    if not may_saturate or not _saturates(raw, lo, hi):
        return raw, None
    q = raw.clamp(lo, hi)
    return q, torch.eq(raw, q, out=torch.empty_like(raw))


def _saturates(raw: torch.Tensor, lo: int, hi: int) -> bool:
    """Whether any value of ``raw`` lies outside ``[lo, hi]``."""
    if raw.numel() == 0:
        return False
    low, high = torch.aminmax(raw)
    return bool(low < lo) or bool(high > hi)


def _hh_bound(w_hh, b_hh, exp_h: int, bits_h: int) -> float:
    """A bound on ``|W_hh h + b_hh|`` on Q11 (integer units) for every state on the hidden grid
    (``|h| <= 1``), from the weights' absolute row sums, once per call; with slack for the float
    sums (relative error far below 2**-10) and the rounding."""
    hmax = max(-numerics.qmin(bits_h), numerics.qmax(bits_h))   # |h| in integer units
    r = w_hh.detach().abs().sum(1).mul_(hmax * 2.0 ** -exp_h)     # bounds |W_hh h|, |h| <= 1
    if b_hh is not None:
        r.add_(b_hh.detach().abs())
    return (float(r.max()) if r.numel() else 0.0) * (2.0 ** GATE_Q * (1 + 2.0 ** -10)) + 1.0


def _gate_bounds(gh: float, gq_abs: float, w_hh, b_hh, h0, exp_h: int, bits_h: int,
                 lstm: bool) -> tuple:
    """``(clamp gh, clamp pre, exact)`` given ``gh`` (:func:`_hh_bound`) and ``gq_abs``, a bound
    on the rounded input gates ``|gq|`` (integer units):

    - whether ``W_hh h + b_hh`` and ``gq + W_hh h + b_hh`` on Q11 can leave int16; usually
      neither can, and the steps skip both clamps;
    - ``exact``: whether ``gq + (W_hh h + b_hh) * 2**11 + 1/2`` (the rounding offset) is exact in
      the data's float type whatever the order of its sums: true when ``2**11 W_hh h`` (``h``
      in integer units, ``h0`` included), ``2**11 b_hh + 1/2`` and ``gq`` lie on a grid
      ``2**-m`` with every partial sum below ``2**digits`` units (``digits`` 24 for float32).
      Then one ``addmm`` gives the gates before their ``floor`` (no separate rounding of
      ``gh``), and the matrix product may take the fastest layout (float sums in any order
      give the same, exact, value). Only the LSTM uses it (False for a GRU: no checks)."""
    bound = gh + gq_abs
    w, b = w_hh.detach(), None if b_hh is None else b_hh.detach()
    digits = 2 - math.frexp(torch.finfo(w.dtype).eps)[1]       # significand bits: 24 (float32)
    m = digits - math.frexp(bound)[1] if math.isfinite(bound) else 0
    # on the grid 2**-m: (the float products by powers of two are exact, as is b + 1/2 there)
    exact = lstm and m >= 1 and _integral(w, 2.0 ** (GATE_Q - exp_h + m)) and \
        (b is None or _integral(b, 2.0 ** (GATE_Q + m)))
    if exact and h0.numel():
        hmax = max(-numerics.qmin(bits_h), numerics.qmax(bits_h))   # as in _hh_bound
        exact = _integral(h0.detach(), 2.0 ** exp_h) and \
            float(h0.detach().abs().max()) * 2.0 ** exp_h <= hmax
    return gh > _I16[1], bound > _I16[1], exact


def _int8_weights(w_hh, h0, exp_h: int, bits_h: int):
    """``(W8^T, alpha)`` with ``W8 = W_hh * 2**e`` int8 and ``alpha = 2**(11 - exp_h - e)``, so
    that ``(h W8^T) * alpha`` (an exact int32 product, ``h`` in integer units) is the gates'
    ``2**11 W_hh h``; or None. For the CPU's integer matrix product (about twice as fast as the
    float one here), where the hidden state is int8 (``bits_h <= 8``, ``h0`` in range), the
    weights lie on a power-of-two grid within int8 and the products fit float32 exactly."""
    if w_hh.device.type != "cpu" or bits_h > 8 or not hasattr(torch, "_int_mm") or \
            not w_hh.numel() or w_hh.shape[1] * 128 * 128 >= 2 ** 24:
        return None
    w = w_hh.detach()
    w_max = float(w.abs().max())
    e = math.floor(math.log2(127.0 / w_max)) if w_max > 0 else 0
    if not math.isfinite(w_max) or not _integral(w, 2.0 ** e):
        return None
    h = h0.detach() * 2.0 ** exp_h
    if h.numel() and (float(h.max()) > 127 or float(h.min()) < -128):
        return None
    return (w * 2.0 ** e).t().contiguous().to(torch.int8), 2.0 ** (GATE_Q - exp_h - e)


def _integral(x: torch.Tensor, scale: float) -> bool:
    """Whether every value of ``x * scale`` (a power of two: exact) is an integer: its
    fractional parts are all 0 (NaN and infinity give NaN). Two ops and one reduction
    (``torch.equal(v, v.floor())`` costs ~2x as much)."""
    if x.numel() == 0:
        return True
    low, high = torch.aminmax(torch.mul(x, scale).frac_())
    return float(low) == 0.0 and float(high) == 0.0


def _mul_(x: torch.Tensor, *factors) -> torch.Tensor:
    """``x *= f`` in place for every factor that is not None (absent masks are all ones)."""
    for f in factors:
        if f is not None:
            x.mul_(f)
    return x


def _buffer(like: torch.Tensor, *shape) -> torch.Tensor:
    """An empty tensor that autograd may keep or return: made outside inference mode (the loops
    run in it, which takes ~20% off every small op, but its tensors cannot be saved)."""
    with torch.inference_mode(False):
        return like.new_empty(shape)


def _zeros(like: torch.Tensor, *shape) -> torch.Tensor:
    """Zeros that autograd may return (see :func:`_buffer`)."""
    with torch.inference_mode(False):
        return like.new_zeros(shape)


def _normal(t):
    """``t`` as a tensor autograd may keep or return (a copy if it was made in inference mode)."""
    if t is None or not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()


def _before(first: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """(T, N, H) state entering each step: ``first`` then ``states[:-1]``."""
    return torch.cat([first[None], states[:-1]])[:states.shape[0]]


def _matmul_q11(h, wt, b, out):
    """``h @ W_hh.T + b_hh`` with W and b pre-scaled by 2**11, into ``out`` (N, G)."""
    return torch.mm(h, wt, out=out) if b is None else torch.addmm(b, h, wt, out=out)


def _unbound(x, steps):
    """``x.unbind(0)``, or ``steps`` Nones for an absent buffer."""
    return [None] * steps if x is None else x.unbind(0)


def _hidden_out(hr, h, t, yt, carried, active, acts, bits_h, k):
    """Clamp the new state (integer units in ``hr``) onto the hidden grid, write the step's
    output ``yt`` and return the state carried to the next step."""
    lo_h, hi_h = numerics.qmin(bits_h), numerics.qmax(bits_h)
    if active is None:
        return torch.clamp(hr, lo_h, hi_h, out=yt).mul_(k.h)
    h_new = hr.clamp(lo_h, hi_h).mul_(k.h)
    torch.mul(h_new, acts[t], out=yt)
    return torch.where(active[t], h_new, h, out=carried[t])


def _gru_forward(gq, h0, w_hh, b_hh, active, exp_h, bits_h, k, clamp_gh, clamp_pre, exact,
                 raw, half):
    """Forward over all steps; returns ``y, h_T``, the buffers backward needs and which of
    them saturated somewhere (``{"gh", "pre", "h"}``: True where a mask is needed).
    ``raw``: ``gq`` holds the unrounded gates, rounded step by step (see :func:`_gates`; with
    ``half`` as the rounding offset, :func:`_round_gates`)."""
    steps, n, g = gq.shape
    hs = g // 3
    wt = (w_hh * 2.0 ** GATE_Q).t()
    b = None if b_hh is None else b_hh * 2.0 ** GATE_Q

    def buf(width):
        return _buffer(gq, steps, n, width)
    gh_raw, a_rz, a_n = buf(g), buf(2 * hs), buf(hs)  # gh; gi + gh for r, z; gi_n + r * gh_n
    h_raw, y = buf(hs), buf(hs)       # the new state on the hidden grid; all not clamped
    carried = None if active is None else buf(hs)
    acts = None if active is None else active.to(gq.dtype)
    ghc = gq.new_empty(n, g)                         # gh clamped, when it can saturate
    rz = gq.new_empty(n, 2 * hs)                     # r and z on Q15 (real)
    r, z = rz[:, :hs], rz[:, hs:]                    # views made once: slicing costs an op
    h = h0
    gtmp = gq.new_empty(n, g)                        # this step's gates on Q11 (raw)
    gi_views = (gtmp[:, :2 * hs], gtmp[:, 2 * hs:]) if raw else None
    bufs = zip(gq.unbind(0), gq[..., :2 * hs].unbind(0), gq[..., 2 * hs:].unbind(0),
               gh_raw.unbind(0), gh_raw[..., :2 * hs].unbind(0), gh_raw[..., 2 * hs:].unbind(0),
               a_rz.unbind(0), a_n.unbind(0), h_raw.unbind(0), y.unbind(0))
    ghc_rz, ghc_n = ghc[:, :2 * hs], ghc[:, 2 * hs:]
    for t, (gi_t, gi_rz, gi_n, gh, gh_rz, gh_n, arz, an, hr, yt) in enumerate(bufs):
        if raw:
            _round_gates(gi_t, half, out=gtmp)
            gi_rz, gi_n = gi_views
        _matmul_q11(h, wt, b, gh).add_(k.half).floor_()                        # (N, 3H) Q11
        if clamp_gh:
            torch.clamp(gh, *_I16, out=ghc)
            gh_rz, gh_n = ghc_rz, ghc_n
        arz = torch.add(gi_rz, gh_rz, out=arz)
        s = (arz.clamp(*_I16).mul_(k.gate) if clamp_pre else arz.mul(k.gate)).sigmoid_()
        _round(s, 2.0 ** PROB_Q, k, out=rz).mul_(k.prob)                         # Q15, real
        an = torch.add(gi_n, _round(r * gh_n, 1.0, k), out=an)           # r * gh_n on Q11
        tn = (an.clamp(*_I16).mul_(k.gate) if clamp_pre else an.mul(k.gate)).tanh_()
        nq = _round(tn, 2.0 ** PROB_Q, k).mul_(k.prob)
        _round(torch.lerp(nq, h, z), 2.0 ** exp_h, k, out=hr)    # (1 - z) * n + z * h
        h = _hidden_out(hr, h, t, yt, carried, active, acts, bits_h, k)
    sat = {"gh": clamp_gh and _saturates(gh_raw, *_I16),
           "pre": clamp_pre and (_saturates(a_rz, *_I16) or _saturates(a_n, *_I16)),
           "h": _saturates(h_raw, numerics.qmin(bits_h), numerics.qmax(bits_h))}
    return y, h, (gh_raw, a_rz, a_n, h_raw, carried), sat


def _gru_factors(saved, sat, h_first, acts, k, bits_h):
    """For a run of steps (the buffers' slices): ``fgi`` (C, N, 3, H), the gate-input gradients
    per unit of the gradient ``dh'`` reaching a step's output, ``fgh`` the same for the
    recurrent gates (times their saturation masks), ``keep`` (C, N, H): what of ``dh'`` reaches
    the previous state directly, and ``h_prev`` (C, N, H), the states entering the steps
    (``h_first`` the first). ``acts`` (C, N, 1) float or None (every step counts)."""
    gh_raw, a_rz, a_n, h_raw, carried = saved
    steps, n, g = gh_raw.shape
    hs = g // 3
    ghc, m_gh = _clamp_mask(gh_raw, *_I16, sat["gh"])
    arz, m_rz = _clamp_mask(a_rz, *_I16, sat["pre"])
    s = (arz * k.gate).sigmoid_()                                                # (C, N, 2H)
    rz = _round(s, 2.0 ** PROB_Q, k).mul_(k.prob)
    r, z = rz[..., :hs], rz[..., hs:]
    m_r, m_z = (None, None) if m_rz is None else (m_rz[..., :hs], m_rz[..., hs:])
    an, m_n = _clamp_mask(a_n, *_I16, sat["pre"])
    tn = (an * k.gate).tanh_()
    nq = _round(tn, 2.0 ** PROB_Q, k).mul_(k.prob)
    hc, m_h = _clamp_mask(h_raw, numerics.qmin(bits_h), numerics.qmax(bits_h), sat["h"])
    h_prev = _before(h_first, hc * k.h if carried is None else carried)
    ds = torch.sub(k.one, s).mul_(s)                        # sigmoid' for r and z
    fgi = s.new_empty(steps, n, 3, hs)
    f_r, f_z, f_n = fgi.unbind(2)
    torch.sub(k.one, z, out=f_n).mul_(torch.addcmul(k.one, tn, tn, value=-1.0))  # da_n/dh'
    _mul_(f_n, m_h, m_n, acts)
    _mul_(torch.mul(f_n, ghc[..., 2 * hs:], out=f_r).mul_(k.gate).mul_(ds[..., :hs]), m_r)
    _mul_(torch.sub(h_prev, nq, out=f_z).mul_(ds[..., hs:]), m_h, m_z, acts)     # da_z/dh'
    keep = _mul_(z.clone(), m_h)                            # h' = ... + z * h: dh' z reaches h
    if acts is not None:
        keep.mul_(acts).add_(1.0 - acts)                    # a step that does not count: dh
    fgh = fgi.clone() if m_gh is None else fgi * m_gh.view(steps, n, 3, hs)
    fgh[:, :, 2].mul_(r)                                    # gh_n enters as r * gh_n
    return fgi, fgh, keep, h_prev


def _lstm_forward(gq, h0, c0, w_hh, b_hh, active, exp_h, bits_h, k, clamp_gh, clamp_pre,
                  exact, raw, half):
    """Forward over all steps; returns ``y, h_T, c_T``, the buffers backward needs (see
    :func:`_lstm_factors`) and ``{}`` (the buffers say what saturated). Kept: the states after
    every step (``y`` itself and the cells, or the carried ones with lengths), the unclamped
    values of every quantization point that saturated somewhere (for the masks; None where
    nothing did) and the activations before rounding (the step computes them anyway;
    recomputing them in backward would cost more).

    The state ``h`` is carried in integer units (``W_hh`` scaled by ``2**(11 - exp_h)``: the
    same products as ``h`` times ``2**11 W_hh``), ``y`` and the carried states are scaled to
    real values after the loop. ``exact`` (:func:`_gate_bounds`, and ``gh`` cannot saturate):
    the gates of :data:`_CHUNK` steps are rounded together and given ``b_hh`` and the rounding
    offset, and each step's ``addmm`` onto them (or an int8 product added, where
    :func:`_int8_weights` applies) and a ``floor`` give ``gq + gh``. ``raw``
    and ``half``: as for :func:`_gru_forward`."""
    steps, n, g = gq.shape
    hs = g // 4
    lo_c, hi_c = numerics.qmin(CELL_BITS), numerics.qmax(CELL_BITS)
    lo_h, hi_h = numerics.qmin(bits_h), numerics.qmax(bits_h)
    exact = exact and not clamp_gh
    wt = (w_hh * 2.0 ** (GATE_Q - exp_h)).t()       # per integer unit of h
    w8 = _int8_weights(w_hh, h0, exp_h, bits_h) if exact else None
    if exact:
        if w8 is None:
            wt = wt.contiguous()                     # the fastest layout: the sums are exact
        b = k.half if b_hh is None else b_hh * 2.0 ** GATE_Q + 0.5
    else:
        b = None if b_hh is None else b_hh * 2.0 ** GATE_Q

    def buf(width):
        return _buffer(gq, steps, n, width)
    gh_raw = buf(g) if clamp_gh else None            # W_hh h + b, rounded, not clamped
    pre = buf(g) if clamp_pre else None              # gi + gh, not clamped
    scratch = gq.new_empty(n, g)                     # gh and gi + gh when they cannot saturate
    gtmp = gq.new_empty(n, g)                        # this step's gates on Q11 (raw)
    sig = buf(g)                      # the activations: sigmoid of gates i, f, o, tanh of g
    c_raw, tcr = buf(hs), buf(hs)     # new cell on Q11 (not clamped), its tanh
    h_raw, y = buf(hs), buf(hs)       # new state on the hidden grid (not clamped); output
    if active is None:
        h_st, c_st, acts, hq = y, buf(hs), None, None  # the states after each step
    else:
        h_st, c_st, acts, hq = buf(hs), buf(hs), active.to(gq.dtype), gq.new_empty(n, hs)
    # exact: gq + b + 1/2 for a run of steps (the saved ``pre`` itself when it is kept)
    run = gq.new_empty(min(steps, _CHUNK), n, g) if exact and pre is None else None
    run_g = None if run is None else run[..., 2 * hs:3 * hs].unbind(0)
    # the rounded activations go to small reused tensors: writing them into (T, N, .) buffers
    # as well costs more (memory traffic) than rounding again in backward
    q, tc = gq.new_empty(n, g), gq.new_empty(n, hs)      # Q15, integer units: i, f, gg, o
    fc, ig = gq.new_empty(n, hs), gq.new_empty(n, hs)    # products, reused
    i, f, gg, o = q.view(n, 4, hs).unbind(1)     # views made once (slicing is an op)
    sig_g = sig[..., 2 * hs:3 * hs].unbind(0)
    pc_g = scratch[:, 2 * hs:3 * hs]
    h, c = h0 * 2.0 ** exp_h, c0
    if w8 is not None:                               # h as int8 too, and the int32 products
        w8, alpha8 = w8
        h8, acc = h.to(torch.int8), h0.new_empty((n, g), dtype=torch.int32)
    bufs = zip(_unbound(None if exact else gq, steps), _unbound(gh_raw, steps),
               _unbound(pre, steps), *(x.unbind(0) for x in (sig, c_raw, tcr, h_raw, y, c_st)))
    for t, (gq_t, gh, pr, sg, cr, tcrt, hr, yt, ct) in enumerate(bufs):
        if exact:
            j = t % _CHUNK
            if j == 0:                               # this run's gq + b + 1/2
                part = slice(t, min(t + _CHUNK, steps))
                dst = pre[part] if run is None else run[:part.stop - t]
                if raw:
                    _round_gates(gq[part], half, out=dst).add_(b)
                else:
                    torch.add(gq[part], b, out=dst)
                run_t = dst.unbind(0)
            if w8 is None:
                p = run_t[j].addmm_(h, wt).floor_()                          # gq + gh
            else:                                    # the same sum: each part is exact
                torch._int_mm(h8, w8, out=acc)
                p = torch.add(run_t[j], acc, alpha=alpha8, out=run_t[j]).floor_()
            if clamp_pre:
                pc, pcg = torch.clamp(p, *_I16, out=scratch).mul_(k.gate), pc_g
            else:
                pc, pcg = p.mul_(k.gate), run_g[j]
        else:
            if raw:                                  # round this step's gates onto Q11
                gq_t = _round_gates(gq_t, half, out=gtmp)
            gh = _matmul_q11(h, wt, b, scratch if gh is None else gh).add_(k.half).floor_()
            if clamp_gh:
                gh = gh.clamp(*_I16)                                             # (N, 4H) Q11
            if clamp_pre:
                pc = torch.clamp(torch.add(gq_t, gh, out=pr), *_I16, out=scratch).mul_(k.gate)
            else:
                pc = gh.add_(gq_t).mul_(k.gate)      # gh is scratch or a clamped copy
            pcg = pc_g if pc is scratch else pc[:, 2 * hs:3 * hs]
        torch.sigmoid(pc, out=sg)                    # over all four gates: one op
        torch.tanh(pcg, out=sig_g[t])                # gate g's place
        _round(sg, 2.0 ** PROB_Q, k, out=q)          # Q15, integer units: i, f, gg, o
        # (f*2**15 * c) + (i*2**15 * gg*2**15) * 2**-15 = 2**15 (f c + i gg), rounded the same
        # way (a power-of-two factor commutes with float rounding; the alpha product is exact)
        _round(torch.mul(f, c, out=fc).add_(torch.mul(i, gg, out=ig), alpha=_Q15),
               2.0 ** (CELL_Q - PROB_Q), k, out=cr)
        c_new = torch.clamp(cr, lo_c, hi_c, out=ct if acts is None else None).mul_(k.cell)
        _round(torch.tanh(c_new, out=tcrt), 2.0 ** PROB_Q, k, out=tc)         # integer units
        _round(torch.mul(o, tc, out=fc), 2.0 ** (exp_h - 2 * PROB_Q), k, out=hr)  # o tc 2**30
        if acts is None:
            h, c = torch.clamp(hr, lo_h, hi_h, out=yt), c_new        # integer units
        else:
            torch.mul(torch.clamp(hr, lo_h, hi_h, out=hq), acts[t], out=yt)
            h = torch.where(active[t], hq, h, out=h_st[t])
            c = torch.where(active[t], c_new, c, out=ct)
        if w8 is not None:
            h8.copy_(h)
    y.mul_(k.h)                                      # integer units -> real
    if h_st is not y:
        h_st.mul_(k.h)
    h = h0 if steps == 0 else h_st[-1]
    gh_raw = gh_raw if clamp_gh and _saturates(gh_raw, *_I16) else None
    pre = pre if clamp_pre and _saturates(pre, *_I16) else None
    c_raw = c_raw if _saturates(c_raw, lo_c, hi_c) else None
    h_raw = h_raw if _saturates(h_raw, lo_h, hi_h) else None
    return y, h, c, (gh_raw, pre, c_raw, h_raw, h_st, c_st, sig, tcr), {}


def _lstm_factors(saved, h_prev, c_prev, acts, k, bits_h, out):
    """For a run of steps (the buffers' slices, :func:`_lstm_forward`; ``h_prev``, ``c_prev``
    (C, N, H) the states entering the steps): ``fgi`` (C, N, 4, H), the gate-input gradients
    per unit of the gradient reaching the new cell (gates i, f, g) or the new state (gate o),
    ``fgh`` the same times the recurrent gates' saturation masks, ``mc`` (or None: ones) and
    ``e`` (C, N, H): the new cell's gradient is ``dc' mc + dh' e``, and ``f`` the forget gate.
    ``out``: buffers for the run's values, (C, N, 4H) twice and (C, N, H) four times, reused
    run after run (they stay in cache; fresh tensors cost more)."""
    q_b, fgi_b, tcq_b, tmp_b, e_b, f_b = out
    gh_raw, pre, c_raw, h_raw, _, _, sig, tcr = saved
    steps, n, g = sig.shape
    hs = g // 4
    m_gh = None if gh_raw is None else _clamp_mask(gh_raw, *_I16)[1]
    m_pre = None if pre is None else _clamp_mask(pre, *_I16)[1]
    m_c = None if c_raw is None else \
        _clamp_mask(c_raw, numerics.qmin(CELL_BITS), numerics.qmax(CELL_BITS))[1]
    m_h = None if h_raw is None else \
        _clamp_mask(h_raw, numerics.qmin(bits_h), numerics.qmax(bits_h))[1]
    q = _round(sig, 2.0 ** PROB_Q, k, out=q_b)         # Q15, integer units: i, f, gg, o
    q_i, q_f, q_g, q_o = q.view(steps, n, 4, hs).unbind(2)
    tcq = _round(tcr, 2.0 ** PROB_Q, k, out=tcq_b)
    tg = sig[..., 2 * hs:3 * hs]                                  # tanh of gate g
    fgi = _mul_(torch.addcmul(sig, sig, sig, value=-1.0, out=fgi_b), m_pre).view(steps, n, 4,
                                                                                hs)
    f_i, f_f, f_g, f_o = fgi.unbind(2)                 # sigmoid' = s - s*s, then per gate
    torch.addcmul(k.zero, f_i, q_g, value=_Q15, out=f_i)                        # times gg
    f_f.mul_(c_prev)
    torch.mul(q_i, torch.addcmul(k.prob, tg, tg, value=-_Q15, out=tmp_b), out=f_g)  # i tanh'
    _mul_(f_g, None if m_pre is None else m_pre[..., 2 * hs:3 * hs])
    _mul_(torch.addcmul(k.zero, f_o, tcq, value=_Q15, out=f_o), m_h, acts)     # times tc
    tanh_c = torch.addcmul(k.prob, tcr, tcr, value=-_Q15, out=tmp_b)
    e = _mul_(torch.mul(q_o, tanh_c, out=e_b), m_h, m_c, acts)  # dc'/dh' through o tanh(c')
    mc = m_c if acts is None else _mul_(acts.expand(steps, n, hs).clone(), m_c)
    fgh = fgi if m_gh is None else fgi * m_gh.view(steps, n, 4, hs)
    return fgi, fgh, mc, e, torch.mul(q_f, k.prob, out=f_b)


def _state(raw, carried, t, bits, scale):
    """The state after step ``t``: the carried one (with lengths) or the clamped new one."""
    if carried is not None:
        return carried[t]
    return raw[t].clamp(numerics.qmin(bits), numerics.qmax(bits)).mul_(scale)


def _gradient_start(dh_t, dym, last):
    """The gradient reaching the last step's output: ``dh_T`` plus ``dy[T-1]``, into ``last``."""
    if dh_t is None:
        return last.copy_(dym[-1]) if dym is not None else last.zero_()
    return last.copy_(dh_t) if dym is None else torch.add(dh_t, dym[-1], out=last)


def _gates(gi, half, b_ih, gi_abs, w_hh, b_hh, h0, k, exp_h, bits_h, lstm):
    """The input gates on Q11 (integer units) and what the loop needs to know about them:
    ``(gates, mask, raw, (clamp gh, clamp gi + gh, exact), half)`` (see :func:`_gate_bounds`).
    Usually nothing saturates: then ``gates`` is ``gi`` itself (``raw`` True) and the loop
    rounds it a few steps at a time (:func:`_round_gates` with ``half``), which saves writing
    and reading a (T, N, G) tensor; else ``gates`` is rounded and clamped here and ``mask`` is
    its straight-through mask. The extremes come from ``gi``'s (rounding is monotone, and this
    is the same float rounding as the loop's). When the node made ``gi`` itself (without
    ``b_ih``, see :func:`_projection_bound`), ``gi_abs`` bounds ``|gi + b_ih|``: if that settles
    it (no saturation anywhere), no pass over ``gi`` is needed; else its extremes plus
    ``max |b_ih|`` bound it; only where even that may saturate is the bias added here."""
    if gi.numel() == 0:
        return gi, None, True, (False, False, False), half
    gh = _hh_bound(w_hh, b_hh, exp_h, bits_h)
    if gi_abs is not None:
        gq_abs = gi_abs * 2.0 ** GATE_Q + 0.5                       # bounds |round(gi 2**11)|
        if gq_abs + gh > _I16[1]:                     # not settled: the extremes of gi
            babs = 0.0 if b_ih is None else float(b_ih.detach().abs().max())
            gi_max = max(abs(float(v)) for v in _extremes(gi))
            gq_abs = (gi_max + babs) * 2.0 ** GATE_Q + 0.5
        if gq_abs <= _I16[1]:
            return gi, None, True, _gate_bounds(gh, gq_abs, w_hh, b_hh, h0, exp_h, bits_h,
                                                lstm), half
        if b_ih is not None:                          # may saturate: the gates with their bias
            gi = gi + b_ih                            # (exact, see _projection_bound)
        half = k.half
    low, high = (float(_round(v, 2.0 ** GATE_Q, k)) for v in _extremes(gi))
    clamps = _gate_bounds(gh, min(max(-low, high), 2.0 ** 15), w_hh, b_hh, h0, exp_h, bits_h,
                          lstm)
    if low >= _I16[0] and high <= _I16[1]:
        return gi, None, True, clamps, half
    gq, m_gi = _clamp_mask(_round(gi, 2.0 ** GATE_Q, k), *_I16)
    return gq, m_gi, False, clamps, half


def _extremes(gi: torch.Tensor):
    """``(min, max)`` of the input gates (one pass over them)."""
    return torch.aminmax(gi)


def _projection_bound(x, w_ih, b_ih, exp_x: int, exp_w: int):
    """A bound on ``|x W_ih^T + b_ih|`` if that sum is exact in the data's float type whatever
    the order of its sums, else None; then so is ``(x W_ih^T) * 2**11 + (2**11 b_ih + 1/2)``,
    the input gates before their rounding onto Q11, and the node may form ``x W_ih^T`` alone and
    fold the bias into the rounding (no pass adding it, no ``db_ih`` column sum). Exact when
    ``x``, ``W_ih`` and ``b_ih`` lie on the grids ``2**-exp_x``, ``2**-exp_w`` and
    ``2**-(exp_x + exp_w)`` (the layer's quantization grids, checked here) and every partial sum
    stays below ``2**digits`` units of them (``digits`` 24 for float32)."""
    if x.numel() == 0 or w_ih.numel() == 0:
        return None
    x, w = x.detach(), w_ih.detach()
    b = None if b_ih is None else b_ih.detach()
    low, high = torch.aminmax(x)
    r = w.abs().sum(1).mul_(max(-float(low), float(high)))               # bounds |x W_ih^T|
    if b is not None:
        r.add_(b.abs())
    bound = float(r.max()) * (1 + 2.0 ** -10)           # slack for the float sums
    digits = 2 - math.frexp(torch.finfo(w.dtype).eps)[1]
    unit = exp_x + exp_w                                 # the products' grid
    gate_unit = max(unit - GATE_Q, 1)                    # the same times 2**11, and 1/2
    if not math.isfinite(bound) or bound * 2.0 ** unit >= 2.0 ** digits or \
            (bound * 2.0 ** GATE_Q + 0.5) * 2.0 ** gate_unit >= 2.0 ** digits:
        return None
    if not (_integral(x, 2.0 ** exp_x) and _integral(w, 2.0 ** exp_w)
            and (b is None or _integral(b, 2.0 ** unit))):
        return None
    return bound


class RecurrentDirection(torch.autograd.Function):
    """One direction of a GRU (``c0`` None) or LSTM over time-major gates.

    Inputs: ``src`` (T, N, G*H) the input gates (the input projection, unquantized:
    fake-quantized here to int16 Q11, straight-through), or, with ``w_ih`` given, (T, N, F)
    the input, whose projection ``x W_ih^T + b_ih`` the node forms itself (only when it is
    exact, with ``gi_abs`` bounding it: :func:`_projection_bound`); ``h0``/``c0`` (N, H) on
    their grids, ``w_hh`` (G*H, H), ``b_hh`` (G*H,) or None, ``active`` (T, N, 1) bool
    (``t < length``; None: all steps of every sequence count), the hidden exponent and bits.
    Outputs ``y`` (T, N, H) (zero past each length), ``h_T``, ``c_T`` (``c_T`` is ``h_T``'s
    shape of zeros for a GRU). A sequence keeps its state past its length, as in PyTorch's
    packed sequences.
    """

    @staticmethod
    def forward(ctx, src, w_ih, b_ih, gi_abs, h0, c0, w_hh, b_hh, active, exp_h: int,
                bits_h: int):
        ctx.set_materialize_grads(False)                 # unused outputs: no zero gradients
        k = _Consts(src, exp_h)
        lstm = c0 is not None
        steps, n = src.shape[0], src.shape[1]
        x2 = None if w_ih is None else src.reshape(steps * n, src.shape[2])
        with torch.inference_mode():
            if w_ih is None:
                gi, half = src, k.half
            else:                                        # exact: the bias joins the rounding
                gi = torch.mm(x2, w_ih.t()).view(steps, n, w_ih.shape[0])
                half = k.half if b_ih is None else b_ih * 2.0 ** GATE_Q + 0.5
            gq, m_gi, raw, clamps, half = _gates(gi, half, b_ih, gi_abs, w_hh, b_hh, h0, k,
                                                 exp_h, bits_h, lstm)
            if lstm:
                y, h, c, bufs, sat = _lstm_forward(gq, h0, c0, w_hh, b_hh, active, exp_h,
                                                   bits_h, k, *clamps, raw, half)
            else:
                y, h, bufs, sat = _gru_forward(gq, h0, w_hh, b_hh, active, exp_h, bits_h, k,
                                               *clamps, raw, half)
        h = h.clone()                                # h_T must not alias y[T-1]
        c = c.clone() if lstm else torch.zeros_like(h0)  # nor c_T a saved buffer
        m_gi = _normal(m_gi)
        ctx.sat, ctx.steps, ctx.shape = sat, steps, src.shape
        ctx.lstm, ctx.has_bias, ctx.exp_h, ctx.bits_h = lstm, b_hh is not None, exp_h, bits_h
        ctx.has_bias_ih = b_ih is not None
        ctx.save_for_backward(x2, w_ih, w_hh, active, h0, c0, m_gi, *bufs)
        return y, h, c

    @staticmethod
    def backward(ctx, dy, dh_t, dc_t):
        x2, w_ih, w_hh, active, h0, c0, m_gi, *bufs = ctx.saved_tensors
        steps, g = ctx.steps, w_hh.shape[0]
        if steps == 0:
            db = w_hh.new_zeros(g) if ctx.has_bias else None
            dgi, dh, dc, dw, direct = w_hh.new_zeros(0, *h0.shape[:1], g), dh_t, dc_t, \
                torch.zeros_like(w_hh), False
        else:
            with torch.inference_mode():                  # temporaries only (see _buffer)
                run = _Backward(ctx, w_hh, active, h0, c0, bufs, dy, dh_t)
                dc = (torch.zeros_like(h0) if dc_t is None else dc_t) if ctx.lstm else None
                for hi in range(steps, 0, -_CHUNK):       # runs of steps, last first
                    lo = max(hi - _CHUNK, 0)
                    if ctx.lstm:
                        dc = run.lstm(lo, hi, dc)
                    else:
                        run.gru(lo, hi)
            dgi = _mul_(run.dgi, m_gi)                    # gi's own fake quantization
            dh, dc, dw, db, direct = _normal(run.dh), _normal(dc), run.dw, run.db, run.direct
        states = (dh, dc, dw, db, None, None, None)
        if w_ih is None:
            return (dgi, None, None, None) + states
        dg2 = dgi.reshape(-1, g)                          # (T*N, G): the projection's backward
        dx = dw_ih = db_ih = None
        if ctx.needs_input_grad[0]:
            dx = torch.mm(dg2, w_ih).view(ctx.shape)
        if ctx.needs_input_grad[1]:
            dw_ih = torch.mm(x2.t(), dg2).t()             # the faster layout (_InputGates)
        if ctx.has_bias_ih and ctx.needs_input_grad[2]:
            if direct and m_gi is None and db is not None:
                db_ih = db.clone()                        # the same sum: dgh is dgi
            else:
                db_ih = torch.mv(dg2.t(), dg2.new_ones(dg2.shape[0]))
        return (dx, dw_ih, db_ih, None) + states


class _Backward:
    """The backward recurrence of one direction, run by runs of steps (last run first): the
    factors of a run (:func:`_gru_factors`, :func:`_lstm_factors`), then per step the
    recurrent-gate gradient ``dgh`` (N, G) and ``dh = dh' * keep + dgh @ W_hh`` for the step
    before; after the run, its gate-input gradients ``dgi`` and its share of ``dW_hh`` and
    ``db_hh`` (one matrix product per run: ``dgh`` lives in a run-sized buffer that stays in
    cache).

    ``direct``: an LSTM whose recurrent gates never saturated has ``dgh`` equal to ``dgi`` (the
    same factors), so the steps write ``dgh`` into ``dgi`` itself and the run skips computing
    ``dgi`` (a GRU's ``dgh`` differs: ``gh_n`` enters as ``r * gh_n``).

    ``dsum`` (T, N, H) holds the gradient reaching each step's output ``h'`` (``dh`` of the
    later steps plus ``dy``, written by the step after it)."""

    def __init__(self, ctx, w_hh, active, h0, c0, bufs, dy, dh_t):
        steps, n, hs, g = ctx.steps, h0.shape[0], h0.shape[1], w_hh.shape[0]
        self.w_hh, self.h0, self.c0, self.bufs, self.sat = w_hh, h0, c0, bufs, ctx.sat
        self.bits_h, self.k = ctx.bits_h, _Consts(w_hh, ctx.exp_h)
        self.acts = None if active is None else active.to(w_hh.dtype)              # (T, N, 1)
        self.dym = dy if dy is None or self.acts is None else dy * self.acts  # y is 0 past len
        self.not_active = None if self.acts is None else 1.0 - self.acts
        self.dsum = h0.new_empty(steps, n, hs)
        self.direct = ctx.lstm and bufs[0] is None        # bufs[0]: gh where it saturated
        self.dgi = _buffer(h0, steps, n, g)
        # of W_hh h + b_hh, masked: dgi itself (direct) or one run's buffer, in cache
        self.dgh = self.dgi if self.direct else h0.new_empty(min(steps, _CHUNK), n, g)
        self.dw = _zeros(w_hh, g, hs)
        self.db = _zeros(w_hh, g) if ctx.has_bias else None
        self.dcn = h0.new_empty(steps, n, hs) if ctx.lstm else None   # reaching c' (LSTM)
        self.ds_t = self.dsum.unbind(0)
        self.dgi_g = self.dgi.view(steps, n, g // hs, hs)
        dgh_g = self.dgh.view(-1, n, g // hs, hs)         # per-step views, made once
        if ctx.lstm:
            self.dcn_t = self.dcn.unbind(0), self.dcn.unsqueeze(2).unbind(0)  # (N, H), (N, 1, H)
            run = min(steps, _CHUNK)                      # the factors' buffers (one run)
            self.factors = [h0.new_empty(run, n, w) for w in (g, g, hs, hs, hs, hs)]
            fgi = self.factors[1].view(run, n, 4, hs)     # and their per-step views
            self.factor_views = (fgi[:, :, :3].unbind(0), fgi[:, :, 3].unbind(0),
                                 self.factors[4].unbind(0), self.factors[5].unbind(0))
            self.dgh_views = (self.dgh.unbind(0), dgh_g[:, :, :3].unbind(0),
                              dgh_g[:, :, 3].unbind(0))
        else:
            self.dgh_views = (self.dgh.unbind(0), dgh_g.unbind(0))
        _gradient_start(dh_t, self.dym, self.ds_t[-1])
        self.dh = None                                    # dh0 once the first step is done

    def _first(self, lo):
        """The state entering step ``lo`` (GRU)."""
        b = self.bufs
        return self.h0 if lo == 0 else _state(b[3], b[4], lo - 1, self.bits_h, self.k.h)

    def _entering(self, lo, hi):
        """``(h, c)`` (C, N, H): the states entering steps ``lo:hi`` (LSTM; the saved states
        after each step, views but for the first run)."""
        h_st, c_st = self.bufs[4], self.bufs[5]
        if lo:
            return h_st[lo - 1:hi - 1], c_st[lo - 1:hi - 1]
        return _before(self.h0, h_st[:hi]), _before(self.c0, c_st[:hi])

    def _part(self, lo, hi):
        return [None if b is None else b[lo:hi] for b in self.bufs], \
            None if self.acts is None else self.acts[lo:hi]

    def _weight_gradients(self, lo, hi, h_prev):
        """Add a run's share to ``dW_hh`` and ``db_hh`` (steps ``lo:hi``, ``h_prev`` theirs)."""
        run = self.dgi[lo:hi] if self.direct else self.dgh[:hi - lo]
        flat = run.view(-1, run.shape[-1])                                  # (C*N, G)
        torch.addmm(self.dw, flat.t(), h_prev.reshape(-1, h_prev.shape[-1]), out=self.dw)
        if self.db is not None:
            self.db.add_(flat.sum(0))

    def _state_gradient(self, t, dgh, keep):
        """``dh`` for step ``t - 1`` (into ``dsum[t - 1]``, plus its ``dy``), or ``dh0``."""
        ds = self.ds_t[t]
        out = self.ds_t[t - 1] if t else None
        if keep is None:
            dh = torch.mm(dgh, self.w_hh, out=out)
        else:
            dh = torch.addmm(ds * keep, dgh, self.w_hh, out=out)
        if t and self.dym is not None:
            dh.add_(self.dym[t - 1])
        self.dh = dh

    def gru(self, lo, hi):
        part, acts = self._part(lo, hi)
        h_first = self._first(lo)
        fgi, fgh, keep, h_prev = _gru_factors(part, self.sat, h_first, acts, self.k,
                                              self.bits_h)
        keep_t, fgh_t = keep.unbind(0), fgh.unbind(0)
        dgh_t, dgh_g = self.dgh_views
        for t in range(hi - 1, lo - 1, -1):
            j = t - lo
            torch.mul(self.ds_t[t].unsqueeze(1), fgh_t[j], out=dgh_g[j])
            self._state_gradient(t, dgh_t[j], keep_t[j])
        torch.mul(self.dsum[lo:hi, :, None], fgi, out=self.dgi_g[lo:hi])
        self._weight_gradients(lo, hi, h_prev)

    def lstm(self, lo, hi, dc):
        """Returns the cell gradient for step ``lo - 1``."""
        part, acts = self._part(lo, hi)
        h_prev, c_prev = self._entering(lo, hi)
        fgi, fgh, mc, e, f = _lstm_factors(part, h_prev, c_prev, acts, self.k, self.bits_h,
                                           [b[:hi - lo] for b in self.factors])
        mc_t = None if mc is None else mc.unbind(0)
        fgh3, fgho, e_t, f_t = self.factor_views          # e and f are in their buffers
        if fgh is not fgi:                                # recurrent gates saturated
            fgh3, fgho = fgh[:, :, :3].unbind(0), fgh[:, :, 3].unbind(0)
        (dcn_t, dcn_u), (dgh_t, dgh3, dgho) = self.dcn_t, self.dgh_views
        na, at = self.not_active, 0 if self.direct else lo    # dgh's step ``t`` is t - at
        for t in range(hi - 1, lo - 1, -1):
            j, ds = t - lo, self.ds_t[t]
            torch.addcmul(dc if mc_t is None else dc * mc_t[j], ds, e_t[j], out=dcn_t[t])
            torch.mul(dcn_u[t], fgh3[j], out=dgh3[t - at])           # dc' for gates i, f, g
            torch.mul(ds, fgho[j], out=dgho[t - at])
            dc = dcn_t[t] * f_t[j] if na is None else \
                torch.addcmul(dc * na[t], dcn_t[t], f_t[j])
            self._state_gradient(t, dgh_t[t - at], None if na is None else na[t])
        if not self.direct:                               # else the steps wrote dgi
            torch.mul(self.dcn[lo:hi, :, None], fgi[:, :, :3], out=self.dgi_g[lo:hi, :, :3])
            torch.mul(self.dsum[lo:hi], fgi[:, :, 3], out=self.dgi_g[lo:hi, :, 3])
        self._weight_gradients(lo, hi, h_prev)
        return dc


class _InputGates(torch.autograd.Function):
    """``F.linear(x, w_ih, b_ih)`` over (T, N, F) input, the same values, with a backward that
    suits this shape (T * N rows, few features): ``dW_ih`` as ``(x^T dgi)^T`` (the layout the
    BLAS runs fastest here, ~30% less time than ``dgi^T x``) and ``db_ih`` as a matrix-vector
    product (a column sum over T * N rows is ~1.7x slower)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, dg):
        x, w = ctx.saved_tensors
        dg2 = dg.reshape(-1, dg.shape[-1])                                    # (T*N, G)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.mm(dg2, w).view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = torch.mm(x.reshape(-1, x.shape[-1]).t(), dg2).t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = torch.mv(dg2.t(), dg2.new_ones(dg2.shape[0]))
        return dx, dw, db


def input_gates(x, w_ih, b_ih):
    """The input projection of every step at once: ``F.linear(x, w_ih, b_ih)`` (T, N, G),
    with the backward of :class:`_InputGates`."""
    return _InputGates.apply(x, w_ih, b_ih)


def reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """Torch twin of :func:`linger.iqrnn.reverse_index` ((T, N) int64)."""
    t = torch.arange(steps, device=lengths.device)[:, None]
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def direction(mode: str, gi, h0, c0, w_hh, b_hh, lengths, reverse: bool, bits_h: int,
              projection=None):
    """One direction over (T, N, G) gates; ``(y (T, N, H), h_T, c_T)`` (``c_T`` None for GRU).
    ``lengths`` (N,) or None (every sequence has all T steps). ``projection``: ``(w_ih, b_ih,
    bound)``, and ``gi`` is the (T, N, F) input the node projects itself (see
    :func:`projected_direction`)."""
    steps = gi.shape[0]
    idx = active = None
    if lengths is not None:
        active = (torch.arange(steps, device=gi.device)[:, None] < lengths[None, :]).unsqueeze(-1)
    if reverse and lengths is not None:
        idx = reverse_index(lengths, steps)[:, :, None]
        gi = gi.gather(0, idx.expand(-1, -1, gi.shape[2]))
    elif reverse:
        gi = gi.flip(0)
    w_ih, b_ih, bound = (None, None, None) if projection is None else projection
    y, h, c = RecurrentDirection.apply(gi, w_ih, b_ih, bound, h0,
                                       c0 if mode == "LSTM" else None, w_hh, b_hh, active,
                                       iqrnn.hidden_exp(bits_h), bits_h)
    if idx is not None:
        y = y.gather(0, idx.expand_as(y))
    elif reverse:
        y = y.flip(0)
    return y, h, (c if mode == "LSTM" else None)


def projected_direction(mode: str, x, w_ih, b_ih, exp_x: int, exp_w: int, h0, c0, w_hh, b_hh,
                        lengths, reverse: bool, bits_h: int):
    """:func:`direction` from the (T, N, F) input ``x`` on the grid ``2**-exp_x`` and ``W_ih``
    on ``2**-exp_w`` (``b_ih`` on their product's): the node forms the input projection itself
    where it is exact (:func:`_projection_bound`: the same values, less work), else the
    projection is :func:`input_gates` as before."""
    bound = _projection_bound(x, w_ih, b_ih, exp_x, exp_w)
    if bound is None:
        return direction(mode, input_gates(x, w_ih, b_ih), h0, c0, w_hh, b_hh, lengths,
                         reverse, bits_h)
    return direction(mode, x, h0, c0, w_hh, b_hh, lengths, reverse, bits_h,
                     projection=(w_ih, b_ih, bound))
