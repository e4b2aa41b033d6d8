"""linger's recurrent ops: GRUInt, LSTMInt. Thin wrappers around :func:`linger.iqrnn.rnn`, the
integer recurrence the PyTorch eval path runs too (formats and formulas: docs/onnx_ops.md)."""

from __future__ import annotations

import numpy as np

from ... import iqrnn, numerics
from ...errors import InputError, ModelFileError
from . import kernel
from ._common import check_dtype, check_rank


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
    outs = [np.ascontiguousarray(y).astype(dt), hn.astype(dt)]
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
