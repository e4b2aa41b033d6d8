"""PackedSequence support for quantized values: the torch functions ``pack_padded_sequence``,
``pad_packed_sequence`` and a quantized GRU/LSTM call internally, handled for QTensors.

Nothing is patched, so the user may import ``pack_padded_sequence`` any way they like: the
functions it calls on its input (``torch.sort`` of the lengths, ``index_select`` of the batch,
``torch._pack_padded_sequence``; for unpacking ``torch._pad_packed_sequence``) reach
:class:`~linger.quant.qtensor.QTensor.__torch_function__`, and these handlers keep the values'
exponent (moving values never changes them; padding adds zeros, which are on every grid).

Export: the lengths are a graph input, so the batch permutation that sorting by length performs
cannot be written as constants. It is tracked on the Python side instead: the sorted batch and a
PackedSequence's data are :class:`_SeqView` values tagged with what they stand for
(:class:`Seq`: a graph value, its lengths, the permutation); the quantized GRU/LSTM reads the
padded graph value and the lengths from the tag, and ``pad_packed_sequence`` followed by the
``index_select`` that undoes the sort gives back a graph value again. The graph holds only
padded tensors in the caller's batch order. Constant lengths (a Python list) sort with constant
indices, which are exported as ``Gather`` nodes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.utils.rnn as _rnn_utils

from ..errors import ExportError
from . import trace
from .ops_common import fallback
from .qtensor import QTensor, _has_tensor, _run_plain, register

T = torch.Tensor


def plain(t):
    """``t`` as a plain tensor (a QTensor's values, no copy)."""
    return t.plain() if isinstance(t, QTensor) else t


def index_batch(t, idx, axis: int):
    """``t.index_select(axis, idx)`` keeping the exponent; a ``Gather`` node when exporting
    (``idx`` is then a constant: the permutation of constant lengths)."""
    if t is None:
        return None
    out = torch.index_select(plain(t), axis, idx.to(t.device))
    if not isinstance(t, QTensor):
        return out
    res = QTensor.wrap(out, t.exp, t.bits)
    rec = trace.current()
    if rec is not None:
        rec.emit("Gather", [rec.name_of(t), rec.constant(idx, np.int64)], [res],
                 name=rec.unique(f"{rec.module_path()}.index_select"), axis=axis)
    return res


@dataclass
class Seq:
    """What an export-time :class:`_SeqView` stands for (see the module docstring).

    ``kind="packed"``: the data of a PackedSequence; ``x`` is the graph value holding the same
    sequences padded (layout ``batch_first``), in the PackedSequence's sorted order
    (``order="sorted"``) or in the caller's order (``order="original"``, then ``perm`` is the
    sorting permutation); ``lengths`` (traced or constant) and ``lengths_name`` are in ``x``'s
    order. ``kind="permuted"``: ``x.index_select(axis, perm)`` for a real graph value ``x``.
    """

    kind: str
    x: torch.Tensor
    lengths: torch.Tensor | None = None
    lengths_name: str = ""
    order: str = "sorted"
    batch_first: bool = False
    perm: torch.Tensor | None = None
    axis: int = 0


#: Graph name given to values the graph does not hold: a node reading one fails the ONNX check.
_UNREADABLE = ("linger:packed_sequence_view(only a quantized GRU/LSTM, pad_packed_sequence and the"
               " index_select undoing its sort can read it)")


class _SeqView(QTensor):
    """Export only: a packed sequence's data, or a value in pack_padded_sequence's sorted batch
    order. The graph does not hold it (the lengths, hence the order, are a graph input); only
    the functions that undo the packing accept it, any other torch function raises."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._pad_packed_sequence:
            return _pad(func, args, kwargs)
        if func is torch._pack_padded_sequence:
            return _pack(func, args, kwargs)
        if func in (T.index_select, torch.index_select, T.__getitem__):
            out = _unpermute(func, args, kwargs)
            if out is not None:
                return out
        out = _run_plain(func, args, kwargs)
        if not _has_tensor(out):
            return out  # metadata: shape, device, dtype...
        v = args[0]
        if func in _SAME_VALUES and isinstance(out, torch.Tensor) and out.shape == v.shape:
            return seq_view(trace.current(), out, v.exp, v.bits, v._linger_seq)  # .to(), ...
        raise ExportError(
            f"'{getattr(func, '__name__', func)}' reads the data of a PackedSequence (or a value"
            f" in its sorted batch order) while exporting; the exported graph holds padded"
            f" sequences and lengths instead. Unpack it with pad_packed_sequence first, or pass"
            f" it to a quantized GRU/LSTM")


#: Functions that return the same values (PackedSequence.to/.cpu/... call them on the data).
_SAME_VALUES = {T.to, T.cpu, T.cuda, T.contiguous, T.detach, T.clone, torch.clone}


def seq_view(rec, t, exp, bits, tag: Seq) -> QTensor:
    """``t`` as a :class:`_SeqView` standing for ``tag`` while exporting (``rec`` the recorder);
    an ordinary QTensor otherwise."""
    if rec is None:  # not exporting (any more): an ordinary value
        return QTensor.wrap(t, exp, bits)
    with torch._C.DisableTorchFunctionSubclass():
        v = t.as_subclass(_SeqView)
    v.exp, v.bits, v._linger_seq = exp, bits, tag
    rec.values[id(v)] = _UNREADABLE
    rec.__dict__.setdefault("_linger_seq_views", []).append(v)  # keeps ids unique
    return v


def _from_rnn_utils() -> bool:
    """True when the running torch function was called by torch.nn.utils.rnn itself."""
    f = sys._getframe(2)
    for _ in range(6):
        if f is None:
            return False
        if f.f_code.co_filename == _rnn_utils.__file__:
            return True
        f = f.f_back
    return False


def _sort(func, args, kwargs):
    """pack_padded_sequence sorting traced lengths (export): plain results that remember it."""
    x = args[0]
    rec = trace.current()
    if rec is None or x.bits is not None or x.is_floating_point() or not _from_rnn_utils():
        return fallback(func, args, kwargs)
    values, idx = _run_plain(func, args, kwargs)
    values._linger_sorted_lengths, idx._linger_sort_perm_of = x, x
    return values, idx


def _arg(args, kwargs, i, name, default=None):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _index_select(func, args, kwargs):
    x, dim, idx = args[0], int(_arg(args, kwargs, 1, "dim")), _arg(args, kwargs, 2, "index")
    if not isinstance(x, QTensor):
        return fallback(func, args, kwargs)
    out = _run_plain(func, args, kwargs)
    rec = trace.current()
    if rec is None:
        return QTensor.wrap(out, x.exp, x.bits)  # a layout op: values kept, exponent kept
    dim %= x.dim()
    lengths = getattr(idx, "_linger_sort_perm_of", None)
    if lengths is not None:  # pack_padded_sequence sorting the batch by traced lengths
        return seq_view(rec, out, x.exp, x.bits,
                        Seq("permuted", x, lengths=lengths, perm=idx, axis=dim))
    res = QTensor.wrap(out, x.exp, x.bits)
    src = rec.name_of(idx) if isinstance(idx, QTensor) else rec.constant(idx, np.int64)
    rec.emit("Gather", [rec.name_of(x), src], [res],
             name=rec.unique(f"{rec.module_path()}.index_select"), axis=dim)
    return res


def _pack(func, args, kwargs):
    """``torch._pack_padded_sequence(x, lengths, batch_first)``: values kept, exponent kept."""
    x, lengths = args[0], args[1]
    bf = bool(_arg(args, kwargs, 2, "batch_first", False))
    if not isinstance(x, QTensor):
        return fallback(func, args, kwargs)
    data, batch_sizes = _run_plain(func, args, kwargs)
    rec = trace.current()
    if rec is None:
        return QTensor.wrap(data, x.exp, x.bits), batch_sizes
    tag = getattr(x, "_linger_seq", None)
    if tag is not None:
        if tag.kind != "permuted" or getattr(lengths, "_linger_sorted_lengths", None) \
                is not tag.lengths:
            raise ExportError("pack_padded_sequence received a value linger cannot trace back to"
                              " the padded input and its lengths; call it on the padded tensor"
                              " with the lengths tensor, as in torch's documentation")
        seq = Seq("packed", tag.x, tag.lengths, rec.name_of(tag.lengths), "original", bf,
                  perm=tag.perm)
    else:  # already sorted (enforce_sorted=True) or sorted by constant lengths: graph order
        seq = Seq("packed", x, lengths, rec.name_of(lengths), "sorted", bf)
    return seq_view(rec, data, x.exp, x.bits, seq), batch_sizes


def _pad(func, args, kwargs):
    """``torch._pad_packed_sequence(data, batch_sizes, batch_first, value, total_length)``."""
    data = args[0]
    bf = bool(_arg(args, kwargs, 2, "batch_first"))
    value = float(_arg(args, kwargs, 3, "padding_value", 0.0))
    steps = int(_arg(args, kwargs, 4, "total_length"))
    padded, lengths = _run_plain(func, args, kwargs)
    rec = trace.current()
    tag = getattr(data, "_linger_seq", None)
    if rec is None or tag is None:
        if rec is not None:
            raise ExportError("pad_packed_sequence received a PackedSequence that linger did not"
                              " see being built; pack with pack_padded_sequence inside forward")
        if not isinstance(data, QTensor) or data.bits is None or value != 0.0:
            return fallback(func, args, kwargs)  # padding off the grid: float values
        return QTensor.wrap(padded, data.exp, data.bits), lengths
    where = rec.module_path()
    if value != 0.0:
        raise ExportError(f"pad_packed_sequence(padding_value={value}) in '{where}': the"
                          f" exported RNN writes zeros at padded steps; use padding_value=0")
    y = tag.x
    t_graph = y.shape[1 if tag.batch_first else 0]
    if steps != t_graph:
        raise ExportError(
            f"pad_packed_sequence in '{where}' returns {steps} steps, but the exported graph"
            f" keeps the {t_graph} steps of the padded input (lengths are a graph input): pass"
            f" total_length={t_graph} to pad_packed_sequence")
    real = y if bf == tag.batch_first else y.transpose(0, 1)  # a Transpose node if needed
    if tag.order == "sorted":
        return real, (tag.lengths if isinstance(tag.lengths, QTensor) else lengths)
    axis = 0 if bf else 1
    view = seq_view(rec, padded, y.exp, y.bits, Seq("permuted", real, perm=tag.perm, axis=axis))
    return view, seq_view(rec, lengths, None, None, Seq("permuted", tag.lengths, perm=tag.perm))


def _unpermute(func, args, kwargs):
    """``view.index_select(axis, inv)`` / ``view[inv]`` with ``inv`` undoing the view's sort:
    the graph value itself (an alias, no node). None when it is not that."""
    v = args[0]
    tag = getattr(v, "_linger_seq", None)
    if tag is None or tag.kind != "permuted":
        return None
    if func is T.__getitem__:
        axis, idx = 0, args[1]
    else:
        axis, idx = int(_arg(args, kwargs, 1, "dim")) % v.dim(), _arg(args, kwargs, 2, "index")
    if axis != tag.axis or not isinstance(idx, torch.Tensor) or idx.dim() != 1 \
            or idx.is_floating_point() or idx.numel() != tag.perm.numel():
        return None
    with torch._C.DisableTorchFunctionSubclass():
        ok = torch.equal(tag.perm.cpu()[idx.cpu()], torch.arange(idx.numel()))
    if not ok:
        return None
    src = tag.x
    out = QTensor.wrap(plain(src), src.exp, src.bits) if isinstance(src, QTensor) else src
    rec = trace.current()
    if rec is not None and isinstance(src, QTensor):
        rec.alias(out, src)
    return out


register([torch.sort, T.sort], _sort)
register([T.index_select, torch.index_select], _index_select)
register([torch._pack_padded_sequence], _pack)
register([torch._pad_packed_sequence], _pad)
