"""Stage 1 of the two-stage flow: float training with clamped weights, biases and outputs.

``normalize_layers`` turns each matching layer, in place, into its *stage-1 class*
(``nn.Conv2d`` -> :class:`NormalizeConv2d`): the same object, the same parameters under the same
names, a forward that clamps. Float checkpoints therefore load before or after the call with
``strict=True``. ``linger.init`` later turns a stage-1 layer into the quantized layer of its torch
class and keeps the settings, which become quantization ranges (docs/two_stage.md):

- weight value ``v``: minimum weight exponent ``bits-1-ceil(log2 v)`` (int8, v = 8: the weight grid
  is ``[-8, 7.9375]``, saturation is the clamp);
- bias value: the float bias is clamped before it is quantized to int32;
- output value: minimum output exponent, by the same rule as weights.

Clamps are ``torch.clamp``: gradient 1 inside ``[-v, v]``, 0 where clamped.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from . import two_stage
from .base import QuantMixin
from .layers import (QUANT_CLASSES, QConv1d, QConv2d, QConvTranspose1d, QConvTranspose2d,
                     QLinear)
from .two_stage import AHEAD_RELU_ATTR, BN_ATTR, SPEC_ATTR, NormalizeSpec

_DISABLED = "_linger_normalize_disabled"


class _Stage1:
    """Float layer of the two-stage flow. ``linger_float_type``: the torch class it stands for
    (``linger.init`` converts it like that class)."""

    linger_float_type: type = nn.Module

    def __init__(self, *args, normalize_data=None, normalize_weight=None, normalize_bias=None,
                 ahead_relu: bool = False, ahead_sigmoid: bool = False, **kwargs):
        """The torch layer's arguments plus the original linger's keywords: clamp values of the
        output (``normalize_data``), weight and bias (None: no clamp); ``ahead_relu``: the output
        range is taken from its positive part. ``ahead_sigmoid`` is accepted and unnecessary
        (linger's sigmoid reads its input at the producer's own exponent)."""
        super().__init__(*args, **kwargs)
        self.__dict__[SPEC_ATTR] = NormalizeSpec(normalize_weight, normalize_bias,
                                                 normalize_data, explicit=True)
        if ahead_relu:
            self.__dict__[AHEAD_RELU_ATTR] = True

    def extra_repr(self) -> str:
        parts = [super().extra_repr()]
        spec = two_stage.spec_of(self)
        if spec is not None:
            parts.append(str(spec))
        bn = two_stage.fused_bn(self)
        if bn is not None:
            parts.append(f"fused_bn={type(bn).__name__}({bn.num_features})")
        if self.__dict__.get(AHEAD_RELU_ATTR):
            parts.append("ahead_relu")
        return ", ".join(p for p in parts if p)


class _Stage1Weighted(_Stage1):
    def forward(self, x):
        return two_stage.stage1_forward(self, x)


class NormalizeConv1d(_Stage1Weighted, nn.Conv1d):
    linger_float_type = nn.Conv1d
    _float_op = QConv1d._float_op


class NormalizeConv2d(_Stage1Weighted, nn.Conv2d):
    linger_float_type = nn.Conv2d
    _float_op = QConv2d._float_op


class NormalizeConvTranspose1d(_Stage1Weighted, nn.ConvTranspose1d):
    linger_float_type = nn.ConvTranspose1d
    _float_op = QConvTranspose1d._float_op


class NormalizeConvTranspose2d(_Stage1Weighted, nn.ConvTranspose2d):
    linger_float_type = nn.ConvTranspose2d
    _float_op = QConvTranspose2d._float_op


class NormalizeLinear(_Stage1Weighted, nn.Linear):
    linger_float_type = nn.Linear
    _float_op = QLinear._float_op


class _Stage1BatchNorm(_Stage1):
    def forward(self, x):
        return two_stage.stage1_batchnorm(self, x)


class NormalizeBatchNorm1d(_Stage1BatchNorm, nn.BatchNorm1d):
    linger_float_type = nn.BatchNorm1d


class NormalizeBatchNorm2d(_Stage1BatchNorm, nn.BatchNorm2d):
    linger_float_type = nn.BatchNorm2d


class NormalizeLayerNorm(_Stage1, nn.LayerNorm):
    """``clamp(layer_norm(x, clamp(gamma), clamp(beta)), output)`` (opt-in, as in linger 1.x)."""

    linger_float_type = nn.LayerNorm

    def forward(self, x):
        v_w, v_b, v_o = (two_stage._value(self, r) for r in ("weight", "bias", "output"))
        w = None if self.weight is None else two_stage.clamp(self.weight, v_w)
        b = None if self.bias is None else two_stage.clamp(self.bias, v_b)
        return two_stage.clamp(F.layer_norm(x, self.normalized_shape, w, b, self.eps), v_o)


class NormalizeEmbedding(_Stage1, nn.Embedding):
    """``clamp(embedding(idx, clamp(W)), output)`` (opt-in, as in linger 1.x)."""

    linger_float_type = nn.Embedding

    def forward(self, idx):
        w = two_stage.clamp(self.weight, two_stage._value(self, "weight"))
        y = F.embedding(idx, w, self.padding_idx, self.max_norm, self.norm_type,
                        self.scale_grad_by_freq, self.sparse)
        return two_stage.clamp(y, two_stage._value(self, "output"))


class _Stage1RNN(_Stage1):
    """GRU/LSTM with clamped weights (``normalize_weight``), biases and output sequence."""

    def forward(self, x, hx=None):
        if self.__dict__.get("_linger_in_clamp"):  # the inner call below: the torch forward
            return self.linger_float_type.forward(self, x, hx)
        v_w, v_b = two_stage._value(self, "weight"), two_stage._value(self, "bias")
        params = {n: two_stage.clamp(p, v_b if n.startswith("bias") else v_w)
                  for n, p in self.named_parameters(recurse=False)}
        self.__dict__["_linger_in_clamp"] = True
        try:
            out, state = torch.func.functional_call(self, params, (x, hx))
        finally:
            self.__dict__.pop("_linger_in_clamp", None)
        v_o = two_stage._value(self, "output")
        if isinstance(out, nn.utils.rnn.PackedSequence):
            return out._replace(data=two_stage.clamp(out.data, v_o)), state
        return two_stage.clamp(out, v_o), state


class NormalizeFastGRU(_Stage1RNN, nn.GRU):
    linger_float_type = nn.GRU


class NormalizeFastLSTM(_Stage1RNN, nn.LSTM):
    linger_float_type = nn.LSTM


#: torch class -> stage-1 class.
STAGE1_CLASSES = {c.linger_float_type: c for c in (
    NormalizeConv1d, NormalizeConv2d, NormalizeConvTranspose1d, NormalizeConvTranspose2d,
    NormalizeLinear, NormalizeBatchNorm1d, NormalizeBatchNorm2d, NormalizeLayerNorm,
    NormalizeEmbedding, NormalizeFastGRU, NormalizeFastLSTM)}

#: Layer types normalize_layers / normalize_module clamp when no types are given (GRU and LSTM
#: included, as in linger 1.x; LayerNorm and Embedding are opt-in).
DEFAULT_NORMALIZE_MODULES = tuple(t for t in STAGE1_CLASSES
                                  if t not in (nn.LayerNorm, nn.Embedding))

def normalize_layers(model: nn.Module, normalize_modules=DEFAULT_NORMALIZE_MODULES,
                     normalize_weight_value: float | None = 8,
                     normalize_bias_value: float | None = 8,
                     normalize_output_value: float | None = 8) -> nn.Module:
    """Clamp weights, biases and outputs of every layer of ``normalize_modules`` types, in place.

    Forward of a normalized conv/linear: ``y = clamp(op(x, clamp(W, wv), clamp(b, bv)), ov)``
    (with a BatchNorm fused by ``trace_layers``: ``W``, ``b`` are the folded ones). A value of
    None disables that clamp. Layers set by :func:`normalize_module` keep their settings; sub-trees
    passed to :func:`disable_normalize` are skipped. Returns ``model``.

    >>> import torch, linger
    >>> net = linger.normalize_layers(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    >>> type(net[0]).__name__, net[0].linger_normalize
    ('NormalizeLinear', NormalizeSpec(weight=8.0, bias=8.0, output=8.0, explicit=False))
    """
    spec = NormalizeSpec(normalize_weight_value, normalize_bias_value, normalize_output_value)
    _apply(model, _check_types(normalize_modules), spec)
    return model


def normalize_module(module: nn.Module, type_modules=DEFAULT_NORMALIZE_MODULES,
                     normalize_weight_value: float | None = 8,
                     normalize_bias_value: float | None = 8,
                     normalize_output_value: float | None = None) -> nn.Module:
    """Like :func:`normalize_layers` for one sub-tree, with its own values; later
    ``normalize_layers`` calls leave these layers as they are. Returns ``module``."""
    spec = NormalizeSpec(normalize_weight_value, normalize_bias_value, normalize_output_value,
                         explicit=True)
    _apply(module, _check_types(type_modules), spec)
    return module


def disable_normalize(module: nn.Module) -> nn.Module:
    """Keep ``module`` and its sub-tree unclamped: before ``normalize_layers`` it is skipped,
    after it the clamps are removed (a fused BatchNorm stays fused). Returns ``module``."""
    module.__dict__[_DISABLED] = True
    for m in module.modules():
        m.__dict__.pop(SPEC_ATTR, None)
        if isinstance(m, _Stage1) and m.__dict__.get(BN_ATTR) is None:
            m.__class__ = m.linger_float_type  # nothing left for the stage-1 class to do
    return module


def float_type(m: nn.Module) -> type:
    """The torch class a module stands for (stage-1 and quantized classes included)."""
    if isinstance(m, QuantMixin):
        return next((f for f, q in QUANT_CLASSES.items() if q is type(m)), type(m))
    return getattr(type(m), "linger_float_type", type(m))


def _check_types(types):
    if isinstance(types, type):
        types = (types,)
    for t in types:
        if t not in STAGE1_CLASSES:
            name = getattr(t, "__name__", repr(t))
            raise ConfigError(
                f"{name} cannot be normalized; supported: "
                f"{sorted(c.__name__ for c in STAGE1_CLASSES)}. Remove it from normalize_modules"
                f" / type_modules (layers without weights need no normalization)")
    return tuple(types)


def _apply(module, types, spec):
    if module.__dict__.get(_DISABLED, False):
        return
    if float_type(module) in types and _can_normalize(module):
        old = two_stage.spec_of(module)
        if old is None or not old.explicit or spec.explicit:
            module.__dict__[SPEC_ATTR] = spec
        if type(module) in STAGE1_CLASSES:  # plain torch layer: same object, clamping forward
            module.__class__ = STAGE1_CLASSES[type(module)]
    for child in module.children():
        _apply(child, types, spec)


def _can_normalize(m) -> bool:
    # exact torch classes, their stage-1 classes and linger's quantized layers; not a fused
    # BatchNorm (it is a pass-through) and not a user subclass with its own forward.
    return type(m) in STAGE1_CLASSES or isinstance(m, (_Stage1, QuantMixin))
