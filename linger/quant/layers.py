"""Quantized layers: each one only says how to call its float op; QuantMixin does the rest.

Eval computes, for conv/linear/conv-transpose/batch-norm::

    acc = op(q_x, q_w) + q_b                 # exact integers (float64 tensors)
    q_o = saturate(rounding_shift(acc, n_x + n_w - n_o), out_bits)

ReLU, ReLU6, max-pooling and dropout need no layer of their own: they act on the QTensor values
directly and keep the exponent (see :mod:`linger.quant.qtensor` and :mod:`linger.quant.elementwise`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import numerics
from ..errors import UnsupportedError
from . import trace, two_stage
from .base import QuantMixin, int_values
from .bn_train import batchnorm_train
from .functions import fake_quant
from .qtensor import QTensor


class _WeightedQuant(QuantMixin):
    """conv / linear family: ``y = op(x, w) + b``."""

    def _float_op(self, x, w, b):
        raise NotImplementedError

    def _onnx_attrs(self) -> dict:
        return {}

    def forward(self, x):
        # two-stage flow (two_stage.py): a conv with a BatchNorm fused by trace_layers trains on
        # batch statistics until they are frozen; otherwise it computes with folded weight/bias.
        if self.training and two_stage.trains_with_batch_stats(self):
            return two_stage.fused_train_quant(self, x)
        xq = self.quant_input(x)
        weight, bias = two_stage.quant_parameters(self)  # (self.weight, self.bias) if not fused
        if self.training:
            w, nw = self.fake_weight(weight)
            b = None if bias is None else fake_quant(bias, xq.raw_exp + nw, numerics.BIAS_BITS)
            if torch.compiler.is_compiling():
                y = self._float_op(xq.plain(), w, b)
            else:
                with torch._C.DisableTorchFunctionSubclass():  # xq as the plain tensor it is
                    y = self._float_op(xq, w, b)               # (no alias of xq in the graph)
            return self.quant_output_train(y, owned=True)
        nx = xq.int_exp()
        qw, nw = self.int_weight(weight)
        qb = None if bias is None else numerics.quantize_bias(bias.detach().double(), nx, nw)
        acc = self._float_op(int_values(xq), qw, qb)  # exact int accumulator, float64
        out, no = self.int_output(acc, nx + nw, like=xq)
        rec = trace.current()
        if rec is not None:
            attrs = {"exp_x": nx, "exp_w": nw, "exp_o": no, "bits_x": xq.bits,
                     "bits_w": self.linger_cfg.parameter_bits, "bits_o": self.linger_cfg.out_bits}
            attrs.update(self._onnx_attrs())
            params = {"weight": (qw, self.linger_cfg.parameter_bits)}
            if qb is not None:
                params["bias"] = (qb, numerics.BIAS_BITS)
            rec.node(self, self.onnx_op, [xq], [out], attrs, params)
        return out


class _ConvQuant(_WeightedQuant):
    def _check_options(self):
        if self.padding_mode != "zeros":
            raise UnsupportedError(
                f"{self._where()}: padding_mode={self.padding_mode!r} is not supported; use"
                f" padding_mode='zeros' or pad explicitly with F.pad before the layer")

    def _onnx_attrs(self):
        nd = len(self.kernel_size)
        return {"kernel_shape": list(self.kernel_size), "strides": list(self.stride),
                "pads": _onnx_pads(self.padding, self.kernel_size, self.dilation, nd),
                "dilations": list(self.dilation), "group": self.groups}


class QConv1d(_ConvQuant, nn.Conv1d):
    onnx_op = "Conv1dInt"

    def _float_op(self, x, w, b):
        return self._conv_forward(x, w, b)


class QConv2d(_ConvQuant, nn.Conv2d):
    onnx_op = "Conv2dInt"

    def _float_op(self, x, w, b):
        return self._conv_forward(x, w, b)


class _ConvTransposeQuant(_ConvQuant):
    def _check_options(self):
        super()._check_options()

    def _onnx_attrs(self):
        nd = len(self.kernel_size)
        pads = [int(p) for p in self.padding] * 2
        return {"kernel_shape": list(self.kernel_size), "strides": list(self.stride),
                "pads": pads[:nd] + pads[nd:], "dilations": list(self.dilation),
                "group": self.groups, "output_padding": list(self.output_padding)}


class QConvTranspose1d(_ConvTransposeQuant, nn.ConvTranspose1d):
    onnx_op = "ConvTranspose1dInt"

    def _float_op(self, x, w, b):
        return F.conv_transpose1d(x, w, b, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


class QConvTranspose2d(_ConvTransposeQuant, nn.ConvTranspose2d):
    onnx_op = "ConvTranspose2dInt"

    def _float_op(self, x, w, b):
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


class QLinear(_WeightedQuant, nn.Linear):
    onnx_op = "LinearInt"

    def _float_op(self, x, w, b):
        return F.linear(x, w, b)


class _BatchNormQuant(QuantMixin):
    """``y = a * x + c`` per channel with ``a = gamma / sqrt(var + eps)``, ``c = beta - mean * a``.

    ``a`` is quantized like a weight (per-tensor exponent), ``c`` like a bias. Training uses the
    batch statistics (and updates the running ones as nn.BatchNorm does); eval the running ones.
    """

    onnx_op = "BatchNormInt"

    def _check_options(self):
        if not self.affine or not self.track_running_stats:
            raise UnsupportedError(
                f"{self._where()}: quantized BatchNorm needs affine=True and"
                f" track_running_stats=True (the integer op uses the running statistics)")

    def _affine(self, mean, var):
        a = self.weight / torch.sqrt(var + self.eps)
        return a, two_stage.clamp_bias(self, self.bias - mean * a)  # normalize_bias_value, if set

    def forward(self, x):
        xq = self.quant_input(x)
        shape = [1, -1] + [1] * (xq.dim() - 2)  # broadcast over (N, C, *)
        if self.training:  # y = x * aq + cq and its output quantization (bn_train.py)
            return batchnorm_train(self, xq)
        a, c = self._affine(self.running_mean.double(), self.running_var.double())
        nx = xq.int_exp()
        qa, na = self.int_weight(a)
        qc = numerics.quantize_bias(c.detach().double(), nx, na)
        acc = int_values(xq) * qa.view(shape) + qc.view(shape)
        out, no = self.int_output(acc, nx + na, like=xq)
        rec = trace.current()
        if rec is not None:
            attrs = {"exp_x": nx, "exp_w": na, "exp_o": no, "bits_x": xq.bits,
                     "bits_w": self.linger_cfg.parameter_bits, "bits_o": self.linger_cfg.out_bits}
            rec.node(self, self.onnx_op, [xq], [out], attrs,
                     {"weight": (qa, self.linger_cfg.parameter_bits), "bias": (qc, 32)})
        return out


class QBatchNorm1d(_BatchNormQuant, nn.BatchNorm1d):
    pass


class QBatchNorm2d(_BatchNormQuant, nn.BatchNorm2d):
    pass


class _AvgPoolQuant(QuantMixin):
    """Average pooling on integers: ``q_o = floor((2 * sum + k) / (2 * k))`` (exact rounding of
    the mean, half up), output exponent = input exponent. ``k`` is the window size, or the number
    of non-padding elements when ``count_include_pad=False``."""

    onnx_op = "AvgPoolInt"
    has_output_quant = False

    def _window(self, x):
        """``(kernel, stride, padding, count_include_pad)`` as 2-D tuples for input ``x``."""
        raise NotImplementedError

    def _check_options(self):
        if getattr(self, "ceil_mode", False):
            raise UnsupportedError(f"{self._where()}: ceil_mode=True is not supported; use"
                                   f" ceil_mode=False (pad the input if you need the last window)")
        if getattr(self, "divisor_override", None):
            raise UnsupportedError(f"{self._where()}: divisor_override is not supported")

    def forward(self, x):
        xq = self.quant_input(x)
        k, s, p, include_pad = self._window(xq)
        return avg_pool(xq, k, s, p, include_pad, self.training, self)


def avg_pool(xq: QTensor, k, s, p, include_pad: bool, training: bool, module=None) -> QTensor:
    """Average pooling of quantized ``xq`` ((N, C, L) or (N, C, H, W)) with 2-d window
    ``k``/``s``/``p`` (a 1-d pooling has ``k[0] = s[0] = 1``, ``p[0] = 0``); exponent kept.
    Eval: ``floor((2 * sum + k) / (2 * k))`` on exact integers, one ``AvgPoolInt`` node."""
    x4 = _as_2d(xq.plain())
    if training:
        y = F.avg_pool2d(x4, k, s, p, False, include_pad)
        y = fake_quant(y, xq.raw_exp, xq.bits, owned=True)  # (the pooling saves no output)
        return QTensor.adopt(_from_2d(y, xq.dim()), xq.raw_exp, xq.bits)  # a fresh tensor
    q = _as_2d(int_values(xq))
    sums = F.avg_pool2d(q, k, s, p, False, True, divisor_override=1).round().long()
    if include_pad or not any(p):
        counts = k[0] * k[1]
    else:
        counts = F.avg_pool2d(torch.ones_like(q[:1, :1]), k, s, p, False, True,
                              divisor_override=1).round().long()
    qo = numerics.rounded_div(sums, counts).double()
    out = QTensor.wrap(_from_2d(numerics.dequantize(qo, xq.int_exp()).to(xq.dtype), xq.dim()),
                       xq.int_exp(), xq.bits)
    rec = trace.current()
    if rec is not None:
        nd = xq.dim() - 2
        ks, ss, ps = (k, s, p) if nd == 2 else (k[1:], s[1:], p[1:])
        rec.node(module, "AvgPoolInt", [xq], [out],
                 {"kernel_shape": list(ks), "strides": list(ss), "pads": list(ps) * 2,
                  "count_include_pad": int(include_pad), "exp": xq.int_exp(),
                  "bits": xq.bits}, {})
    return out


def _as_2d(x):
    return x.unsqueeze(-2) if x.dim() == 3 else x


def _from_2d(x, ndim):
    return x.squeeze(-2) if ndim == 3 else x


def _pair(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class QAvgPool1d(_AvgPoolQuant, nn.AvgPool1d):
    def _window(self, x):
        return ((1,) + _pair(self.kernel_size, 1), (1,) + _pair(self.stride, 1),
                (0,) + _pair(self.padding, 1), self.count_include_pad)


class QAvgPool2d(_AvgPoolQuant, nn.AvgPool2d):
    def _window(self, x):
        return (_pair(self.kernel_size, 2), _pair(self.stride or self.kernel_size, 2),
                _pair(self.padding, 2), self.count_include_pad)


class _GlobalAvgQuant(_AvgPoolQuant):
    """Adaptive average pooling. Global (``output_size`` 1): one window over the whole spatial
    extent (``AvgPoolInt``); any other size: PyTorch's adaptive windows
    (:func:`linger.quant.ops_resample.adaptive_avg_pool`, ``AdaptiveAvgPoolInt``)."""

    onnx_ops_doc = "AvgPoolInt (output size 1), AdaptiveAvgPoolInt"

    def _check_options(self):
        pass

    def forward(self, x):
        if all(o == 1 for o in _pair(self.output_size, self._nd)):
            return super().forward(x)
        from .ops_resample import adaptive_avg_pool
        return adaptive_avg_pool(self.quant_input(x), self.output_size, self._nd, self.training)

    def _window(self, x):
        whole = tuple(x.shape[-2:]) if self._nd == 2 else (1, x.shape[-1])
        return whole, whole, (0, 0), True


class QAdaptiveAvgPool1d(_GlobalAvgQuant, nn.AdaptiveAvgPool1d):
    _nd = 1


class QAdaptiveAvgPool2d(_GlobalAvgQuant, nn.AdaptiveAvgPool2d):
    _nd = 2


class QEmbedding(QuantMixin, nn.Embedding):
    """Lookup in the quantized table: output integers are ``q_w[idx]`` at exponent ``n_w``."""

    onnx_op = "EmbeddingInt"
    has_output_quant = False

    def _check_options(self):
        if self.max_norm is not None:
            raise UnsupportedError(f"{self._where()}: max_norm renormalises the table during the"
                                   f" forward pass and cannot be quantized; set max_norm=None")

    def forward(self, indices):
        bits = self.linger_cfg.parameter_bits
        # traced indices arrive as a float-marked QTensor: look up with the plain index tensor
        idx = indices.plain() if isinstance(indices, QTensor) else indices
        if self.training:
            w, nw = self.fake_weight(self.weight)
            return QTensor.wrap(F.embedding(idx, w, self.padding_idx), nw, bits)
        qw, nw = self.int_weight(self.weight)
        out = QTensor.wrap(F.embedding(idx, numerics.dequantize(qw, nw).float()), nw, bits)
        rec = trace.current()
        if rec is not None:
            rec.node(self, self.onnx_op, [indices], [out], {"exp_w": nw, "bits_w": bits},
                     {"weight": (qw, bits)})
        return out


def _onnx_pads(padding, kernel, dilation, nd):
    if isinstance(padding, str):
        if padding == "valid":
            return [0] * (2 * nd)
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]  # padding == "same"
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    return [int(p) for p in padding] * 2


#: float class -> quantized class. Order matters only for documentation.
QUANT_CLASSES = {
    nn.Conv1d: QConv1d, nn.Conv2d: QConv2d, nn.ConvTranspose1d: QConvTranspose1d,
    nn.ConvTranspose2d: QConvTranspose2d, nn.Linear: QLinear, nn.BatchNorm1d: QBatchNorm1d,
    nn.BatchNorm2d: QBatchNorm2d, nn.AvgPool1d: QAvgPool1d, nn.AvgPool2d: QAvgPool2d,
    nn.AdaptiveAvgPool1d: QAdaptiveAvgPool1d, nn.AdaptiveAvgPool2d: QAdaptiveAvgPool2d,
    nn.Embedding: QEmbedding,
}

#: Layer types that need no replacement: they act on QTensor values and keep the exponent.
PASSTHROUGH_CLASSES = (nn.ReLU, nn.ReLU6, nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.Identity,
                       nn.Flatten, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU, nn.Softmax,
                       nn.LogSoftmax, nn.Hardsigmoid, nn.Hardswish, nn.PReLU, nn.LeakyReLU,
                       nn.ELU, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                       nn.FeatureAlphaDropout, nn.Upsample, nn.AdaptiveMaxPool1d,
                       nn.AdaptiveMaxPool2d, nn.ChannelShuffle)
