"""The original linger's torch-side names that linger does not otherwise have (docs/migration.md):
conv+BN stage-1 classes, ``EmptyBatchNorm``, the deprecated fusion entry points,
``channel_shuffle``, ``from_torch_tensor``, ``quant_module_by_type``, ``quant_tensor_getlayer``,
and linger 3.x's ``constrain`` and ``calibration``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn

from .. import numerics
from ..errors import ConfigError, UnsupportedError
from . import scope
from .api import quant_module
from .base import STATE_BUFFERS, QuantMixin
from .fuse import _fuse, trace_layers
from .normalize import (NormalizeConv1d, NormalizeConv2d, NormalizeConvTranspose2d,
                        normalize_layers)
from .qtensor import QTensor


def _conv_bn(conv_cls, bn_cls):
    class ConvBN(conv_cls):
        """A conv with its BatchNorm folded in (what ``trace_layers`` makes of a conv->BN pair),
        built directly with the original's keywords: the conv's arguments, the BatchNorm's
        (``eps``, ``momentum``, ``affine``, ``track_running_stats``) and ``normalize_data``,
        ``normalize_weight``, ``normalize_bias``, ``ahead_relu``. The BatchNorm is the child
        ``bn``."""

        def __init__(self, *args, eps=1e-5, momentum=0.1, affine=True,
                     track_running_stats=True, **kwargs):
            super().__init__(*args, **kwargs)
            self.bn = bn_cls(self.out_channels, eps, momentum, affine, track_running_stats)
            _fuse(self, self.bn, "")
    return ConvBN


NormalizeConvBN1d = _conv_bn(NormalizeConv1d, nn.BatchNorm1d)
NormalizeConvBN2d = _conv_bn(NormalizeConv2d, nn.BatchNorm2d)
NormalizeConvTransposeBN2d = _conv_bn(NormalizeConvTranspose2d, nn.BatchNorm2d)
for _cls, _name in ((NormalizeConvBN1d, "NormalizeConvBN1d"),
                    (NormalizeConvBN2d, "NormalizeConvBN2d"),
                    (NormalizeConvTransposeBN2d, "NormalizeConvTransposeBN2d")):
    _cls.__name__ = _cls.__qualname__ = _name


class EmptyBatchNorm(nn.Module):
    """The original's placeholder for a BatchNorm folded into its conv: forward returns its input,
    and loading a checkpoint ignores every key under it. (``trace_layers`` keeps the folded
    BatchNorm as a pass-through ``FusedBatchNorm2d`` instead, with its keys.)"""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in [k for k in state_dict if k.startswith(prefix)]:
            state_dict.pop(key)


def FuseBNIntoConv(*args, **kwargs):
    """Deprecated in the original (it always failed); refused with the replacement."""
    raise UnsupportedError("FuseBNIntoConv was deprecated in the original linger; call"
                           " linger.trace_layers(model, model, dummy_input, fuse_bn=True)")


def FuseConvBNAheadRelu(model, *args, fused_bn: bool = True, ahead_conv_relu: bool = True,
                        ahead_bn_relu: bool = True, ahead_linear_relu: bool = True,
                        ahead_conv_sigmoid: bool = True, ahead_linear_sigmoid: bool = True):
    """The original engine behind ``trace_layers``: ``trace_layers(model, model, *args, ...)``."""
    return trace_layers(model, model, *args, fuse_bn=fused_bn, ahead_conv_relu=ahead_conv_relu,
                        ahead_bn_relu=ahead_bn_relu, ahead_linear_relu=ahead_linear_relu,
                        ahead_conv_sigmoid=ahead_conv_sigmoid,
                        ahead_linear_sigmoid=ahead_linear_sigmoid)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: ``(N, g*k, ...) -> view (N, g, k, ...) -> swap g, k -> (N,
    k*g, ...)``. Only moves values, so it is exact on quantized values (export: Reshape,
    Transpose, Reshape).

    >>> channel_shuffle(torch.arange(6.).reshape(1, 6), 2)
    tensor([[0., 3., 1., 4., 2., 5.]])
    """
    n, c = x.shape[0], x.shape[1]
    if groups <= 0 or c % groups:
        raise ConfigError(f"channel_shuffle: {c} channels cannot be split into {groups} groups")
    rest = tuple(x.shape[2:])
    return x.reshape(n, groups, c // groups, *rest).transpose(1, 2).reshape(n, c, *rest)


def from_torch_tensor(t: torch.Tensor, scale, bits: int, zero_point: int = 0,
                      running=None) -> QTensor:
    """A quantized value from a float tensor and the original's ``scale`` (``q = x * scale``,
    a power of two ``2**n``): ``QTensor(q * 2**-n)`` with ``q = sat_bits(floor(x * 2**n +
    0.5))``. ``running`` is accepted and unused (linger keeps statistics in the layers).

    >>> from_torch_tensor(torch.tensor([0.3, -2.0]), 4, 8)
    QTensor(bits=8, exp=2, tensor([ 0.2500, -2.0000]))
    """
    from ..compat import check_zero_point
    check_zero_point(zero_point, "from_torch_tensor")
    s = float(scale)
    exp = math.log2(s) if s > 0 else float("nan")
    if not math.isfinite(exp) or exp != int(exp):
        raise ConfigError(f"from_torch_tensor(scale={scale!r}): linger's scales are powers of"
                          f" two (2**n); pass scale=2**n")
    if bits not in numerics.OUT_BITS:
        raise ConfigError(f"from_torch_tensor(bits={bits!r}): use one of {list(numerics.OUT_BITS)}")
    q = numerics.quantize(t.detach().double(), int(exp), bits)
    return QTensor.wrap(numerics.dequantize(q, int(exp)).to(t.dtype), int(exp), bits)


def quant_module_by_type(module, type_modules=None, mode=None, data_bits=8, parameter_bits=8,
                         out_bits=8, **kwargs):
    """The original's exact-type variant of :func:`linger.quant_module` (linger always matches
    exact types): the same call."""
    return quant_module(module, type_modules=type_modules, data_bits=data_bits,
                        parameter_bits=parameter_bits, out_bits=out_bits, mode=mode, **kwargs)


def quant_tensor_getlayer(module: nn.Module, name: str = "default") -> nn.Module:
    """The module holding the statistics of ``linger.quant_tensor(module, x, name=name)`` (its
    ``output_range``/``output_exp`` buffers); exists after the first training forward."""
    import re
    key = "quant_" + (re.sub(r"\W", "_", str(name)) or "default")
    stat = scope.get_stat(module, key, False)
    if stat is None:
        raise ConfigError(f"quant_tensor_getlayer: {type(module).__name__} has no quant_tensor"
                          f" named {name!r} yet; run a training forward that calls"
                          f" linger.quant_tensor(module, x, name={name!r}) first")
    return stat


def constrain(model: nn.Module, config_file=None, **kwargs) -> nn.Module:
    """linger 3.x's stage 1: :func:`linger.normalize_layers` with the ``clamp_info`` of
    ``config_file`` (YAML path or dict, :class:`linger.compat.LegacyConfig`); keyword arguments
    of ``normalize_layers`` override it."""
    from ..compat import load_config
    opts = dict(load_config(config_file).normalize) if config_file is not None else {}
    opts.update(kwargs)
    return normalize_layers(model, **opts)


_EVAL_WHILE_CALIBRATING = (nn.Dropout, nn.modules.batchnorm._BatchNorm)


@contextmanager
def calibration():
    """linger 3.x's post-training calibration: inside ``with linger.calibration():`` every forward
    of a quantized model gathers the quantization statistics (as a training step would) without
    gradients and without changing anything else: dropout and float BatchNorms stay in eval mode,
    BatchNorm running statistics are frozen, and each model is back in its own mode afterwards.

    >>> import torch, linger
    >>> net = linger.init(torch.nn.Sequential(torch.nn.Linear(4, 2))).eval()
    >>> with linger.calibration():
    ...     _ = net(torch.randn(8, 4))
    >>> bool(net[0].input_ready), net.training
    (True, False)
    """
    from .. import config
    frozen = config.SWITCHES.bn_momentum_update
    config.SWITCHES.bn_momentum_update = True  # quantized BatchNorms: running statistics fixed
    active = []  # (root module, saved training flags, saved non-statistic state)

    def pre(module, args):
        if active:
            return
        modes = {m: m.training for m in module.modules()}
        state = {k: v.clone() for k, v in module.state_dict().items()
                 if k.rsplit(".", 1)[-1] not in STATE_BUFFERS}
        for m in module.modules():
            m.training = isinstance(m, QuantMixin) or not isinstance(m, _EVAL_WHILE_CALIBRATING)
        active.append((module, modes, state))

    def post(module, args, output):
        if not active or active[-1][0] is not module:
            return
        _, modes, state = active.pop()
        for m, mode in modes.items():
            m.training = mode
        current = module.state_dict()
        for k, v in state.items():
            current[k].copy_(v)

    from torch.nn.modules.module import (register_module_forward_hook,
                                         register_module_forward_pre_hook)
    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()
        config.SWITCHES.bn_momentum_update = frozen


def fix_dequant(model_name=None, is_check=False):
    """Refused with the reason: the original's ``fix_dequant`` repaired graphs whose Dequant nodes
    its exporter had misplaced. linger's exporter places every Dequant while it traces, so a
    linger graph never needs it; re-export with ``linger.onnx.export`` (``linger validate``
    checks a file against the model value by value)."""
    raise UnsupportedError(
        "fix_dequant is not needed: linger.onnx.export places every Dequant while it traces."
        " Re-export the model with linger.onnx.export; `linger validate` checks the file")
