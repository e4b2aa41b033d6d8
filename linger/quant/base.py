"""QuantMixin: the one place that owns input, weight, bias and output quantization of a layer.

A quantized layer is its float class plus this mixin (``class QConv2d(QuantMixin, nn.Conv2d)``).
Parameters keep their names, so float checkpoints load unchanged; the quantization state lives in
buffers next to them::

    input_range,  input_ready,  input_exp      running max|x| of float inputs, its exponent
    output_range, output_ready, output_exp     running max|y| of the output, its exponent

Training (``module.training``): fake quantization with straight-through gradients; the running
ranges are updated and the exponents recomputed from them by ``n = floor(log2(qmax / r))``.
Exponents are Python ints on the CPU and device tensors elsewhere (see
:mod:`linger.quant.functions`: on a GPU, NaN/inf in a batch is reported at the next eval/export).

Eval: exact integer arithmetic on float64 tensors holding integers, with the stored exponents --
the very computation the runtime performs, so eval equals the runtime bit for bit.
"""

from __future__ import annotations

import math

import torch

from .. import numerics
from ..config import QuantConfig
from ..errors import NotCalibratedError, NumericError
from . import trace, two_stage
from .functions import fake_quant, observe, weight_exponent
from .qtensor import QTensor

#: Names of the buffers every quantized layer owns (suffixes of state_dict keys).
STATE_BUFFERS = ("input_range", "input_ready", "input_exp", "output_range", "output_ready",
                 "output_exp")


class QuantMixin:
    """Shared quantization machinery. Subclasses set ``onnx_op`` and implement the op."""

    onnx_op: str = ""
    has_output_quant: bool = True

    def _linger_setup(self, cfg: QuantConfig, name: str = "") -> None:
        self.linger_cfg = cfg
        self.linger_name = name
        dev = _module_device(self)
        for prefix in ("input", "output") if self.has_output_quant else ("input",):
            self.register_buffer(f"{prefix}_range", torch.zeros((), device=dev))
            self.register_buffer(f"{prefix}_ready", torch.zeros((), dtype=torch.bool, device=dev))
            self.register_buffer(f"{prefix}_exp", torch.zeros((), dtype=torch.int32, device=dev))

    def _check_options(self) -> None:
        """Raise UnsupportedError for float options the integer op cannot honour (at init)."""

    # -- description -------------------------------------------------------------------------
    def extra_repr(self) -> str:
        base = super().extra_repr()
        c = self.linger_cfg
        q = f"quant(data={c.data_bits}, weight={c.parameter_bits}, out={c.out_bits})"
        return f"{base}, {q}" if base else q

    def _where(self) -> str:
        return f"{type(self).__name__} '{self.linger_name or '<root>'}'"

    # -- statistics ----------------------------------------------------------------------------
    def _observe(self, prefix: str, x: torch.Tensor, bits: int, min_exp=None,
                 nonneg: bool = False):
        """Update the running range of ``prefix`` with batch ``x`` (``relu(x)`` if ``nonneg``);
        return the new exponent (at least ``min_exp`` when given): an int on the CPU, a 0-dim
        device tensor elsewhere -- use it through ``fake_quant``/``QTensor.wrap`` or ``int()``."""
        buf = self._buffers  # (not Module.__getattr__: this runs for every layer and step)
        return observe(buf[f"{prefix}_range"], buf[f"{prefix}_ready"], buf[f"{prefix}_exp"], x,
                       bits, self.linger_cfg.momentum, min_exp, nonneg,
                       lambda: f"{self._where()}: {prefix} contains NaN or infinity; check the"
                               f" data and the learning rate (quantization needs finite values)")

    def _stored_exp(self, prefix: str) -> int:
        if not bool(getattr(self, f"{prefix}_ready")):
            raise NotCalibratedError(
                f"{self._where()} has no {prefix} range yet: run at least one training-mode"
                f" forward pass (QAT or calibration, model.train()) before eval or export")
        r = float(getattr(self, f"{prefix}_range"))
        if not math.isfinite(r):  # training on a GPU reports NaN/inf here, not per step
            raise NumericError(
                f"{self._where()}: the {prefix} range is {r}: a training batch contained NaN or"
                f" infinity; check the data and the learning rate, then retrain or reload")
        return int(getattr(self, f"{prefix}_exp"))

    # -- input --------------------------------------------------------------------------------
    def quant_input(self, x) -> QTensor:
        """Bring the input onto a ``data_bits`` grid.

        A QTensor of ``data_bits`` bits is used as it is; anything else (float, or another bit
        width) is quantized with this layer's own input statistic (export: Quant/Requant node).
        """
        trace.refuse_foreign_export(self._where)
        bits = self.linger_cfg.data_bits
        if isinstance(x, QTensor) and x.bits == bits:
            return x
        src = x.plain() if isinstance(x, QTensor) else x
        if self.training:
            exp = self._observe("input", src, bits)
            return QTensor.wrap(fake_quant(src, exp, bits), exp, bits)
        exp = self._stored_exp("input")
        _check_finite(src, self._where(), "input")
        q = numerics.quantize(src.detach().double(), exp, bits)
        out = QTensor.wrap(numerics.dequantize(q, exp).to(src.dtype), exp, bits)
        rec = trace.current()
        if rec is not None:
            if isinstance(x, QTensor) and x.bits is not None:
                rec.node(self, "Requant", [x], [out], {"exp_in": x.int_exp(), "bits_in": x.bits,
                                                      "exp": exp, "bits": bits})
            else:
                rec.node(self, "Quant", [x], [out], {"exp": exp, "bits": bits})
        return out

    # -- weights ------------------------------------------------------------------------------
    def weight_exp(self, w: torch.Tensor):
        """``n_w = floor(log2(qmax / max|w|))`` from the current weights: an int on the CPU, a
        0-dim int32 device tensor elsewhere."""
        bits = self.linger_cfg.parameter_bits
        # two-stage flow: normalize_weight_value v caps the weight range (exponent >= floor)
        return weight_exponent(w, bits, two_stage.weight_min_exp(self, bits),
                               lambda: f"{self._where()}: weights contain NaN or infinity")

    def fake_weight(self, w: torch.Tensor):
        exp = self.weight_exp(w)
        return fake_quant(w, exp, self.linger_cfg.parameter_bits), exp

    def int_weight(self, w: torch.Tensor):
        """Eval: ``(q_w as float64 integers, n_w as int)``."""
        if not math.isfinite(float(w.detach().abs().amax())):  # also on the device path
            raise NumericError(f"{self._where()}: weights contain NaN or infinity")
        exp = int(self.weight_exp(w))
        return numerics.quantize(w.detach().double(), exp, self.linger_cfg.parameter_bits), exp

    # -- output -------------------------------------------------------------------------------
    def quant_output_train(self, y: torch.Tensor, owned: bool = False) -> QTensor:
        """Training: update the output range with ``y`` and fake-quantize it. ``owned``: ``y`` is
        the layer's own fresh result (nothing else holds it), which may be quantized in place."""
        bits = self.linger_cfg.out_bits
        # two-stage flow: an "ahead ReLU" layer takes its range from relu(y); the
        # normalize_output_value v caps the range (exponent >= floor). See two_stage.py.
        exp = self._observe("output", y, bits, min_exp=two_stage.output_min_exp(self, bits),
                            nonneg=self.__dict__.get(two_stage.AHEAD_RELU_ATTR, False))
        return QTensor.adopt(fake_quant(y, exp, bits, owned), exp, bits)  # a fresh tensor

    def int_output(self, acc: torch.Tensor, exp_acc: int, like: torch.Tensor):
        """Requantize an exact float64 integer accumulator at exponent ``exp_acc`` to the output.

        ``q_o = saturate(rounding_shift(acc, exp_acc - n_o))``; returns (QTensor, n_o).
        """
        bits = self.linger_cfg.out_bits
        exp = self._stored_exp("output")
        q = numerics.requantize(acc, exp_acc - exp, bits)
        return QTensor.wrap(numerics.dequantize(q, exp).to(_value_dtype(like, bits)), exp, bits), exp


def int_values(x: QTensor) -> torch.Tensor:
    """The integers of a quantized QTensor as float64: ``q = x * 2**exp`` (exact)."""
    return x.plain().detach().double() * (2.0 ** x.int_exp())


def _value_dtype(like: torch.Tensor, bits: int):
    # float32 holds every integer of up to 24 bits exactly; int32 outputs need float64.
    return torch.float64 if bits > 24 else (like.dtype if like.dtype.is_floating_point
                                            else torch.float32)


def _check_finite(x: torch.Tensor, where: str, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise NumericError(f"{where}: {what} contains NaN or infinity; quantized layers need"
                           f" finite values (clean the data or clamp it before the layer)")


def _module_device(m) -> torch.device:
    for p in m.parameters(recurse=False):
        return p.device
    for b in m.buffers(recurse=False):
        return b.device
    return torch.device("cpu")

