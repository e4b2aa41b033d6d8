"""The integer recurrence's prepared steps (float32/float64 BLAS, full-domain gate tables) equal the
reference step functions :func:`linger.iqrnn.gru_step` / :func:`linger.iqrnn.lstm_step` exactly,
on random and saturating values, weights of 8 to 24 bits (both BLAS paths) and with lengths."""

from __future__ import annotations

import numpy as np
import pytest

from linger import iqmath, iqrnn


def _reference_direction(mode, gi, h, c, w_hh, b_hh, exp_whh, exp_h, bits_h, lengths):
    y = np.zeros((gi.shape[0],) + h.shape, dtype=np.int64)
    for t in range(gi.shape[0]):
        active = (t < lengths)[:, None]
        if mode == "GRU":
            h_new = iqrnn.gru_step(gi[t], h, w_hh, b_hh, exp_whh, exp_h, bits_h)
        else:
            h_new, c_new = iqrnn.lstm_step(gi[t], h, c, w_hh, b_hh, exp_whh, exp_h, bits_h)
            c = np.where(active, c_new, c)
        h = np.where(active, h_new, h)
        y[t] = np.where(active, h_new, 0)
    return y, h, c


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("bits_h", [8, 16])
@pytest.mark.parametrize("w_bits", [8, 16, 24])     # float32 and float64 matmul paths
@pytest.mark.parametrize("lengths", [None, [5, 1, 0, 3]])
def test_prepared_steps_equal_reference_steps(mode, bits_h, w_bits, lengths):
    rng = np.random.default_rng(bits_h + w_bits)
    steps, n, hs = 5, 4, 6
    g = iqrnn.GATES[mode] * hs
    exp_h = iqrnn.hidden_exp(bits_h)
    lim = 1 << (w_bits - 1)
    gi = rng.integers(-40000, 40000, (steps, n, g))             # saturates the gate tables too
    gi = iqmath.saturate(gi, 16)
    h0 = rng.integers(-(1 << (bits_h - 1)), 1 << (bits_h - 1), (n, hs))
    h0[0] = -(1 << (bits_h - 1))                                # the extreme hidden value
    c0 = rng.integers(-(1 << 15), 1 << 15, (n, hs))
    w_hh = rng.integers(-lim + 1, lim, (g, hs))
    w_hh[0, 0] = lim - 1
    b_hh = rng.integers(-(1 << 20), 1 << 20, g)
    exp_whh = w_bits - 3
    lens = np.full(n, steps) if lengths is None else np.array(lengths)
    want = _reference_direction(mode, gi, h0, c0, w_hh, b_hh, exp_whh, exp_h, bits_h, lens)
    for reverse in (False, True):
        got = iqrnn._direction(mode, gi, h0, c0, w_hh, b_hh, exp_whh, exp_h, bits_h, lens,
                               reverse=reverse)
        if reverse:  # the reverse direction reads each sequence backwards within its length
            idx = iqrnn.reverse_index(lens, steps)
            gr = np.take_along_axis(gi, idx[:, :, None], axis=0)
            y, h, c = _reference_direction(mode, gr, h0, c0, w_hh, b_hh, exp_whh, exp_h,
                                           bits_h, lens)
            want_r = (np.take_along_axis(y, idx[:, :, None], axis=0), h, c)
            for a, b in zip(got, want_r):
                assert np.array_equal(a, b)
        else:
            for a, b in zip(got, want):
                assert np.array_equal(a, b)


@pytest.mark.parametrize("fn", [iqmath.sigmoid_q15, iqmath.tanh_q15])
def test_gate_table_covers_the_int16_domain_exactly(fn):
    x = np.arange(-(1 << 15), 1 << 15, dtype=np.int64)
    assert np.array_equal(iqrnn._gate(fn, x), fn(x))
    # beyond int16 the gate saturates its input first, as sat16 in the step formulas
    assert np.array_equal(iqrnn._gate(fn, np.array([70000, -70000])),
                          fn(np.array([32767, -32768])))
