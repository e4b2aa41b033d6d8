"""The fused recurrent training node (:mod:`linger.quant.rnn_train`) against a reference that
composes :func:`linger.quant.functions.fake_quant` calls step by step and lets autograd derive the
backward: forward values identical, gradients equal up to float summation order, for GRU and LSTM,
with lengths, saturating states and inputs, and biases on or off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from linger import iqrnn
from linger.iqmath import GATE_Q, PROB_Q
from linger.quant import rnn_train
from linger.quant.functions import fake_quant


def _gru_ref(gi, h, w_hh, b_hh, exp_h, bits_h):
    hs = h.shape[1]
    gh = fake_quant(F.linear(h, w_hh, b_hh), GATE_Q, 16)
    rz = fake_quant(torch.sigmoid(fake_quant(gi[:, :2 * hs] + gh[:, :2 * hs], GATE_Q, 16)),
                    PROB_Q, 17)
    r, z = rz[:, :hs], rz[:, hs:]
    pre = gi[:, 2 * hs:] + fake_quant(r * gh[:, 2 * hs:], GATE_Q, 32)
    n = fake_quant(torch.tanh(fake_quant(pre, GATE_Q, 16)), PROB_Q, 17)
    return fake_quant(torch.lerp(n, h, z), exp_h, bits_h)    # (1 - z) * n + z * h


def _lstm_ref(gi, h, c, w_hh, b_hh, exp_h, bits_h):
    hs = h.shape[1]
    pre = fake_quant(gi + fake_quant(F.linear(h, w_hh, b_hh), GATE_Q, 16), GATE_Q, 16)
    s = fake_quant(torch.sigmoid(pre), PROB_Q, 17)
    i, f, o = s[:, :hs], s[:, hs:2 * hs], s[:, 3 * hs:]
    gg = fake_quant(torch.tanh(pre[:, 2 * hs:3 * hs]), PROB_Q, 17)
    c_new = fake_quant(f * c + i * gg, iqrnn.CELL_Q, iqrnn.CELL_BITS)
    tc = fake_quant(torch.tanh(c_new), PROB_Q, 17)
    return fake_quant(o * tc, exp_h, bits_h), c_new


def _reference(mode, gi, h, c, w_hh, b_hh, lengths, bits_h):
    exp_h = iqrnn.hidden_exp(bits_h)
    if lengths is None:
        lengths = torch.full((gi.shape[1],), gi.shape[0], device=gi.device)
    act = (torch.arange(gi.shape[0], device=gi.device)[:, None] < lengths[None, :]).unsqueeze(-1)
    ys = []
    for t in range(gi.shape[0]):
        if mode == "GRU":
            h_new = _gru_ref(gi[t], h, w_hh, b_hh, exp_h, bits_h)
        else:
            h_new, c_new = _lstm_ref(gi[t], h, c, w_hh, b_hh, exp_h, bits_h)
            c = torch.where(act[t], c_new, c)
        h = torch.where(act[t], h_new, h)
        ys.append(h_new * act[t])
    return torch.stack(ys), h, c


def _grid(t, exp):
    """``t`` rounded half up onto the grid ``2**-exp``."""
    return torch.floor(t * 2.0 ** exp + 0.5) / 2.0 ** exp


def _case(mode, bias, scale, seed):
    g = torch.Generator().manual_seed(seed)
    steps, n, hs = 7, 5, 6
    gates = iqrnn.GATES[mode] * hs

    # the node's contract: gi on the Q11 grid, in int16 range (the layer fake-quantizes it)
    gi = _grid(scale * torch.randn(steps, n, gates, generator=g), GATE_Q).clamp(-16, 32767 / 2048)
    h0 = _grid(0.5 * torch.randn(n, hs, generator=g), 7).clamp(-1, 127 / 128)
    c0 = _grid(torch.randn(n, hs, generator=g), iqrnn.CELL_Q)
    w = _grid(scale * 0.4 * torch.randn(gates, hs, generator=g), 6)
    b = _grid(0.3 * torch.randn(gates, generator=g), 13) if bias else None
    lengths = torch.tensor([7, 3, 0, 6, 1])
    dy = torch.randn(steps, n, hs, generator=g)
    dh = torch.randn(n, hs, generator=g)
    dc = torch.randn(n, hs, generator=g)
    return gi, h0, c0, w, b, lengths, dy, dh, dc


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scale", [1.0, 20.0])   # 20: gates and cells saturate
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [True, False])  # False: no lengths, every step counts
@pytest.mark.parametrize("chunk", [None, 3])     # 3: backward in runs of 3, 3 and 1 steps
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_fused_direction_equals_composed_reference(mode, bias, scale, reverse, packed, chunk,
                                                   device, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(rnn_train, "_CHUNK", chunk)
    case = _case(mode, bias, scale, seed=1)
    gi, h0, c0, w, b, lengths, dy, dh, dc = (None if t is None else t.to(device) for t in case)
    if not packed:
        lengths = None
    leaves = [t for t in (gi, h0, c0, w, b) if t is not None]

    def run(fn):
        xs = [t.clone().requires_grad_(True) for t in leaves]
        args = dict(zip(["gi", "h0", "c0", "w", "b"] if bias else ["gi", "h0", "c0", "w"], xs))
        out = fn(args.get("gi"), args["h0"], args["c0"], args["w"], args.get("b"))
        y, h, c = out
        loss = (y * dy).sum() + (h * dh).sum() + ((c * dc).sum() if mode == "LSTM" else 0.0)
        loss.backward()
        return out, [x.grad for x in xs]

    def fused(gi_, h_, c_, w_, b_):
        return rnn_train.direction(mode, gi_, h_, c_, w_, b_, lengths, reverse, 8)

    def ref(gi_, h_, c_, w_, b_):
        if reverse:
            lens = torch.full((gi_.shape[1],), gi_.shape[0], device=gi_.device) \
                if lengths is None else lengths
            idx = rnn_train.reverse_index(lens, gi_.shape[0])[:, :, None]
            y, h, c = _reference(mode, gi_.gather(0, idx.expand_as(gi_)), h_, c_, w_, b_,
                                 lengths, 8)
            return y.gather(0, idx.expand_as(y)), h, c
        return _reference(mode, gi_, h_, c_, w_, b_, lengths, 8)

    (y1, h1, c1), g1 = run(fused)
    (y2, h2, c2), g2 = run(ref)
    assert torch.equal(y1, y2) and torch.equal(h1, h2)
    if mode == "LSTM":
        assert torch.equal(c1, c2)
    else:
        assert c1 is None
    for a, r in zip(g1, g2):
        if mode == "GRU" and r is None:  # c0 does not reach a GRU
            continue
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5), (a - r).abs().max()
    if scale > 1:  # saturation really happened: some gradients are cut to zero
        assert (g2[0] == 0).any()


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_backward_twice_and_outputs_own_their_memory(mode):
    """Backward reads the saved buffers without changing them (a second backward with
    retain_graph gives the same gradients), and h_T is not a view of y."""
    gi, h0, c0, w, b, lengths, dy, dh, dc = _case(mode, True, 20.0, seed=2)
    xs = [t.clone().requires_grad_(True) for t in (gi, w, b)]
    y, h, c = rnn_train.direction(mode, xs[0], h0, c0, xs[1], xs[2], lengths, False, 8)
    loss = (y * dy).sum() + (h * dh).sum()
    first = torch.autograd.grad(loss, xs, retain_graph=True)
    second = torch.autograd.grad(loss, xs)
    for a, r in zip(first, second):
        assert torch.equal(a, r)
    y_before = y.detach().clone()
    with torch.no_grad():
        h.add_(1.0)
    assert torch.equal(y, y_before)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("amplitude", [3.0, 30.0])  # 3: rounded step by step; 30: saturating
def test_input_gates_quantized_by_the_node(mode, packed, amplitude):
    """The node fake-quantizes its input gates itself: off-grid values (saturating int16 Q11 or
    not) give what fake_quant(gi, 11, 16) followed by the reference gives, gradients cut where
    they saturate."""
    gi, h0, c0, w, b, lengths, dy, dh, dc = _case(mode, True, 1.0, seed=3)
    gi = amplitude * torch.randn(gi.shape, generator=torch.Generator().manual_seed(4))
    if not packed:
        lengths = None

    def run(fn):
        xs = [t.clone().requires_grad_(True) for t in (gi, w, b)]
        y, h, c = fn(xs[0], h0, c0, xs[1], xs[2])
        loss = (y * dy).sum() + (h * dh).sum() + ((c * dc).sum() if mode == "LSTM" else 0.0)
        loss.backward()
        return (y, h), [x.grad for x in xs]

    (y1, h1), g1 = run(lambda *a: rnn_train.direction(mode, *a, lengths, False, 8))
    (y2, h2), g2 = run(lambda gi_, *a: _reference(mode, fake_quant(gi_, GATE_Q, 16), *a,
                                                  lengths, 8))
    assert torch.equal(y1, y2) and torch.equal(h1, h2)
    for a, r in zip(g1, g2):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5), (a - r).abs().max()
    saturated = gi.abs() > 16
    assert saturated.any() == (amplitude > 16)
    assert (g1[0][saturated] == 0).all()


def _spy(monkeypatch, owner, name):
    """Record every value ``owner.name`` returns (the function still runs)."""
    seen, fn = [], getattr(owner, name)

    def spy(*args, **kwargs):
        seen.append(fn(*args, **kwargs))
        return seen[-1]
    monkeypatch.setattr(owner, name, spy)
    return seen


def _run_both(fn_a, fn_b, leaves, mode, dy, dh, dc):
    """Outputs and leaf gradients of two implementations on the same loss."""
    results = []
    for fn in (fn_a, fn_b):
        xs = [t.clone().requires_grad_(True) for t in leaves]
        y, h, c = fn(*xs)
        loss = (y * dy).sum() + (h * dh).sum() + ((c * dc).sum() if mode == "LSTM" else 0.0)
        loss.backward()
        results.append(((y, h, c), [x.grad for x in xs]))
    return results


def _assert_same(mode, results):
    ((y1, h1, c1), g1), ((y2, h2, c2), g2) = results
    assert torch.equal(y1, y2) and torch.equal(h1, h2)
    if mode == "LSTM":
        assert torch.equal(c1, c2)
    for a, r in zip(g1, g2):
        if a is None or r is None:                # c0 does not reach a GRU
            assert a is None and r is None and mode == "GRU"
            continue
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5), (a - r).abs().max()


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("case", ["exact", "exact_float", "inexact", "clamp_pre"])
@pytest.mark.parametrize("packed", [True, False])
def test_gate_sum_paths_equal_composed_reference(mode, case, packed, monkeypatch):
    """The one-sum gates (``exact``: every partial sum of ``gq + W_hh h + b_hh`` exact, any
    order; the LSTM's product in int8 on the CPU where the weights fit, else a float ``addmm``)
    and the step-by-step rounding (weights on a grid too fine for float32 sums to be exact),
    with ``gi + gh`` able to saturate or not: forward identical to the reference."""
    gi, h0, c0, w, b, lengths, dy, dh, dc = _case(mode, True, 1.0, seed=5)
    g = torch.Generator().manual_seed(6)
    if case == "inexact":      # W_hh on 2**-22: 2**11 W h needs more than 24 bits
        w = torch.floor(0.4 * torch.randn(w.shape, generator=g) * 2.0 ** 22 + 0.5) / 2.0 ** 22
    if case == "exact_float":  # W_hh on 2**-9 up to ~1.5: exact sums, but not int8 at 2**-9
        w = torch.floor(0.5 * torch.randn(w.shape, generator=g) * 2.0 ** 9 + 0.5) / 2.0 ** 9
    if case == "clamp_pre":    # gates near the int16 edge: gi + gh can leave it
        gi = torch.floor(15.9 * torch.tanh(3 * torch.randn(gi.shape, generator=g)) * 2048
                         + 0.5) / 2048
    lengths = lengths if packed else None
    bounds = _spy(monkeypatch, rnn_train, "_gate_bounds")
    int8 = _spy(monkeypatch, rnn_train, "_int8_weights")
    results = _run_both(
        lambda *a: rnn_train.direction(mode, *a, lengths, False, 8),
        lambda *a: _reference(mode, *a, lengths, 8), [gi, h0, c0, w, b], mode, dy, dh, dc)
    clamp_gh, clamp_pre, exact = bounds[0]
    assert (exact, clamp_pre) == {"exact": (True, False), "exact_float": (True, False),
                                  "inexact": (False, False),
                                  "clamp_pre": (True, True)}[case] if mode == "LSTM" else \
        (exact, clamp_pre) == (False, case == "clamp_pre")        # a GRU needs no exactness
    assert not clamp_gh
    if mode == "LSTM" and exact:
        assert (int8[0] is None) == (case == "exact_float")
    _assert_same(mode, results)


def _projection_case(mode, scale, features, seed):
    """Input on 2**-4, W_ih on 2**-6, b_ih on 2**-10: the layer's grids."""
    g = torch.Generator().manual_seed(seed)
    steps, n, hs = 7, 5, 6
    gates = iqrnn.GATES[mode] * hs
    x = _grid(scale * torch.randn(steps, n, features, generator=g), 4)
    w_ih = _grid(0.3 * torch.randn(gates, features, generator=g), 6)
    b_ih = _grid(0.2 * torch.randn(gates, generator=g), 10)
    return x, w_ih, b_ih


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("case", ["settled", "extremes", "saturating", "off_grid"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("packed_reverse", [False, True])
def test_projection_in_the_node_equals_linear(mode, case, bias, packed_reverse, monkeypatch):
    """projected_direction (the node forms x W_ih^T itself and folds b_ih into the gates'
    rounding where that is exact) against F.linear followed by direction: the same values;
    gradients for x, W_ih, b_ih, W_hh, b_hh equal up to float rounding. Cases: the bound on
    |gi| settles it, the bound does not and gi's extremes do, gi saturates (the bias is added),
    and an input off its claimed grid (the plain projection, input_gates)."""
    _, h0, c0, w, b, lengths, dy, dh, dc = _case(mode, True, 1.0, seed=7)
    scale, features = {"settled": (0.5, 3), "extremes": (1.5, 24), "saturating": (8.0, 24),
                       "off_grid": (1.0, 3)}[case]
    x, w_ih, b_ih = _projection_case(mode, scale, features, seed=8)
    if case == "off_grid":
        x = x + 2.0 ** -9                 # not on 2**-4
    lengths = lengths if packed_reverse else None
    bounds = _spy(monkeypatch, rnn_train, "_projection_bound")
    gates = _spy(monkeypatch, rnn_train, "_gates")
    extremes = _spy(monkeypatch, rnn_train, "_extremes")
    passes = []                                   # passes over the gates in the node

    def node(x_, w_ih_, b_ih_, w_, b_):
        before = len(extremes)
        out = rnn_train.projected_direction(mode, x_, w_ih_, b_ih_, 4, 6, h0, c0, w_, b_,
                                            lengths, packed_reverse, 8)
        passes.append(len(extremes) - before)
        return out

    def linear(x_, w_ih_, b_ih_, w_, b_):
        return rnn_train.direction(mode, F.linear(x_, w_ih_, b_ih_), h0, c0, w_, b_, lengths,
                                   packed_reverse, 8)
    if bias:
        results = _run_both(node, linear, [x, w_ih, b_ih, w, b], mode, dy, dh, dc)
    else:
        results = _run_both(lambda x_, w_ih_, w_, b_: node(x_, w_ih_, None, w_, b_),
                            lambda x_, w_ih_, w_, b_: linear(x_, w_ih_, None, w_, b_),
                            [x, w_ih, w, b], mode, dy, dh, dc)
    assert (bounds[0] is None) == (case == "off_grid")
    raw, mask = gates[0][2], gates[0][1]
    assert raw == (case != "saturating") and (mask is None) == raw
    if case == "settled":
        assert passes == [0]                      # the bound settles it: no pass over gi
    elif case == "extremes":
        assert passes == [1] and (gates[0][4].dim() == 1) == bias  # b_ih in the rounding
    _assert_same(mode, results)
