"""linger's recurrent ops: GRUInt, LSTMInt. Thin wrappers around :func:`linger.iqrnn.rnn`, the
integer recurrence the PyTorch eval path runs too (formats and formulas: docs/onnx_ops.md)."""

from __future__ import annotations

import numpy as np

from ... import iqrnn, numerics
from ...errors import InputError, ModelFileError
from .. import schema as S
from . import kernel
from ._common import check_dtype, check_rank


def _head(op_type) -> int:
    """Inputs before the weights: X, lengths, h0 (and c0 for LSTM)."""
    return 4 if op_type == "LSTMInt" else 3


def _rnn_check(attrs, consts, where, *, op_type):
    """Weight count and ``exp_w`` length from the layers and directions; with the weights
    known: ``W_ih (G*H, F_l)``, ``W_hh (G*H, H)``, int32 biases ``(G*H,)``, ``F_l = D*H``
    for ``l >= 1``."""
    head, gates = _head(op_type), iqrnn.GATES[op_type[:-3]]
    layers, dirs = int(attrs["num_layers"]), 2 if attrs["bidirectional"] else 1
    per, hs = 4 if attrs["has_bias"] else 2, int(attrs["hidden_size"])
    params = consts[head:]
    S.need(len(params) == layers * dirs * per and len(attrs["exp_w"]) == 2 * layers * dirs,
           where, f"num_layers={layers}, bidirectional={attrs['bidirectional']},"
           f" has_bias={attrs['has_bias']} need {layers * dirs * per} weight/bias inputs and"
           f" {2 * layers * dirs} exp_w values, got {len(params)} and {len(attrs['exp_w'])}")
    wdt = numerics.int_dtype(attrs["bits_w"])
    for k in range(layers * dirs):
        w_ih, w_hh, *bias = params[k * per:(k + 1) * per]
        feat = None if k < dirs else dirs * hs
        for what, w, cols in (("W_ih", w_ih, feat), ("W_hh", w_hh, hs)):
            if w is not None:
                S.const_dtype(w, wdt, where, f"{what} #{k}")
                S.need(w.ndim == 2 and w.shape[0] == gates * hs
                       and (cols is None or w.shape[1] == cols), where,
                       f"{what} #{k} {list(w.shape)} must be ({gates * hs}, {cols or 'F'}) for"
                       f" hidden_size={hs}")
        for b in bias:
            if b is not None:
                S.const_dtype(b, np.int32, where, f"bias #{k}")
                S.need(b.shape == (gates * hs,), where,
                       f"bias #{k} {list(b.shape)} must be ({gates * hs},)")


def _rnn_memory(attrs, ins, fast):
    """Per layer: input gates ``(T, N, G*H)`` and outputs ``(T, N, D*H)`` in int64, a few
    temporaries of each."""
    x = ins[0]
    if len(x.shape) != 3:
        return 0  # the kernel explains the rank
    hs, dirs = int(attrs["hidden_size"]), 2 if attrs["bidirectional"] else 1
    steps_batch = x.shape[0] * x.shape[1]
    return 4 * S.nbytes([steps_batch, 4 * hs + dirs * hs]) * dirs + 2 * S.nbytes(x.shape)


for _op in ("GRUInt", "LSTMInt"):
    S.schema(_op, inputs=(_head(_op), S.MAX_LIST), memory=_rnn_memory,
             check=lambda a, c, w, op=_op: _rnn_check(a, c, w, op_type=op),
             required=lambda a, n, op=_op: [0, *range(_head(op), n)],
             hidden_size=S.Int(1, S.MAX_SPATIAL), num_layers=S.Int(1, 1024),
             bidirectional=S.Flag(), batch_first=S.Flag(), has_bias=S.Flag(), exp_x=S.Exp(),
             bits_x=S.Bits(), exp_w=S.Ints(*S.EXP, (2, S.MAX_LIST)), bits_w=S.Bits(),
             exp_h=S.Exp(), bits_h=S.Int(2, 16), exp_c=S.Exp(), bits_c=S.Bits())


def _run(mode, inputs, *, hidden_size, num_layers, bidirectional, batch_first, has_bias, exp_x,
         bits_x, exp_w, bits_w, exp_h, bits_h, exp_c=None, bits_c=None):
    op = f"{mode}Int"
    n_states = 2 if mode == "LSTM" else 1
    head = 2 + n_states
    inputs = list(inputs)
    if len(inputs) < head:
        raise ModelFileError(f"{op} needs inputs X, lengths, h0{', c0' if n_states == 2 else ''}"
                             f" (empty names for the omitted ones) before the weights")
    x, lengths, h0 = inputs[0], inputs[1], inputs[2]
    c0 = inputs[3] if mode == "LSTM" else None
    dirs, per = (2 if bidirectional else 1), (4 if has_bias else 2)
    params = inputs[head:]
    if len(params) != num_layers * dirs * per or len(exp_w) != 2 * num_layers * dirs:
        raise ModelFileError(f"{op} with num_layers={num_layers}, bidirectional={bidirectional},"
                             f" has_bias={has_bias} needs {num_layers * dirs * per} weight/bias"
                             f" inputs and {2 * num_layers * dirs} exp_w values, got"
                             f" {len(params)} and {len(exp_w)}")
    if int(exp_h) != iqrnn.hidden_exp(bits_h):
        raise ModelFileError(f"{op}: the hidden state format is fixed at exp_h = bits_h - 1 ="
                             f" {iqrnn.hidden_exp(bits_h)}, got exp_h={exp_h}")
    if mode == "LSTM" and (exp_c, bits_c) != (iqrnn.CELL_Q, iqrnn.CELL_BITS):
        raise ModelFileError(f"{op}: the cell format is int16 Q11 (exp_c=11, bits_c=16), got"
                             f" exp_c={exp_c}, bits_c={bits_c}")
    check_dtype(x, bits_x, f"{op} input X")
    check_rank(x, 3, f"{op} input X")
    if batch_first:
        x = x.transpose(1, 0, 2)                                               # (T, N, F)
    steps, n = x.shape[0], x.shape[1]
    if lengths is not None:
        if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
            raise InputError(f"{op}: lengths must be integers of shape ({n},), got"
                             f" {lengths.dtype}{list(lengths.shape)}")
        if lengths.size and (lengths.min() < 0 or lengths.max() > steps):
            raise InputError(f"{op}: lengths must lie in [0, {steps}] (the padded length), got"
                             f" {lengths.tolist()}")
    shape = (num_layers * dirs, n, hidden_size)
    for name, s, bits in (("h0", h0, bits_h), ("c0", c0, bits_c)):
        if s is not None:
            check_dtype(s, bits, f"{op} {name}")
            if s.shape != shape:
                raise InputError(f"{op}: {name} must have shape {list(shape)}, got"
                                 f" {list(s.shape)}")
    weights = []
    for k in range(num_layers * dirs):
        group = params[k * per:(k + 1) * per]
        check_dtype(group[0], bits_w, f"{op} W_ih #{k}")
        check_dtype(group[1], bits_w, f"{op} W_hh #{k}")
        if has_bias:
            check_dtype(group[2], numerics.BIAS_BITS, f"{op} B_ih #{k}")
            check_dtype(group[3], numerics.BIAS_BITS, f"{op} B_hh #{k}")
        weights.append(tuple(group) if has_bias else (group[0], group[1], None, None))
    y, hn, cn = iqrnn.rnn(mode, x, lengths, h0, c0, weights, exp_x=int(exp_x),
                          exp_w=[int(e) for e in exp_w], bits_h=int(bits_h),
                          num_layers=int(num_layers), bidirectional=bool(bidirectional),
                          hidden_size=int(hidden_size))
    if batch_first:
        y = y.transpose(1, 0, 2)
    dt = numerics.int_dtype(bits_h)
    outs = [y.astype(dt, order="C"), hn.astype(dt)]              # one pass, C order
    if mode == "LSTM":
        outs.append(cn.astype(numerics.int_dtype(iqrnn.CELL_BITS)))
    return outs


@kernel("GRUInt")
def gru_int(inputs, *, hidden_size, num_layers, bidirectional, batch_first, has_bias, exp_x,
            bits_x, exp_w, bits_w, exp_h, bits_h):
    """Integer GRU (:func:`linger.iqrnn.rnn`): inputs ``X, [lengths], [h0]`` then per layer and
    direction ``W_ih, W_hh[, B_ih, B_hh]``; outputs ``Y, h_n`` at ``exp_h = bits_h - 1``.
    ``r, z = sig(sat16(gi + gh))``, ``n = tanh(sat16(gi_n + rs(r gh_n, 15)))``,
    ``h' = sat_h(rs((2**15 - z) n + z (h << (15 - exp_h)), 30 - exp_h))``."""
    return _run("GRU", inputs, hidden_size=hidden_size, num_layers=num_layers,
                bidirectional=bidirectional, batch_first=batch_first, has_bias=has_bias,
                exp_x=exp_x, bits_x=bits_x, exp_w=exp_w, bits_w=bits_w, exp_h=exp_h,
                bits_h=bits_h)


@kernel("LSTMInt")
def lstm_int(inputs, *, hidden_size, num_layers, bidirectional, batch_first, has_bias, exp_x,
             bits_x, exp_w, bits_w, exp_h, bits_h, exp_c, bits_c):
    """Integer LSTM (:func:`linger.iqrnn.rnn`): inputs ``X, [lengths], [h0], [c0]`` then per
    layer and direction ``W_ih, W_hh[, B_ih, B_hh]``; outputs ``Y, h_n`` (``exp_h``), ``c_n``
    (int16 Q11). ``c' = sat16(rs(f c << 4 + i g, 19))``, ``h' = sat_h(rs(o tanh(c'),
    30 - exp_h))``."""
    return _run("LSTM", inputs, hidden_size=hidden_size, num_layers=num_layers,
                bidirectional=bidirectional, batch_first=batch_first, has_bias=has_bias,
                exp_x=exp_x, bits_x=bits_x, exp_w=exp_w, bits_w=bits_w, exp_h=exp_h,
                bits_h=bits_h, exp_c=exp_c, bits_c=bits_c)
