"""The original linger's ``linger.ops`` names: ``IQTensor`` is linger's :class:`QTensor` (an
integer grid ``q * 2**-exp`` of ``bits`` bits), ``from_torch_tensor`` builds one."""

from __future__ import annotations

from .quant.legacy import channel_shuffle, from_torch_tensor
from .quant.qtensor import QTensor

IQTensor = QTensor

__all__ = ["IQTensor", "from_torch_tensor", "channel_shuffle"]
