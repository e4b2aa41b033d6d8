"""QTensor: a float tensor whose values sit exactly on a power-of-two grid, with its exponent.

A quantized layer returns a ``QTensor``: its values are ``q * 2**-exp`` for integers ``q`` of
``bits`` bits, so the next quantized op knows the incoming scale without re-quantizing. Torch
functions applied to it are intercepted by ``__torch_function__`` -- scoped to linger's own values,
nothing in ``torch`` is patched:

- ops registered in :data:`HANDLERS` (layout ops, ReLU, max-pooling, and the quantized functional
  ops) keep or recompute the exponent;
- any other op receives the value as what it is, a float tensor, and returns plain tensors: that
  is the *dequant boundary*, recorded for export; with ``on_unsupported="error"`` it raises
  instead.

During export every traced value (float ones too) is a ``QTensor``; ``bits is None`` marks a float.
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedError, UnsupportedOperatorError
from . import trace

#: torch function -> handler(func, args, kwargs) for QTensor arguments. Extended by op modules.
HANDLERS: dict = {}

#: Policy for ops without a handler: "dequant" or "error" (set by ``linger.init``).
POLICY = {"on_unsupported": "dequant"}


class QTensor(torch.Tensor):
    """A tensor with an exponent and ``bits`` (int, or None for traced floats).

    The exponent is kept as it was given: a Python int (CPU training and eval: reading it costs
    nothing) or a 0-dim int32 tensor (device training, ``torch.compile``: it stays on the device).
    ``exp`` always answers a 0-dim tensor, ``int_exp()`` a Python int, ``raw_exp`` the stored
    form, which :func:`~linger.quant.functions.fake_quant` and friends take as it is.
    """

    bits: int | None
    raw_exp: object

    @staticmethod
    def wrap(t: torch.Tensor, exp, bits) -> "QTensor":
        """View ``t`` as a QTensor (autograd flows through); ``exp`` int or 0-dim tensor."""
        q = t.as_subclass(QTensor)
        q.raw_exp = exp if exp is None or isinstance(exp, torch.Tensor) else int(exp)
        q.bits = bits
        return q

    @staticmethod
    def adopt(t: torch.Tensor, exp, bits) -> "QTensor":
        """:meth:`wrap` for a fresh result ``t`` that nothing else refers to (a layer's own
        output): ``t`` itself becomes the QTensor, so the graph gets no alias node (one less op
        forward and backward). Anything but a plain ``torch.Tensor``, and anything under
        ``torch.compile``, is wrapped instead. (torch itself gives tensors their final class
        this way: ``UninitializedParameter.materialize``.)"""
        if type(t) is not torch.Tensor or torch.compiler.is_compiling():
            return QTensor.wrap(t, exp, bits)
        t.__class__ = QTensor
        t.raw_exp = exp if exp is None or isinstance(exp, torch.Tensor) else int(exp)
        t.bits = bits
        return t

    @property
    def exp(self):
        """The exponent as a 0-dim int32 tensor (made from an int on first use)."""
        e = self.raw_exp
        if e is None or isinstance(e, torch.Tensor):
            return e
        t = getattr(self, "_exp_t", None)
        if t is None or int(t) != e:
            t = torch.tensor(e, dtype=torch.int32)
            self._exp_t = t
        return t

    @exp.setter
    def exp(self, value):
        self.raw_exp = value if value is None or isinstance(value, torch.Tensor) else int(value)

    def plain(self) -> torch.Tensor:
        """The same values as a plain ``torch.Tensor`` (no copy, autograd flows through)."""
        with torch._C.DisableTorchFunctionSubclass():
            return self.as_subclass(torch.Tensor)

    @property
    def is_quantized_value(self) -> bool:
        return self.bits is not None

    def int_exp(self) -> int:
        """The exponent as a Python int (synchronises with the device if it lives there)."""
        e = self.raw_exp
        return e if isinstance(e, int) else int(e)

    def __repr__(self, *, tensor_contents=None):
        body = repr(self.plain())
        if self.bits is None:
            return f"QTensor(float, {body})"
        return f"QTensor(bits={self.bits}, exp={self.int_exp()}, {body})"

    def __reduce_ex__(self, proto):
        # Pickling (torch.save, multiprocessing) keeps the values as a plain tensor plus metadata.
        return (_rebuild, (self.plain().detach(), self.raw_exp, self.bits))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = HANDLERS.get(func)
        if handler is not None:
            return handler(func, args, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if not _has_tensor(out):  # sizes, dtypes, bools: nothing quantized to keep
            return out
        return _unsupported(func, args, kwargs, out)


def _rebuild(t, exp, bits):
    return QTensor.wrap(t, exp, bits)


def _has_tensor(out) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    if isinstance(out, (tuple, list)):
        return any(isinstance(o, torch.Tensor) for o in out)
    return False


def quantized_args(args) -> list:
    """The quantized QTensors among ``args`` (nested one level for lists/tuples)."""
    found = []
    for a in args:
        if isinstance(a, QTensor) and a.bits is not None:
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(x for x in a if isinstance(x, QTensor) and x.bits is not None)
    return found


#: Float ops that stay bit-exact after a Dequant (IEEE rounds them identically everywhere): the
#: documented dequant boundary, allowed with on_unsupported="error" too (``mask * x``).
EXACT_FLOAT_OPS = frozenset(getattr(torch.Tensor, n) for n in (
    "__add__", "__radd__", "add", "__sub__", "__rsub__", "sub", "__mul__", "__rmul__", "mul",
    "__truediv__", "__rtruediv__", "div", "__neg__", "neg", "abs")) | {
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.abs}


def _unsupported(func, args, kwargs, out):
    """An op with no quantized version met a QTensor: the dequant boundary (or an error)."""
    name = getattr(func, "__name__", repr(func))
    rec = trace.current()
    if quantized_args(args) and POLICY["on_unsupported"] == "error" and rec is None \
            and func not in EXACT_FLOAT_OPS:
        where = _where_now()
        # a Tensor method may be a Python operator's implementation (``**`` is Tensor.pow):
        # there a TypeError would turn into a bare "unsupported operand" error
        method = getattr(torch.Tensor, name, None) is func or hasattr(torch._C.TensorBase, name)
        cls = UnsupportedOperatorError if method else UnsupportedError
        raise cls(
            f"torch op '{name}'{where} has no quantized implementation and received a quantized"
            f" value (on_unsupported='error'). Either quantize it (see docs/ops.md for the"
            f" supported ops), convert explicitly to float with `x.plain()`, or pass"
            f" on_unsupported='dequant' to linger.init.")
    if rec is not None:
        return rec.float_op(func, args, kwargs, out)
    if quantized_args(args):  # refused when the outermost forward returns (refusal.py)
        from .refusal import record
        record(func, args, kwargs, out)
    return _strip(out)


def _where_now() -> str:
    """`` in '<module path>' (<ClassName>)`` of the running owner module, if any."""
    from .scope import _stack, owner
    frame, st = owner(), _stack()
    if frame is None:
        return ""
    path = next((n for n, m in st[0].module.named_modules() if m is frame.module), "")
    return f" in '{path or 'model'}' ({type(frame.module).__name__})"


def _strip(out):
    if isinstance(out, QTensor):
        return out.plain()
    if isinstance(out, (tuple, list)):
        return type(out)(_strip(o) for o in out)
    return out


# --------------------------------------------------------------------------------------------
# Layout ops: the values are moved, never changed, so the exponent is kept.

def _run_plain(func, args, kwargs):
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


def _layout(func, args, kwargs):
    src = args[0]
    out = _run_plain(func, args, kwargs)
    if type(out) is torch.Tensor and func in _FRESH_RESULT:   # a new tensor no one else holds
        wrapped = QTensor.adopt(out, src.raw_exp, src.bits)
    else:
        wrapped = _rewrap(out, src)
    rec = trace.current()
    if rec is not None:
        rec.layout_op(func, args, kwargs, wrapped)
    return wrapped


def _rewrap(out, src):
    if isinstance(out, torch.Tensor):
        return QTensor.wrap(out, src.raw_exp, src.bits)
    if isinstance(out, (tuple, list)):
        return type(out)(_rewrap(o, src) for o in out)
    return out


LAYOUT_FUNCS = [
    torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.flatten, torch.flatten,
    torch.Tensor.permute, torch.permute, torch.Tensor.transpose, torch.transpose, torch.Tensor.t,
    torch.Tensor.squeeze, torch.squeeze, torch.Tensor.unsqueeze, torch.unsqueeze,
    torch.Tensor.__getitem__, torch.Tensor.split, torch.split, torch.Tensor.chunk, torch.chunk,
    torch.Tensor.flip, torch.flip, torch.Tensor.contiguous, torch.Tensor.clone, torch.clone,
    torch.Tensor.detach, torch.Tensor.view_as, torch.Tensor.reshape_as, torch.Tensor.unflatten,
    torch.nn.functional.pad, torch.Tensor.expand, torch.Tensor.expand_as, torch.Tensor.to,
    torch.Tensor.cpu, torch.Tensor.cuda, torch.nn.functional.relu, torch.relu, torch.Tensor.relu,
    torch.nn.functional.max_pool1d, torch.nn.functional.max_pool2d,
    torch.Tensor.unbind, torch.unbind,
]  # dropout: see linger.quant.functional (training rescales by 1/(1-p), off the grid)


#: layout functions whose result is always a new tensor (never one of the arguments)
_FRESH_RESULT = frozenset([torch.nn.functional.relu, torch.relu, torch.Tensor.relu])


def register(funcs, handler) -> None:
    """Route each torch function in ``funcs`` to ``handler(func, args, kwargs)`` for QTensors."""
    for f in funcs:
        HANDLERS[f] = handler


register(LAYOUT_FUNCS, _layout)
