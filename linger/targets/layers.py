"""The init-time check: every layer of a PyTorch model against a target, before training starts.

``linger.init(model, target="venus")`` calls :func:`check_layers`. It sees layer parameters
(kernel, stride, pads, dilation, groups, channels, bit widths), not activation shapes, so rules
that need shapes (aligned input buffers, conv output size) wait for ``linger check``/``pack``.
Modules are read by duck typing: this module never imports torch.
"""

from __future__ import annotations

import warnings

from .check import Violation, check_op, raise_if_errors
from .profile import load_target
from .quantities import family, from_module

#: float layers that stay as they are under linger.init but become a target op in the graph.
PASSTHROUGH_OPS = {"MaxPool1d": "MaxPool", "MaxPool2d": "MaxPool"}
#: float layer class name -> graph op, used when no ``convert`` mapping is given.
FLOAT_OPS = {"Conv1d": "Conv1dInt", "Conv2d": "Conv2dInt", "ConvTranspose1d": "ConvTranspose1dInt",
             "ConvTranspose2d": "ConvTranspose2dInt", "Linear": "LinearInt",
             "BatchNorm1d": "BatchNormInt", "BatchNorm2d": "BatchNormInt",
             "AvgPool1d": "AvgPoolInt", "AvgPool2d": "AvgPoolInt",
             "AdaptiveAvgPool1d": "AvgPoolInt", "AdaptiveAvgPool2d": "AvgPoolInt",
             "Embedding": "EmbeddingInt", **PASSTHROUGH_OPS}


def check_layers(model, target, cfg=None, convert=None, disabled_attr="_linger_quant_disabled",
                 raise_errors: bool = True, lower: bool = True) -> list[Violation]:
    """Check each layer of ``model`` that will run on the chip; list every violation.

    ``cfg``: the :class:`~linger.config.QuantConfig` for layers about to be converted (``None``:
    bit widths unknown, not checked); ``convert``: float class -> quantized class (its
    ``onnx_op`` names the graph op; ``None``: the float layers linger quantizes by default, see
    :data:`FLOAT_OPS`); layers already quantized use their own ``onnx_op`` and ``linger_cfg``.
    Sub-trees marked with ``disabled_attr`` stay in float and are skipped. With ``raise_errors`` a
    :class:`~linger.errors.TargetError` lists every error; warnings go to :mod:`warnings`.
    ``lower=True``: a violation ``linger pack`` lowers automatically (an exact rewrite, see
    :mod:`linger.packer.lower`) is not reported: only what cannot run on the target is.
    """
    target = load_target(target)
    found: list[Violation] = []
    _visit(model, "", target, cfg, convert, disabled_attr, found, lower)
    for v in found:
        if v.severity == "warning":
            warnings.warn(v.message, stacklevel=3)
    if raise_errors:
        raise_if_errors(found, "the model's layers")
    return found


def _visit(module, path, target, cfg, convert, disabled_attr, found, lower) -> None:
    if getattr(module, disabled_attr, False):
        return
    op, layer_cfg = _op_of(module, cfg, convert)
    if op is not None:
        q = from_module(op, module, _bits(op, layer_cfg))
        vs = check_op(target, op, path or "<model>", q)
        if lower and any(v.severity == "error" for v in vs):
            from ..packer.lower.layer import fixable_rules  # numpy + onnx: only when needed
            fixed = fixable_rules(target, op, q)
            vs = [v for v in vs if v.rule not in fixed]
        found.extend(vs)
        return
    for name, child in module.named_children():
        _visit(child, f"{path}.{name}" if path else name, target, cfg, convert, disabled_attr,
               found, lower)


def _op_of(module, cfg, convert):
    if getattr(module, "onnx_op", "") and getattr(module, "linger_cfg", None) is not None:
        return module.onnx_op, module.linger_cfg
    if convert is None:
        op = FLOAT_OPS.get(type(module).__name__)
        return op, (cfg if op not in PASSTHROUGH_OPS.values() else None)
    qcls = convert.get(type(module))
    if qcls is not None and getattr(qcls, "onnx_op", ""):
        return qcls.onnx_op, cfg
    return PASSTHROUGH_OPS.get(type(module).__name__), None


def _bits(op, cfg) -> dict:
    """Bit widths a layer's config fixes: data in, weights, output (as the exporter writes)."""
    if cfg is None:
        return {}
    if op == "EmbeddingInt":
        return {"w": cfg.parameter_bits}
    if op == "AvgPoolInt" or family(op) == "pool":
        return {"x": cfg.data_bits, "o": cfg.data_bits}
    return {"x": cfg.data_bits, "w": cfg.parameter_bits, "o": cfg.out_bits}
