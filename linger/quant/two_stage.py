"""Per-layer state of the two-stage flow and the maths both stages share.

The two-stage flow (docs/two_stage.md) leaves three pieces of state on a layer, as plain
attributes (never parameters or buffers, so state_dict keys do not change):

- ``linger_normalize``: a :class:`NormalizeSpec` (clamp values for weight, bias, output), set by
  ``normalize_layers`` / ``normalize_module``;
- ``_linger_bn``: the BatchNorm module folded into this conv, set by ``trace_layers``;
- ``linger_ahead_relu``: True when a ReLU is the only consumer of the layer's output.

Float stage-1 layers and quantized layers read them through the functions below.

Conv+BN folding, with ``s = gamma / sqrt(running_var + eps)`` per output channel::

    W_fold = W * s                      b_fold = beta + (b - running_mean) * s

- eval, and training once statistics are frozen (``linger.SetBnMomentumUpdate(True)``): the conv
  computes ``conv(x, W_fold) + b_fold`` -- the folded weight and bias are what gets clamped and
  quantized, so export writes one conv with folded integer weights;
- training otherwise: ``y = conv(x, W_fold') / s + b`` (``W_fold'``: W_fold clamped or fake
  quantized), then BatchNorm with the *batch* statistics, which also updates the running ones.
  The forward value equals conv->BN up to the clamp/quantization of the folded weight, so training
  is as stable as unfused BN while the weights learn to survive quantization in folded form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SWITCHES
from ..errors import ConfigError

SPEC_ATTR = "linger_normalize"
BN_ATTR = "_linger_bn"
AHEAD_RELU_ATTR = "linger_ahead_relu"


@dataclass(frozen=True)
class NormalizeSpec:
    """Clamp values of one layer: weights, biases and outputs to ``[-v, v]`` (None: no clamp).

    ``explicit``: set by ``normalize_module``; ``normalize_layers`` does not override it.
    """

    weight: float | None = 8.0
    bias: float | None = 8.0
    output: float | None = 8.0
    explicit: bool = False

    def __post_init__(self):
        for role in ("weight", "bias", "output"):
            v = getattr(self, role)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise ConfigError(f"normalize_{role}_value={v!r} must be a positive number or"
                                  f" None (no clamp); 8 is the usual value")
            object.__setattr__(self, role, float(v))

    def __str__(self):
        return f"normalize(weight={self.weight}, bias={self.bias}, output={self.output})"


def spec_of(m: nn.Module) -> NormalizeSpec | None:
    return m.__dict__.get(SPEC_ATTR)


def fused_bn(m: nn.Module):
    """The BatchNorm folded into conv ``m`` by ``trace_layers``, or None."""
    return m.__dict__.get(BN_ATTR)


def clamp(t, v):
    """``t.clamp(-v, v)``; gradient 1 inside, 0 where clamped (straight-through-with-clamp)."""
    return t if t is None or v is None else t.clamp(-v, v)


def _value(m, role):
    spec = spec_of(m)
    return None if spec is None else getattr(spec, role)


# -- stage 2: how the normalize values become quantization ranges ----------------------------

def min_exp_for_clamp(v: float | None, bits: int) -> int | None:
    """The coarsest exponent whose grid still covers ``[-v, v)``: the largest ``n`` with
    ``2**(bits-1) * 2**-n >= v``, i.e. ``n = bits - 1 - ceil(log2(v))`` (exact, via frexp).

    A quantized tensor clamped to ``v`` uses ``n = max(n_from_range, this)``: it saturates at
    ``[-v, v - 2**-n]`` when ``v`` is a power of two (``v = 8``, 8 bits: ``n >= 4``, every int8 code
    used) and slightly above ``v`` otherwise.

    >>> min_exp_for_clamp(8, 8), min_exp_for_clamp(10, 8), min_exp_for_clamp(0.5, 8)
    (4, 3, 8)
    """
    if v is None:
        return None
    mant, e = math.frexp(float(v))  # v = mant * 2**e, 0.5 <= mant < 1
    return bits - 1 - (e - 1 if mant == 0.5 else e)


def weight_min_exp(m, bits: int) -> int | None:
    spec = m.__dict__.get(SPEC_ATTR)                 # (most layers: none, per step)
    return None if spec is None else min_exp_for_clamp(spec.weight, bits)


def output_min_exp(m, bits: int) -> int | None:
    spec = m.__dict__.get(SPEC_ATTR)
    return None if spec is None else min_exp_for_clamp(spec.output, bits)


def at_least(exp: torch.Tensor, floor: int | None) -> torch.Tensor:
    return exp if floor is None else exp.clamp_min(floor)


# -- BatchNorm statistics switch -------------------------------------------------------------

def bn_stats_frozen() -> bool:
    """``linger.SetBnMomentumUpdate(True)`` (``SWITCHES.bn_momentum_update``): BatchNorm running
    statistics are frozen -- no longer updated, and used in training too, so a training forward
    computes what eval computes (the usual last phase of QAT). Read at every forward; applies to
    conv+BN pairs fused by trace_layers and to BatchNorms of normalize_layers / linger.init."""
    return SWITCHES.bn_momentum_update


def update_bn_running(bn, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """nn.BatchNorm's update: ``r <- (1-m) r + m * batch`` (unbiased var), momentum None meaning a
    cumulative average."""
    with torch.no_grad():
        bn.num_batches_tracked += 1
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - m).add_(mean.detach() * m)
        bn.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)) * m)


# -- conv+BN folding -------------------------------------------------------------------------

def bn_scale(bn) -> torch.Tensor:
    """``s = gamma / sqrt(running_var + eps)``, (C,); gradient flows to gamma."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


def scale_out_channels(m, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Multiply each output channel of conv weight ``w`` by ``s`` (C_out,)."""
    if not m.transposed:                          # (Cout, Cin/g, *k)
        return w * s.view(-1, *[1] * (w.dim() - 1))
    g, k = m.groups, w.shape[2:]                  # (Cin, Cout/g, *k); out channel = gi*Cout/g + j
    wg = w.reshape(g, w.shape[0] // g, w.shape[1], *k)
    return (wg * s.view(g, 1, -1, *[1] * len(k))).reshape(w.shape)


def folded_parameters(m):
    """``(weight, bias)`` the layer computes with outside batch-statistics training: its own, or
    folded with the running statistics of its fused BatchNorm."""
    bn = fused_bn(m)
    if bn is None:
        return m.weight, m.bias
    s = bn_scale(bn)
    beta = bn.bias if bn.affine else torch.zeros_like(s)
    b = -bn.running_mean if m.bias is None else m.bias - bn.running_mean
    return scale_out_channels(m, m.weight, s), beta + b * s


def trains_with_batch_stats(m) -> bool:
    """A fused conv in training mode uses BN batch statistics until they are frozen."""
    return fused_bn(m) is not None and not bn_stats_frozen()


def fused_batch_stats_forward(m, x: torch.Tensor, prepare_weight) -> torch.Tensor:
    """Training forward of a fused conv: ``BN_batch(conv(x, prepare(W * s)) / s + b)``.

    ``prepare_weight``: the stage's treatment of the folded weight (clamp in stage 1, fake
    quantization in stage 2). Updates the BN running statistics like ``nn.BatchNorm`` does.
    """
    bn = fused_bn(m)
    s = bn_scale(bn)
    y = m._float_op(x, prepare_weight(scale_out_channels(m, m.weight, s)), None)
    shape = [1, -1] + [1] * (y.dim() - 2)                      # broadcast over (N, C, *)
    y = y / torch.where(s == 0, torch.ones_like(s), s).view(shape)  # gamma = 0: y is 0 anyway
    if m.bias is not None:
        y = y + m.bias.view(shape)
    bn.num_batches_tracked += 1
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, momentum,
                        bn.eps)


def fused_train_quant(m, x):
    """Stage 2 (QAT) training forward of a fused conv: fake-quantized folded weights, batch
    statistics, then the layer's output quantization."""
    xq = m.quant_input(x)
    y = fused_batch_stats_forward(m, xq.plain(), lambda w: m.fake_weight(w)[0])
    return m.quant_output_train(y)


def clamp_bias(m, b):
    """The bias clamped to the layer's normalize bias value (unchanged when none is set)."""
    return clamp(b, _value(m, "bias"))


def quant_parameters(m):
    """``(weight, bias)`` a quantized layer quantizes: folded if fused, bias clamped to the
    normalize value (the weight clamp becomes a minimum weight exponent, see base.weight_exp)."""
    w, b = folded_parameters(m)
    return w, clamp_bias(m, b)


def stage1_forward(m, x):
    """Float forward of a stage-1 conv/linear: clamped (folded) weight and bias, clamped output."""
    v_w, v_b, v_o = _value(m, "weight"), _value(m, "bias"), _value(m, "output")
    if m.training and trains_with_batch_stats(m):
        return clamp(fused_batch_stats_forward(m, x, lambda w: clamp(w, v_w)), v_o)
    w, b = folded_parameters(m)
    return clamp(m._float_op(x, clamp(w, v_w), clamp(b, v_b)), v_o)


def stage1_batchnorm(bn, x):
    """Float forward of a stage-1 BatchNorm: ``y = x * a + c``, ``a = gamma / sqrt(var + eps)``
    clamped to the weight value, ``c = beta - mean * a`` to the bias value, ``y`` to the output
    value. Batch statistics in training (unless frozen), running ones otherwise."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    if bn.training and not bn_stats_frozen():
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        update_bn_running(bn, mean, var, x.numel() // x.shape[1])
    else:
        mean, var = bn.running_mean, bn.running_var
    gamma = bn.weight if bn.affine else torch.ones_like(var)
    beta = bn.bias if bn.affine else torch.zeros_like(var)
    a = clamp(gamma / torch.sqrt(var + bn.eps), _value(bn, "weight"))
    c = clamp(beta - mean * a, _value(bn, "bias"))
    return clamp(x * a.view(shape) + c.view(shape), _value(bn, "output"))
