"""Integer GRU and LSTM, written once (numpy only).

The PyTorch eval path (:mod:`linger.quant.rnn`) and the runtime kernels ``GRUInt``/``LSTMInt``
(:mod:`linger.runtime.kernels.rnn`) both call :func:`rnn`, so they agree bit for bit. Arrays are
int64 holding exact integers; a value is ``q * 2**-n``.

Fixed formats (``rs`` = rounding shift of :func:`linger.iqmath.requant`, ``sat_b`` = saturation)
-----------------------------------------------------------------------------------------------
- input ``x``: ``bits_x`` bits at ``exp_x`` (layer 0: the layer's input statistic; layers >= 1:
  the previous layer's output, i.e. the hidden format below);
- weights ``W_ih``, ``W_hh``: ``bits_w`` bits, one exponent per tensor; biases int32 at the
  exponent of their accumulator (``exp_x + exp_wih``, resp. ``exp_h + exp_whh``);
- gate pre-activations: **int16 Q11**, the input format of the sigmoid/tanh tables:
  ``gi = sat16(rs(x W_ih^T + b_ih, exp_x + exp_wih - 11))``, likewise ``gh`` from ``h``;
- gate outputs: **Q15** (``sigmoid_q15``/``tanh_q15`` of :mod:`linger.iqmath`, values in
  ``[0, 2**15]`` resp. ``[-2**15, 2**15]``, kept in int64);
- hidden state ``h`` (also the layer output): ``bits_h`` bits at the fixed exponent
  ``exp_h = bits_h - 1`` (**Q7** for int8, Q15 for int16): ``|h| <= 1`` by construction, so a
  statistic would only cost precision; ``+1.0`` saturates to ``127/128``;
- LSTM cell ``c``: **int16 Q11** (``|c| < 16``), the tanh table's input format, so ``tanh(c)``
  needs no shift.

One step (PyTorch gate order; ``⊙`` element-wise; all sums exact in int64)::

    GRU   r = sig(sat16(gi_r + gh_r))        z = sig(sat16(gi_z + gh_z))
          n = tanh(sat16(gi_n + rs(r ⊙ gh_n, 15)))          # gh_n includes b_hn (PyTorch)
          h' = sat_h(rs((2**15 - z) ⊙ n + z ⊙ (h << (15 - exp_h)), 30 - exp_h))
    LSTM  i, f, g, o = sig, sig, tanh, sig of sat16(gi + gh)
          c' = sat16(rs(f ⊙ c << 4 + i ⊙ g, 19))                 # Q15*Q11 << 4 and Q15*Q15: Q30
          h' = sat_h(rs(o ⊙ tanh(c'), 30 - exp_h))

Sequence lengths: at step ``t`` a sequence with ``len <= t`` keeps its state and outputs 0, so
``h_n`` is the state after its last valid step (PyTorch's packed-sequence semantics). The reverse
direction reads each sequence from its own last valid step back to step 0.
"""

from __future__ import annotations

import numpy as np

from . import iqmath
from .iqmath import GATE_Q, PROB_Q, rshift, saturate, sigmoid_q15, tanh_q15

I64 = np.int64

#: Q format and bits of the LSTM cell state.
CELL_Q = 11
CELL_BITS = 16
#: Gates per mode, in PyTorch's order.
GATES = {"GRU": 3, "LSTM": 4}


def hidden_exp(bits: int) -> int:
    """The fixed exponent of the hidden state: ``bits - 1`` (Q7 for int8)."""
    return int(bits) - 1


def _exact_float(bound: int):
    """The float dtype whose BLAS sums integers exactly in any order when every partial sum is at
    most ``bound`` in magnitude: float32 up to 2**24, float64 up to 2**53, else None (int64)."""
    return np.float32 if bound <= 1 << 24 else np.float64 if bound <= 1 << 53 else None


def _matmul_t(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact ``a @ w.T`` of int64 arrays, in the float dtype :func:`_exact_float` allows."""
    dtype = _exact_float(a.shape[-1] * int(np.abs(a).max(initial=0)) *
                         int(np.abs(w).max(initial=0)))
    if dtype is None:
        return a @ w.T
    return (a.astype(dtype) @ w.T.astype(dtype)).astype(I64)


def gate_q11(a: np.ndarray, w: np.ndarray, b, exp_a: int, exp_w: int) -> np.ndarray:
    """``sat16(rs(a W^T + b, exp_a + exp_w - 11))``: an affine map to int16 Q11."""
    acc = _matmul_t(a, w)
    if b is not None:
        acc = acc + b
    return iqmath.requant(acc, int(exp_a) + int(exp_w) - GATE_Q, 16)


def gru_step(gi, h, w_hh, b_hh, exp_whh: int, exp_h: int, bits_h: int) -> np.ndarray:
    """One GRU step: ``gi`` (N, 3H) Q11 input gates, ``h`` (N, H) at ``exp_h`` -> new ``h``."""
    hs = h.shape[1]
    gh = gate_q11(h, w_hh, b_hh, exp_h, exp_whh)                       # (N, 3H) Q11
    r = sigmoid_q15(saturate(gi[:, :hs] + gh[:, :hs], 16))              # Q15
    z = sigmoid_q15(saturate(gi[:, hs:2 * hs] + gh[:, hs:2 * hs], 16))
    n = tanh_q15(saturate(gi[:, 2 * hs:] + rshift(r * gh[:, 2 * hs:], PROB_Q), 16))
    acc = ((1 << PROB_Q) - z) * n + z * (h << (PROB_Q - exp_h))          # Q30
    return iqmath.requant(acc, 2 * PROB_Q - exp_h, bits_h)


def lstm_step(gi, h, c, w_hh, b_hh, exp_whh: int, exp_h: int, bits_h: int):
    """One LSTM step: ``gi`` (N, 4H) Q11, ``h`` at ``exp_h``, ``c`` Q11 -> ``(h', c')``."""
    hs = h.shape[1]
    g = saturate(gi + gate_q11(h, w_hh, b_hh, exp_h, exp_whh), 16)     # (N, 4H) Q11
    i = sigmoid_q15(g[:, :hs])
    f = sigmoid_q15(g[:, hs:2 * hs])
    gg = tanh_q15(g[:, 2 * hs:3 * hs])
    o = sigmoid_q15(g[:, 3 * hs:])
    shift = 2 * PROB_Q - PROB_Q - CELL_Q                                 # f*c: Q26 -> Q30
    c_new = iqmath.requant((f * c << shift) + i * gg, 2 * PROB_Q - CELL_Q, CELL_BITS)
    h_new = iqmath.requant(o * tanh_q15(c_new), 2 * PROB_Q - exp_h, bits_h)
    return h_new, c_new


def reverse_index(lengths: np.ndarray, steps: int) -> np.ndarray:
    """(T, N) time index that reverses each sequence within its length (pads stay in place):
    ``len - 1 - t`` for ``t < len``, else ``t``. Applying it twice is the identity."""
    t = np.arange(steps)[:, None]
    return np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


class _Recurrent:
    """``W_hh`` and ``b_hh`` of one direction, prepared once for all steps: the recurrent matmul
    runs in float32 BLAS when every partial sum is an integer of at most 2**24 (then exact in any
    summation order; ``|h| <= 2**(bits_h - 1)`` bounds it from the weights alone), else float64
    up to 2**53, else int64. :meth:`gates` equals :func:`gate_q11` ``(h, w_hh, b_hh, exp_h,
    exp_whh)``."""

    def __init__(self, w_hh, b_hh, exp_whh: int, exp_h: int, bits_h: int):
        self.dtype = _exact_float(w_hh.shape[1] * (1 << (bits_h - 1)) *
                                  int(np.abs(w_hh).max(initial=0)))
        self.w = np.ascontiguousarray(w_hh.T if self.dtype is None else w_hh.T.astype(self.dtype))
        self.b = b_hh
        self.shift = int(exp_h) + int(exp_whh) - GATE_Q

    def gates(self, h):
        acc = h @ self.w if self.dtype is None else (h.astype(self.dtype) @ self.w).astype(I64)
        if self.b is not None:
            acc += self.b
        return iqmath.requant(acc, self.shift, 16)                          # (N, G*H) Q11


_LUTS: dict = {}


def _lut(fn) -> np.ndarray:
    """``fn`` (a Q11 -> Q15 gate function of :mod:`linger.iqmath`) over the whole int16 domain,
    indexed by ``x & 0xFFFF``: one gather per gate instead of the piecewise-linear arithmetic,
    equal by construction."""
    t = _LUTS.get(fn)
    if t is None:
        x = np.arange(1 << 16, dtype=I64)
        t = _LUTS[fn] = fn(np.where(x >= 1 << 15, x - (1 << 16), x))
    return t


def _gate(fn, x):
    """``fn(sat16(x))`` through the table of :func:`_lut`."""
    return _lut(fn)[iqmath.saturate(x, 16) & 0xFFFF]


def _gru_step_fast(gi, h, rec: _Recurrent, exp_h: int, bits_h: int):
    """:func:`gru_step` with prepared weights and table gates (same integers)."""
    hs = h.shape[1]
    gh = rec.gates(h)
    rz = _gate(sigmoid_q15, gi[:, :2 * hs] + gh[:, :2 * hs])
    r, z = rz[:, :hs], rz[:, hs:]
    n = _gate(tanh_q15, gi[:, 2 * hs:] + rshift(r * gh[:, 2 * hs:], PROB_Q))
    acc = ((1 << PROB_Q) - z) * n + z * (h << (PROB_Q - exp_h))
    return iqmath.requant(acc, 2 * PROB_Q - exp_h, bits_h)


def _lstm_step_fast(gi, h, c, rec: _Recurrent, exp_h: int, bits_h: int):
    """:func:`lstm_step` with prepared weights and table gates (same integers)."""
    hs = h.shape[1]
    g = gi + rec.gates(h)
    s = _gate(sigmoid_q15, g)
    i, f, o = s[:, :hs], s[:, hs:2 * hs], s[:, 3 * hs:]
    gg = _gate(tanh_q15, g[:, 2 * hs:3 * hs])
    shift = 2 * PROB_Q - PROB_Q - CELL_Q
    c_new = iqmath.requant((f * c << shift) + i * gg, 2 * PROB_Q - CELL_Q, CELL_BITS)
    h_new = iqmath.requant(o * _lut(tanh_q15)[c_new & 0xFFFF], 2 * PROB_Q - exp_h, bits_h)
    return h_new, c_new


def _direction(mode, gi, h, c, w_hh, b_hh, exp_whh, exp_h, bits_h, lengths, reverse):
    """Run one direction over (T, N, G) input gates; returns (y (T, N, H), h_T, c_T).

    The steps are :func:`gru_step` / :func:`lstm_step`, computed by their prepared twins
    (tests/test_iqrnn.py checks them against each other)."""
    steps = gi.shape[0]
    rec = _Recurrent(w_hh, b_hh, exp_whh, exp_h, bits_h)
    full = bool((lengths >= steps).all())           # no sequence ends early: no masking
    if reverse:
        idx = reverse_index(lengths, steps)
        gi = np.take_along_axis(gi, idx[:, :, None], axis=0)
    y = np.zeros((steps, h.shape[0], h.shape[1]), dtype=I64)
    for t in range(steps):
        if mode == "GRU":
            h_new = _gru_step_fast(gi[t], h, rec, exp_h, bits_h)
        else:
            h_new, c_new = _lstm_step_fast(gi[t], h, c, rec, exp_h, bits_h)
        if full:
            h, y[t] = h_new, h_new
            if mode == "LSTM":
                c = c_new
            continue
        active = (t < lengths)[:, None]                                  # (N, 1)
        if mode == "LSTM":
            c = np.where(active, c_new, c)
        h = np.where(active, h_new, h)
        y[t] = np.where(active, h_new, 0)
    if reverse:
        y = np.take_along_axis(y, idx[:, :, None], axis=0)
    return y, h, c


def rnn(mode: str, x, lengths, h0, c0, weights, *, exp_x: int, exp_w, bits_h: int,
        num_layers: int, bidirectional: bool, hidden_size: int):
    """A whole (multi-layer, optionally bidirectional) GRU or LSTM on integers.

    ``x`` (T, N, F) time-major at ``exp_x``; ``lengths`` (N,) in ``[0, T]`` or None (all T);
    ``h0`` (L*D, N, H) at ``exp_h = hidden_exp(bits_h)`` or None (zeros); ``c0`` (LSTM) Q11 or
    None; ``weights[k] = (W_ih, W_hh, b_ih or None, b_hh or None)`` for layer ``l`` and
    direction ``d`` (``k = l*D + d``, reverse ``d = 1``), ``exp_w[2k]``, ``exp_w[2k + 1]`` the
    exponents of ``W_ih``, ``W_hh``.
    Returns ``(y (T, N, D*H) at exp_h, h_n (L*D, N, H), c_n (L*D, N, H) Q11 or None)``.
    """
    x = iqmath.as_int(x)
    steps, batch = x.shape[0], x.shape[1]
    dirs = 2 if bidirectional else 1
    exp_h = hidden_exp(bits_h)
    lengths = np.full(batch, steps, dtype=I64) if lengths is None else iqmath.as_int(lengths)
    shape = (num_layers * dirs, batch, hidden_size)
    h0 = np.zeros(shape, I64) if h0 is None else iqmath.as_int(h0)
    c0 = np.zeros(shape, I64) if c0 is None else iqmath.as_int(c0)
    h_n, c_n = np.zeros(shape, I64), np.zeros(shape, I64)
    inp, exp_in = x, int(exp_x)
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh, b_ih, b_hh = (None if a is None else iqmath.as_int(a) for a in weights[k])
            # explicit sizes, not -1: a zero-size batch or sequence has no size to infer
            gi = gate_q11(inp.reshape(steps * batch, inp.shape[2]), w_ih, b_ih, exp_in,
                          exp_w[2 * k])
            gi = gi.reshape(steps, batch, w_ih.shape[0])                 # (T, N, G*H) Q11
            y, h_n[k], c_n[k] = _direction(mode, gi, h0[k], c0[k], w_hh, b_hh,
                                           int(exp_w[2 * k + 1]), exp_h, bits_h, lengths,
                                           reverse=d == 1)
            outs.append(y)
        inp, exp_in = np.concatenate(outs, axis=2), exp_h                # (T, N, D*H)
    return inp, h_n, (c_n if mode == "LSTM" else None)
