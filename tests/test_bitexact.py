"""The product's promise: PyTorch eval and the integer runtime agree bit for bit.

One table of layer configurations and one of whole models; each row is calibrated, exported and
run in ``linger.runtime``, and compared with ``numpy.array_equal`` -- on ordinary inputs and on
inputs far outside the calibrated range (everything saturates).
"""

import numpy as np
import pytest
import torch
import torch.nn as nn

import linger
from linger.examples_models import DepthwiseCNN, DigitsCNN, set_seed
from linger.validate import validate_model

runtime = pytest.importorskip("linger.runtime")


def _seq(*layers):
    return lambda: nn.Sequential(*layers)


# (id, model factory, input shape, init kwargs)
LAYER_TABLE = [
    ("conv2d", _seq(nn.Conv2d(3, 8, 3)), (2, 3, 9, 9), {}),
    ("conv2d_s2_p1", _seq(nn.Conv2d(3, 8, 3, stride=2, padding=1)), (2, 3, 9, 9), {}),
    ("conv2d_k5_p2_nobias", _seq(nn.Conv2d(2, 4, 5, padding=2, bias=False)), (1, 2, 8, 8), {}),
    ("conv2d_dil2", _seq(nn.Conv2d(3, 4, 3, dilation=2, padding=2)), (2, 3, 9, 9), {}),
    ("conv2d_groups2", _seq(nn.Conv2d(4, 8, 3, groups=2, padding=1)), (2, 4, 6, 6), {}),
    ("conv2d_depthwise", _seq(nn.Conv2d(6, 6, 3, groups=6, padding=1)), (2, 6, 7, 7), {}),
    ("conv2d_rect", _seq(nn.Conv2d(2, 3, (1, 3), stride=(1, 2))), (2, 2, 5, 9), {}),
    ("conv2d_same", _seq(nn.Conv2d(2, 3, 4, padding="same")), (1, 2, 7, 7), {}),
    ("conv2d_16bit_data", _seq(nn.Conv2d(3, 8, 3)), (2, 3, 6, 6), {"data_bits": 16}),
    ("conv2d_4bit_weights", _seq(nn.Conv2d(3, 8, 3)), (2, 3, 6, 6), {"parameter_bits": 4}),
    ("conv2d_16bit_out", _seq(nn.Conv2d(3, 8, 3)), (2, 3, 6, 6), {"out_bits": 16}),
    ("conv2d_32bit_out", _seq(nn.Conv2d(3, 8, 3)), (2, 3, 6, 6), {"out_bits": 32}),
    ("conv2d_16_16", _seq(nn.Conv2d(3, 8, 3)), (2, 3, 6, 6), {"data_bits": 16,
                                                              "parameter_bits": 16}),
    ("conv1d", _seq(nn.Conv1d(3, 5, 3, padding=1)), (2, 3, 16), {}),
    ("conv1d_s2_dil2", _seq(nn.Conv1d(3, 5, 5, stride=2, dilation=2)), (2, 3, 20), {}),
    ("conv1d_depthwise", _seq(nn.Conv1d(4, 4, 3, groups=4)), (3, 4, 10), {}),
    ("convT2d", _seq(nn.ConvTranspose2d(4, 3, 3)), (2, 4, 5, 5), {}),
    ("convT2d_s2", _seq(nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)), (2, 4, 5, 5), {}),
    ("convT2d_s2_outpad", _seq(nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1,
                                                  output_padding=1)), (2, 4, 5, 5), {}),
    ("convT2d_groups", _seq(nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2)), (1, 4, 3, 3), {}),
    ("convT1d", _seq(nn.ConvTranspose1d(3, 2, 4, stride=2, padding=1)), (2, 3, 8), {}),
    ("linear", _seq(nn.Linear(12, 7)), (5, 12), {}),
    ("linear_3d", _seq(nn.Linear(6, 4)), (2, 3, 6), {}),
    ("linear_nobias_16", _seq(nn.Linear(6, 4, bias=False)), (3, 6), {"data_bits": 16}),
    ("batchnorm2d", _seq(nn.BatchNorm2d(4)), (4, 4, 5, 5), {}),
    ("batchnorm1d", _seq(nn.BatchNorm1d(4)), (6, 4), {}),
    ("batchnorm1d_3d", _seq(nn.BatchNorm1d(4)), (3, 4, 7), {}),
    ("avgpool2d", _seq(nn.Conv2d(2, 2, 1), nn.AvgPool2d(2)), (2, 2, 6, 6), {}),
    ("avgpool2d_k3_s2_p1", _seq(nn.Conv2d(2, 2, 1), nn.AvgPool2d(3, 2, 1)), (2, 2, 7, 7), {}),
    ("avgpool2d_nopadcount", _seq(nn.Conv2d(2, 2, 1),
                                  nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
     (2, 2, 7, 7), {}),
    ("avgpool1d", _seq(nn.Conv1d(2, 2, 1), nn.AvgPool1d(3, 2)), (2, 2, 11), {}),
    ("global_avgpool2d", _seq(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1)), (2, 2, 5, 3), {}),
    ("global_avgpool1d", _seq(nn.Conv1d(2, 3, 1), nn.AdaptiveAvgPool1d(1)), (2, 2, 9), {}),
    ("maxpool2d", _seq(nn.Conv2d(2, 3, 1), nn.MaxPool2d(3, 2, 1)), (2, 2, 8, 8), {}),
    ("maxpool1d", _seq(nn.Conv1d(2, 3, 1), nn.MaxPool1d(2)), (2, 2, 8), {}),
    ("relu", _seq(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)), (4, 5), {}),
    ("relu6", _seq(nn.Conv2d(2, 3, 1), nn.ReLU6()), (2, 2, 4, 4), {}),
    ("dropout", _seq(nn.Linear(5, 5), nn.Dropout(0.3), nn.Linear(5, 2)), (4, 5), {}),
    ("flatten_linear", _seq(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2)), (2, 2, 4, 4), {}),
]


class TextConv(nn.Module):
    """Embedding + Conv1d text classifier (indices in, logits out)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, idx):
        x = self.emb(idx).transpose(1, 2)  # (N, 8, T)
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class Decoder(nn.Module):
    """Conv-transpose decoder with slicing and permutes in between."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(8, 1, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.enc(x))
        y = self.up1(y)[:, :, 1:, :]  # slicing keeps the quantized value intact
        return self.up2(y.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)


class Indexing(nn.Module):
    """Integer, None, Ellipsis and strided indexing of quantized values (exported without fixed
    shapes, so the graph runs at another batch size)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.conv(x)                       # (N, 6, T)
        first, last = y[:, :, 0], y[..., -1]   # (N, 6) each
        z = self.fc(first) + self.fc(last)     # (N, 4)
        return z[:, None, ::2], y[:, 1:5:2, None]


MODEL_TABLE = [
    ("digits_cnn", DigitsCNN, (3, 1, 8, 8), {}),
    ("depthwise_relu6", lambda: DepthwiseCNN(in_channels=1, stem_stride=1), (3, 1, 8, 8), {}),
    ("depthwise_32x32", lambda: DepthwiseCNN(in_channels=3), (2, 3, 32, 32), {}),
    ("decoder", Decoder, (2, 1, 8, 8), {}),
    ("indexing", Indexing, (3, 3, 7), {}),
    ("digits_cnn_16bit", DigitsCNN, (2, 1, 8, 8), {"data_bits": 16, "parameter_bits": 16}),
]


def _calibrated(factory, shape, kwargs, steps=4):
    set_seed(0)
    model = linger.init(factory(), **kwargs)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(*shape))
    return model.eval()


def _check(model, x, name="input"):
    graph = linger.onnx.export(model, x, None, input_names=[name],
                               dynamic_axes={name: {0: "batch"}})
    sess = linger.runtime.InferenceSession(graph)
    for batch in (x, x * 1000.0, x[:1]):  # ordinary, saturating everywhere, batch 1
        out = model(batch)
        wants = out if isinstance(out, tuple) else (out,)
        for got, want in zip(sess.run(None, {name: batch.numpy()}), wants):
            want = want.detach().numpy()
            assert got.dtype == want.dtype
            assert np.array_equal(got, want), f"max diff {np.abs(got - want).max()}"


@pytest.mark.parametrize("name,factory,shape,kwargs", LAYER_TABLE, ids=[r[0] for r in LAYER_TABLE])
def test_layer_bitexact(name, factory, shape, kwargs):
    model = _calibrated(factory, shape, kwargs)
    _check(model, torch.randn(*shape) * 2.0)


@pytest.mark.parametrize("name,factory,shape,kwargs", MODEL_TABLE, ids=[r[0] for r in MODEL_TABLE])
def test_model_bitexact(name, factory, shape, kwargs):
    model = _calibrated(factory, shape, kwargs)
    _check(model, torch.randn(*shape))


def test_embedding_text_model_bitexact():
    set_seed(0)
    model = linger.init(TextConv())
    for _ in range(3):
        model(torch.randint(0, 50, (4, 12)))
    model.eval()
    idx = torch.randint(0, 50, (3, 12))
    graph = linger.onnx.export(model, idx, None)
    got = linger.runtime.InferenceSession(graph).run(None, {"input": idx.numpy()})[0]
    assert np.array_equal(got, model(idx).detach().numpy())


def test_validator_reports_every_value_equal():
    model = _calibrated(DigitsCNN, (4, 1, 8, 8), {})
    report = validate_model(model, torch.randn(2, 1, 8, 8))
    assert report.ok, str(report)
    assert report.compared > 10
