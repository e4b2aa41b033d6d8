"""Time ``linger.onnx.export`` (and the runtime load) of a CNN of more than 1M parameters.

Usage: ``python bench/export_speed.py``. Prints the parameter count and the median of a few
export times; the issue's target is under 10 s on a 2-core machine.
"""

import io
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import linger  # noqa: E402
from linger.examples_models import conv_bn_relu, set_seed  # noqa: E402


def big_cnn() -> nn.Module:
    """Eight conv+BN+ReLU blocks (32..256 channels), global pooling, linear: 1.76M parameters (the issue asks for 1M)."""
    widths = [3, 32, 64, 64, 128, 128, 256, 256, 256]
    blocks = [conv_bn_relu(a, b, 3, 2 if i in (1, 3, 5) else 1)
              for i, (a, b) in enumerate(zip(widths, widths[1:]))]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))


def main():
    torch.set_num_threads(1)
    set_seed(0)
    model = linger.init(big_cnn())
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        data = linger.onnx.export(model, x, io.BytesIO()).SerializeToString()
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    linger.runtime.InferenceSession(data)
    load = time.perf_counter() - t
    print(f"{n_params / 1e6:.2f}M parameters, input 3x64x64: export median"
          f" {statistics.median(times):.2f} s (of {len(times)}), file {len(data) / 1e6:.2f} MB,"
          f" runtime session load {load:.2f} s")


if __name__ == "__main__":
    main()
