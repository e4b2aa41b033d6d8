"""Small reference models and data shared by the demo, the tests and the benchmarks.

- :class:`DigitsCNN`: conv+BN+ReLU stack for the 8x8 scikit-learn digits (10 classes);
- :class:`SmallResNet`: ResNet-style CNN for 32x32 inputs (conv+BN+ReLU blocks, residual adds);
- :class:`DepthwiseCNN`: MobileNet-style depthwise-separable blocks with ReLU6.

:func:`load_digits_data` gives a fixed, seeded train/test split of the digits as float tensors,
and :func:`set_seed` makes model initialisation reproducible.

>>> import torch
>>> DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn as nn


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch so model init and data shuffling are reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_digits_data(seed: int = 0, test_fraction: float = 0.25):
    """scikit-learn ``load_digits`` as ``(x_train, y_train, x_test, y_test)`` tensors.

    Images are ``(N, 1, 8, 8)`` float32 in ``[0, 1]`` (pixel / 16), labels int64. The split is
    stratified and fixed by ``seed`` (1347 train / 450 test images by default).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # scikit-learn is an optional dependency (extras "demo", "test")
        raise ImportError("the digits data needs scikit-learn: pip install 'linger[demo]'") from e
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                          stratify=y)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte),
            torch.from_numpy(yte))


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: type = nn.ReLU) -> nn.Sequential:
    """``Conv2d(padding=k//2, bias=False) -> BatchNorm2d -> act``."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class DigitsCNN(nn.Module):
    """Three conv blocks and a linear classifier for ``(N, 1, 8, 8)`` images (about 14k params)."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, width),               # (N, 16, 8, 8)
            conv_bn_relu(width, 2 * width),       # (N, 32, 8, 8)
            nn.MaxPool2d(2),                      # (N, 32, 4, 4)
            conv_bn_relu(2 * width, 2 * width),   # (N, 32, 4, 4)
            nn.AdaptiveAvgPool2d(1),              # (N, 32, 1, 1)
            nn.Flatten(),                         # (N, 32)
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; 1x1 conv+BN shortcut when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))  # residual add


class SmallResNet(nn.Module):
    """ResNet-style CNN for ``(N, in_channels, 32, 32)`` inputs: a stem and three stages
    (16, 32, 64 channels; the last two halve the resolution), global average pooling, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(16, 32, 64)):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = conv_bn_relu(in_channels, w1)       # (N, 16, 32, 32)
        self.layer1 = BasicBlock(w1, w1)                # (N, 16, 32, 32)
        self.layer2 = BasicBlock(w1, w2, stride=2)      # (N, 32, 16, 16)
        self.layer3 = BasicBlock(w2, w3, stride=2)      # (N, 64, 8, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


class DepthwiseCNN(nn.Module):
    """MobileNet-style: a strided stem, then depthwise 3x3 + pointwise 1x1 blocks, all with
    BatchNorm and ReLU6; global average pooling and a linear classifier. Works for any input
    of at least 8x8 (``stem_stride=1`` for the 8x8 digits, 2 for 32x32 images)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 stem_stride: int = 2):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, w, 3, stem_stride, act=nn.ReLU6),
            conv_bn_relu(w, w, 3, 1, groups=w, act=nn.ReLU6),          # depthwise
            conv_bn_relu(w, 2 * w, 1, act=nn.ReLU6),                  # pointwise
            conv_bn_relu(2 * w, 2 * w, 3, 2, groups=2 * w, act=nn.ReLU6),
            conv_bn_relu(2 * w, 4 * w, 1, act=nn.ReLU6),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))
