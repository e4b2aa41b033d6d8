"""Shared plumbing of the quantized tensor ops (``ops_*.py``): one :class:`OpCall` per execution.

Every quantized op handler follows the same three-way pattern::

    call = OpCall.start("add", "add", stateful=True)   # op, switch; None -> float fallback
    if call.training:  float op + fake quantization (straight-through gradients), statistics
    else:              integers -> linger.iqmath (the runtime's own code) -> QTensor
                       + call.record(...) while exporting

The *fallback* is the dequant boundary of :mod:`linger.quant.qtensor`: the op runs in float on the
dequantized values (export writes a ``Dequant``). It is taken when the op's switch is off
(``linger.SetIQTensorAdd(False)``...), when an operand is neither a quantized value nor a supported
constant, when the op runs outside a ``linger.init``-ed model's forward or inside a module passed to
``linger.disable_quant``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .. import numerics
from ..config import SWITCHES
from . import scope, trace
from .base import _value_dtype
from .functions import exponent_for_range_t, fake_quant, weight_exponent
from .qtensor import QTensor, _run_plain, _unsupported


def is_q(t) -> bool:
    """A quantized QTensor (not a traced float)."""
    return isinstance(t, QTensor) and t.bits is not None


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def param_like(v) -> bool:
    """A float constant of the model: an ``nn.Parameter``, or a plain tensor sharing storage with
    a parameter or buffer of the running model -- a view such as ``cls.expand(n, -1, -1)``,
    ``pos[:, :t]`` or ``scale.view(1, -1, 1)``. The same answer in eval and export (a traced
    activation is a QTensor, a model input never shares a parameter's storage)."""
    if isinstance(v, QTensor) or not isinstance(v, torch.Tensor) or not v.is_floating_point():
        return False
    return isinstance(v, torch.nn.Parameter) or _storage_owner(v) is not None


def param_base(v):
    """The parameter or buffer of the running model that float constant ``v`` is a view of
    (``v`` itself when it is an ``nn.Parameter`` or when none is found)."""
    if isinstance(v, torch.nn.Parameter) or not isinstance(v, torch.Tensor):
        return v
    owner = _storage_owner(v)
    return v if owner is None else owner


def _storage_owner(v):
    """The floating-point parameter or buffer of the running model whose storage ``v`` shares,
    or None (also outside a model's forward)."""
    st = scope._stack()
    if not st:
        return None
    ptr = v.untyped_storage().data_ptr()
    root = st[0].module
    return next((t for t in itertools.chain(root.parameters(), root.buffers())
                 if t.untyped_storage().data_ptr() == ptr and t.is_floating_point()), None)


def view_slices(v, base) -> list | None:
    """``[(axis, start, end), ...]`` such that ``v`` is ``base`` sliced (step 1) along those
    axes, e.g. ``pos[:, :t]`` -> ``[(1, 0, t)]``; ``[]`` when ``v`` is ``base`` whole; ``None``
    when ``v`` is another kind of view (expanded, transposed, a selected row...)."""
    if v is base:
        return []
    if v.dim() != base.dim() or v.dtype != base.dtype \
            or any(a > b for a, b in zip(v.shape, base.shape)):
        return None
    off = v.storage_offset() - base.storage_offset()
    starts = [0] * base.dim()
    for k in sorted(range(base.dim()), key=lambda k: -base.stride(k)):
        if base.stride(k) > 0 and base.shape[k] > 1:
            starts[k], off = divmod(off, base.stride(k))
    if off or any(s + n > m for s, n, m in zip(starts, v.shape, base.shape)):
        return None
    sl = base.detach()[tuple(slice(s, s + n) for s, n in zip(starts, v.shape))]
    if sl.data_ptr() != v.data_ptr() or sl.shape != v.shape or sl.stride() != v.stride():
        return None
    return [(k, s, s + n) for k, (s, n, m) in enumerate(zip(starts, v.shape, base.shape))
            if (s, n) != (0, m)]


def sliced(q, slices):
    """``q`` (an array or tensor the shape of the base parameter) cut to ``slices``."""
    idx = [slice(None)] * q.ndim
    for k, a, b in slices:
        idx[k] = slice(a, b)
    return q[tuple(idx)]


def fallback(func, args, kwargs):
    """Run ``func`` in float on the dequantized values: the documented dequant boundary."""
    return _unsupported(func, args, kwargs, _run_plain(func, args, kwargs))


def to_int(x: QTensor) -> np.ndarray:
    """The integer payload of a quantized QTensor as int64 numpy (exact)."""
    v = x.plain().detach().double() * (2.0 ** x.int_exp())
    return np.rint(v.cpu().numpy()).astype(np.int64)


def from_int(q: np.ndarray, exp: int, bits: int, like: torch.Tensor) -> QTensor:
    """A QTensor holding integers ``q`` (numpy) at exponent ``exp``, on ``like``'s device."""
    t = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float64)).to(like.device)
    return QTensor.wrap((t * 2.0 ** -int(exp)).to(_value_dtype(like, bits)), int(exp), bits)


def fq(x: torch.Tensor, exp, bits: int) -> torch.Tensor:
    """Fake-quantize (straight-through) at an int or 0-dim tensor exponent."""
    return fake_quant(x, exp if not isinstance(exp, torch.Tensor) else exp.to(x.device), bits)


def weight_int(w: torch.Tensor, bits: int):
    """A float constant (parameter, Python number) quantized like a weight: ``(q, n)`` with
    ``n = floor(log2(qmax / max|w|))``; ``q`` as int64 numpy."""
    w = torch.as_tensor(w).detach().double()
    n = int(exponent_for_range_t(w.abs().amax() if w.numel() else w.new_zeros(()), bits))
    q = numerics.quantize(w, n, bits)
    return np.rint(q.cpu().numpy()).astype(np.int64), n


def weight_fake(w: torch.Tensor, bits: int):
    """Training twin of :func:`weight_int`: ``(fake-quantized w, n)``."""
    n = weight_exponent(w, bits)
    return fq(w, n, bits), n


def switch_on(op: str) -> bool:
    return SWITCHES.enabled(op)


class OpCall:
    """One execution of a quantized op: owner module, site, statistic and mode."""

    __slots__ = ("op", "frame", "key", "stat", "cfg", "training")

    @classmethod
    def start(cls, op: str, switch: str, stateful: bool):
        """The call context, or None when the op must fall back to float."""
        if not switch_on(switch):
            return None
        frame = scope.owner()
        if frame is None or frame.disabled:
            return None
        call = cls.__new__(cls)
        call.op, call.frame = op, frame
        call.cfg = scope.config_of(frame)
        call.training = frame.module.training
        call.key = scope.site_key(frame, op) if stateful or trace.current() is not None else op
        call.stat = None
        return call

    @property
    def where(self) -> str:
        rec = trace.current()
        path = rec.module_path() if rec is not None else type(self.frame.module).__name__
        return f"op '{self.key}' in '{path}'"

    # -- statistics ---------------------------------------------------------------------------
    def observe(self, y: torch.Tensor, bits: int) -> torch.Tensor:
        """Training: update this site's range with ``y``; the exponent (0-dim int32 tensor)."""
        if self.stat is None:
            self.stat = scope.get_stat(self.frame.module, self.key, True, y.device)
        return self.stat.observe(y, bits, self.cfg.momentum, lambda: self.where)

    def stored_exp(self) -> int:
        """Eval: the exponent gathered in training (NotCalibratedError if none)."""
        stat = scope.get_stat(self.frame.module, self.key, False)
        if stat is None:
            from ..errors import NotCalibratedError
            raise NotCalibratedError(
                f"{self.where} has no output range yet: run at least one training-mode forward"
                f" pass (model.train()) before eval or export, or load a checkpoint that has it")
        return stat.stored_exp(self.where)

    # -- export -------------------------------------------------------------------------------
    def record(self, op_type: str, inputs: list, out, attrs: dict, outputs=None) -> None:
        """Write one ``ai.linger`` node when exporting. ``inputs``: tensors (traced values or
        constants) or ``("const", array)`` pairs for integer initializers."""
        rec = trace.current()
        if rec is None:
            return
        from ..onnx.recorder import DOMAIN  # only while exporting: quant never imports onnx
        names = []
        for t in inputs:
            if isinstance(t, tuple) and t and t[0] == "const" and len(t) > 2:
                names.append(self._record_slice(rec, t[1], t[2]))
            elif isinstance(t, tuple) and t and t[0] == "const":
                names.append(rec.constant(t[1], base=f"{self.key}.c"))
            else:
                names.append(rec.name_of(t))
        name = rec.unique(f"{rec.module_path()}.{self.key}")
        rec.emit(op_type, names, outputs if outputs is not None else [out], name=name,
                 domain=DOMAIN, **attrs)


    def _record_slice(self, rec, q, slices) -> str:
        """The whole parameter's integers ``q`` as an initializer, cut by a ``Slice`` node: its
        bounds are int64 constants that a dynamic axis computes from the graph
        (:mod:`linger.onnx.dynamic`), so the same integers serve every length."""
        full = rec.constant(q, base=f"{self.key}.c")
        ks, lo, hi = (list(c) for c in zip(*slices))
        name = rec.unique(f"{full}.slice")
        out = f"{name}:out"
        rec.emit("Slice", [full, rec.constant(lo, np.int64), rec.constant(hi, np.int64),
                           rec.constant(ks, np.int64)], [out], name=name)
        rec.value_info[out] = (q.dtype, tuple(sliced(q, slices).shape))
        return out


def inplace(handler):
    """Wrap ``handler`` for an in-place torch function (``x.add_(y)``, ``x += y``, ``x.clamp_()``):
    the quantized result is copied into ``x``, whose exponent and bits are updated, and ``x`` is
    returned, as torch does (autograd sees a ``copy_``). If the op fell back to float, ``x`` now
    holds float values and stops being a quantized value (``bits = None``)."""
    def run(func, args, kwargs):
        x = args[0]
        copied = is_q(x) and x.requires_grad and torch.is_grad_enabled()
        if copied:  # the op may save its input for backward: give it a copy, x is overwritten
            c = x.clone()
            args = tuple(c if a is x else a for a in args)
        out = handler(func, args, kwargs)
        if out is x or not isinstance(x, QTensor):
            return out
        if is_q(out) or copied:
            with torch._C.DisableTorchFunctionSubclass():
                torch.Tensor.copy_(x, out)
        rec = trace.current()
        if rec is not None and isinstance(out, torch.Tensor):
            rec.alias(x, out)  # later uses of x read the new graph value
        if not is_q(out):  # float fallback: x now holds float values, off any grid
            x.bits = None
            return out
        x.exp, x.bits = out.exp, out.bits
        return x
    run.__wrapped__ = handler  # (the registry reports the op family of the handler)
    return run


def int_const(q: np.ndarray, bits: int, slices=None) -> tuple:
    """An integer initializer for :meth:`OpCall.record`, stored in the dtype of ``bits``; with
    ``slices`` (:func:`view_slices`), ``q`` is the whole parameter's integers and the graph cuts
    them with a ``Slice`` node."""
    q = np.asarray(q).astype(numerics.int_dtype(bits))
    return ("const", q, slices) if slices else ("const", q)


def const_int(v, bits: int, exp=None):
    """Integers of constant operand ``v`` (a parameter, a view of one, a number as a tensor) for
    eval and export, at exponent ``exp`` or else the weight exponent of the whole parameter
    ``v`` views (:func:`param_base`): neither depends on which part of it ``v`` is
    (``pos[:, :t]`` at any ``t``). Returns ``(q of v's shape, n, int_const for record)``; a plain
    slice is recorded as the whole parameter's integers cut by a ``Slice`` node."""
    base = param_base(v)
    n = int(exp) if exp is not None else weight_int(base, bits)[1]
    slices = view_slices(v, base) if base is not v else None
    src = base if slices else v
    q_full = numerics.quantize(torch.as_tensor(src).detach().double(), n, bits)
    q_full = np.rint(q_full.cpu().numpy()).astype(np.int64)
    q = sliced(q_full, slices) if slices else q_full
    return q, n, int_const(q_full, bits, slices)


def const_fake(v: torch.Tensor, bits: int):
    """Training twin of :func:`const_int` (weight exponent of the whole parameter):
    ``(fake-quantized v, n)``."""
    n = weight_exponent(param_base(v), bits)
    return fq(v, n, bits), n
