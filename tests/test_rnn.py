"""Quantized GRU and LSTM: training, eval conventions, export and bit-exactness with the runtime.

The main table runs every combination of mode x direction x layers x batch_first x packed x
initial state: QAT on a small sequence task must lower the loss, and the exported model must
give the same numbers in ``linger.runtime`` as PyTorch eval (``np.array_equal``) on ordinary and
saturating inputs, and, for packed inputs, on lengths other than the ones seen at export.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.rnn as rnn_utils
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import linger
from linger import iqmath, iqrnn
from linger.examples_models import set_seed
from linger.validate import validate_model

F_IN, HID, STEPS, BATCH = 3, 6, 6, 8


class SeqNet(nn.Module):
    """RNN + linear head; optional packing (lengths as a model input) and initial state."""

    def __init__(self, mode, bidirectional, layers, batch_first, packed, with_state, **kw):
        super().__init__()
        cls = nn.GRU if mode == "GRU" else nn.LSTM
        self.rnn = cls(F_IN, HID, num_layers=layers, bidirectional=bidirectional,
                       batch_first=batch_first, **kw)
        self.head = nn.Linear(HID * (2 if bidirectional else 1), 1)
        self.mode, self.bf, self.packed, self.with_state = mode, batch_first, packed, with_state

    def forward(self, x, *extra):
        extra = list(extra)
        lengths = extra.pop(0) if self.packed else None
        state = None
        if self.with_state:
            state = extra[0] if self.mode == "GRU" else (extra[0], extra[1])
        if self.packed:
            x = pack_padded_sequence(x, lengths, batch_first=self.bf, enforce_sorted=False)
        y, h = self.rnn(x, state)
        if self.packed:
            y, _ = pad_packed_sequence(y, batch_first=self.bf, total_length=STEPS)
        out = self.head(y)
        return (out, h) if self.mode == "GRU" else (out, h[0], h[1])


def _data(m: SeqNet, seed=0):
    """(inputs tuple, input names, target, mask) for one fixed batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, STEPS, F_IN, generator=g)
    lengths = torch.randint(1, STEPS + 1, (BATCH,), generator=g)
    lengths[0] = STEPS
    tgt = 0.5 * x[..., :1] + 0.3 * torch.roll(x[..., 1:2], 1, dims=1)  # needs one step memory
    mask = (torch.arange(STEPS)[None, :] < lengths[:, None]).float()[..., None] if m.packed \
        else torch.ones(BATCH, STEPS, 1)
    if not m.bf:
        x, tgt, mask = x.transpose(0, 1), tgt.transpose(0, 1), mask.transpose(0, 1)
    args, names = [x], ["x"]
    if m.packed:
        args.append(lengths), names.append("lengths")
    if m.with_state:
        dirs = 2 if m.rnn.bidirectional else 1
        shape = (m.rnn.num_layers * dirs, BATCH, HID)
        args.append(0.4 * torch.randn(*shape, generator=g)), names.append("h0")
        if m.mode == "LSTM":
            args.append(torch.randn(*shape, generator=g)), names.append("c0")
    return tuple(args), names, tgt, mask


def _train(model, args, tgt, mask, steps=15):
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(*args)[0]
        loss = (((out - tgt) ** 2) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _assert_bitexact(model, args, names, sess):
    model.eval()
    with torch.no_grad():
        want = [w.detach().numpy() for w in model(*args)]
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, k
        assert np.array_equal(g, w), f"output {k}: max diff {np.abs(g - w).max()}"


def _saturating(args, names):
    return tuple(a * 1000.0 if n != "lengths" else a for a, n in zip(args, names))


COMBOS = list(itertools.product(["GRU", "LSTM"], [False, True], [1, 2], [True, False],
                                [False, True], [False, True]))


def _id(c):
    mode, bi, layers, bf, packed, state = c
    return (f"{mode}-{'bi' if bi else 'uni'}-L{layers}-{'bf' if bf else 'tf'}"
            f"-{'packed' if packed else 'padded'}-{'h0' if state else 'noh0'}")


@pytest.mark.parametrize("combo", COMBOS, ids=[_id(c) for c in COMBOS])
def test_rnn_trains_and_is_bitexact(combo):
    set_seed(0)
    model = linger.init(SeqNet(*combo))
    args, names, tgt, mask = _data(model)
    losses = _train(model, args, tgt, mask)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    for name, p in model.rnn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    graph = linger.onnx.export(model, args, None, input_names=names)
    sess = linger.runtime.InferenceSession(graph)
    _assert_bitexact(model, args, names, sess)
    _assert_bitexact(model, _saturating(args, names), names, sess)
    if model.packed:  # the lengths are a graph input: other lengths, same graph
        other = list(args)
        other[1] = torch.tensor([2, 6, 1, 5, 3, 3, 4, 1])
        _assert_bitexact(model, tuple(other), names, sess)


# -- PyTorch conventions ----------------------------------------------------------------------

def _calibrated(mode="GRU", **kw):
    set_seed(1)
    model = linger.init(SeqNet(mode, **kw))
    args, names, tgt, mask = _data(model)
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(*args)
    return model.eval(), args, names


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_packed_equals_each_sequence_alone(mode):
    """Pads give zeros and the final state is the state at each sequence's last valid step:
    a packed batch equals running every sequence alone, unpadded (bit for bit, both eval)."""
    model, args, _ = _calibrated(mode, bidirectional=True, layers=2, batch_first=True,
                                 packed=True, with_state=False)
    x, lengths = args
    with torch.no_grad():
        out = model(x, lengths)
        rnn_out, h = model.rnn(pack_padded_sequence(x, lengths, True, enforce_sorted=False))
        y, _ = pad_packed_sequence(rnn_out, batch_first=True, total_length=STEPS)
        for b in range(BATCH):
            n = int(lengths[b])
            yb, hb = model.rnn(x[b:b + 1, :n])
            assert torch.equal(y[b, :n], yb[0])
            assert torch.equal(y[b, n:], torch.zeros_like(y[b, n:]))
            hb, h_all = (hb, h) if mode == "GRU" else (hb[0], h[0])
            assert torch.equal(h_all[:, b], hb[:, 0])
    assert out[0].shape == (BATCH, STEPS, 1)


def test_import_styles_and_quantized_input_to_pack():
    """pack/pad through any import path, on a QTensor from a quantized layer: same numbers, and
    the exported graph reproduces them."""
    class FrontEnd(nn.Module):
        def __init__(self, style):
            super().__init__()
            self.proj = nn.Linear(F_IN, 4)
            self.gru = nn.GRU(4, HID, batch_first=True)
            self.style = style

        def forward(self, x, lengths):
            z = torch.relu(self.proj(x))                                    # QTensor
            if self.style == 0:
                p = torch.nn.utils.rnn.pack_padded_sequence(z, lengths, batch_first=True,
                                                            enforce_sorted=False)
            else:
                p = rnn_utils.pack_padded_sequence(z, lengths, True, False)
            y, h = self.gru(p)
            if self.style == 0:
                y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, True, total_length=STEPS)
            else:
                y, _ = pad_packed_sequence(y, batch_first=True, total_length=STEPS)
            return y, h

    x = torch.randn(BATCH, STEPS, F_IN)
    lengths = torch.tensor([6, 2, 5, 1, 3, 6, 4, 2])
    outs = []
    for style in (0, 1):
        set_seed(0)
        model = linger.init(FrontEnd(style), on_unsupported="error")
        model.train()
        y, h = model(x, lengths)
        assert isinstance(y, linger.QTensor) and y.bits == 8
        (y.plain().sum() + h.plain().sum()).backward()
        assert model.proj.weight.grad is not None
        model.eval()
        sess = linger.runtime.InferenceSession(
            linger.onnx.export(model, (x, lengths), None, input_names=["x", "lengths"]))
        _assert_bitexact(model, (x, lengths), ["x", "lengths"], sess)
        with torch.no_grad():
            outs.append(model(x, lengths))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_sorted_and_constant_lengths_export():
    """enforce_sorted=True with traced lengths, and constant lengths inside forward (their
    sort becomes Gather nodes with constant indices)."""
    class Const(nn.Module):
        def __init__(self, enforce):
            super().__init__()
            self.lstm = nn.LSTM(F_IN, HID, bidirectional=True)
            self.enforce = enforce

        def forward(self, x, lengths=None):
            if lengths is None:
                lengths = [3, 6, 2, 5, 6, 1, 4, 4]
            p = pack_padded_sequence(x, lengths, enforce_sorted=self.enforce)
            y, (h, c) = self.lstm(p, None)
            return pad_packed_sequence(y, total_length=STEPS)[0], h, c

    set_seed(0)
    x = torch.randn(STEPS, BATCH, F_IN)
    sorted_lengths = torch.tensor([6, 6, 5, 4, 4, 3, 2, 1])
    for enforce, args, names in ((True, (x, sorted_lengths), ["x", "lengths"]),
                                 (False, (x,), ["x"])):
        model = linger.init(Const(enforce))
        model.train()
        model(*args)
        model.eval()
        graph = linger.onnx.export(model, args, None, input_names=names)
        ops = [n.op_type for n in graph.graph.node]
        assert ("Gather" in ops) == (not enforce), ops
        sess = linger.runtime.InferenceSession(graph)
        _assert_bitexact(model, args, names, sess)
        _assert_bitexact(model, _saturating(args, names), names, sess)


def test_validate_every_intermediate():
    model, args, names = _calibrated("LSTM", bidirectional=True, layers=2, batch_first=False,
                                     packed=True, with_state=True)
    report = validate_model(model, args, input_names=names)
    assert report.ok, str(report)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("packed", [False, True])
def test_eval_close_to_float(mode, packed):
    """int8 eval against the float module with the same weights (outside reference)."""
    set_seed(2)
    flt = SeqNet(mode, True, 2, True, packed, False)
    model = linger.init(SeqNet(mode, True, 2, True, packed, False))
    model.load_state_dict(flt.state_dict(), strict=False)
    x = torch.randn(16, STEPS, F_IN)
    lengths = torch.randint(1, STEPS + 1, (16,))

    def rnn_out(m):
        if not packed:
            return m.rnn(x)[0]
        p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(m.rnn(p)[0], batch_first=True)[0]
    model.train()
    with torch.no_grad():
        rnn_out(model)
        trained = rnn_out(model)
    model.eval()
    with torch.no_grad():
        want, got = rnn_out(flt), rnn_out(model)
    sqnr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum())
    assert sqnr > 25, float(sqnr)
    # training computes the same recurrence in float with fake quantization: it differs from
    # the integer eval only where float rounding or the table's last bit flips a rounding
    assert (trained - got).abs().max() <= 2 / 128


def test_dropout_only_in_training():
    set_seed(0)
    model = linger.init(SeqNet("GRU", False, 2, True, False, False, dropout=0.5))
    args, names, tgt, mask = _data(model)
    model.train()
    a, b = model(*args)[0], model(*args)[0]
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(*args)[0], model(*args)[0])
    sess = linger.runtime.InferenceSession(
        linger.onnx.export(model, args, None, input_names=names))
    _assert_bitexact(model, args, names, sess)


def test_proj_size_raises_at_init():
    net = nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 8, proj_size=3))
    with pytest.raises(linger.UnsupportedError, match=r"QLSTM '1'.*proj_size=3"):
        linger.init(net)


def test_unbatched_input_is_refused():
    model = linger.init(nn.Sequential(nn.GRU(3, 4)))
    with pytest.raises(linger.UnsupportedError, match="batched"):
        model(torch.randn(5, 3))


def test_runtime_refuses_lengths_beyond_input():
    model, args, names = _calibrated("GRU", bidirectional=False, layers=1, batch_first=True,
                                     packed=True, with_state=False)
    sess = linger.runtime.InferenceSession(
        linger.onnx.export(model, args, None, input_names=names))
    bad = args[1].clone()
    bad[0] = STEPS + 1
    with pytest.raises(linger.InputError, match="lengths"):
        sess.run(None, {"x": args[0].numpy(), "lengths": bad.numpy()})


def test_pad_packed_sequence_without_total_length_explains():
    class NoTotal(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(F_IN, HID, batch_first=True)

        def forward(self, x, lengths):
            y, _ = self.gru(pack_padded_sequence(x, lengths, True, enforce_sorted=False))
            return pad_packed_sequence(y, batch_first=True)[0]

    model = linger.init(NoTotal())
    x, lengths = torch.randn(2, STEPS, F_IN), torch.tensor([3, 2])
    model.train()
    model(x, lengths)
    with pytest.raises(linger.ExportError, match=f"total_length={STEPS}"):
        linger.onnx.export(model.eval(), (x, lengths), None)


# -- the integer core ---------------------------------------------------------------------------

def test_core_edge_cases():
    """Zero lengths keep h0 and output zeros; saturated gates give exact fixed points."""
    rng = np.random.default_rng(0)
    w_ih = rng.integers(-128, 128, (3 * 4, 2))
    w_hh = rng.integers(-128, 128, (3 * 4, 4))
    x = rng.integers(-128, 128, (5, 3, 2))
    h0 = rng.integers(-128, 128, (1, 3, 4))
    y, hn, _ = iqrnn.rnn("GRU", x, np.array([0, 5, 2]), h0, None, [(w_ih, w_hh, None, None)],
                         exp_x=4, exp_w=[7, 7], bits_h=8, num_layers=1, bidirectional=False,
                         hidden_size=4)
    assert np.array_equal(hn[0, 0], h0[0, 0]) and not y[:, 0].any() and not y[2:, 2].any()
    assert y.min() >= -128 and y.max() <= 127
    # z saturated at 1 (sigmoid(16) = 1.0 in Q15): h' = h exactly
    gi = np.zeros((1, 12), np.int64)
    gi[0, 4:8] = 32767
    h = np.array([[-128, -1, 0, 127]])
    assert np.array_equal(iqrnn.gru_step(gi, h, np.zeros((12, 4), np.int64), None, 0, 7, 8), h)
    # LSTM with f = 1, i = 0: the cell is carried exactly; h = o * tanh(c)
    gi = np.zeros((1, 16), np.int64)
    gi[0, :4], gi[0, 4:8], gi[0, 12:] = -32768, 32767, 32767
    c = np.array([[-32768, -2048, 1, 32767]])
    h1, c1 = iqrnn.lstm_step(gi, np.zeros((1, 4), np.int64), c, np.zeros((16, 4), np.int64),
                             None, 0, 7, 8)
    assert np.array_equal(c1, c)
    assert np.array_equal(h1, iqmath.requant(iqmath.tanh_q15(c), 8, 8))


VARIANTS = [
    ("GRU", {"data_bits": 16, "parameter_bits": 16}, {}),
    ("LSTM", {"data_bits": 16}, {}),
    ("GRU", {"parameter_bits": 4}, {}),
    ("LSTM", {}, {"bias": False}),
    ("GRU", {}, {"bias": False}),
]


@pytest.mark.parametrize("mode,init_kw,rnn_kw", VARIANTS,
                         ids=[f"{m}-{i}-{r}" for m, i, r in VARIANTS])
def test_bits_and_bias_variants_bitexact(mode, init_kw, rnn_kw):
    set_seed(3)
    model = linger.init(SeqNet(mode, True, 2, False, True, True, **rnn_kw), **init_kw)
    args, names, tgt, mask = _data(model)
    losses = _train(model, args, tgt, mask, steps=8)
    assert losses[-1] < losses[0]
    model.eval()
    if "data_bits" in init_kw:
        assert model(*args)[1].bits == 16
    sess = linger.runtime.InferenceSession(
        linger.onnx.export(model, args, None, input_names=names))
    _assert_bitexact(model, args, names, sess)
    _assert_bitexact(model, _saturating(args, names), names, sess)


def test_digits_gru_example_runs():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "examples" / "digits_gru.py"
    spec = importlib.util.spec_from_file_location("digits_gru", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(seed=0, float_epochs=6, qat_epochs=1, hidden=32)  # short: full run in README
    assert res["runtime_bit_exact"]
    assert res["float"] > 75 and res["int8"] > res["float"] - 5


def test_sessions_prepare_recurrent_weights_once_from_onnx_and_packed_files():
    """A runtime session's initializers are constants (read-only, owning or bytes-backed
    memory), so the recurrence prepares its weights once per session, from an ONNX graph and
    from a packed file alike; the second run gives the same outputs."""
    from linger import packer
    from linger.runtime import InferenceSession
    set_seed(0)
    model = linger.init(nn.GRU(5, 6)).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 2, 5))
    model.eval()
    x = torch.randn(4, 1, 5)
    graph = linger.onnx.export(model, x, None, input_names=["x"])
    for source in (graph, packer.pack(graph, target="arcs", force=True).data):
        iqrnn._PREPARED.clear()
        session = InferenceSession(source)
        first = session.run(None, {"x": x.numpy()})
        assert len(iqrnn._PREPARED) == 1
        again = session.run(None, {"x": x.numpy()})
        assert len(iqrnn._PREPARED) == 1
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
