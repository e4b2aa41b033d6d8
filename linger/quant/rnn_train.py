"""The GRU/LSTM recurrence in training: one autograd node per direction.

Forward computes, step by step, the float twin of :func:`linger.iqrnn.gru_step` /
:func:`linger.iqrnn.lstm_step` with fake quantization at every integer point (the same float
operations, in the same order, as composing :func:`linger.quant.functions.fake_quant` calls, so the
values are identical); backward is written out by hand with the straight-through estimator (the
gradient of a fake quantization is 1 where it did not saturate, 0 where it did).

Why not let autograd record the steps: about 20 small autograd nodes per time step made a QAT step
of a keyword-spotting GRU 3x a float step, and indexing ``gi[t]`` in a loop made autograd add a
full-size zero tensor per step in backward (O(T^2) memory traffic). Here the backward keeps one
``(T, N, G)`` gradient buffer, recomputes the cheap element-wise activations from the saved
pre-activations instead of storing them, and computes ``dW_hh`` and ``db_hh`` for all steps as one
matrix product.

Fake quantizations that cannot saturate need no mask: the Q15 gate outputs use 17 bits (sigmoid
and tanh lie in [-1, 1], i.e. [-2**15, 2**15]) and the GRU's ``r * gh_n`` uses 32 bits
(``|r * gh_n| <= 16`` at Q11).
"""

from __future__ import annotations

import torch

from .. import iqrnn, numerics
from ..iqmath import GATE_Q, PROB_Q

_GATE_OUT_BITS = 17  # Q15 gate outputs: 1.0 = 2**15 must fit


def _fq(x: torch.Tensor, exp: int, bits: int):
    """``(clamp(floor(x * 2**exp + 0.5)) * 2**-exp, not-saturated mask)``: the forward of
    :class:`linger.quant.functions._FakeQuant` with its straight-through mask."""
    v = (x * 2.0 ** exp).add_(0.5).floor_()          # x * 2**exp is exact: one rounding
    q = v.clamp(numerics.qmin(bits), numerics.qmax(bits))
    inside = q == v                                  # before q is scaled in place
    return q.mul_(2.0 ** -exp), inside


def _round(x: torch.Tensor, exp: int) -> torch.Tensor:
    """Rounding onto the grid ``2**-exp`` where nothing can saturate (gradient 1)."""
    return (x * 2.0 ** exp).add_(0.5).floor_().mul_(2.0 ** -exp)


def _gru_cell(gi, h, w_hh, b_hh, exp_h, bits_h):
    """One GRU step; returns ``h'`` and what backward needs (gh_n, a_rz, a_n and the masks)."""
    hs = h.shape[1]
    gh, m_gh = _fq(torch.nn.functional.linear(h, w_hh, b_hh), GATE_Q, 16)      # (N, 3H) Q11
    a_rz, m_rz = _fq(gi[:, :2 * hs] + gh[:, :2 * hs], GATE_Q, 16)
    rz = _round(torch.sigmoid(a_rz), PROB_Q)                                   # Q15
    r, z = rz[:, :hs], rz[:, hs:]
    a_n, m_n = _fq(gi[:, 2 * hs:] + _round(r * gh[:, 2 * hs:], GATE_Q), GATE_Q, 16)
    n = _round(torch.tanh(a_n), PROB_Q)
    h_new, m_h = _fq(torch.lerp(n, h, z), exp_h, bits_h)      # (1 - z) * n + z * h
    return h_new, (gh[:, 2 * hs:].clone(), a_rz, a_n, m_gh, m_rz, m_n, m_h)  # keep gh_n only


def _gru_cell_backward(dh_new, h, saved):
    """Gradients of one GRU step: ``(dgi (N, 3H), dgh (N, 3H) masked, dh from the gates)``."""
    gh_n, a_rz, a_n, m_gh, m_rz, m_n, m_h = saved
    hs = h.shape[1]
    s = torch.sigmoid(a_rz)
    rz = _round(s, PROB_Q)
    r, z = rz[:, :hs], rz[:, hs:]
    t = torch.tanh(a_n)
    n = _round(t, PROB_Q)
    d = dh_new * m_h                                         # through the hidden-grid quantizer
    dn = d * (1.0 - z)
    dz = d * (h - n)
    dh = d * z
    da_n = dn * (1.0 - t * t) * m_n                          # (N, H)
    dr = da_n * gh_n
    dgh_n = da_n * r
    ds = torch.cat([dr, dz], 1)
    da_rz = ds * s * (1.0 - s) * m_rz                        # (N, 2H)
    dgi = torch.cat([da_rz, da_n], 1)
    dgh = torch.cat([da_rz, dgh_n], 1) * m_gh
    return dgi, dgh, dh


def _lstm_cell(gi, h, c, w_hh, b_hh, exp_h, bits_h):
    """One LSTM step; returns ``(h', c')`` and what backward needs."""
    hs = h.shape[1]
    gh, m_gh = _fq(torch.nn.functional.linear(h, w_hh, b_hh), GATE_Q, 16)      # (N, 4H) Q11
    pre, m_pre = _fq(gi + gh, GATE_Q, 16)
    s = _round(torch.sigmoid(pre), PROB_Q)
    i, f, o = s[:, :hs], s[:, hs:2 * hs], s[:, 3 * hs:]
    gg = _round(torch.tanh(pre[:, 2 * hs:3 * hs]), PROB_Q)
    c_new, m_c = _fq(f * c + i * gg, iqrnn.CELL_Q, iqrnn.CELL_BITS)
    tc = _round(torch.tanh(c_new), PROB_Q)
    h_new, m_h = _fq(o * tc, exp_h, bits_h)
    return h_new, c_new, (pre, c_new, m_gh, m_pre, m_c, m_h)


def _lstm_cell_backward(dh_new, dc_new, c, saved):
    """Gradients of one LSTM step: ``(dgi (N, 4H), dgh (N, 4H) masked, dc from the cell)``;
    ``dc_new`` is the gradient already reaching ``c'`` from later steps."""
    pre, c_new, m_gh, m_pre, m_c, m_h = saved
    hs = c.shape[1]
    sig = torch.sigmoid(pre)
    s = _round(sig, PROB_Q)
    i, f, o = s[:, :hs], s[:, hs:2 * hs], s[:, 3 * hs:]
    tg = torch.tanh(pre[:, 2 * hs:3 * hs])
    gg = _round(tg, PROB_Q)
    tcr = torch.tanh(c_new)
    tc = _round(tcr, PROB_Q)
    d = dh_new * m_h
    do = d * tc
    dcn = (dc_new + d * o * (1.0 - tcr * tcr)) * m_c
    df, dc, di, dgg = dcn * c, dcn * f, dcn * gg, dcn * i
    dsig = torch.cat([di, df, torch.zeros_like(di), do], 1) * sig * (1.0 - sig)
    dsig[:, 2 * hs:3 * hs] = dgg * (1.0 - tg * tg)
    dgi = dsig * m_pre
    return dgi, dgi * m_gh, dc


class RecurrentDirection(torch.autograd.Function):
    """One direction of a GRU (``c0`` None) or LSTM over time-major gates.

    Inputs: ``gi`` (T, N, G*H) input gates on the Q11 grid, ``h0``/``c0`` (N, H), ``w_hh``
    (G*H, H), ``b_hh`` (G*H,) or None, ``active`` (T, N, 1) bool (``t < length``; None: all
    steps of every sequence count), the hidden
    exponent and bits. Outputs ``y`` (T, N, H) (zero past each length), ``h_T``, ``c_T``
    (``c_T`` is ``h_T``'s shape of zeros for a GRU). A sequence keeps its state past its
    length, as in PyTorch's packed sequences.
    """

    @staticmethod
    def forward(ctx, gi, h0, c0, w_hh, b_hh, active, exp_h: int, bits_h: int):
        lstm = c0 is not None
        steps = gi.shape[0]
        h, c = h0, (c0 if lstm else torch.zeros_like(h0))
        y = gi.new_empty((steps,) + h0.shape)
        saved = []                                   # per step: h_prev, [c_prev], cell's own
        for t, g in enumerate(gi.unbind(0)):
            saved.append(h)
            if lstm:
                saved.append(c)
                h_new, c_new, sv = _lstm_cell(g, h, c, w_hh, b_hh, exp_h, bits_h)
                c = c_new if active is None else torch.where(active[t], c_new, c)
            else:
                h_new, sv = _gru_cell(g, h, w_hh, b_hh, exp_h, bits_h)
            saved.extend(sv)
            if active is None:
                h = h_new
                y[t] = h_new
            else:
                h = torch.where(active[t], h_new, h)
                torch.mul(h_new, active[t], out=y[t])
        ctx.lstm, ctx.has_bias, ctx.steps = lstm, b_hh is not None, steps
        ctx.all_active = active is None
        ctx.save_for_backward(w_hh, active, *saved)  # visible to saved-tensor hooks
        return y, h, c

    @staticmethod
    def backward(ctx, dy, dh_t, dc_t):
        w_hh, active, *saved = ctx.saved_tensors
        steps = ctx.steps
        per = len(saved) // steps
        h_prev = saved[0::per]                                             # T x (N, H)
        dh = dh_t.clone()
        dc = dc_t.clone() if ctx.lstm else None
        dgi_all = dy.new_empty(dy.shape[:2] + (w_hh.shape[0],))          # (T, N, G*H)
        dgh_all = torch.empty_like(dgi_all)
        acts = None if ctx.all_active else active.to(dh.dtype)            # (T, N, 1)
        for t in range(steps - 1, -1, -1):
            act = None if acts is None else acts[t]
            dh_new = dh + dy[t] if act is None else act * (dh + dy[t])
            sv = saved[t * per + (2 if ctx.lstm else 1):(t + 1) * per]
            if ctx.lstm:
                dc_in = dc if act is None else act * dc
                dgi, dgh, dc_cell = _lstm_cell_backward(dh_new, dc_in, saved[t * per + 1], sv)
                dc = dc_cell if act is None else (1.0 - act) * dc + dc_cell
                dh_keep = None                       # an LSTM's h reaches the gates via W_hh only
            else:
                dgi, dgh, dh_keep = _gru_cell_backward(dh_new, h_prev[t], sv)
            dgi_all[t] = dgi
            dgh_all[t] = dgh
            if act is not None:
                carry = (1.0 - act) * dh
                dh_keep = carry if dh_keep is None else dh_keep + carry
            dh = dgh @ w_hh if dh_keep is None else torch.addmm(dh_keep, dgh, w_hh)
        flat = dgh_all.reshape(-1, dgh_all.shape[-1])                      # (T*N, G*H)
        dw = flat.t() @ torch.stack(h_prev).reshape(-1, dh.shape[-1])      # all steps at once
        db = flat.sum(0) if ctx.has_bias else None
        return dgi_all, dh, (dc if ctx.lstm else None), dw, db, None, None, None


def reverse_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """Torch twin of :func:`linger.iqrnn.reverse_index` ((T, N) int64)."""
    t = torch.arange(steps, device=lengths.device)[:, None]
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def direction(mode: str, gi, h0, c0, w_hh, b_hh, lengths, reverse: bool, bits_h: int):
    """One direction over (T, N, G) gates; ``(y (T, N, H), h_T, c_T)`` (``c_T`` None for GRU).
    ``lengths`` (N,) or None (every sequence has all T steps)."""
    steps = gi.shape[0]
    idx = active = None
    if lengths is not None:
        active = (torch.arange(steps, device=gi.device)[:, None] < lengths[None, :]).unsqueeze(-1)
    if reverse and lengths is not None:
        idx = reverse_index(lengths, steps)[:, :, None]
        gi = gi.gather(0, idx.expand_as(gi))
    elif reverse:
        gi = gi.flip(0)
    y, h, c = RecurrentDirection.apply(gi, h0, c0 if mode == "LSTM" else None, w_hh, b_hh,
                                       active, iqrnn.hidden_exp(bits_h), bits_h)
    if idx is not None:
        y = y.gather(0, idx.expand_as(y))
    elif reverse:
        y = y.flip(0)
    return y, h, (c if mode == "LSTM" else None)
