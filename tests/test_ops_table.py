"""One table drives every quantized tensor op through training, eval, export and the runtime.

Each row is a tiny model ``quant_tensor(inputs) -> op``. For every row:

- training: a few training-mode passes (statistics), gradients reach the input and parameters;
- eval vs float: the integer eval output matches the float op within the row's SQNR bound
  (the bounds are the ones documented in docs/ops.md; they include the int8 quantization of the
  inputs themselves);
- export + runtime: ``linger.onnx.export`` then ``linger.runtime.InferenceSession`` gives the
  eval output bit for bit (``np.array_equal``), on typical inputs and on inputs 8x beyond the
  calibrated range (every stage saturates).
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import linger
from linger.quant.qtensor import QTensor

HAVE_RUNTIME = importlib.util.find_spec("linger.runtime") is not None


class OpNet(nn.Module):
    """``fn(extra, *quant_tensor(x_i))``; ``extra`` holds the row's parameters / sub-modules."""

    def __init__(self, fn, n_in, extra=None, bits=8):
        super().__init__()
        self.fn, self.n_in, self.bits = fn, n_in, bits
        self.extra = extra if extra is not None else nn.Module()
        self.float_reference = False

    def forward(self, *xs):
        if not self.float_reference:
            xs = [linger.quant_tensor(self, x, name=f"x{i}", bits=self.bits)
                  for i, x in enumerate(xs)]
        return self.fn(self.extra, *xs)


def _params(**tensors):
    m = nn.Module()
    for k, v in tensors.items():
        if isinstance(v, nn.Module):
            m.add_module(k, v)
        else:
            m.register_parameter(k, nn.Parameter(v))
    return m


@dataclass
class Row:
    name: str
    fn: object
    shapes: list                  # input shapes
    sqnr_db: float                # eval vs float lower bound (docs/ops.md)
    scales: list = field(default_factory=lambda: [1.0, 1.0, 1.0])  # input std per input
    extra: object = None          # () -> nn.Module with parameters
    bits: int = 8
    op_types: tuple = ()          # node types the export must contain


g = torch.Generator().manual_seed(1234)


def _rand(*shape):
    return torch.randn(*shape, generator=g)


ROWS = [
    Row("add", lambda e, a, b: a + b, [(4, 16), (4, 16)], 26, [1.0, 2.0], op_types=("iqAdd",)),
    Row("add_broadcast", lambda e, a, b: a + b, [(4, 16), (1, 16)], 26, op_types=("iqAdd",)),
    Row("add_scalar", lambda e, a: a + 0.75, [(4, 16)], 26, op_types=("iqAdd",)),
    Row("radd_scalar", lambda e, a: 1.5 + a, [(4, 16)], 26, op_types=("iqAdd",)),
    Row("add_parameter", lambda e, a: a + e.bias, [(4, 16)], 26,
        extra=lambda: _params(bias=_rand(16) * 0.5), op_types=("iqAdd",)),
    Row("iadd", lambda e, a, b: a.__iadd__(b), [(4, 16), (4, 16)], 26, op_types=("iqAdd",)),
    Row("add_inplace_result_unused", lambda e, a, b: (a.add_(b), a)[1], [(4, 16), (4, 16)], 26,
        op_types=("iqAdd",)),
    Row("mul_inplace", lambda e, a: (a.mul_(0.5), a * 1.0)[1], [(4, 16)], 26,
        op_types=("iqMul",)),
    Row("clamp_inplace", lambda e, a: (a.clamp_(-0.5, 0.5), a)[1], [(4, 16)], 22,
        op_types=("Clip",)),
    Row("sigmoid_inplace", lambda e, a: (a.sigmoid_(), a)[1], [(4, 16)], 37, [3.0],
        op_types=("iqSigmoid",)),
    Row("sub", lambda e, a, b: a - b, [(4, 16), (4, 16)], 26, [1.0, 0.5], op_types=("iqSub",)),
    Row("rsub_scalar", lambda e, a: 1.0 - a, [(4, 16)], 26, op_types=("iqSub",)),
    Row("mul", lambda e, a, b: a * b, [(4, 16), (4, 16)], 24, op_types=("iqMul",)),
    Row("mul_scalar", lambda e, a: a * 0.3, [(4, 16)], 29, op_types=("iqMul",)),
    Row("mul_parameter", lambda e, a: a * e.scale, [(4, 16)], 28,
        extra=lambda: _params(scale=_rand(16)), op_types=("iqMul",)),
    Row("div_const", lambda e, a: a / 3.0, [(4, 16)], 30, op_types=("iqDiv",)),
    Row("cat", lambda e, a, b: torch.cat([a, b], dim=1), [(4, 8), (4, 8)], 30, [1.0, 4.0],
        op_types=("iqCat",)),
    Row("cat_neg_dim", lambda e, a, b: torch.cat((a, b), -1), [(2, 3, 4), (2, 3, 2)], 30,
        op_types=("iqCat",)),
    Row("stack", lambda e, a, b: torch.stack([a, b], 1), [(4, 8), (4, 8)], 30, [1.0, 0.25],
        op_types=("iqCat",)),
    Row("clamp", lambda e, a: a.clamp(-0.5, 0.8), [(4, 16)], 22, op_types=("Clip",)),
    Row("clamp_min", lambda e, a: torch.clamp(a, min=0.1), [(4, 16)], 22, op_types=("Clip",)),
    Row("clip", lambda e, a: torch.clip(a, max=0.3), [(4, 16)], 22, op_types=("Clip",)),
    Row("hardtanh", lambda e, a: F.hardtanh(a, -0.5, 0.5), [(4, 16)], 22, op_types=("Clip",)),
    Row("sigmoid", lambda e, a: torch.sigmoid(a), [(4, 16)], 37, [3.0], op_types=("iqSigmoid",)),
    Row("sigmoid_module", lambda e, a: e.act(a), [(4, 16)], 37, [3.0],
        extra=lambda: _params(act=nn.Sigmoid()), op_types=("iqSigmoid",)),
    Row("tanh", lambda e, a: torch.tanh(a), [(4, 16)], 29, [2.0], op_types=("iqTanh",)),
    Row("softmax", lambda e, a: F.softmax(a, -1), [(4, 16)], 28, [2.0],
        op_types=("SoftmaxInt",)),
    Row("softmax_module_dim1", lambda e, a: e.sm(a), [(2, 6, 5)], 28, [2.0],
        extra=lambda: _params(sm=nn.Softmax(dim=1)), op_types=("SoftmaxInt",)),
    Row("log_softmax", lambda e, a: F.log_softmax(a, dim=-1), [(4, 16)], 36, [2.0],
        op_types=("LogSoftmaxInt",)),
    Row("matmul", lambda e, a, b: a @ b, [(2, 4, 8), (2, 8, 5)], 24, op_types=("MatMulInt",)),
    Row("bmm", lambda e, a, b: torch.bmm(a, b.transpose(1, 2)), [(2, 4, 8), (2, 5, 8)], 24,
        op_types=("MatMulInt",)),
    Row("matmul_parameter", lambda e, a: torch.matmul(a, e.w), [(4, 8)], 24,
        extra=lambda: _params(w=_rand(8, 6)), op_types=("MatMulInt",)),
    Row("sum", lambda e, a: a.sum(-1), [(4, 16)], 23, op_types=("iqSum",)),
    Row("sum_dims_keepdim", lambda e, a: torch.sum(a, (1, 2), keepdim=True), [(2, 3, 4, 5)], 23,
        op_types=("iqSum",)),
    Row("mean", lambda e, a: a.mean(-1), [(4, 16)], 23, op_types=("iqMean",)),
    Row("mean_keepdim", lambda e, a: torch.mean(a, dim=(2, 3), keepdim=True), [(2, 3, 4, 4)],
        23, op_types=("iqMean",)),
    Row("layer_norm_module", lambda e, a: e.ln(a), [(4, 6, 16)], 29,
        extra=lambda: _params(ln=_affine_ln(16)), op_types=("LayerNormInt",)),
    Row("layer_norm_no_affine", lambda e, a: e.ln(a), [(4, 16)], 29,
        extra=lambda: _params(ln=nn.LayerNorm(16, elementwise_affine=False)),
        op_types=("LayerNormInt",)),
    Row("layer_norm_2d", lambda e, a: e.ln(a), [(2, 3, 4, 5)], 29,
        extra=lambda: _params(ln=_affine_ln((4, 5))), op_types=("LayerNormInt",)),
    Row("layer_norm_functional", lambda e, a: F.layer_norm(a, (16,), e.w, e.b), [(4, 16)], 29,
        extra=lambda: _params(w=1 + 0.3 * _rand(16), b=0.2 * _rand(16)),
        op_types=("LayerNormInt",)),
    Row("gelu", lambda e, a: F.gelu(a), [(4, 16)], 28, [2.0], op_types=("iqGELU",)),
    Row("gelu_tanh", lambda e, a: e.act(a), [(4, 16)], 28, [2.0],
        extra=lambda: _params(act=nn.GELU(approximate="tanh")), op_types=("iqGELU",)),
    Row("silu", lambda e, a: F.silu(a), [(4, 16)], 28, [2.0], op_types=("iqSiLU",)),
    Row("silu_module_inplace", lambda e, a: e.act(a), [(4, 16)], 28, [2.0],
        extra=lambda: _params(act=nn.SiLU(inplace=True)), op_types=("iqSiLU",)),
    Row("channel_shuffle", lambda e, a: F.channel_shuffle(a, 2), [(2, 6, 3, 3)], 31,
        op_types=("Transpose",)),
    Row("channel_shuffle_view", lambda e, a: a.view(2, 3, 2, 3, 3).transpose(1, 2)
        .reshape(2, 6, 3, 3), [(2, 6, 3, 3)], 31, op_types=("Transpose",)),
    # 16-bit data
    Row("add_16bit", lambda e, a, b: a + b, [(4, 16), (4, 16)], 78, [1.0, 3.0], bits=16,
        op_types=("iqAdd",)),
    Row("mul_16bit", lambda e, a, b: a * b, [(4, 16), (4, 16)], 70, bits=16,
        op_types=("iqMul",)),
    Row("sigmoid_16bit", lambda e, a: torch.sigmoid(a), [(4, 16)], 82, [3.0], bits=16,
        op_types=("iqSigmoid",)),
    Row("tanh_16bit", lambda e, a: torch.tanh(a), [(4, 16)], 69, [2.0], bits=16,
        op_types=("iqTanh",)),
    Row("softmax_16bit", lambda e, a: torch.softmax(a, 1), [(4, 16)], 75, [2.0], bits=16,
        op_types=("SoftmaxInt",)),
    Row("log_softmax_16bit", lambda e, a: torch.log_softmax(a, 1), [(4, 16)], 84, [2.0],
        bits=16, op_types=("LogSoftmaxInt",)),
    Row("layer_norm_16bit", lambda e, a: F.layer_norm(a, (16,)), [(4, 16)], 68, bits=16,
        op_types=("LayerNormInt",)),
    Row("gelu_16bit", lambda e, a: F.gelu(a), [(4, 16)], 75, [2.0], bits=16,
        op_types=("iqGELU",)),
    Row("matmul_16bit", lambda e, a, b: a @ b, [(2, 4, 8), (2, 8, 5)], 74, bits=16,
        op_types=("MatMulInt",)),
]


def _affine_ln(shape):
    ln = nn.LayerNorm(shape)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(ln.weight.shape, generator=g))
        ln.bias.copy_(0.2 * torch.randn(ln.bias.shape, generator=g))
    return ln


def _inputs(row, k=1.0):
    return [_rand(*shape) * row.scales[i] * k for i, shape in enumerate(row.shapes)]


def _plain(t):
    return t.plain() if isinstance(t, QTensor) else t


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    noise = (ref - got).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))


_BUILT: dict = {}


def build(row):
    """(calibrated quantized model in eval mode, float reference model); cached per row."""
    if row.name not in _BUILT:
        net = OpNet(row.fn, len(row.shapes), row.extra() if row.extra else None, row.bits)
        ref = copy.deepcopy(net)
        ref.float_reference = True
        model = linger.init(net)
        model.train()
        for _ in range(8):  # calibrate on a 1.5x wider distribution: test data rarely saturates
            model(*_inputs(row, 1.5))
        _BUILT[row.name] = (model.eval(), ref.eval())
    return _BUILT[row.name]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_training_pass_and_gradients(row):
    net = OpNet(row.fn, len(row.shapes), row.extra() if row.extra else None, row.bits)
    model = linger.init(net).train()
    xs = [x.requires_grad_(True) for x in _inputs(row)]
    out = model(*xs)
    assert isinstance(out, QTensor) and out.bits is not None
    (out * torch.randn(out.shape, generator=g)).sum().backward()  # sum(softmax) is constant
    for x in xs:
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert x.grad.abs().sum() > 0, f"{row.name}: no gradient reaches the input"
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{row.name}: no gradient for {name}"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_eval_matches_float_within_sqnr(row):
    model, ref = build(row)
    xs = _inputs(row)
    with torch.no_grad():
        got, want = model(*xs), ref(*xs)
    assert isinstance(got, QTensor) and got.bits is not None, "op fell back to float"
    assert got.shape == want.shape
    s = sqnr_db(want, _plain(got))
    assert s >= row.sqnr_db, f"{row.name}: SQNR {s:.1f} dB < {row.sqnr_db} dB"


@pytest.mark.skipif(not HAVE_RUNTIME, reason="linger.runtime (numpy runtime) not built yet")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_export_runtime_bit_exact(row, tmp_path):
    import linger.runtime
    model, _ = build(row)
    xs = _inputs(row)
    names = [f"x{i}" for i in range(len(xs))]
    path = tmp_path / f"{row.name}.onnx"
    graph = linger.onnx.export(model, tuple(xs), path, input_names=names)
    ops = {n.op_type for n in graph.graph.node}
    assert set(row.op_types) <= ops, f"{row.name}: exported ops {sorted(ops)}"
    sess = linger.runtime.InferenceSession(str(path))
    for k in (1.0, 8.0, 0.05):  # typical, saturating, tiny
        xs = _inputs(row, k)
        with torch.no_grad():
            want = _plain(model(*xs)).numpy()
        got = sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want), f"{row.name} (input x{k}): runtime != eval"
