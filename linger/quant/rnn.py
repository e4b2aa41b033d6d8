"""Quantized ``nn.GRU`` and ``nn.LSTM`` (:class:`QGRU`, :class:`QLSTM`), converted by linger.init.

Eval runs the integer recurrence of :mod:`linger.iqrnn` (the runtime's ``GRUInt``/``LSTMInt``
kernels call the same function): int8 matmuls with exact accumulators, gate pre-activations in
int16 Q11, sigmoid/tanh through the :mod:`linger.iqmath` tables to Q15, hidden state at the fixed
exponent ``data_bits - 1`` (Q7), LSTM cell in int16 Q11. Training runs the same recurrence in
float, cell by cell, with fake quantization at every one of those points (straight-through
gradients), so the weights learn what eval computes.

Supported: unidirectional and bidirectional, any ``num_layers``, ``batch_first`` both ways,
``bias`` on or off, initial states, ``PackedSequence`` in and out. ``dropout`` acts between layers
in training only (the output is requantized onto the hidden grid), as in PyTorch. ``proj_size``
raises :class:`~linger.errors.UnsupportedError` at ``linger.init``.

Packed sequences: see :mod:`linger.quant.packed` (``pack_padded_sequence`` on QTensors, however
it was imported; lengths as a graph input at export). The exported ``GRUInt``/``LSTMInt`` node
reads the padded input and the lengths in the caller's batch order (docs/onnx_ops.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

from .. import iqrnn, numerics
from ..errors import ExportError, InputError, UnsupportedError
from . import rnn_train, trace
from .base import QuantMixin
from .functions import fake_quant
from .layers import QUANT_CLASSES
from .ops_common import from_int, to_int
from .packed import Seq, index_batch, plain, seq_view
from .qtensor import QTensor

class _Grid:
    """The fixed exponents of one training forward as 0-dim int32 tensors on the data's device
    (the recurrence itself, :mod:`linger.quant.rnn_train`, uses them as Python ints)."""

    def __init__(self, device, bits_h):
        def e(n):
            return torch.tensor(n, dtype=torch.int32, device=device)
        self.c = e(iqrnn.CELL_Q)
        self.h, self.bits_h = e(iqrnn.hidden_exp(bits_h)), bits_h


# -- the layer ------------------------------------------------------------------------------------

class _QuantRNN(QuantMixin):
    """Shared by :class:`QGRU` and :class:`QLSTM`: statistics, parameters, both code paths."""

    has_output_quant = False  # outputs are the hidden state, on its fixed grid

    def _check_options(self):
        if getattr(self, "proj_size", 0):
            raise UnsupportedError(
                f"{self._where()}: proj_size={self.proj_size} (LSTM with projections) is not"
                f" supported by the integer LSTM; use proj_size=0 and add an nn.Linear on the"
                f" outputs if you need the projection")

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def _dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _bits_h(self) -> int:
        return self.linger_cfg.data_bits  # the hidden state is fed back as a matmul input

    def _weights(self, layer: int, d: int):
        sfx = f"l{layer}" + ("_reverse" if d else "")
        b = (getattr(self, f"bias_ih_{sfx}"), getattr(self, f"bias_hh_{sfx}")) if self.bias \
            else (None, None)
        return sfx, getattr(self, f"weight_ih_{sfx}"), getattr(self, f"weight_hh_{sfx}"), *b

    def _split_state(self, hx):
        if hx is None:
            return None, None
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise InputError(f"{self._where()}: the LSTM state must be a tuple (h0, c0),"
                                 f" got {type(hx).__name__}")
            return hx[0], hx[1]
        return hx, None

    def _state_out(self, hn, cn):
        return (hn, cn) if self.mode == "LSTM" else hn

    def _check_input(self, x, h0, c0, batch_first):
        if x.dim() != 3:
            raise UnsupportedError(
                f"{self._where()}: input of shape {list(x.shape)}; quantized RNNs take batched"
                f" 3-D input (add the batch dimension with x.unsqueeze({0 if batch_first else 1}))")
        self._check_state(x.shape[0 if batch_first else 1], h0, c0)

    def _check_state(self, n, h0, c0):
        want = (self.num_layers * self._dirs, n, self.hidden_size)
        for name, s in (("h0", h0), ("c0", c0)):
            if s is not None and tuple(s.shape) != want:
                raise InputError(f"{self._where()}: {name} has shape {list(s.shape)}, expected"
                                 f" {list(want)} (num_layers * num_directions, batch, hidden)")

    # -- forward -------------------------------------------------------------------------------
    def forward(self, input, hx=None):
        h0, c0 = self._split_state(hx)
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, h0, c0)
        self._check_input(input, h0, c0, self.batch_first)
        xq = self.quant_input(input)
        y, hn, cn = self._run(xq, None, "", h0, c0, self.batch_first)
        return y, self._state_out(hn, cn)

    def _forward_packed(self, p: PackedSequence, h0, c0):
        rec = trace.current()
        n = int(p.batch_sizes[0])
        if rec is not None and not self.training:
            # export: the node reads the padded sequences pack_padded_sequence was given
            tag = getattr(p.data, "_linger_seq", None)
            if tag is None or tag.kind != "packed":
                raise ExportError(
                    f"{self._where()}: this PackedSequence was not built by pack_padded_sequence"
                    f" inside the model's forward; linger exports packed sequences from"
                    f" pack_padded_sequence(x, lengths) with x and lengths computed in forward")
            xq, lengths, lname = self.quant_input(tag.x), tag.lengths, tag.lengths_name
            bf, node_sorted = tag.batch_first, tag.order == "sorted"
        else:
            xd = self.quant_input(p.data)                                      # (sum L, F)
            x_pad, lengths = torch._pad_packed_sequence(xd.plain(), p.batch_sizes, True, 0.0,
                                                        p.batch_sizes.size(0))
            xq, lname, bf, node_sorted = QTensor.wrap(x_pad, xd.exp, xd.bits), "", True, True
        self._check_state(n, h0, c0)
        if node_sorted and p.sorted_indices is not None:  # the caller's order -> sorted order
            h0 = index_batch(h0, p.sorted_indices, 1)
            c0 = index_batch(c0, p.sorted_indices, 1)
        y, hn, cn = self._run(xq, lengths, lname, h0, c0, bf)
        # the packed output, in the PackedSequence's (sorted) order
        yv = y.plain() if bf else y.plain().transpose(0, 1)                   # (N, T, D*H)
        if not node_sorted and p.sorted_indices is not None:
            yv = yv.index_select(0, p.sorted_indices)
        steps = torch.arange(n)[:, None]
        lens_sorted = (p.batch_sizes[None, :] > steps).sum(1)                  # (N,) int64
        data, _ = torch._pack_padded_sequence(yv, lens_sorted, True)
        if rec is not None and not self.training:
            data = seq_view(rec, data, y.exp, y.bits,
                            Seq("packed", y, tag.lengths, tag.lengths_name, tag.order, bf,
                                tag.perm))
        else:
            data = QTensor.wrap(data, y.exp, y.bits)
        if node_sorted and p.unsorted_indices is not None:  # states back to the caller's order
            hn = index_batch(hn, p.unsorted_indices, 1)
            cn = index_batch(cn, p.unsorted_indices, 1)
        out = PackedSequence(data, p.batch_sizes, p.sorted_indices, p.unsorted_indices)
        return out, self._state_out(hn, cn)

    def _run(self, xq: QTensor, lengths, lengths_name, h0, c0, batch_first):
        """Padded ``xq`` (layout per ``batch_first``) -> (y, h_n, c_n) as QTensors."""
        if self.training:
            return self._run_train(xq, lengths, h0, c0, batch_first)
        return self._run_eval(xq, lengths, lengths_name, h0, c0, batch_first)

    # -- training ------------------------------------------------------------------------------
    def _run_train(self, xq, lengths, h0, c0, batch_first):
        x = xq.plain().transpose(0, 1) if batch_first else xq.plain()           # (T, N, F)
        steps, n = x.shape[0], x.shape[1]
        g = _Grid(x.device, self._bits_h)
        lengths = None if lengths is None else lengths.to(x.device)  # None: every step counts
        shape = (self.num_layers * self._dirs, n, self.hidden_size)
        h0 = x.new_zeros(shape) if h0 is None else \
            fake_quant(plain(h0).to(x.dtype), g.h, g.bits_h)
        c0 = x.new_zeros(shape) if c0 is None else \
            fake_quant(plain(c0).to(x.dtype), g.c, iqrnn.CELL_BITS)
        inp, exp_in, hn, cn = x, xq.exp.to(x.device), [], []
        exp_x = xq.int_exp()                                  # the input's grid, as an int
        for layer in range(self.num_layers):
            outs = []
            for d in range(self._dirs):
                k = layer * self._dirs + d
                _, w_ih, w_hh, b_ih, b_hh = self._weights(layer, d)
                w_ih, n_ih = self.fake_weight(w_ih)
                w_hh, n_hh = self.fake_weight(w_hh)
                if b_ih is not None:
                    b_ih = fake_quant(b_ih, exp_in + n_ih, numerics.BIAS_BITS)
                    b_hh = fake_quant(b_hh, g.h + n_hh, numerics.BIAS_BITS)
                # the input projection (T, N, G*H) and the recurrence: one node (rnn_train)
                y, h, c = rnn_train.projected_direction(
                    self.mode, inp, w_ih, b_ih, exp_x, int(n_ih), h0[k], c0[k], w_hh, b_hh,
                    lengths, d == 1, self._bits_h)
                outs.append(y)
                hn.append(h)
                cn.append(c)
            inp = outs[0] if len(outs) == 1 else torch.cat(outs, 2)             # (T, N, D*H)
            exp_in = g.h
            exp_x = iqrnn.hidden_exp(self._bits_h)
            if self.dropout and layer < self.num_layers - 1:
                inp = fake_quant(F.dropout(inp, self.dropout, True), g.h, g.bits_h)
        y = inp.transpose(0, 1) if batch_first else inp
        nh = iqrnn.hidden_exp(self._bits_h)
        cn_q = QTensor.wrap(torch.stack(cn), iqrnn.CELL_Q, iqrnn.CELL_BITS) \
            if self.mode == "LSTM" else None
        return (QTensor.wrap(y, nh, self._bits_h), QTensor.wrap(torch.stack(hn), nh, self._bits_h),
                cn_q)

    # -- eval: the integer recurrence, recorded as one node when exporting ----------------------
    def _int_parameters(self, exp_x: int):
        """([(W_ih, W_hh, b_ih, b_hh)] int64, [exp_ih, exp_hh, ...], {graph name: (q, bits)})."""
        nh, bits_w = iqrnn.hidden_exp(self._bits_h), self.linger_cfg.parameter_bits
        weights, exps, params = [], [], {}
        for layer in range(self.num_layers):
            exp_in = exp_x if layer == 0 else nh
            for d in range(self._dirs):
                sfx, w_ih, w_hh, b_ih, b_hh = self._weights(layer, d)
                q_ih, n_ih = self.int_weight(w_ih)
                q_hh, n_hh = self.int_weight(w_hh)
                qb_ih = qb_hh = None
                params[f"weight_ih_{sfx}"] = (q_ih, bits_w)
                params[f"weight_hh_{sfx}"] = (q_hh, bits_w)
                if b_ih is not None:
                    qb_ih = numerics.quantize_bias(b_ih.detach().double(), exp_in, n_ih)
                    qb_hh = numerics.quantize_bias(b_hh.detach().double(), nh, n_hh)
                    params[f"bias_ih_{sfx}"] = (qb_ih, numerics.BIAS_BITS)
                    params[f"bias_hh_{sfx}"] = (qb_hh, numerics.BIAS_BITS)
                weights.append(tuple(None if q is None else _np_int(q)
                                     for q in (q_ih, q_hh, qb_ih, qb_hh)))
                exps += [n_ih, n_hh]
        return weights, exps, params

    def _run_eval(self, xq, lengths, lengths_name, h0, c0, batch_first):
        bits_h = self._bits_h
        nh, nx = iqrnn.hidden_exp(bits_h), xq.int_exp()
        h0q = None if h0 is None else self._quant_state(h0, nh, bits_h)
        c0q = None if c0 is None else self._quant_state(c0, iqrnn.CELL_Q, iqrnn.CELL_BITS)
        weights, exps, params = self._int_parameters(nx)
        x = to_int(xq)
        lens = None
        if lengths is not None:
            lens = np.asarray(plain(lengths).detach().cpu().numpy(), dtype=np.int64)
        y, hn, cn = iqrnn.rnn(self.mode, x.transpose(1, 0, 2) if batch_first else x, lens,
                              None if h0q is None else to_int(h0q),
                              None if c0q is None else to_int(c0q), weights, exp_x=nx,
                              exp_w=exps, bits_h=bits_h, num_layers=self.num_layers,
                              bidirectional=self.bidirectional, hidden_size=self.hidden_size)
        out = [from_int(y.transpose(1, 0, 2) if batch_first else y, nh, bits_h, xq),
               from_int(hn, nh, bits_h, xq)]
        if self.mode == "LSTM":
            out.append(from_int(cn, iqrnn.CELL_Q, iqrnn.CELL_BITS, xq))
        rec = trace.current()
        if rec is not None:
            attrs = {"hidden_size": self.hidden_size, "num_layers": self.num_layers,
                     "bidirectional": int(self.bidirectional), "batch_first": int(batch_first),
                     "has_bias": int(bool(self.bias)), "exp_x": nx, "bits_x": xq.bits,
                     "exp_w": [int(e) for e in exps], "bits_w": self.linger_cfg.parameter_bits,
                     "exp_h": nh, "bits_h": bits_h}
            states = [h0q]
            if self.mode == "LSTM":
                attrs.update(exp_c=iqrnn.CELL_Q, bits_c=iqrnn.CELL_BITS)
                states.append(c0q)
            path = rec.module_path(self)
            names = [rec.name_of(xq), lengths_name or ""]
            names += ["" if s is None else rec.name_of(s) for s in states]
            names += [rec.parameter(f"{path}.{k}", q, b) for k, (q, b) in params.items()]
            rec.emit(self.onnx_op, names, out, name=rec.unique(path), domain=_domain(), **attrs)
        return out[0], out[1], (out[2] if self.mode == "LSTM" else None)

    def _quant_state(self, t, exp: int, bits: int) -> QTensor:
        """An initial state on its fixed grid: Quant for a float, Requant for another grid."""
        if isinstance(t, QTensor) and t.bits == bits and t.int_exp() == exp:
            return t
        rec = trace.current()
        if isinstance(t, QTensor) and t.bits is not None:
            q = numerics.requantize(t.plain().detach().double() * 2.0 ** t.int_exp(),
                                    t.int_exp() - exp, bits)
            out = QTensor.wrap(numerics.dequantize(q, exp).float(), exp, bits)
            if rec is not None:
                rec.node(self, "Requant", [t], [out], {"exp_in": t.int_exp(), "bits_in": t.bits,
                                                      "exp": exp, "bits": bits})
            return out
        src = plain(t)
        q = numerics.quantize(src.detach().double(), exp, bits)
        out = QTensor.wrap(numerics.dequantize(q, exp).float(), exp, bits)
        if rec is not None:
            rec.node(self, "Quant", [t], [out], {"exp": exp, "bits": bits})
        return out


class QGRU(_QuantRNN, nn.GRU):
    """``nn.GRU`` quantized: integer gates (docs/ops.md, "GRU and LSTM"), node ``GRUInt``."""

    onnx_op = "GRUInt"


class QLSTM(_QuantRNN, nn.LSTM):
    """``nn.LSTM`` quantized (``proj_size=0``): integer gates and int16 Q11 cell, ``LSTMInt``."""

    onnx_op = "LSTMInt"


def _domain() -> str:
    from ..onnx.recorder import DOMAIN  # only while exporting: quant never imports onnx
    return DOMAIN


def _np_int(q: torch.Tensor) -> np.ndarray:
    return np.rint(q.detach().cpu().numpy()).astype(np.int64)


QUANT_CLASSES.setdefault(nn.GRU, QGRU)    # linger.init converts nn.GRU and nn.LSTM by default
QUANT_CLASSES.setdefault(nn.LSTM, QLSTM)
