"""Small versions of twelve published architectures that linger's users deploy.

Each is written from its paper's description, scaled down so that a few QAT steps and an export run
in a second or two. They are test fixtures: the conversion tests (init -> QAT -> export -> runtime
bit-exact), the packer's lowering tests and the digits accuracy script all take them from
:data:`ZOO`.

================  =====================================================  ======================
name              paper / what it exercises                              input (example)
================  =====================================================  ======================
ds_cnn            Hello Edge DS-CNN: 10x4 stride-2 conv, depthwise       (N, 1, 49, 10) MFCC
                  separable blocks
tc_resnet8        TC-ResNet8: MFCC as channels, 1x9 temporal convs,      (N, 40, 1, T)
                  1x1 stride-2 shortcuts
mobilenet_v2      MobileNetV2 0.35: inverted residuals, ReLU6, 1280 head (N, 3, 32, 32)
mobilenet_v3      MobileNetV3-small: hardswish, squeeze-excitation       (N, 3, 32, 32)
                  with hardsigmoid
crnn              CRNN (Arik et al.): 20x5 stride-8x2 conv, biGRU        (N, 1, 40, T)
lstm_wakeword     LSTM wake-word model on packed sequences (lengths)     (N, T, 40) + (N,)
bc_resnet         BC-ResNet: frequency depthwise conv, broadcast         (N, 1, 40, T)
                  residual over frequency, dropout2d, SiLU
kwt               Keyword Transformer: class token, learned positional   (N, T, 40)
                  embedding, nn.TransformerEncoderLayer
unet_se           speech-enhancement U-Net: ConvTranspose decoder with   (N, 1, 16, T)
                  skips, sigmoid mask times input
resnet8           ResNet-8 (CIFAR, MLPerf Tiny): 1x1 stride-2 shortcuts  (N, 3, 32, 32)
tcn               WaveNet-style TCN: causal F.pad, dilations, gated      (N, 40, T)
                  tanh*sigmoid, adaptive average pooling
panns_cnn6        PANNs CNN6: 5x5 conv blocks, mean over frequency,      (N, 1, T, 64)
                  max + mean over time
================  =====================================================  ======================

``ZooEntry.time_axis`` is the axis that may change length after export (``None`` for images),
``lengths`` the other lengths the model accepts for that axis, and ``digits`` says whether the model
also runs on the 8x8 scikit-learn digits (one channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from linger.examples_models import conv_bn_relu


def _dw_separable(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU (MobileNet v1 block)."""
    return nn.Sequential(conv_bn_relu(cin, cin, 3, stride, groups=cin), conv_bn_relu(cin, cout, 1))


class DSCNN(nn.Module):
    """Hello Edge DS-CNN (Zhang et al. 2017), small: a 10x4 stride-2 conv over the (time, MFCC)
    plane, four depthwise-separable blocks, global average pooling, linear."""

    def __init__(self, num_classes: int = 12, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, (10, 4), (2, 2), (5, 1), bias=False),  # (N, C, T/2, F/2)
            nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[_dw_separable(width, width) for _ in range(4)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):                                   # (N, 1, T, F)
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class _TCBlock(nn.Module):
    """TC-ResNet block: two 1x9 temporal convs with BN, a 1x1 stride-2 conv+BN+ReLU shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, (1, 9), (1, stride), (0, 4), bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, (1, 9), 1, (0, 4), bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, (1, stride), bias=False),
                                   nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.short(x))


class TCResNet8(nn.Module):
    """TC-ResNet8 (Choi et al. 2019): the MFCC coefficients are channels, time is the width:
    a 1x3 conv, three stride-2 residual blocks (widths 16/24/32/48 at multiplier 1), pooling."""

    def __init__(self, num_classes: int = 12, n_mfcc: int = 40, widths=(16, 24, 32, 48)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Conv2d(n_mfcc, w0, (1, 3), 1, (0, 1), bias=False)
        self.blocks = nn.Sequential(_TCBlock(w0, w1, 2), _TCBlock(w1, w2, 2), _TCBlock(w2, w3, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x):                                   # (N, 40, 1, T)
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection;
    residual add when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_relu(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 at width 0.35 (Sandler et al. 2018) for 32x32 images: the paper's channel plan
    (16, 8, 8, 16, 24, 32, 56, 112, head 1280) with one block per stage; stride 1 stem (CIFAR)."""

    # (expansion, channels, stride) per stage at width 0.35
    STAGES = ((1, 8, 1), (6, 8, 2), (6, 16, 2), (6, 24, 2), (6, 32, 1), (6, 56, 2), (6, 112, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, head: int = 1280):
        super().__init__()
        layers, cin = [conv_bn_relu(in_channels, 16, 3, 1, act=nn.ReLU6)], 16
        for t, c, s in self.STAGES:
            layers.append(_InvertedResidual(cin, c, s, t))
            cin = c
        layers.append(conv_bn_relu(cin, head, 1, act=nn.ReLU6))      # 112 -> 1280
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _SqueezeExcite(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(avgpool(x))))) with 1x1 convs as the fully connected layers."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = self.fc2(F.relu(self.fc1(self.pool(x))))
        return x * F.hardsigmoid(s)


class _V3Block(nn.Module):
    """MobileNetV3 bneck: expand 1x1, depthwise kxk, optional SE, project 1x1; residual when the
    shape is kept. ``act`` is ReLU or Hardswish."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, se: bool,
                 act: type):
        super().__init__()
        self.expand = conv_bn_relu(cin, hidden, 1, act=act) if hidden != cin else nn.Identity()
        self.dw = conv_bn_relu(hidden, hidden, k, stride, groups=hidden, act=act)
        self.se = _SqueezeExcite(hidden, max(8, hidden // 4)) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    """MobileNetV3-small (Howard et al. 2019), first blocks only: hardswish stem, bnecks with
    squeeze-excitation (hardsigmoid gate), a hardswish 1x1 conv, pooling and a hardswish head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, 16, 3, 2, act=nn.Hardswish)
        self.blocks = nn.Sequential(
            _V3Block(16, 16, 16, 3, 2, True, nn.ReLU),
            _V3Block(16, 72, 24, 3, 1, False, nn.ReLU),
            _V3Block(24, 88, 24, 3, 1, False, nn.ReLU),
            _V3Block(24, 96, 40, 5, 2, True, nn.Hardswish),
        )
        self.last = conv_bn_relu(40, 96, 1, act=nn.Hardswish)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2),
                                  nn.Linear(128, num_classes))

    def forward(self, x):
        x = self.pool(self.last(self.blocks(self.stem(x))))
        return self.head(torch.flatten(x, 1))


class CRNN(nn.Module):
    """Convolutional recurrent KWS model (Arik et al. 2017): a 20x5 conv with stride 8x2 over the
    (frequency, time) plane, a two-layer bidirectional GRU over time, a linear head on the mean."""

    def __init__(self, num_classes: int = 12, n_mels: int = 40, channels: int = 16,
                 hidden: int = 32):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, (20, 5), (8, 2), bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        freq_out = (n_mels - 20) // 8 + 1                    # 3 for 40 mel bands
        self.gru = nn.GRU(channels * freq_out, hidden, num_layers=2, batch_first=True,
                          bidirectional=True)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, x):                                   # (N, 1, 40, T)
        y = self.conv(x)                                    # (N, C, 3, T')
        y = y.permute(0, 3, 1, 2).flatten(2)                # (N, T', C*3)
        out, _ = self.gru(y)                                # (N, T', 2H)
        return self.fc(out.mean(dim=1))


class LSTMWakeWord(nn.Module):
    """Wake-word detector: a linear projection of each frame, an LSTM over the packed (variable
    length) sequence, a linear head on the last hidden state."""

    def __init__(self, n_features: int = 40, hidden: int = 48, num_classes: int = 2):
        super().__init__()
        self.proj = nn.Linear(n_features, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x, lengths):                          # (N, T, 40), (N,)
        z = torch.relu(self.proj(x))
        packed = pack_padded_sequence(z, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.fc(h[-1])


class _BCBlock(nn.Module):
    """BC-ResNet block (Kim et al. 2021): f2 = BN(frequency depthwise 3x1 conv); the time path
    averages f2 over frequency, applies a 1x3 temporal depthwise conv, BN, SiLU, a 1x1 conv and
    channel dropout, and is broadcast back over frequency: relu(x + f2 + f1)."""

    def __init__(self, c: int, dropout: float = 0.1):
        super().__init__()
        self.freq_dw = nn.Sequential(nn.Conv2d(c, c, (3, 1), 1, (1, 0), groups=c, bias=False),
                                     nn.BatchNorm2d(c))
        self.time_dw = nn.Sequential(nn.Conv2d(c, c, (1, 3), 1, (0, 1), groups=c, bias=False),
                                     nn.BatchNorm2d(c), nn.SiLU())
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x):                                   # (N, C, F, T)
        f2 = self.freq_dw(x)
        f1 = f2.mean(dim=2, keepdim=True)                   # (N, C, 1, T)
        f1 = self.drop(self.pw(self.time_dw(f1)))
        return F.relu(x + f2 + f1)                           # broadcast over frequency


class BCResNet(nn.Module):
    """BC-ResNet, small: a 5x5 stride-(2,1) stem, broadcast residual blocks with a frequency
    stride-2 transition conv, a 1x1 head conv, global pooling."""

    def __init__(self, num_classes: int = 12, c: int = 16):
        super().__init__()
        self.stem = conv_bn_relu(1, c, 5, 1)
        self.down = nn.Sequential(nn.Conv2d(c, c, 3, (2, 1), 1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())
        self.blocks = nn.Sequential(_BCBlock(c), _BCBlock(c))
        self.head = nn.Conv2d(c, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):                                   # (N, 1, 40, T)
        y = self.blocks(self.down(self.stem(x)))
        return torch.flatten(self.pool(self.head(y)), 1)


class KWT(nn.Module):
    """Keyword Transformer (Berg et al. 2021), small: each MFCC frame is a patch (linear), a learned
    class token is prepended, a learned positional embedding added (sliced to the sequence
    length, up to ``max_frames``), two pre-norm ``nn.TransformerEncoderLayer``s, head on the class
    token."""

    def __init__(self, n_mfcc: int = 40, max_frames: int = 32, dim: int = 32, heads: int = 2,
                 layers: int = 2, num_classes: int = 12):
        super().__init__()
        self.patch = nn.Linear(n_mfcc, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, max_frames + 1, dim))
        self.encoder = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):                                   # (N, T, 40)
        z = self.patch(x)                                   # (N, T, D)
        cls = self.cls.expand(x.size(0), -1, -1)            # (N, 1, D)
        z = torch.cat([cls, z], dim=1) + self.pos[:, : x.size(1) + 1]
        for layer in self.encoder:
            z = layer(z)
        return self.fc(self.norm(z[:, 0]))


class UNetSE(nn.Module):
    """Speech-enhancement U-Net: two stride-2 conv encoders, two ConvTranspose decoders with
    concatenated skips, a sigmoid mask multiplied with the input spectrogram. T must be a
    multiple of 4."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.enc1 = conv_bn_relu(1, c, 3, 2)                # (N, c, F/2, T/2)
        self.enc2 = conv_bn_relu(c, 2 * c, 3, 2)            # (N, 2c, F/4, T/4)
        self.dec2 = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 2, 2), nn.BatchNorm2d(c), nn.ReLU())
        self.dec1 = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 2, 2), nn.BatchNorm2d(c), nn.ReLU())
        self.mask = nn.Conv2d(c + 1, 1, 3, 1, 1)

    def forward(self, x):                                   # (N, 1, F, T)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(e2)                                  # (N, c, F/2, T/2)
        d1 = self.dec1(torch.cat([d2, e1], dim=1))          # (N, c, F, T)
        m = torch.sigmoid(self.mask(torch.cat([d1, x], dim=1)))
        return m * x


class ResNet8(nn.Module):
    """ResNet-8 as in MLPerf Tiny's image classification (CIFAR-10): a 3x3 stem and three residual
    stacks (16, 32, 64) whose downsampling shortcuts are 1x1 stride-2 convs; pooling, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        from linger.examples_models import BasicBlock
        self.stem = conv_bn_relu(in_channels, 16, 3)
        self.stacks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stacks(self.stem(x))), 1))


class _GatedResidual(nn.Module):
    """WaveNet residual layer: causal dilated conv (left pad only), tanh(filter) * sigmoid(gate),
    1x1 residual and skip convs."""

    def __init__(self, c: int, skip: int, dilation: int, k: int = 3):
        super().__init__()
        self.pad = dilation * (k - 1)
        self.filt = nn.Conv1d(c, c, k, dilation=dilation)
        self.gate = nn.Conv1d(c, c, k, dilation=dilation)
        self.res = nn.Conv1d(c, c, 1)
        self.skip = nn.Conv1d(c, skip, 1)

    def forward(self, x):                                   # (N, C, T)
        xp = F.pad(x, (self.pad, 0))                         # causal: the past only
        z = torch.tanh(self.filt(xp)) * torch.sigmoid(self.gate(xp))
        return x + self.res(z), self.skip(z)


class TCN(nn.Module):
    """WaveNet-style temporal convolutional network (van den Oord et al. 2016) for keyword
    spotting: a 1x1 input conv, gated residual layers with dilations 1, 2, 4, summed skips, ReLU,
    adaptive average pooling over time, linear."""

    def __init__(self, n_features: int = 40, c: int = 16, skip: int = 24, num_classes: int = 12,
                 dilations=(1, 2, 4)):
        super().__init__()
        self.inp = nn.Conv1d(n_features, c, 1)
        self.layers = nn.ModuleList([_GatedResidual(c, skip, d) for d in dilations])
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(skip, num_classes)

    def forward(self, x):                                   # (N, 40, T)
        h, total = self.inp(x), None
        for layer in self.layers:
            h, s = layer(h)
            total = s if total is None else total + s
        return self.fc(torch.flatten(self.pool(F.relu(total)), 1))


class PANNsCNN6(nn.Module):
    """PANNs CNN6 (Kong et al. 2020), small: 5x5 conv+BN+ReLU blocks each followed by 2x2 average
    pooling, mean over frequency, then max + mean over time, dropout, two linear layers."""

    def __init__(self, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        blocks, cin = [], 1
        for w in widths:
            blocks += [conv_bn_relu(cin, w, 5), nn.AvgPool2d(2)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc1 = nn.Linear(cin, cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):                                   # (N, 1, T, 64)
        x = self.blocks(x)                                  # (N, C, T/8, 8)
        x = x.mean(dim=3)                                   # (N, C, T/8)
        x = x.max(dim=2)[0] + x.mean(dim=2)                 # (N, C)
        x = F.dropout(x, p=0.2, training=self.training)
        return self.fc(F.relu(self.fc1(x)))


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: ``make()`` builds it, ``inputs(n, t)`` makes random example inputs for batch
    ``n`` (and length ``t`` for audio models), ``time_axis`` is the input axis of variable length
    (``None``: fixed shape), ``lengths`` other valid lengths, ``digits`` whether ``make(digits=True)``
    runs on ``(N, 1, 8, 8)``."""

    make: Callable[..., nn.Module]
    shape: Tuple[int, ...]                                   # example input shape without batch
    time_axis: Optional[int] = None                          # axis in the batched input
    lengths: Tuple[int, ...] = ()
    digits: bool = False
    packed: bool = False                                     # takes (x, lengths)
    notes: str = field(default="")

    def inputs(self, n: int = 2, t: Optional[int] = None, generator=None):
        """Random inputs ``(x,)`` or ``(x, lengths)``; ``t`` replaces the time-axis length."""
        shape = [n, *self.shape]
        if t is not None:
            if self.time_axis is None:
                raise ValueError("this model has a fixed input shape")
            shape[self.time_axis] = t
        x = torch.randn(*shape, generator=generator)
        if not self.packed:
            return (x,)
        steps = shape[1]
        lengths = torch.randint(1, steps + 1, (n,), generator=generator)
        lengths[0] = steps
        return x, lengths


def _vision(cls):
    def make(digits: bool = False, **kw):
        return cls(in_channels=1, **kw) if digits else cls(**kw)
    return make


ZOO = {
    "ds_cnn": ZooEntry(_vision(DSCNN), (1, 49, 10), time_axis=2, lengths=(33, 40, 61),
                       digits=True),
    "tc_resnet8": ZooEntry(TCResNet8, (40, 1, 49), time_axis=3, lengths=(33, 40, 64)),
    "mobilenet_v2": ZooEntry(_vision(MobileNetV2), (3, 32, 32), digits=True),
    "mobilenet_v3": ZooEntry(_vision(MobileNetV3Small), (3, 32, 32), digits=True),
    "crnn": ZooEntry(CRNN, (1, 40, 49), time_axis=3, lengths=(21, 37, 64)),
    "lstm_wakeword": ZooEntry(LSTMWakeWord, (20, 40), time_axis=1, lengths=(7, 13, 31),
                              packed=True),
    "bc_resnet": ZooEntry(BCResNet, (1, 40, 32), time_axis=3, lengths=(16, 25, 48)),
    "kwt": ZooEntry(KWT, (24, 40), time_axis=1, lengths=(8, 17, 32),
                    notes="lengths up to max_frames=32 (learned positional embedding)"),
    "unet_se": ZooEntry(UNetSE, (1, 16, 32), time_axis=3, lengths=(16, 40, 64),
                        notes="T must be a multiple of 4"),
    "resnet8": ZooEntry(_vision(ResNet8), (3, 32, 32), digits=True),
    "tcn": ZooEntry(TCN, (40, 50), time_axis=2, lengths=(20, 37, 80)),
    "panns_cnn6": ZooEntry(PANNsCNN6, (1, 64, 64), time_axis=2, lengths=(32, 40, 96),
                           notes="T must be a multiple of 8"),
}
