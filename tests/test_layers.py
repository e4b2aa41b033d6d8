"""Every quantized layer, in training and in eval.

Checks: the output is a QTensor of the right bits whose values lie on its 2**-exp grid and within
the bit range; gradients reach weights and inputs in training; in eval, conv / conv-transpose /
linear / batch-norm / avg-pool equal an integer reference computed here with numpy int64 (not with
linger.numerics).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import linger
from linger.quant.qtensor import QTensor


def ref_exponent(r, bits):
    """floor(log2(qmax / r)) via frexp: r = m 2^e, qmax = mq 2^eq -> eq - e - (m > mq)."""
    if r == 0:
        return 0
    m, e = math.frexp(r)
    mq, eq = math.frexp(2 ** (bits - 1) - 1)
    return eq - e - (m > mq)


def ref_quant(x, n, bits):
    """rhu + saturate on float32-born values (exact in float64), as int64."""
    q = np.floor(np.asarray(x, dtype=np.float64) * 2.0 ** n + 0.5).astype(np.int64)
    return np.clip(q, -2 ** (bits - 1), 2 ** (bits - 1) - 1)


def ref_requant(acc, shift, bits):
    acc = np.asarray(acc, dtype=np.int64)
    out = (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc << -shift
    return np.clip(out, -2 ** (bits - 1), 2 ** (bits - 1) - 1)


def ints(y: QTensor) -> np.ndarray:
    """The integers of a QTensor, checked to be exact integers."""
    v = y.plain().detach().double().numpy() * 2.0 ** y.int_exp()
    assert np.array_equal(v, np.round(v)), "values are not on the 2**-exp grid"
    return v.astype(np.int64)


def assert_on_grid(y, bits):
    assert isinstance(y, QTensor), type(y)
    assert y.bits == bits
    q = ints(y)
    assert q.min() >= -2 ** (bits - 1) and q.max() <= 2 ** (bits - 1) - 1
    return q


# ---------------------------------------------------------------- numpy int64 references

def np_conv(x, w, stride, pad, dilation=None, groups=1):
    """N-d cross-correlation (PyTorch Conv semantics), int64. x (N,C,*S), w (O,C/g,*K)."""
    nd = x.ndim - 2
    dilation = dilation or (1,) * nd
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    k = w.shape[2:]
    out_sz = [(x.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    y = np.zeros((n, o) + tuple(out_sz), dtype=np.int64)
    og = o // groups
    for pos in np.ndindex(*out_sz):
        sl = tuple(slice(pos[i] * stride[i], pos[i] * stride[i] + dilation[i] * (k[i] - 1) + 1,
                         dilation[i]) for i in range(nd))
        patch = x[(slice(None), slice(None)) + sl]  # (N, C, *K)
        for g in range(groups):
            pg = patch[:, g * cg:(g + 1) * cg].reshape(n, -1)
            wg = w[g * og:(g + 1) * og].reshape(og, -1)
            y[(slice(None), slice(g * og, (g + 1) * og)) + pos] = pg @ wg.T
    return y


def np_conv_transpose(x, w, stride, pad, out_pad):
    """PyTorch ConvTranspose semantics (groups 1, dilation 1), int64. w (Cin, Cout, *K)."""
    nd = x.ndim - 2
    n, cin = x.shape[:2]
    cout, k = w.shape[1], w.shape[2:]
    full = [(x.shape[2 + i] - 1) * stride[i] + k[i] + out_pad[i] for i in range(nd)]
    y = np.zeros((n, cout) + tuple(full), dtype=np.int64)
    for pos in np.ndindex(*x.shape[2:]):
        contrib = np.einsum("nc,cok->nok", x[(slice(None), slice(None)) + pos],
                            w.reshape(cin, cout, -1)).reshape((n, cout) + tuple(k))
        sl = tuple(slice(pos[i] * stride[i], pos[i] * stride[i] + k[i]) for i in range(nd))
        y[(slice(None), slice(None)) + sl] += contrib
    crop = tuple(slice(pad[i], full[i] - pad[i] + 0) for i in range(nd))
    return y[(slice(None), slice(None)) + crop]


# ---------------------------------------------------------------- layer table

def _x(*shape, scale=2.0):
    return lambda: torch.randn(*shape) * scale


# name -> (float model factory, input factory, which setting gives the output bits:
#         'out' = out_bits, 'data' = data_bits (average pooling), 'param' = parameter_bits)
LAYERS = {
    "Conv1d": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), _x(2, 3, 9), "out"),
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), _x(2, 3, 6, 5), "out"),
    "Conv2d_depthwise": (lambda: nn.Conv2d(4, 4, 3, groups=4, padding=1, bias=False),
                         _x(2, 4, 5, 5), "out"),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1),
                        _x(2, 3, 5), "out"),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1,
                                                   output_padding=1), _x(2, 3, 4, 3), "out"),
    "Linear": (lambda: nn.Linear(5, 3), _x(4, 5), "out"),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), _x(6, 3, 4), "out"),
    "BatchNorm1d_2d_input": (lambda: nn.BatchNorm1d(3), _x(8, 3), "out"),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), _x(4, 3, 4, 4), "out"),
    "AvgPool1d": (lambda: nn.AvgPool1d(2), _x(2, 3, 8), "data"),
    "AvgPool2d": (lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
                  _x(2, 3, 7, 7), "data"),
    "AdaptiveAvgPool1d": (lambda: nn.AdaptiveAvgPool1d(1), _x(2, 3, 7), "data"),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d(1), _x(2, 3, 5, 5), "data"),
    "Embedding": (lambda: nn.Embedding(10, 4), lambda: torch.randint(0, 10, (3, 5)), "param"),
    # pass-through layers act on the quantized output of the layer before them
    "MaxPool1d": (lambda: nn.Sequential(nn.Conv1d(3, 3, 1), nn.MaxPool1d(2)), _x(2, 3, 8), "out"),
    "MaxPool2d": (lambda: nn.Sequential(nn.Conv2d(3, 3, 1), nn.MaxPool2d(2)), _x(2, 3, 6, 6),
                  "out"),
    "ReLU": (lambda: nn.Sequential(nn.Linear(5, 6), nn.ReLU()), _x(4, 5), "out"),
    "ReLU6": (lambda: nn.Sequential(nn.Linear(5, 6), nn.ReLU6()), _x(4, 5, scale=20.0), "out"),
    "Dropout": (lambda: nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.3)), _x(4, 5), "out"),
}


def make(name, seed=0, data_bits=8, parameter_bits=8, out_bits=8):
    """(model, input factory, expected output bits) for one row of LAYERS."""
    torch.manual_seed(seed)
    factory, xf, role = LAYERS[name]
    model = linger.init(nn.Sequential(factory()), data_bits=data_bits,
                        parameter_bits=parameter_bits, out_bits=out_bits)
    return model, xf, {"out": out_bits, "data": data_bits, "param": parameter_bits}[role]


def calibrate(model, xf, steps=3):
    model.train()
    for _ in range(steps):
        model(xf())


BIT_SETS = [(8, 8, 8), (16, 4, 16)]  # (data_bits, parameter_bits, out_bits)


@pytest.mark.parametrize("bitset", BIT_SETS, ids=lambda b: "d%d-w%d-o%d" % b)
@pytest.mark.parametrize("name", list(LAYERS))
def test_train_output_on_grid_and_gradients(name, bitset):
    model, xf, bits = make(name, 0, *bitset)
    model.train()
    x = xf()
    if x.is_floating_point():
        x.requires_grad_(True)
    y = model(x)
    assert_on_grid(y, bits)
    (y * torch.randn(y.shape)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {pname}"
    if x.is_floating_point():
        assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reaches the input"


@pytest.mark.parametrize("bitset", BIT_SETS, ids=lambda b: "d%d-w%d-o%d" % b)
@pytest.mark.parametrize("name", list(LAYERS))
def test_eval_output_on_grid(name, bitset):
    model, xf, bits = make(name, 0, *bitset)
    calibrate(model, xf)
    model.eval()
    y = model(xf())
    q = assert_on_grid(y, bits)
    assert np.abs(q).max() > 0, "eval output is all zero: the test would prove nothing"
    # eval is exactly repeatable
    x = xf()
    assert torch.equal(model(x).plain(), model(x).plain())


@pytest.mark.parametrize("name", ["Conv1d", "Conv2d", "Conv2d_depthwise", "Linear"])
@pytest.mark.parametrize("bits", [(8, 8, 8), (16, 4, 16), (8, 16, 32)])
def test_eval_equals_integer_reference_conv_linear(name, bits):
    data_bits, param_bits, out_bits = bits
    model, xf, _ = make(name, 0, data_bits, param_bits, out_bits)
    calibrate(model, xf)
    model.eval()
    layer = model[0]
    with torch.no_grad():
        layer.weight.mul_(3)  # outputs grow past the calibrated range: some saturate
    x = torch.cat([xf(), xf() * 8])  # and so do some inputs
    y = model(x)
    nx, no = int(layer.input_exp), int(layer.output_exp)
    assert nx == ref_exponent(float(layer.input_range), data_bits)
    assert no == ref_exponent(float(layer.output_range), out_bits)
    w = layer.weight.detach().numpy()
    nw = ref_exponent(float(np.abs(w).max()), param_bits)
    qx, qw = ref_quant(x.numpy(), nx, data_bits), ref_quant(w, nw, param_bits)
    if name == "Linear":
        acc = qx @ qw.T
    else:
        acc = np_conv(qx, qw, layer.stride, layer.padding, layer.dilation, layer.groups)
    if layer.bias is not None:
        qb = ref_quant(layer.bias.detach().numpy(), nx + nw, 32)
        acc = acc + qb.reshape([1, -1] + [1] * (acc.ndim - 2))
    expected = ref_requant(acc, nx + nw - no, out_bits)
    assert y.bits == out_bits and y.int_exp() == no
    assert np.array_equal(ints(y), expected)
    lo, hi = -2 ** (out_bits - 1), 2 ** (out_bits - 1) - 1
    if out_bits == 8:
        assert ((expected == lo) | (expected == hi)).any(), "no saturation exercised"


@pytest.mark.parametrize("name", ["ConvTranspose1d", "ConvTranspose2d"])
def test_eval_equals_integer_reference_conv_transpose(name):
    model, xf, bits = make(name)
    calibrate(model, xf)
    model.eval()
    layer = model[0]
    x = xf()
    y = model(x)
    nx, no = int(layer.input_exp), int(layer.output_exp)
    w = layer.weight.detach().numpy()
    nw = ref_exponent(float(np.abs(w).max()), 8)
    acc = np_conv_transpose(ref_quant(x.numpy(), nx, 8), ref_quant(w, nw, 8), layer.stride,
                            layer.padding, layer.output_padding)
    acc = acc + ref_quant(layer.bias.detach().numpy(), nx + nw, 32).reshape(
        [1, -1] + [1] * (acc.ndim - 2))
    assert y.shape == acc.shape
    assert np.array_equal(ints(y), ref_requant(acc, nx + nw - no, 8))


@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm1d_2d_input", "BatchNorm2d"])
def test_eval_equals_integer_reference_batchnorm(name):
    model, xf, bits = make(name)
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 2.0)
        model[0].bias.uniform_(-1.0, 1.0)
    calibrate(model, xf)
    model.eval()
    bn = model[0]
    x = xf()
    y = model(x)
    nx, no = int(bn.input_exp), int(bn.output_exp)
    var = bn.running_var.double().numpy()
    a = bn.weight.detach().double().numpy() / np.sqrt(var + bn.eps)
    c = bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * a
    na = ref_exponent(float(np.abs(a).max()), 8)
    qa = np.clip(np.floor(a * 2.0 ** na + 0.5), -128, 127).astype(np.int64)
    qc = np.floor(c * 2.0 ** (nx + na) + 0.5).astype(np.int64)
    shape = [1, -1] + [1] * (x.dim() - 2)
    acc = ref_quant(x.numpy(), nx, 8) * qa.reshape(shape) + qc.reshape(shape)
    assert np.array_equal(ints(y), ref_requant(acc, nx + na - no, 8))


def np_avg_pool(q, k, s, p, include_pad):
    """Rounded (half up) window mean of int64 q (N, C, H, W) with zero padding."""
    qp = np.pad(q, [(0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])])
    ones = np.pad(np.ones(q.shape[2:], dtype=np.int64), [(p[0], p[0]), (p[1], p[1])])
    ho = (qp.shape[2] - k[0]) // s[0] + 1
    wo = (qp.shape[3] - k[1]) // s[1] + 1
    out = np.zeros(q.shape[:2] + (ho, wo), dtype=np.int64)
    for i in range(ho):
        for j in range(wo):
            win = (slice(i * s[0], i * s[0] + k[0]), slice(j * s[1], j * s[1] + k[1]))
            total = qp[(slice(None), slice(None)) + win].sum(axis=(2, 3))
            cnt = k[0] * k[1] if include_pad else int(ones[win].sum())
            out[:, :, i, j] = np.floor_divide(2 * total + cnt, 2 * cnt)
    return out


@pytest.mark.parametrize("name", ["AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d",
                                  "AdaptiveAvgPool2d"])
def test_eval_equals_integer_reference_avgpool(name):
    model, xf, bits = make(name)
    calibrate(model, xf)
    model.eval()
    pool = model[0]
    x = xf()
    y = model(x)
    nx = int(pool.input_exp)
    assert y.int_exp() == nx  # average pooling keeps the exponent
    q = ref_quant(x.numpy(), nx, 8)
    if name == "AvgPool1d":
        expected = np_avg_pool(q[:, :, None], (1, 2), (1, 2), (0, 0), True)[:, :, 0]
    elif name == "AvgPool2d":
        expected = np_avg_pool(q, (3, 3), (2, 2), (1, 1), False)
    elif name == "AdaptiveAvgPool1d":
        expected = np_avg_pool(q[:, :, None], (1, q.shape[2]), (1, 1), (0, 0), True)[:, :, 0]
    else:
        expected = np_avg_pool(q, q.shape[2:], (1, 1), (0, 0), True)
    assert np.array_equal(ints(y), expected)


def test_avgpool_rounds_ties_up():
    model = linger.init(nn.Sequential(nn.AvgPool1d(2)))
    model.train()
    model(torch.tensor([[[1.0, -1.0]]]))  # input range 1 -> exp 6
    model.eval()
    # integers (1, 2) -> mean 1.5 -> 2; (-1, -2) -> -1.5 -> -1; (3, 0) -> 1.5 -> 2
    x = torch.tensor([[[1.0, 2.0, -1.0, -2.0, 3.0, 0.0]]]) / 64
    assert ints(model(x)).tolist() == [[[2, -1, 2]]]


def test_embedding_eval_is_the_quantized_table():
    model, xf, bits = make("Embedding")
    model.eval()  # no statistics needed: the output exponent is the weights'
    emb = model[0]
    idx = xf()
    y = model(idx)
    w = emb.weight.detach().numpy()
    nw = ref_exponent(float(np.abs(w).max()), 8)
    assert y.int_exp() == nw
    assert np.array_equal(ints(y), ref_quant(w, nw, 8)[idx.numpy()])


def test_relu6_clips_on_the_grid():
    model, xf, bits = make("ReLU6")
    calibrate(model, xf)
    model.eval()
    y = model(xf())
    q, n = ints(y), y.int_exp()
    assert q.min() == 0 and q.max() == min(math.floor(6 * 2 ** n), 127)
    assert (q == q.max()).any(), "the 6.0 clip was not reached"


def test_maxpool_and_relu_keep_the_producer_exponent():
    for name in ("MaxPool2d", "ReLU"):
        model, xf, bits = make(name)
        calibrate(model, xf)
        model.eval()
        y = model(xf())
        assert y.int_exp() == int(model[0][0].output_exp)


def test_dropout_is_identity_in_eval_and_on_grid_in_training():
    model, xf, bits = make("Dropout")
    calibrate(model, xf)
    model.eval()
    x = xf()
    lin = model[0][0]
    assert torch.equal(model(x).plain(), lin(x).plain())
    model.train()
    y = model(x)
    assert y.int_exp() == int(lin.output_exp)
    assert_on_grid(y, 8)


def test_running_range_rule():
    model = linger.init(nn.Sequential(nn.Linear(3, 2)))
    lin = model[0]
    model.train()
    x1 = torch.tensor([[1.0, -3.0, 0.5]])
    model(x1)
    assert float(lin.input_range) == 3.0  # the first batch sets the range directly
    assert int(lin.input_exp) == 5        # floor(log2(127 / 3))
    model(torch.tensor([[0.0, 13.0, 0.0]]))
    assert float(lin.input_range) == pytest.approx(0.9 * 3.0 + 0.1 * 13.0, rel=1e-6)
    assert int(lin.input_exp) == ref_exponent(float(lin.input_range), 8) == 4


def test_train_and_eval_use_the_same_exponents():
    model, xf, bits = make("Conv2d")
    lin = model[0]
    model.train()
    x = xf()
    y_train = model(x)
    model.eval()
    y_eval = model(x)
    assert y_train.int_exp() == y_eval.int_exp() == int(lin.output_exp)
    # on the same batch, fake quantization and integer eval agree up to one step per value
    diff = np.abs(ints(y_train) - ints(y_eval))
    assert diff.max() <= 1 and diff.mean() < 0.2
