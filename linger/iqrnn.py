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

How it runs: :func:`gru_step` / :func:`lstm_step` are the definition. :func:`rnn` computes the
input projections of all steps as one float32 matmul and each step with :class:`_Recurrence`
(pre-scaled weights, gate tables, float-held integers; every operation proven exact for the
weights at hand), falling back to the definition where a bound fails. Read-only weights (a
runtime session's initializers) are prepared once and kept.
"""

from __future__ import annotations

import threading
import weakref

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


#: Entries of one gate-table segment: every sum of two int16 values, offset by ``2**16``.
_SEG = 1 << 17
_TABLES: dict = {}


def _segment(fn, scale: float, add: float = 0.0) -> np.ndarray:
    """float64 ``fn(sat16(k - 2**16)) * scale + add`` for ``k`` in ``[0, 2**17)``: the gate of a
    sum ``gi + gh`` of two int16 values, read at ``gi + gh + 2**16`` (saturation included)."""
    k = np.clip(np.arange(_SEG) - (1 << 16), -(1 << 15), (1 << 15) - 1)
    return _lut(fn)[k & 0xFFFF] * scale + add


def _plateaus(fn) -> tuple:
    """``(a, b)``: the last point of ``fn``'s lower plateau over int16 and the first of its
    upper one (``fn`` constant below ``a`` and above ``b``; cached)."""
    ab = _PLATEAUS.get(fn)
    if ab is None:
        v = _lut(fn)[np.arange(-(1 << 15), 1 << 15) & 0xFFFF]
        first = int(np.flatnonzero(v != v[0])[0])           # v[:first] == v[0]
        last = int(np.flatnonzero(v != v[-1])[-1])          # v[last + 1:] == v[-1]
        ab = _PLATEAUS[fn] = (first - 1 - (1 << 15), last + 1 - (1 << 15))
    return ab


_PLATEAUS: dict = {}


def _reach(fn) -> int:
    """The offset a :func:`_compact` table's index adds: ``-a``."""
    return -_plateaus(fn)[0]


def _compact(fn, scale: float, add: float = 0.0) -> np.ndarray:
    """float64 ``fn(x) * scale + add`` for ``x`` in ``[a, b]`` (:func:`_plateaus`): read at
    ``x + _reach(fn)`` clipped to the table, it gives ``fn(sat16(x))`` for every integer ``x``
    (below ``a`` or above ``b`` the plateau values), a fraction of a segment's size."""
    a, b = _plateaus(fn)
    return _lut(fn)[np.arange(a, b + 1) & 0xFFFF] * scale + add


def _tables(mode: str, e: int) -> dict:
    """The float64 tables of :class:`_Recurrence` for ``exp_h = e`` (built once, shared)."""
    key = (mode, e)
    t = _TABLES.get(key)
    if t is None:
        top = (1 << (e + 1)) - 1
        # P = h + 2**e + 1/2 of the stored state, from floor(P') = h' + 2**e >= 0 unsaturated
        t = {"state": np.minimum(np.arange(top + 2), top) + 0.5}
        if mode == "GRU":
            t["rz"] = _segment(sigmoid_q15, 2.0 ** -PROB_Q)
            t["n"] = _segment(tanh_q15, 2.0 ** (e - PROB_Q), (1 << e) + 0.5)
            t["sig"] = _compact(sigmoid_q15, 2.0 ** -PROB_Q)
            t["n_c"] = _compact(tanh_q15, 2.0 ** (e - PROB_Q), (1 << e) + 0.5)
        else:   # i, f, o share the sigmoid (2**-15), g: tanh 2**-4, tanh(c'): 2**(e-15)
            t["gates"] = np.concatenate([_segment(sigmoid_q15, 2.0 ** -PROB_Q),
                                         _segment(tanh_q15, 2.0 ** -4)])
            t["sig"], t["tanh_g"] = _compact(sigmoid_q15, 2.0 ** -PROB_Q), \
                _compact(tanh_q15, 2.0 ** -4)
            c = np.arange(1 << CELL_BITS) - (1 << (CELL_BITS - 1))        # c + 2**15 -> c
            t["cell"] = c.astype(np.float64)
            t["tanh_cell"] = _lut(tanh_q15)[c & 0xFFFF] * 2.0 ** (e - PROB_Q)
        for a in t.values():
            a.setflags(write=False)                             # shared by every run
        _TABLES[key] = t
    return t


class _Recurrence:
    """One direction's recurrence as ~13-15 numpy calls per step on float-held integers: the steps
    of :func:`gru_step` / :func:`lstm_step`, computed exactly (tests/test_iqrnn.py).

    Representation: the hidden state is stored as ``P = h + 2**e + 1/2`` (``e = exp_h``), a
    positive half-integer, in the float dtype of the recurrent matmul (GRU: in float64 too, for
    its update); the LSTM cell ``c`` as float64. Each rounding ``rs(v, k)`` is
    ``floor(v * 2**-k + 1/2)``, the scalings folded into pre-scaled weights and tables; a floor
    of a value made positive by an offset is the truncating cast to int64, which then indexes
    the next table directly.

    - ``A = P W_hh^T 2**-s + c`` (``s = exp_h + exp_whh - 11 >= 1``, weights pre-scaled) equals
      ``(h W_hh^T + b_hh) 2**-s + 1/2``; ``gh = sat16(floor(A))``, the clip skipped when the
      weights bound ``|gh|`` inside int16 for every ``h``. In float32 when every partial sum,
      an integer on the grid ``2**-(s+1)``, stays ``<= 2**24`` (float64 up to ``2**53``).
    - Gates: ``gh + gi + 2**16`` indexes a table of ``gate(sat16(.)) * scale`` over all sums of
      two int16 values (a segment; sigmoid gates share one, tanh gates another, each column
      offset into its own). Without the clip and where the bound allows (:attr:`fold`), the
      step skips the floor: ``A + gi + reach`` is summed exactly in one add, and its
      truncation indexes a compact table (:func:`_compact`, ~1/3 of a segment) whose clipped
      ends are the gate's plateaus (truncation and floor differ only in ``(-1, 0)``, where
      both read entry 0).
    - GRU: ``n`` reads ``int(r 2**-15 gh_n + gi_n + 1/2 + offset)``; its table holds
      ``mu = n 2**(e-15) + 2**e + 1/2``, so ``P' = mu + z 2**-15 (P - mu)`` and
      ``h' + 2**e = min(floor(P'), 2**(e+1) - 1)``, which one more table turns into the new
      ``P`` (the saturation of ``h'`` included).
    - LSTM (gate columns in the order i, f, o, g, :attr:`order`; sigmoid tables scaled by
      ``2**-15``, tanh by ``2**-4``, ``tanh(c')`` by ``2**(e-15)``):
      ``S = i g 2**-19 + f c 2**-15``; ``int(S + 1/2 + 2**15)`` indexes ``tanh(c')`` and
      ``c'`` (``sat16`` is the take's clip); ``P' = o tanh(c') 2**(e-30) + 2**e + 1/2``.

    The products of Q15 values are integers on the grid ``2**-30`` below ``2**23`` of it times
    ``2**e``: exact in float64. :meth:`make` checks the rest and returns ``None`` where a bound
    fails (the reference steps run).
    """

    @classmethod
    def make(cls, mode, w_hh, b_hh, exp_whh: int, exp_h: int, bits_h: int):
        """The prepared direction, or ``None`` when its float arithmetic is not provably exact."""
        e, s = int(exp_h), int(exp_h) + int(exp_whh) - GATE_Q
        if e != hidden_exp(bits_h) or not 1 <= e <= 15 or not 1 <= s <= 40:
            return None
        w = np.asarray(w_hh, dtype=I64)
        rows = np.abs(w).sum(axis=1)
        if int(rows.max(initial=0)) > 1 << (52 - e):               # int64 sums below overflow
            return None
        b = np.zeros(w.shape[0], I64) if b_hh is None else np.asarray(b_hh, dtype=I64)
        # (A * 2**(s+1)) = 2P W + 2 b - (2**(e+1) + 1) sum W + 2**s: |2P| <= 2**(e+2) - 1
        c2 = 2 * b - ((1 << (e + 1)) + 1) * w.sum(axis=1) + (1 << s)
        bound = int(rows.max(initial=0)) * ((1 << (e + 2)) - 1) + int(np.abs(c2).max(initial=0))
        dtype = _exact_float(bound)
        if dtype is None:
            return None
        self = cls()
        self.mode, self.e, self.hidden, self.dtype = mode, e, w.shape[1], dtype
        hs = self.hidden
        gh = [(b + sign * (rows << e) + (1 << (s - 1))) >> s for sign in (-1, 1)]
        self.clip = not (gh[0].min(initial=0) >= -(1 << 15) and gh[1].max(initial=0) < 1 << 15)
        #: gate columns in the order the steps use (None: PyTorch's); the LSTM's is i, f, o, g
        self.order = None if mode == "GRU" else np.concatenate(
            [np.arange(k * hs, (k + 1) * hs) for k in (0, 1, 3, 2)])
        cols = slice(None) if self.order is None else self.order
        self.w = np.ascontiguousarray((w.T[:, cols] * 2.0 ** -s).astype(dtype))
        self.c = (c2[cols] * 2.0 ** -(s + 1)).astype(dtype)
        self.tables = _tables(mode, e)
        offset = np.full(w.shape[0], float(1 << 16))            # (in self.order)
        if mode == "LSTM":
            offset[3 * hs:] += _SEG                             # g: the tanh segment
        else:
            offset[2 * hs:] = 0.0                               # gh_n stays gh_n
        self.offset = offset.astype(dtype)
        # Without the clip: gh + gi + reach, rounding included, summed exactly in one add
        # (|gi| <= 2**15, reach <= 2**15: the bound of A grows by 2**16 * 2**(s+1)); the bias
        # of the folded steps (``gi + fold``; GRU: the n columns keep A, floored in the step)
        self.fold = None
        if not self.clip and bound + (1 << (s + 17)) <= (
                1 << 24 if dtype == np.float32 else 1 << 53):
            reach = np.full(w.shape[0], float(_reach(sigmoid_q15)))
            if mode == "LSTM":
                reach[3 * hs:] = _reach(tanh_q15)
            else:
                reach[2 * hs:] = 0.0
            self.fold = (self.c.astype(np.float64) + reach).astype(dtype)   # exact: bound
        return self

    def run(self, gi, h0, c0, lengths, own: bool = False, ordered: bool = False):
        """``gi`` (T, N, G) Q11 integers (any numeric dtype), ``h0`` (N, H), ``c0`` (N, H) Q11
        (LSTM), ``lengths`` (N,) or None (all T) -> ``(y (T, N, H), h_T, c_T)`` int64 (GRU:
        ``c0`` as given), as :func:`_reference_direction`. ``own``: ``gi`` is a temporary this
        may overwrite. ``ordered``: ``gi``'s gate columns are already in :attr:`order`."""
        steps, n = gi.shape[0], gi.shape[1]
        hs, dtype, gru = self.hidden, self.dtype, self.mode == "GRU"
        if self.order is not None and not ordered:
            gi, own = gi[:, :, self.order], True                 # a new array
        bias = gi if own and gi.dtype == dtype else np.empty(gi.shape, dtype)
        fold = self.fold is not None                            # see _lstm/_gru_steps
        if gru:    # r gh_n 2**-15 + gi_n + 1/2, offset into the n table
            n_in = np.add(gi[:, :, 2 * hs:], 0.5 + (_reach(tanh_q15) if fold else 1 << 16),
                          dtype=np.float64)
        np.add(gi, self.fold if fold else self.offset, out=bias)   # gi + table offset
        if gru:
            bias[:, :, 2 * hs:] = self.fold[2 * hs:] if fold else 0
        full = lengths is None or bool((lengths >= steps).all())
        off = (1 << self.e) + 0.5
        state = np.empty((steps + 1, n, hs), dtype)
        np.add(h0, off, out=state[0])
        # (T, N, 1): the sequence has ended (keeps its state, gives 0)
        ended = None if full else (np.arange(steps)[:, None] >= lengths)[:, :, None]
        if gru:
            cell = c0
            self._gru_steps(state, bias, n_in, ended, fold)
        else:
            cell = self._lstm_steps(state, bias, c0, ended, fold)
        y = np.empty((steps, n, hs), I64)
        np.subtract(state[1:], off, out=y, casting="unsafe")    # exact integers
        if not full:
            y[np.broadcast_to(ended, y.shape)] = 0
        h_n = (state[steps] - off).astype(I64)
        return y, h_n, (cell if gru else cell.astype(I64))

    def _gh_buffers(self, n):
        """``(acc, idx)``: the recurrent product (in the matmul's dtype) and the gate-table
        indices (int64), ``(n, G)`` each."""
        g = self.w.shape[1]
        return np.empty((n, g), self.dtype), np.empty((n, g), I64)

    def _gh_head(self, acc, idx):
        """The step's first lines without the fold (both modes): ``head(p, b_t)`` leaving
        ``gh + gi + offset`` in ``idx`` (``floor(A)``, clipped where needed, plus ``b_t``)."""
        w, clip = self.w, self.clip
        c = np.empty(acc.shape, acc.dtype)                      # no broadcasting per step
        c[...] = self.c
        dot, add, floor = np.dot, np.add, np.floor
        lo, hi = -(1 << 15), (1 << 15) - 1

        def head(p, b_t):
            dot(p, w, acc)
            add(acc, c, acc)
            floor(acc, acc)                                     # gh
            if clip:
                _clip(acc, lo, hi, acc)
            add(acc, b_t, acc)
            idx[...] = acc
        return head

    def _lstm_steps(self, state, bias, c0, ended, fold: bool):
        """The LSTM steps, writing ``state[1:]``; returns the final cell (float64). Gate columns
        in :attr:`order` (i, f, o, g), so that for one sequence one buffer ``[i f o g c]`` gives
        both cell products ``[i f] * [g c]`` in one multiply.

        ``fold`` (:attr:`fold` set): ``bias`` holds ``gi + c + reach``, so
        ``A + bias`` is ``gh + gi + reach`` plus a fraction in one exact add; its truncation
        indexes the compact gate tables (:func:`_compact`: trunc and floor differ only in
        ``(-1, 0)``, both read entry 0), two takes instead of a floor, an add and one take
        from 2 MB of segments."""
        n, hs, tab = state.shape[1], self.hidden, self.tables
        acc, idx = self._gh_buffers(n)
        # one sequence: [i f o g c] in one row, both cell products in one multiply; a batch:
        # whatever a take writes is contiguous (a take into a strided view copies)
        one = n == 1
        if one or not fold:
            buf = np.empty((n, 5 * hs if one else 4 * hs))
            gates, g_s, g_g = buf[:, :4 * hs], buf[:, :3 * hs], buf[:, 3 * hs:4 * hs]
        else:
            g_s, g_g = np.empty((n, 3 * hs)), np.empty((n, hs))
        g_i, g_f, o = g_s[:, :hs], g_s[:, hs:2 * hs], g_s[:, 2 * hs:]
        if one:
            i_f, g_c, cell = buf[:, :2 * hs], buf[:, 3 * hs:], buf[:, 4 * hs:]
        else:
            cell = np.empty((n, hs))
        cell[...] = c0
        if fold:
            w, dot, add_ = self.w, np.dot, np.add
            take_s, take_tg = tab["sig"].take, tab["tanh_g"].take
            i_s, i_g = (idx[:, :3 * hs], idx[:, 3 * hs:]) if one else \
                (np.empty((n, 3 * hs), I64), np.empty((n, hs), I64))
            a_s, a_g = acc[:, :3 * hs], acc[:, 3 * hs:]

            def head(p, b_t):
                dot(p, w, acc)
                add_(acc, b_t, acc)
                if one:
                    idx[...] = acc
                else:
                    i_s[...] = a_s
                    i_g[...] = a_g
        else:
            head = self._gh_head(acc, idx)
        prod, s, q, d = np.empty((n, 2 * hs)), np.empty((n, hs)), np.empty((n, hs)), \
            np.empty((n, hs))
        p_ig, p_fc = prod[:, :hs], prod[:, hs:]
        i_h = np.empty((n, hs), I64)
        take_g, take_t, take_c, take_h = tab["gates"].take, tab["tanh_cell"].take, \
            tab["cell"].take, tab["state"].astype(self.dtype).take
        mul, add, copyto = np.multiply, np.add, np.copyto
        half, off = _consts(n, hs, 0.5 + (1 << (CELL_BITS - 1)), (1 << self.e) + 0.5)
        c_new = None if ended is None else np.empty((n, hs))
        views = list(state)                                     # (indexing is a call)
        for t, b_t in enumerate(bias):
            p, p_new = views[t], views[t + 1]
            head(p, b_t)
            if fold:
                take_s(i_s, None, g_s, "clip")
                take_tg(i_g, None, g_g, "clip")
            else:
                take_g(idx, None, gates, "clip")
            if one:
                mul(i_f, g_c, prod)                             # i g 2**-19, f c 2**-15
                add(p_ig, p_fc, s)
            else:
                mul(g_i, g_g, s)
                mul(g_f, cell, q)
                add(s, q, s)
            add(s, half, s)
            i_h[...] = s                                        # c' + 2**15 before sat16
            take_t(i_h, None, q, "clip")
            if ended is None:
                take_c(i_h, None, cell, "clip")
            else:
                take_c(i_h, None, c_new, "clip")
                copyto(cell, c_new, where=~ended[t])
            mul(o, q, d)
            add(d, off, d)
            i_h[...] = d                                        # floor: d > 0
            take_h(i_h, None, p_new, "clip")
            if ended is not None:
                copyto(p_new, p, where=ended[t])
        return cell

    def _gru_steps(self, state, bias, n_in, ended, fold: bool):
        """The GRU steps, writing ``state[1:]`` (``P`` kept in float64 too, for the update).
        ``fold`` (:attr:`fold` set): as in :meth:`_lstm_steps`, ``A + bias`` indexes the
        compact tables, and only ``gh_n`` is floored."""
        n, hs, tab = state.shape[1], self.hidden, self.tables
        acc, idx = self._gh_buffers(n)
        a_rz, a_n, i_rz = acc[:, :2 * hs], acc[:, 2 * hs:], idx[:, :2 * hs]
        if fold:
            w, dot, add_, floor_ = self.w, np.dot, np.add, np.floor

            def head(p, b_t):
                dot(p, w, acc)
                add_(acc, b_t, acc)
                floor_(a_n, a_n)
                i_rz[...] = a_rz
        else:
            head = self._gh_head(acc, idx)
        rz, mu, p64, d = np.empty((n, 2 * hs)), np.empty((n, hs)), np.empty((n, hs)), \
            np.empty((n, hs))
        p64[...] = state[0]
        r, z = rz[:, :hs], rz[:, hs:]
        i_h = np.empty((n, hs), I64)
        take_rz, take_n = (tab["sig"].take, tab["n_c"].take) if fold else \
            (tab["rz"].take, tab["n"].take)
        take_h, take_h64 = tab["state"].astype(self.dtype).take, tab["state"].take
        mul, add, copyto, sub = np.multiply, np.add, np.copyto, np.subtract
        views = list(state)
        for t, b_t in enumerate(bias):
            p, p_new = views[t], views[t + 1]
            head(p, b_t)
            take_rz(i_rz, None, rz, "clip")                    # r, z (* 2**-15)
            mul(a_n, r, d)
            add(d, n_in[t], d)
            i_h[...] = d
            take_n(i_h, None, mu, "clip")                       # mu
            sub(p64, mu, d)
            mul(d, z, d)
            add(d, mu, d)
            i_h[...] = d                                        # floor: d > 0
            take_h(i_h, None, p_new, "clip")
            if ended is None:
                take_h64(i_h, None, p64, "clip")
            else:
                copyto(p_new, p, where=ended[t])
                copyto(p64, p_new)


def _consts(n: int, hs: int, *values):
    """Per-step constants as operands: for one sequence (n, hs) arrays (a ufunc converts a
    Python float on every call, ~0.1 us of a ~0.3 us call), else the floats (a broadcast
    operand reads less memory than an array)."""
    return tuple(np.full((n, hs), v) for v in values) if n == 1 else values


#: ``np.clip``'s ufunc without its Python wrapper (a few us per call at batch 1), if available.
_clip = getattr(getattr(np, "_core", None) and np._core.umath, "clip", np.clip)


def _reference_direction(mode, gi, h, c, w_hh, b_hh, exp_whh, exp_h, bits_h, lengths):
    """:func:`gru_step` / :func:`lstm_step` over ``gi`` (T, N, G), each sequence keeping its
    state (and giving 0) after its length: ``(y (T, N, H), h_T, c_T)``."""
    y = np.zeros((gi.shape[0],) + h.shape, dtype=I64)
    for t in range(gi.shape[0]):
        active = (t < lengths)[:, None]
        if mode == "GRU":
            h_new = gru_step(gi[t], h, w_hh, b_hh, exp_whh, exp_h, bits_h)
        else:
            h_new, c_new = lstm_step(gi[t], h, c, w_hh, b_hh, exp_whh, exp_h, bits_h)
            c = np.where(active, c_new, c)
        h = np.where(active, h_new, h)
        y[t] = np.where(active, h_new, 0)
    return y, h, c


class _Direction:
    """One layer and direction of :func:`rnn`, prepared once for its weights: the input
    projection in float32 where exact, the recurrence by :class:`_Recurrence` where it is
    exact, else the reference steps."""

    def __init__(self, mode, weights, exp_in: int, exp_wih: int, exp_whh: int, bits_h: int):
        self.source = ()                                        # see _prepared
        self.w_ih, self.w_hh, self.b_ih, self.b_hh = (
            None if a is None else iqmath.as_int(a) for a in weights)
        self.mode, self.exp_in, self.exp_wih, self.exp_whh = mode, exp_in, exp_wih, exp_whh
        self.bits_h, self.exp_h = bits_h, hidden_exp(bits_h)
        self.rec = _Recurrence.make(mode, self.w_hh, self.b_hh, exp_whh, self.exp_h, bits_h)
        # gi = sat16(floor(x W_ih^T 2**-s + (b_ih + 2**(s-1)) 2**-s)) in float32 when
        # max|x| * max_j sum_k |W_ih[j, k]| + max|b_ih + 2**(s-1)| <= 2**24 (checked per run;
        # below 2**(15+s) nothing saturates: no clip)
        # (columns in the recurrence's gate order, so its steps need no permuted copy)
        s = exp_in + exp_wih - GATE_Q
        self.proj = None
        if self.rec is not None and 1 <= s <= 62:
            shifted = (0 if self.b_ih is None else self.b_ih) + (1 << (s - 1)) \
                + np.zeros(self.w_ih.shape[0], I64)
            cols = slice(None) if self.rec.order is None else self.rec.order
            self.proj = (np.ascontiguousarray((self.w_ih.T[:, cols] * 2.0 ** -s)
                                              .astype(np.float32)),
                         (shifted[cols] * 2.0 ** -s).astype(np.float32),
                         int(np.abs(self.w_ih).sum(axis=1).max(initial=0)),
                         int(np.abs(shifted).max(initial=0)), s)

    def matches(self, weights) -> bool:
        """Prepared from these very (still read-only) arrays."""
        return len(self.source) == len(weights) and all(
            (r is None and a is None) or (r is not None and r() is a and _constant(a))
            for r, a in zip(self.source, weights))

    def input_gates(self, x2d):
        """``gate_q11(x2d, W_ih, b_ih, exp_in, exp_wih)`` of integers ``x2d`` (any integer
        dtype): a new array, of float32-held integers when that is exact."""
        gi, ordered = self._input_gates(x2d)
        return gi[:, np.argsort(self.rec.order)] if ordered and self.rec.order is not None \
            else gi

    def _input_gates(self, x2d):
        """:meth:`input_gates` and whether its gate columns are in the recurrence's order
        (``_Recurrence.order``) rather than PyTorch's."""
        if self.proj is not None:
            w, c, rows, shifted, s = self.proj
            if x2d.dtype.itemsize <= 2:                         # int8/16, uint8/16: by dtype
                lim = 1 << (8 * x2d.dtype.itemsize - (x2d.dtype.kind == "i"))
            else:
                lim = max(-int(x2d.min(initial=0)), int(x2d.max(initial=0)))
            if lim * rows + shifted <= 1 << 24:
                gi = np.matmul(x2d.astype(np.float32), w)
                np.add(gi, c, out=gi)
                np.floor(gi, out=gi)
                if lim * rows + shifted >= 1 << (15 + s):       # else every gi fits int16
                    _clip(gi, -(1 << 15), (1 << 15) - 1, out=gi)
                return gi, True
        return gate_q11(iqmath.as_int(x2d), self.w_ih, self.b_ih, self.exp_in,
                        self.exp_wih), False

    def run(self, gi, h, c, lengths, reverse: bool, states_fit: bool, ordered: bool = False):
        """(T, N, G) input gates (a temporary, overwritten) -> ``(y (T, N, H), h_T, c_T)``;
        ``lengths`` None: all T. The reverse direction reads each sequence backwards within its
        length. ``states_fit``: ``h``, ``c`` lie in their formats' ranges (the prepared path
        assumes it). ``ordered``: ``gi`` as :meth:`_input_gates` says (gate columns in the
        recurrence's order)."""
        steps = gi.shape[0]
        if reverse:
            idx = None if lengths is None else reverse_index(lengths, steps)[:, :, None]
            gi = gi[::-1] if idx is None else np.take_along_axis(gi, idx, axis=0)
        if self.rec is not None and states_fit:
            y, h, c = self.rec.run(gi, h, c, lengths, own=True, ordered=ordered)
        else:
            if ordered and self.rec.order is not None:
                gi = gi[:, :, np.argsort(self.rec.order)]
            lens = np.full(gi.shape[1], steps) if lengths is None else lengths
            y, h, c = _reference_direction(self.mode, iqmath.as_int(gi), h, c, self.w_hh,
                                           self.b_hh, self.exp_whh, self.exp_h, self.bits_h, lens)
        if reverse:
            y = y[::-1] if idx is None else np.take_along_axis(y, idx, axis=0)
        return y, h, c


#: Prepared directions of read-only weights (a runtime session's initializers), by identity;
#: the oldest entries leave first.
_PREPARED: "dict[tuple, _Direction]" = {}
_PREPARED_MAX = 64
_PREPARED_LOCK = threading.Lock()


def _constant(a) -> bool:
    """``a`` cannot change: a read-only array whose memory no writable array shares (every
    array along its ``base`` chain read-only; the chain ends in its own data or in ``bytes``).
    A read-only view of a writable array is not constant: its base may still be edited."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None or isinstance(a, bytes)


def _prepared(mode, weights, exp_in: int, exp_wih: int, exp_whh: int, bits_h: int):
    """The :class:`_Direction` of these weights; kept for the next call when every weight is a
    read-only array (taken as a constant: the runtime's initializers are), so a session
    prepares its weights once."""
    key = (mode, tuple(map(id, weights)), exp_in, exp_wih, exp_whh, bits_h)
    hit = _PREPARED.get(key)
    if hit is not None and hit.matches(weights):
        return hit
    prep = _Direction(mode, weights, exp_in, exp_wih, exp_whh, bits_h)
    if all(a is None or _constant(a) for a in weights):
        prep.source = tuple(None if a is None else weakref.ref(a) for a in weights)
        with _PREPARED_LOCK:
            _PREPARED[key] = prep
            while len(_PREPARED) > _PREPARED_MAX:
                del _PREPARED[next(iter(_PREPARED))]
    return prep


def rnn(mode: str, x, lengths, h0, c0, weights, *, exp_x: int, exp_w, bits_h: int,
        num_layers: int, bidirectional: bool, hidden_size: int):
    """A whole (multi-layer, optionally bidirectional) GRU or LSTM on integers.

    ``x`` (T, N, F) time-major at ``exp_x``; ``lengths`` (N,) in ``[0, T]`` or None (all T);
    ``h0`` (L*D, N, H) at ``exp_h = hidden_exp(bits_h)`` or None (zeros); ``c0`` (LSTM) Q11 or
    None; ``weights[k] = (W_ih, W_hh, b_ih or None, b_hh or None)`` for layer ``l`` and
    direction ``d`` (``k = l*D + d``, reverse ``d = 1``), ``exp_w[2k]``, ``exp_w[2k + 1]`` the
    exponents of ``W_ih``, ``W_hh``. Weight arrays that cannot change (read-only, and no
    writable array shares their memory) are taken as constants: their preparation is kept for
    the next call with the same arrays.
    Returns ``(y (T, N, D*H) at exp_h, h_n (L*D, N, H), c_n (L*D, N, H) Q11 or None)``.
    """
    if not (isinstance(x, np.ndarray) and x.dtype.kind in "iu"):
        x = iqmath.as_int(x)                        # integers keep their dtype (see input_gates)
    steps, batch = x.shape[0], x.shape[1]
    dirs = 2 if bidirectional else 1
    exp_h = hidden_exp(bits_h)
    lengths = None if lengths is None else iqmath.as_int(lengths)
    if lengths is not None and (lengths >= steps).all():
        lengths = None                                  # no sequence ends early
    shape = (num_layers * dirs, batch, hidden_size)
    h0, c0 = (None if v is None else iqmath.as_int(v) for v in (h0, c0))
    states = [(h0, bits_h)] + ([(c0, CELL_BITS)] if mode == "LSTM" else [])
    fit = all(v is None or -(1 << (bits - 1)) <= v.min(initial=0) and v.max(initial=0) <
              1 << (bits - 1) for v, bits in states)    # as the prepared path assumes (zeros)
    h0 = np.zeros(shape, I64) if h0 is None else h0
    c0 = np.zeros(shape, I64) if c0 is None else c0
    h_n, c_n = np.zeros(shape, I64), np.zeros(shape, I64)
    inp, exp_in = x, int(exp_x)
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            prep = _prepared(mode, tuple(weights[k]), exp_in, int(exp_w[2 * k]),
                             int(exp_w[2 * k + 1]), bits_h)
            # explicit sizes, not -1: a zero-size batch or sequence has no size to infer
            gi, ordered = prep._input_gates(inp.reshape(steps * batch, inp.shape[2]))
            gi = gi.reshape(steps, batch, gi.shape[1])                   # (T, N, G*H) Q11
            y, h_n[k], c_n[k] = prep.run(gi, h0[k], c0[k], lengths, d == 1, fit, ordered)
            outs.append(y)
        inp, exp_in = (outs[0] if dirs == 1 else np.concatenate(outs, axis=2)), exp_h
    return inp, h_n, (c_n if mode == "LSTM" else None)
