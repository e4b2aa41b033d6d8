"""``linger.quant_tensor``: an explicit, named quantization point inside a model's forward."""

from __future__ import annotations

import re

import torch

from .. import iqmath, numerics
from ..errors import ConfigError
from . import scope, trace
from .base import _check_finite
from .ops_common import fq, from_int, is_q, to_int
from .qtensor import QTensor

#: Bit widths ``quant_tensor`` accepts.
QUANT_TENSOR_BITS = (8, 16, 32)


def quant_tensor(module: torch.nn.Module, x: torch.Tensor, name: str = "default",
                 bits: int = 8, *, mode=None, zero_point: int = 0) -> QTensor:
    """Quantize ``x`` to ``bits`` bits with a running range statistic owned by ``module``.

    The statistic lives at ``<module path>.linger_iq.quant_<name>.*`` in the state_dict (stable:
    the name is yours). Training: ``n = floor(log2(qmax / r))`` from the running ``max|x|``, fake
    quantization with straight-through gradients. Eval: ``q = sat(rhu(x 2**n))`` for a float ``x``
    (export: ``Quant``), ``q = sat(rs(q_x, n_x - n))`` for a quantized one (``Requant``).
    Call it inside ``module``'s forward, typically on the model's float input::

        def forward(self, x):
            x = linger.quant_tensor(self, x, name="input")
            return torch.sigmoid(x) * x     # quantized ops from here on

    >>> import torch, linger
    >>> m = linger.init(torch.nn.Identity())
    >>> linger.quant_tensor(m, torch.tensor([0.5, -1.0]), name="x")
    QTensor(bits=8, exp=6, tensor([ 0.5000, -1.0000]))
    >>> sorted(m.state_dict())[0]
    'linger_iq.quant_x.output_exp'

    ``mode`` and ``zero_point`` are the original linger's keywords: only ``QuantMode.QValue``
    (power-of-two scales) and ``zero_point=0`` (symmetric) exist in linger; anything else raises
    :class:`~linger.errors.ConfigError` with the reason (:func:`linger.compat.check_mode`).
    """
    from ..compat import check_mode, check_zero_point
    check_mode(mode, "quant_tensor")
    check_zero_point(zero_point, "quant_tensor")
    trace.refuse_foreign_export(f"quant_tensor '{name}'")
    if bits not in QUANT_TENSOR_BITS or isinstance(bits, bool):
        raise ConfigError(f"quant_tensor(bits={bits!r}) is not supported; use one of"
                          f" {list(QUANT_TENSOR_BITS)}")
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"quant_tensor expects a tensor, got {type(x).__name__}")
    if getattr(module, scope._DISABLED, False):
        return x
    key = "quant_" + (re.sub(r"\W", "_", str(name)) or "default")
    where = f"quant_tensor '{name}' of {type(module).__name__}"
    src = x.plain() if isinstance(x, QTensor) else x
    if module.training:
        stat = scope.get_stat(module, key, True, src.device)
        momentum = getattr(module, scope.CFG_ATTR, scope._DEFAULT_CFG).momentum
        exp = stat.observe(src, bits, momentum, where)
        return QTensor.wrap(fq(src, exp, bits), exp, bits)
    stat = scope.get_stat(module, key, False)
    if stat is None:
        stat = scope.IQStat()  # not ready: stored_exp raises NotCalibratedError
    exp = stat.stored_exp(where)
    if is_q(x):
        q = iqmath.requant(to_int(x), x.int_exp() - exp, bits)
        attrs = {"exp_in": x.int_exp(), "bits_in": x.bits, "exp": exp, "bits": bits}
        op = "Requant"
    else:
        _check_finite(src, where, "input")
        q = numerics.quantize(src.detach().double(), exp, bits).cpu().numpy()
        attrs, op = {"exp": exp, "bits": bits}, "Quant"
    out = from_int(q, exp, bits, src if src.is_floating_point() else src.float())
    rec = trace.current()
    if rec is not None:
        from ..onnx.recorder import DOMAIN
        rec.emit(op, [rec.name_of(x)], [out], domain=DOMAIN,
                 name=rec.unique(f"{rec.module_path(module)}.{key}"), **attrs)
    return out
