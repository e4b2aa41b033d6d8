"""The integer recurrence's prepared path (tables, float-held integers, pre-scaled BLAS) equals the
reference step functions :func:`linger.iqrnn.gru_step` / :func:`linger.iqrnn.lstm_step` exactly:
random and saturating values, 8- and 16-bit weights and states (float32 and float64 matmuls),
gate inputs with and without the clip, with lengths; whole multi-layer bidirectional runs equal
the composed reference, also where the prepared path must step aside (shifts, 40-bit weights,
states beyond their format); the float32 input projection equals ``gate_q11``; read-only weights
are prepared once."""

from __future__ import annotations

import numpy as np
import pytest

from linger import iqmath, iqrnn


def _case(mode, bits_h, w_bits, b_lim, seed, steps=5, n=4, hs=6):
    rng = np.random.default_rng(seed)
    g = iqrnn.GATES[mode] * hs
    exp_h = iqrnn.hidden_exp(bits_h)
    lim = 1 << (w_bits - 1)
    gi = iqmath.saturate(rng.integers(-40000, 40000, (steps, n, g)), 16)  # saturates the tables
    h0 = rng.integers(-(1 << exp_h), 1 << exp_h, (n, hs))
    h0[0] = -(1 << exp_h)                                       # the extreme hidden values
    h0[-1] = (1 << exp_h) - 1                                   # (n = 1: this one)
    c0 = rng.integers(-(1 << 15), 1 << 15, (n, hs))
    w_hh = rng.integers(-lim + 1, lim, (g, hs))
    w_hh[0, 0] = lim - 1
    b_hh = rng.integers(-b_lim, b_lim, g)
    return gi, h0, c0, w_hh, b_hh, exp_h


# (bits_h, w_bits, |b_hh| limit, exp_whh) -> the path make() picks (same for GRU and LSTM)
PATHS = [(8, 8, 1 << 20, 5, np.float32, True),       # gh saturates: clipped
         (8, 8, 1 << 8, 9, np.float32, False),       # |gh| < 2**15 proven from the weights
         (8, 16, 1 << 20, 13, np.float64, True),     # sums beyond 2**24: float64
         (8, 16, 1 << 8, 18, np.float64, False),
         (16, 8, 1 << 8, 9, np.float64, False),
         (16, 16, 1 << 20, 10, np.float64, True)]


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("bits_h, w_bits, b_lim, exp_whh, dtype, clip", PATHS)
@pytest.mark.parametrize("lengths", [None, [5, 1, 0, 3], [3]])     # [3]: one sequence
def test_prepared_recurrence_equals_reference_steps(mode, bits_h, w_bits, b_lim, exp_whh, dtype,
                                                    clip, lengths):
    """Batches of 4 and of one sequence (the LSTM's one-row buffer), all or some steps."""
    n = 1 if lengths == [3] else 4
    gi, h0, c0, w_hh, b_hh, exp_h = _case(mode, bits_h, w_bits, b_lim, bits_h + w_bits, n=n)
    lens = np.full(gi.shape[1], gi.shape[0]) if lengths is None else np.array(lengths)
    rec = iqrnn._Recurrence.make(mode, w_hh, b_hh, exp_whh, exp_h, bits_h)
    assert (rec.dtype, rec.clip) == (dtype, clip)
    want = iqrnn._reference_direction(mode, gi, h0, c0, w_hh, b_hh, exp_whh, exp_h, bits_h,
                                      lens)
    for src in (gi, gi.astype(np.float32)):      # gate inputs as int64 or float32 integers
        got = rec.run(src, h0, c0, lens)
        for a, b in zip(got, want):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("mode, n", [("LSTM", 1), ("LSTM", 3), ("GRU", 1), ("GRU", 3)])
@pytest.mark.parametrize("spread", [3000, 1 << 15])
def test_folded_recurrence_equals_reference_steps(mode, n, spread):
    """No clip: gate sums indexed in one exact add through the compact tables (their ends,
    where truncation and floor differ, included), against
    the reference steps, with and without lengths."""
    rng = np.random.default_rng(spread + n)
    steps, hs, g = 40, 16, iqrnn.GATES[mode] * 16
    w_hh = rng.integers(-127, 128, (g, hs))
    b_hh = rng.integers(-(1 << 8), 1 << 8, g)
    rec = iqrnn._Recurrence.make(mode, w_hh, b_hh, 9, 7, 8)
    assert rec.fold is not None and rec.dtype == np.float32
    gi = rng.integers(-spread, spread, (steps, n, g))
    reach = [iqrnn._reach(iqmath.sigmoid_q15), iqrnn._reach(iqmath.tanh_q15)]
    gi[::3, :, ::5] = rng.choice([-1, 1], g // 5 + 1) * rng.choice(reach, g // 5 + 1) + \
        rng.integers(-2, 3, gi[::3, :, ::5].shape)             # sums at the tables' ends
    gi = iqmath.saturate(gi, 16)
    h0, c0 = rng.integers(-128, 128, (n, hs)), rng.integers(-(1 << 15), 1 << 15, (n, hs))
    for lengths in (np.full(n, steps), rng.integers(0, steps, n)):
        want = iqrnn._reference_direction(mode, gi, h0, c0, w_hh, b_hh, 9, 7, 8, lengths)
        for a, b in zip(rec.run(gi.astype(np.float32), h0, c0, lengths), want):
            assert np.array_equal(a, b)


def _reference_rnn(mode, x, lengths, h0, c0, weights, exp_x, exp_w, bits_h, dirs):
    """:func:`iqrnn.rnn` composed from ``gate_q11`` and the reference steps."""
    exp_h, inp, exp_in, h_n, c_n = iqrnn.hidden_exp(bits_h), x, exp_x, [], []
    for layer in range(len(weights) // dirs):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh, b_ih, b_hh = weights[k]
            gi = iqrnn.gate_q11(inp.reshape(-1, inp.shape[2]), w_ih, b_ih, exp_in, exp_w[2 * k])
            gi = gi.reshape(x.shape[0], x.shape[1], -1)
            idx = iqrnn.reverse_index(lengths, x.shape[0]) if d else np.arange(x.shape[0])[:, None]
            gi = np.take_along_axis(gi, np.broadcast_to(idx, gi.shape[:2])[:, :, None], axis=0)
            y, h, c = iqrnn._reference_direction(mode, gi, h0[k], c0[k], w_hh, b_hh,
                                                 exp_w[2 * k + 1], exp_h, bits_h, lengths)
            outs.append(np.take_along_axis(y, np.broadcast_to(idx, y.shape[:2])[:, :, None],
                                           axis=0))
            h_n.append(h)
            c_n.append(c)
        inp, exp_in = np.concatenate(outs, axis=2), exp_h
    return inp, np.stack(h_n), np.stack(c_n)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("exp_whh, bits_h, prepared", [(9, 8, True),
                                                        (2, 8, False),     # shift <= 0
                                                        (60, 8, False),    # shift too large
                                                        (30, 16, False)])  # sums beyond 2**53
@pytest.mark.parametrize("lengths", [[6, 2, 4], None])
@pytest.mark.parametrize("state_scale", [1, 300])      # 300: h0 beyond bits_h, run as given
def test_rnn_equals_reference_composition(mode, exp_whh, bits_h, prepared, lengths, state_scale):
    """Two layers, both directions, lengths, h0/c0 given, saturating inputs; on the prepared
    path or, where it cannot be proven exact, the reference steps."""
    rng = np.random.default_rng(exp_whh)
    steps, n, feat, hs, g = 6, 3, 5, 4, iqrnn.GATES[mode] * 4
    w_lim = 1 << 39 if exp_whh == 30 else 128
    weights = [(rng.integers(-127, 128, (g, feat if k < 2 else 2 * hs)),
                rng.integers(-w_lim + 1, w_lim, (g, hs)), rng.integers(-(1 << 16), 1 << 16, g),
                rng.integers(-(1 << 12), 1 << 12, g)) for k in range(4)]
    exp_w = [7, exp_whh] * 4
    x = rng.integers(-128, 128, (steps, n, feat)) * np.array([1, 1, 1000])[None, :, None]
    e = iqrnn.hidden_exp(bits_h)
    h0 = rng.integers(-(1 << e), 1 << e, (4, n, hs)) * state_scale
    c0 = rng.integers(-(1 << 15), 1 << 15, (4, n, hs))
    assert (iqrnn._Recurrence.make(mode, weights[0][1], weights[0][3], exp_whh, e, bits_h)
            is not None) == prepared
    got = iqrnn.rnn(mode, x, None if lengths is None else np.array(lengths), h0, c0, weights,
                    exp_x=7, exp_w=exp_w, bits_h=bits_h, num_layers=2, bidirectional=True,
                    hidden_size=hs)
    want = _reference_rnn(mode, x, np.full(n, steps) if lengths is None else np.array(lengths),
                          h0, c0, weights, 7, exp_w, bits_h, 2)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    if mode == "LSTM":
        assert np.array_equal(got[2], want[2])


@pytest.mark.parametrize("x_lim, w_lim", [(1 << 7, 128),   # float32 proven, gi saturates
                                          (1 << 7, 4),     # no gi can saturate: no clip
                                          (1 << 20, 128)])  # int64 fallback
def test_input_gates_equal_gate_q11(x_lim, w_lim):
    rng = np.random.default_rng(x_lim + w_lim)
    x = rng.integers(-x_lim, x_lim, (30, 40))
    x[0] = x_lim - 1                                            # the largest gi
    w_ih, w_hh = rng.integers(-w_lim + 1, w_lim, (12, 40)), rng.integers(-127, 128, (12, 3))
    w_ih[0] = w_lim - 1                                         # (w_lim 128: saturates)
    b_ih = rng.integers(-(1 << 14), 1 << 14, 12)
    prep = iqrnn._Direction("LSTM", (w_ih, w_hh, b_ih, None), 7, 7, 9, 8)
    got = prep.input_gates(x)
    assert got.dtype == (np.float32 if x_lim < 1 << 10 else np.int64)
    assert np.array_equal(got, iqrnn.gate_q11(x, w_ih, b_ih, 7, 7))


def test_read_only_weights_are_prepared_once():
    rng = np.random.default_rng(0)
    weights = [rng.integers(-127, 128, (12, 5)), rng.integers(-127, 128, (12, 4)), None, None]
    assert iqrnn._prepared("GRU", weights, 7, 7, 9, 8) is not \
        iqrnn._prepared("GRU", weights, 7, 7, 9, 8)                # writeable: may change
    for w in weights[:2]:
        w.setflags(write=False)
    first = iqrnn._prepared("GRU", weights, 7, 7, 9, 8)
    assert iqrnn._prepared("GRU", weights, 7, 7, 9, 8) is first
    assert iqrnn._prepared("GRU", weights, 7, 7, 10, 8) is not first   # other exponents
    other = [weights[0].copy(), weights[1], None, None]                 # another array
    other[0][0, 0] += 1
    other[0].setflags(write=False)
    assert not np.array_equal(iqrnn._prepared("GRU", other, 7, 7, 9, 8).w_ih, first.w_ih)
    base = weights[0].copy()                       # a read-only view of writable memory
    view = base[:]
    view.setflags(write=False)
    shared = [view, weights[1], None, None]
    first = iqrnn._prepared("GRU", shared, 7, 7, 9, 8)
    base[0, 0] += 1                                # edited through its base
    assert iqrnn._prepared("GRU", shared, 7, 7, 9, 8) is not first


@pytest.mark.parametrize("fn", [iqmath.sigmoid_q15, iqmath.tanh_q15])
def test_gate_tables_cover_every_sum_of_two_int16(fn):
    s = np.arange(-(1 << 16), 1 << 16, dtype=np.int64)       # gi + gh
    assert np.array_equal(iqrnn._segment(fn, 1.0)[s + (1 << 16)], fn(iqmath.saturate(s, 16)))
