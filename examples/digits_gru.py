"""A GRU reads the scikit-learn digits row by row (8 steps of 8 pixels) and classifies them.

    python examples/digits_gru.py [--float-epochs 40] [--qat-epochs 8] [--hidden 64] [--seeds 0]

1. float training of ``nn.GRU(8, hidden) -> nn.Linear(hidden, 10)`` on the last hidden state;
2. ``linger.init`` on a copy, quantization-aware fine-tuning (the GRU's gates train through the
   integer recurrence's fake quantization);
3. test accuracy of both (the int8 one computed by the integer eval path), export to ONNX and a
   check that ``linger.runtime`` reproduces the int8 logits bit for bit.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

import linger
from linger.examples_models import load_digits_data, set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared _train.py
from _train import accuracy, fit  # noqa: E402


class RowGRU(nn.Module):
    """``(N, 1, 8, 8)`` images -> 8 time steps of 8 features -> GRU -> linear on ``h_n``."""

    def __init__(self, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.gru = nn.GRU(8, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        _, h = self.gru(x.flatten(1, 2))       # (N, 8, 8) rows as steps -> h: (1, N, hidden)
        return self.fc(h[-1])                  # the last layer's final state: (N, hidden)


def run(seed: int, float_epochs: int, qat_epochs: int, hidden: int) -> dict:
    xtr, ytr, xte, yte = load_digits_data()
    set_seed(seed)
    t0 = time.time()
    flt = fit(RowGRU(hidden), xtr, ytr, float_epochs, 1e-2, seed)
    res = {"float": accuracy(flt, xte, yte)}
    q = linger.init(copy.deepcopy(flt))
    res["int8_before_qat"] = accuracy(_calibrate(q, xtr), xte, yte)
    fit(q, xtr, ytr, qat_epochs, 2e-3, seed)
    res["int8"] = accuracy(q, xte, yte)
    graph = linger.onnx.export(q, xte, None, input_names=["input"])
    got = linger.runtime.InferenceSession(graph).run(None, {"input": xte.numpy()})[0]
    with torch.no_grad():
        res["runtime_bit_exact"] = bool(np.array_equal(got, q(xte).numpy()))
    res["seconds"] = time.time() - t0
    return res


def _calibrate(model, xtr):
    """One training-mode pass without updates: the statistics an un-fine-tuned model gets."""
    model.train()
    with torch.no_grad():
        model(xtr[:256])
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--float-epochs", type=int, default=40)
    p.add_argument("--qat-epochs", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'seed':>4} {'float':>7} {'int8 (calibrated only)':>23} {'int8 (QAT)':>11}"
          f" {'bit-exact':>9} {'time':>6}")
    for seed in a.seeds:
        r = run(seed, a.float_epochs, a.qat_epochs, a.hidden)
        print(f"{seed:>4} {r['float']:7.2f} {r['int8_before_qat']:23.2f} {r['int8']:11.2f}"
              f" {str(r['runtime_bit_exact']):>9} {r['seconds']:5.1f}s")


if __name__ == "__main__":
    main()
