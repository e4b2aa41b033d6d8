"""``linger.init`` and friends: turn a float model into a quantization-aware one, in place."""

from __future__ import annotations

import os

import torch.nn as nn

from ..config import QuantConfig
from ..errors import ConfigError, UnsupportedError
from . import qtensor, scope
from .base import STATE_BUFFERS, QuantMixin
from .layers import PASSTHROUGH_CLASSES, QUANT_CLASSES

#: Layer types ``linger.init`` quantizes when ``quant_modules`` is not given.
DEFAULT_QUANT_MODULES = tuple(QUANT_CLASSES)

_DISABLED = "_linger_quant_disabled"
_REQUEST = "_linger_quant_module_request"  # (types, QuantConfig) of a quant_module call


def init(model: nn.Module, quant_modules=DEFAULT_QUANT_MODULES, data_bits: int = 8,
         parameter_bits: int = 8, out_bits: int = 8, *, momentum: float = 0.1,
         on_unsupported: str = "dequant", target=None, mode=None, config_file=None,
         disable_module=None, disable_submodel=None) -> nn.Module:
    """Make ``model`` quantization-aware, in place, and return it.

    Every sub-module whose type is in ``quant_modules`` becomes its quantized twin (same
    parameters, same names, plus quantization buffers); activations, pooling, dropout and the
    other layers of ``PASSTHROUGH_CLASSES`` act on quantized values directly (docs/ops.md lists
    everything, generated from the code). Everything else, including the model's own
    ``forward`` code, is left as it is. Train as usual afterwards; ``model.eval()`` then computes with integers.

    Bits: ``data_bits`` in {8, 16}, ``parameter_bits`` in {4, 8, 16}, ``out_bits`` in {8, 16, 32}.
    ``on_unsupported``: "dequant" (a torch op without a quantized version computes in float on the
    dequantized value when the export writes it exactly: add/sub/mul/div/neg/abs; any other is
    refused, every one in a single :class:`~linger.errors.UnsupportedError`, here for layer
    types linger cannot export and at the end of the first forward pass for ops), "error" (any
    such op raises at once) or "float" (no early refusal: train in float where needed; the
    export refuses). ``linger.check(model, example)`` lists everything without raising.
    ``target``: a chip (``"venus"``, ``"venusA"``, ``"arcs"`` or a profile path, see
    docs/packer.md): every layer is first checked against its limits, and a
    :class:`~linger.errors.TargetError` listing each violating layer is raised before anything
    changes. ``None`` (default): no check.

    The original linger's keywords: ``mode`` (only ``linger.QuantMode.QValue``); linger 3.x's
    ``config_file`` (YAML path or dict: its ``quant_info`` sets the bits, its ``platform`` the
    target, see :class:`linger.compat.LegacyConfig`), ``disable_module`` (layer types kept
    float) and ``disable_submodel`` (``fnmatch`` patterns of module names kept float, e.g.
    ``("fc*",)``): :func:`disable_quant` on each match.

    >>> import torch, linger
    >>> net = linger.init(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    >>> net
    Sequential(
      (0): QLinear(in_features=4, out_features=2, bias=True, quant(data=8, weight=8, out=8))
    )
    """
    from ..compat import check_mode, load_config
    check_mode(mode, "init(mode)")
    if isinstance(quant_modules, (str, os.PathLike, dict)):  # 3.x: init(model, "cfg.yaml")
        config_file, quant_modules = quant_modules, DEFAULT_QUANT_MODULES
    if config_file is not None:
        legacy = load_config(config_file)
        if not legacy.open_quant:
            return model
        q = legacy.quant
        data_bits, parameter_bits, out_bits = q.data_bits, q.parameter_bits, q.out_bits
        target = target if target is not None else legacy.target
    _disable_matching(model, disable_module, disable_submodel)
    cfg = QuantConfig(data_bits, parameter_bits, out_bits, momentum, on_unsupported)
    types = _check_types(quant_modules)
    if target is not None:  # report layers the chip cannot run before training starts
        from ..targets import check_layers
        check_layers(model, target, cfg, {t: QUANT_CLASSES[t] for t in types
                                          if t in QUANT_CLASSES}, _DISABLED)
    if on_unsupported != "float":  # layers that cannot export: refused before any training
        from .refusal import message, scan_modules
        found = scan_modules(model, _DISABLED)
        if found:
            raise UnsupportedError(message(found, "found by linger.init from the layer types"))
    qtensor.POLICY["on_unsupported"] = on_unsupported
    model = _convert(model, types, cfg, "")
    _install_load_hook(model)
    scope.install(model, cfg)  # owners and stable state names of quantized tensor ops
    return model


def quant_module(module: nn.Module, quant_modules=DEFAULT_QUANT_MODULES, data_bits: int = 8,
                 parameter_bits: int = 8, out_bits: int | None = 8, *, type_modules=None,
                 **kwargs) -> nn.Module:
    """Quantize one sub-tree with its own settings (e.g. 16-bit data for a sensitive block).

    Call it before ``linger.init`` on the whole model: already-quantized layers are left alone.
    Returns the (possibly replaced) module. The request is also remembered on ``module``, so
    ``linger.quant_module(net.conv, (nn.Conv2d,), data_bits=16)`` followed by
    ``linger.init(net)`` quantizes ``net.conv`` with 16-bit data even without assigning the
    result back (as in the original linger). ``type_modules`` is the original's name of
    ``quant_modules``; its ``out_bits=None`` default means 8 here.
    """
    if type_modules is not None:
        quant_modules = type_modules
    out_bits = 8 if out_bits is None else out_bits
    out = init(module, quant_modules, data_bits, parameter_bits, out_bits, **kwargs)
    if out is not module:  # module itself was converted: a later init(parent) meets the original
        module.__dict__[_REQUEST] = (_check_types(quant_modules), out.linger_cfg)
    return out


def disable_quant(module: nn.Module) -> nn.Module:
    """Keep ``module`` (and everything inside it) in float.

    Before ``linger.init``: init skips it. After: its quantized layers, ``module`` itself
    included, turn back into their float classes in place (same objects, parameters kept,
    quantization buffers dropped), so ``linger.disable_quant(model.fc)`` works without
    re-assigning. Returns the module.
    """
    setattr(module, _DISABLED, True)
    converted = False
    for m in module.modules():
        if isinstance(m, QuantMixin):
            _to_float_in_place(m)
            converted = True
    if converted:  # its forward is now known to run in float on purpose (refusal.py)
        scope.install(module, QuantConfig())
    return module


def _check_types(quant_modules):
    if isinstance(quant_modules, type):
        quant_modules = (quant_modules,)
    types = []
    for t in quant_modules:
        if t not in QUANT_CLASSES and t not in PASSTHROUGH_CLASSES:
            name = getattr(t, "__name__", repr(t))
            raise ConfigError(
                f"quant_modules contains {name}, which linger cannot quantize; supported:"
                f" {sorted(c.__name__ for c in QUANT_CLASSES)} (ReLU, ReLU6, MaxPool and Dropout"
                f" need no conversion). Remove it from quant_modules.")
        types.append(t)
    return tuple(types)


def _disable_matching(model, types, patterns):
    import fnmatch
    types = (types,) if isinstance(types, type) else tuple(types or ())
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns or ())
    for name, m in list(model.named_modules()):
        if (types and type(m) in types) or \
                (name and any(fnmatch.fnmatchcase(name, p) for p in patterns)):
            disable_quant(m)


def _convert(module, types, cfg, name):
    if getattr(module, _DISABLED, False) or isinstance(module, QuantMixin):
        return module
    if _REQUEST in module.__dict__:  # quant_module(module, ...) whose result was not assigned
        types, cfg = module.__dict__[_REQUEST]
    # a stage-1 layer of the two-stage flow (normalize.py) converts like the torch class it
    # stands for; its settings travel in its __dict__ (two_stage.py)
    ftype = getattr(type(module), "linger_float_type", type(module))
    if ftype in types and ftype in QUANT_CLASSES:
        module = _quantized(module, QUANT_CLASSES[ftype], cfg, name)
        if not getattr(module, "linger_convert_children", False):  # a block of layers: on
            return module
    for child_name, child in list(module.named_children()):
        full = f"{name}.{child_name}" if name else child_name
        new = _convert(child, types, cfg, full)
        if new is not child:
            setattr(module, child_name, new)
    return module


def _quantized(module, qcls, cfg, name):
    """A ``qcls`` instance sharing ``module``'s parameters, buffers and hooks (no copy)."""
    q = qcls.__new__(qcls)
    _copy_state(module, q)
    q.__dict__["_linger_pre_quant_cls"] = type(module)  # what disable_quant turns it back into
    q._linger_setup(cfg, name)
    q._check_options()
    return q


def _to_float_in_place(q):
    float_cls = q.__dict__.pop("_linger_pre_quant_cls", None) or \
        next(f for f, c in QUANT_CLASSES.items() if isinstance(q, c))
    for b in STATE_BUFFERS:
        q._buffers.pop(b, None)
    for attr in ("linger_cfg", "linger_name"):
        q.__dict__.pop(attr, None)
    q.__class__ = float_cls  # same layout: the quantized class only adds methods and buffers


def _copy_state(src, dst):
    dst.__dict__.update(src.__dict__)
    for key, value in src.__dict__.items():
        if isinstance(value, dict):  # _parameters, _buffers, _modules, hook dicts
            dst.__dict__[key] = type(value)(value)


def _install_load_hook(model):
    if _forgive_missing_state not in model._load_state_dict_post_hooks.values():
        model.register_load_state_dict_post_hook(_forgive_missing_state)


def _forgive_missing_state(module, incompatible):
    """A float checkpoint has no quantization buffers: loading it with strict=True is fine and
    leaves those buffers as they are (statistics are then gathered by training)."""
    keep = [k for k in incompatible.missing_keys if k.rsplit(".", 1)[-1] not in STATE_BUFFERS]
    incompatible.missing_keys[:] = keep
