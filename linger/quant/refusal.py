"""Refuse early: what will not export is reported at ``linger.init`` or on the first forward pass,
never first at export, after the training is done.

Two checks, each listing every offender in one :class:`~linger.errors.UnsupportedError`:

- :func:`scan_modules` (run by ``linger.init``): layers of a ``torch.nn`` type that has neither a
  quantized twin nor an op linger handles on quantized values (``nn.Conv3d``, an activation
  without an integer algorithm...), found from the module types alone;
- during every forward pass, :func:`record` notes each torch op that ran in float on a quantized
  value (the ops :mod:`linger.quant.qtensor` has no handler for) unless the exporter writes it
  exactly (add/sub/mul/div/neg/abs after a Dequant); when the outermost forward returns,
  :func:`flush` raises for all of them, naming the module that ran each one. The first training
  batch therefore refuses a model that the export would refuse.

``linger.init(..., on_unsupported="float")`` turns both off (train and evaluate in float where
needed; the export still refuses). :func:`linger.check` lists the same findings, and what the
export and a target chip would refuse, without raising.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedError
from . import qtensor

_local = threading.local()

#: torch.nn layer types -> the torch functions their forward runs (any one handled is enough).
#: Types not listed are not judged statically (their ops are checked on the first forward).
MODULE_FUNCTIONS = {
    nn.Hardswish: (F.hardswish,), nn.Hardsigmoid: (F.hardsigmoid,), nn.PReLU: (F.prelu,),
    nn.LeakyReLU: (F.leaky_relu,), nn.ELU: (F.elu,), nn.SELU: (F.selu,), nn.CELU: (F.celu,),
    nn.GELU: (F.gelu,), nn.SiLU: (F.silu,), nn.Mish: (F.mish,), nn.Softplus: (F.softplus,),
    nn.Sigmoid: (torch.sigmoid,), nn.Tanh: (torch.tanh,), nn.GLU: (F.glu,),
    nn.Softmax: (F.softmax, torch.softmax, torch.Tensor.softmax),
    nn.LogSoftmax: (F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax),
    nn.Dropout1d: (F.dropout1d,), nn.Dropout2d: (F.dropout2d,), nn.Dropout3d: (F.dropout3d,),
    nn.AlphaDropout: (F.alpha_dropout,), nn.Upsample: (F.interpolate,),
    nn.UpsamplingNearest2d: (F.interpolate,), nn.UpsamplingBilinear2d: (F.interpolate,),
    nn.AdaptiveMaxPool1d: (F.adaptive_max_pool1d,), nn.AdaptiveMaxPool2d: (F.adaptive_max_pool2d,),
    nn.MaxPool3d: (F.max_pool3d,), nn.AvgPool3d: (F.avg_pool3d,), nn.Conv3d: (F.conv3d,),
    nn.BatchNorm3d: (F.batch_norm,), nn.GroupNorm: (F.group_norm,),
    nn.InstanceNorm1d: (F.instance_norm,), nn.InstanceNorm2d: (F.instance_norm,),
    nn.LayerNorm: (F.layer_norm,), nn.PixelShuffle: (F.pixel_shuffle,),
    nn.MultiheadAttention: (F.multi_head_attention_forward,), nn.RNN: (), nn.Bilinear: (),
    nn.Transformer: (), nn.TransformerEncoderLayer: (), nn.TransformerDecoderLayer: (),
    nn.Softmax2d: (), nn.Unfold: (), nn.Fold: (), nn.ReflectionPad1d: (), nn.ReflectionPad2d: (),
    nn.ReplicationPad1d: (), nn.ReplicationPad2d: (),
}

#: Functions that move no value and that model code does not call: attribute reads (.data)
#: and the views torch.compile's generated code rebuilds its outputs with.
_INTERNAL = frozenset({"__get__", "as_strided", "_unsafe_view", "alias"})

_FIX = ("quantize it (docs/ops.md lists what linger supports), move it out of the model (e.g."
        " argmax/softmax on the outputs), or keep that part in float with"
        " linger.disable_quant(module) before linger.init")


@dataclass(frozen=True)
class Finding:
    """One thing the export would refuse: where (module path, '' for the root), what, the fix."""

    path: str
    kind: str        # "layer" (static scan) or "op" (ran in float on a quantized value)
    what: str
    fix: str

    def __str__(self):
        return f"{self.path or '<root>'}: {self.what}" + (f". Fix: {self.fix}" if self.fix
                                                            else "")


def _handled(module_type) -> bool:
    from .layers import PASSTHROUGH_CLASSES, QUANT_CLASSES
    if module_type in QUANT_CLASSES or issubclass(module_type, PASSTHROUGH_CLASSES):
        return True
    funcs = MODULE_FUNCTIONS.get(module_type)
    return funcs is None or any(f in qtensor.HANDLERS for f in funcs)


def scan_modules(model: nn.Module, disabled_attr: str = "_linger_quant_disabled") -> list:
    """Findings for every layer of a listed ``torch.nn`` type linger cannot export (children of
    a module kept in float with ``linger.disable_quant`` are skipped)."""
    from .base import QuantMixin
    found, skip = [], []
    for path, m in model.named_modules():
        if any(path == s or path.startswith(s + ".") for s in skip):
            continue
        if getattr(m, disabled_attr, False):
            skip.append(path)
            continue
        t = type(m)
        if isinstance(m, QuantMixin) or _handled(t):
            continue
        funcs = MODULE_FUNCTIONS[t]
        op = funcs[0].__name__ if funcs else t.__name__
        found.append(Finding(path, "layer", f"{t.__name__} ({op}) has no quantized version"
                             f" and would run in float on quantized values", ""))
        skip.append(path)  # its children are part of the same finding
    return found


def _pending() -> dict:
    p = getattr(_local, "pending", None)
    if p is None:
        p = _local.pending = {}
    return p


def record(func, args, kwargs, out) -> None:
    """Note that ``func`` ran in float on a quantized value in the running module (called by
    :mod:`linger.quant.qtensor` for ops it has no handler for)."""
    if qtensor.POLICY["on_unsupported"] == "float" or torch.compiler.is_compiling() \
            or getattr(func, "__name__", "") in _INTERNAL:
        return
    from ..onnx.layout import _float_cause, _source_line, exact_float_op
    if exact_float_op(func, args, kwargs, out) is not None:
        return
    from .scope import _stack, owner
    if not _stack():  # outside the model's forward (a loss, a metric): not exported
        return
    frame = owner()
    if frame is not None and frame.disabled:  # kept in float on purpose (disable_quant)
        return
    module = frame.module if frame is not None else None
    name = getattr(func, "__name__", repr(func))
    key = (id(module), name)
    if key not in _pending():  # the export's own words for the cause and the fix
        _pending()[key] = (module, name, _source_line(), _float_cause(args, kwargs))


def findings_for(root: nn.Module, pending) -> list:
    """Recorded ops as findings, with paths relative to ``root``."""
    paths = {id(m): p for p, m in root.named_modules()}
    out = []
    from .layers import QUANT_CLASSES
    for module, name, line, cause in pending:
        path = paths.get(id(module), "" if module is None else type(module).__name__)
        where = f"{type(module).__name__}.forward" if module is not None else "the model"
        if type(module) in QUANT_CLASSES:
            what = (f"{type(module).__name__} was not quantized (its type is not in"
                    f" quant_modules) and runs '{name}' in float on a quantized value")
            fix = ("add its type to quant_modules, or linger.disable_quant(module) to keep it"
                   " in float on purpose")
        else:
            what, fix = f"'{name}' in {where}{line} runs in float: {cause}", ""
        out.append(Finding(path, "op", what, fix))
    return out


def take_pending() -> list:
    """The ops recorded since the last call (and forget them)."""
    p = _pending()
    items = list(p.values())
    p.clear()
    return items


def flush(root: nn.Module) -> None:
    """Raise one error for every op recorded during the forward of ``root`` that just ended."""
    p = getattr(_local, "pending", None)
    if not p or getattr(_local, "collecting", False):
        return
    items = take_pending()
    if qtensor.POLICY["on_unsupported"] == "float":
        return
    raise UnsupportedError(message(findings_for(root, items), "ran in the first forward pass"))


def message(findings, when: str) -> str:
    lines = "\n".join(f"  - {f}" for f in findings)
    return (f"{len(findings)} part(s) of this model cannot be exported ({when}; refused now"
            f" rather than after training):\n{lines}\n"
            f"Fix: {_FIX}. linger.init(..., on_unsupported='float') trains anyway; the export"
            f" will refuse the same parts.")


class collecting:
    """Within the block, :func:`flush` does not raise (``linger.check`` reads the findings)."""

    def __enter__(self):
        self._prev = getattr(_local, "collecting", False)
        _local.collecting = True
        take_pending()
        return self

    def __exit__(self, *exc):
        _local.collecting = self._prev
        return False
