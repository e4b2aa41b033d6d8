"""Per-layer quantization error: what each quantized layer loses, and what it costs the model.

- :func:`layer_sqnr`: each quantized layer's own error. In eval (exact integers) every quantized
  layer's input and output are captured; the layer's *float* forward (the class it had before
  ``linger.init``, float weights; a conv with a BatchNorm fused by ``trace_layers`` folds it) is
  run on the very same input, and ``SQNR = 10 log10(sum ref^2 / sum (ref - q)^2)`` dB is
  accumulated over all batches. Input quantization, weight/bias rounding and output
  requantization of that layer are all in it; errors of earlier layers are not (both paths get the
  same input). For an "ahead ReLU" layer both sides are compared after ``relu``: its negative
  outputs saturate on purpose.
- :func:`sensitivity`: the model-level cost of quantizing each layer *alone*, everything else
  kept in float; ranked worst first.

A *batch* is an input tensor or an ``(input, target, ...)`` tuple; ``batches`` must be iterable
more than once (a list, a DataLoader), a single tensor counts as one batch.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..quant import qtensor
from ..quant.base import STATE_BUFFERS, QuantMixin
from ..quant.layers import QUANT_CLASSES
from .stats import plain

#: Attributes linger.init / trace_layers leave on a layer (see linger.quant.api, two_stage).
PRE_QUANT_ATTR = "_linger_pre_quant_cls"
AHEAD_RELU_ATTR = "linger_ahead_relu"


@dataclass(frozen=True)
class LayerSQNR:
    """SQNR of one quantized layer: ``10 log10(signal_power / noise_power)`` dB (inf: no error)."""

    name: str
    type: str
    sqnr_db: float
    signal_power: float  # mean ref^2 over all outputs seen
    noise_power: float   # mean (ref - q)^2
    count: int           # output values compared
    order: int           # position in execution order (0 = first layer run)


@dataclass(frozen=True)
class LayerSensitivity:
    """The metric with only layer ``name`` quantized, next to the all-float ``baseline``."""

    name: str
    type: str
    value: float
    baseline: float
    delta: float          # value - baseline
    higher_is_better: bool
    output_sqnr_db: float  # model output vs the all-float output; breaks ties of coarse metrics


def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy of logits ``(N, classes)`` against labels ``(N,)``, as a fraction.

    >>> import torch
    >>> accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    0.5
    """
    return float((plain(output).argmax(1) == target).double().mean())


accuracy.higher_is_better = True


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """``10 log10(signal / noise)``; inf when there is no noise, -inf when there is no signal."""
    if noise_power == 0:
        return math.inf
    if signal_power == 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def quantized_layers(model: nn.Module) -> list:
    """``(name, module)`` of every quantized layer (``QuantMixin``) of ``model``, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantMixin)]


@torch.no_grad()
def layer_sqnr(qmodel: nn.Module, batches) -> list[LayerSQNR]:
    """SQNR of each quantized layer of ``qmodel`` (from ``linger.init``, with statistics), worst
    first. The model runs in eval mode (its training flags are restored afterwards).

    Raises ConfigError if ``qmodel`` has no quantized layer, NotCalibratedError (from linger) if
    a layer has not gathered statistics yet.
    """
    layers = quantized_layers(qmodel)
    if not layers:
        raise ConfigError("layer_sqnr needs a quantized model (the one linger.init returns, after"
                          " QAT or calibration); this model has no quantized layer")
    sums: dict[str, list] = {}  # name -> [sum ref^2, sum err^2, count, order]

    def hook(name, float_cls):
        def capture(module, args, out):
            if not args or not isinstance(args[0], torch.Tensor) or not isinstance(
                    out, torch.Tensor):
                return
            ref = float_cls.forward(module, plain(args[0])).double()  # float op, float weights
            got = plain(out).double()
            if module.__dict__.get(AHEAD_RELU_ATTR, False):  # only relu(y) is meant to survive
                ref, got = ref.clamp_min(0), got.clamp_min(0)
            err = ref - got
            s = sums.setdefault(name, [0.0, 0.0, 0, len(sums)])
            s[0] += float((ref * ref).sum())
            s[1] += float((err * err).sum())
            s[2] += ref.numel()
        return capture

    handles = [m.register_forward_hook(hook(n, _float_class(m))) for n, m in layers]
    try:
        with _modes(qmodel, train=False):
            for batch in _batches(batches):
                qmodel(_split(batch)[0])
    finally:
        for h in handles:
            h.remove()
    rows = [LayerSQNR(n, type(m).__name__, sqnr_db(s[0], s[1]), s[0] / max(s[2], 1),
                      s[1] / max(s[2], 1), s[2], s[3])
            for n, m in layers if (s := sums.get(n)) is not None]
    return sorted(rows, key=lambda r: (r.sqnr_db, r.order))


def sensitivity(model, batches, metric=None, *, higher_is_better: bool | None = None,
                quant_modules=None, **init_kwargs) -> list[LayerSensitivity]:
    """Quantize one layer at a time, keep the rest in float, and measure ``metric``; worst first.

    ``model``: an ``nn.Module`` or a factory returning one (called once; variants are deep
    copies, the model itself is not changed).

    - Float model: each layer whose type ``linger.init`` quantizes (``quant_modules``, default
      all) is quantized alone (``linger.disable_quant`` on every other one, then ``linger.init``
      with ``init_kwargs``), calibrated on ``batches`` (see :func:`calibrate`), evaluated.
    - Quantized model (QAT done): each quantized layer keeps its trained statistics and every
      other one is turned back to float; no calibration.

    ``metric(output, target) -> float`` is averaged over the batches weighted by batch size
    (e.g. :func:`accuracy`, or ``torch.nn.CrossEntropyLoss()``); ``higher_is_better`` defaults to
    ``metric.higher_is_better`` if set, else False (a loss). Without a metric: the SQNR in dB of
    the model output against the all-float output (higher is better; baseline inf). Ties of a
    coarse metric (accuracy on a small set) are broken by that output SQNR, lowest first.
    """
    base = model() if not isinstance(model, nn.Module) and callable(model) else model
    if not isinstance(base, nn.Module):
        raise ConfigError(f"sensitivity needs an nn.Module or a factory returning one, got"
                          f" {type(base).__name__}")
    if higher_is_better is None:
        higher_is_better = True if metric is None else bool(getattr(metric, "higher_is_better",
                                                                     False))
    batches = _batches(batches)
    quantized = bool(quantized_layers(base))
    if quantized:
        names = [n for n, _ in quantized_layers(base)]
    else:
        types = tuple(quant_modules) if quant_modules is not None else tuple(QUANT_CLASSES)
        # a stage-1 layer of the two-stage flow converts like the torch class it stands for
        names = [n for n, m in base.named_modules()
                 if n and getattr(type(m), "linger_float_type", type(m)) in types]
    if not names:
        raise ConfigError("sensitivity found no layer to quantize in this model (types linger"
                          " quantizes: " + ", ".join(c.__name__ for c in QUANT_CLASSES) + ")")
    with _dequant_policy():
        reference = _evaluate(_only(base, None, quantized, names, batches, quant_modules,
                                    init_kwargs), batches)
        baseline = math.inf if metric is None else _score(reference, batches, metric, None)
        rows = []
        for name in names:
            variant = _only(base, name, quantized, names, batches, quant_modules, init_kwargs)
            outputs = _evaluate(variant, batches)
            value = _score(outputs, batches, metric, reference)
            layer = dict(variant.named_modules())[name]
            rows.append(LayerSensitivity(name, type(layer).__name__, value, baseline,
                                         value - baseline, higher_is_better,
                                         _score(outputs, batches, None, reference)))
    order = {n: i for i, n in enumerate(names)}
    return sorted(rows, key=lambda r: ((r.value if higher_is_better else -r.value),
                                       r.output_sqnr_db, order[r.name]))


_EVAL_WHILE_CALIBRATING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm,
                           nn.modules.conv._ConvNd, nn.Linear)


@torch.no_grad()
def calibrate(qmodel: nn.Module, batches) -> nn.Module:
    """Gather quantization statistics of ``qmodel`` on ``batches`` without training it.

    The model runs in training mode (so quantized layers and quantized tensor ops gather their
    ranges) except float dropout, BatchNorm, conv and linear layers (a float conv with a fused
    BatchNorm would use batch statistics), under ``no_grad``; every tensor that is not a
    quantization statistic (BatchNorm running mean/var...) is restored afterwards. Returns
    ``qmodel``, in eval mode.

    As in QAT, BatchNorms (and convs with a fused BatchNorm) see batch statistics while the
    ranges are gathered: calibrate a trained model on data like its training data, so that these
    match the running statistics eval uses.
    """
    state = qmodel.state_dict()
    saved = {k: v.clone() for k, v in state.items() if k.rsplit(".", 1)[-1] not in STATE_BUFFERS}
    qmodel.train()
    for m in qmodel.modules():
        if isinstance(m, _EVAL_WHILE_CALIBRATING) and not isinstance(m, QuantMixin):
            m.eval()  # as in eval: no dropout, BatchNorm (also fused) on running statistics
    for batch in _batches(batches):
        qmodel(_split(batch)[0])
    for k, v in saved.items():
        state[k].copy_(v)
    return qmodel.eval()


# ------------------------------------------------------------------------------------------------

def _only(base, keep, quantized, names, batches, quant_modules, init_kwargs):
    """Deep copy of ``base`` where layer ``keep`` (None: none) is the only quantized one."""
    from ..quant.api import disable_quant, init

    model = copy.deepcopy(base)
    modules = dict(model.named_modules())
    others = [n for n in names if n != keep]
    if quantized:
        for n in others:
            _set_child(model, n, _to_float(modules[n]))
        if keep is not None:
            _fill_input_range(model, modules[keep], batches)
        return model.eval()
    for n in others:
        disable_quant(modules[n])
    if keep is None:
        return model.eval()
    kwargs = dict(init_kwargs)
    if quant_modules is not None:
        kwargs["quant_modules"] = quant_modules
    init(model, **kwargs)
    qtensor.POLICY["on_unsupported"] = "float"  # float layers downstream take its QTensors
    return calibrate(model, batches)


def _fill_input_range(model, layer, batches) -> None:
    """A layer that only ever received quantized inputs of its own bit width (BatchNorm after a
    conv) has no input range; once its producer is float it needs one. Calibrate it on
    ``batches``, then put back its trained output statistics: only the missing range is new."""
    ready = getattr(layer, "input_ready", None)
    if ready is None or bool(ready):
        return
    saved = {k: v.clone() for k, v in layer.state_dict().items() if k.startswith("output_")}
    calibrate(model, batches)
    layer.load_state_dict(saved, strict=False)


def _to_float(layer: nn.Module) -> nn.Module:
    """The float twin of a quantized layer, through the public ``linger.disable_quant``."""
    from ..quant.api import disable_quant

    holder = nn.Module()
    holder.add_module("layer", layer)
    disable_quant(holder)
    return holder.layer


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def _evaluate(model, batches) -> list:
    model.eval()
    outs = []
    for batch in batches:
        out = model(_split(batch)[0])
        if isinstance(out, (tuple, list)):
            out = out[0]
        outs.append(plain(out).double())
    return outs


def _score(outputs, batches, metric, reference) -> float:
    if metric is None:  # output SQNR against the all-float outputs
        sig = sum(float((r * r).sum()) for r in reference)
        noise = sum(float(((r - o) ** 2).sum()) for r, o in zip(reference, outputs))
        return sqnr_db(sig, noise)
    total, weight = 0.0, 0
    for out, batch in zip(outputs, batches):
        target = _split(batch)[1]
        n = len(out) if out.dim() else 1
        total += float(metric(out, target)) * n
        weight += n
    return total / max(weight, 1)


def _batches(batches) -> list:
    if isinstance(batches, torch.Tensor):
        return [batches]
    return list(batches)  # materialized: it is iterated once per layer


def _split(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _float_class(m: QuantMixin) -> type:
    """The class ``m`` was before ``linger.init``: a stage-1 class of the two-stage flow (its
    forward folds a fused BatchNorm and clamps) or the torch class."""
    before = m.__dict__.get(PRE_QUANT_ATTR)
    return before or next(f for f, q in QUANT_CLASSES.items() if isinstance(m, q))


@contextmanager
def _modes(model: nn.Module, train: bool):
    flags = {m: m.training for m in model.modules()}
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


@contextmanager
def _dequant_policy():
    """Mixed float/quantized variants need the "float" policy (float layers take quantized
    values, on purpose and not for export); restore the user's after."""
    saved = qtensor.POLICY["on_unsupported"]
    qtensor.POLICY["on_unsupported"] = "float"
    try:
        yield
    finally:
        qtensor.POLICY["on_unsupported"] = saved
