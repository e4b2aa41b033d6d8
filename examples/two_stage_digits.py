"""The two-stage recipe on the scikit-learn digits, against direct QAT with the same epochs.

    python examples/two_stage_digits.py [--float-epochs 10] [--stage1-epochs 4] [--stage2-epochs 4]

1. float training of DigitsCNN (conv+BN+ReLU blocks, linear classifier);
2. stage 1: trace_layers (conv+BN fusion, ahead ReLU) + normalize_layers, float training with
   clamps, starting from the float checkpoint;
3. stage 2: the same calls + linger.init, QAT starting from the stage-1 checkpoint;
4. for comparison: linger.init on the float model, QAT for stage1 + stage2 epochs.

Prints the test accuracy of each model (int8 ones computed by the integer eval path, which the
runtime reproduces bit for bit) and checks the exported stage-2 model in the runtime.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import numpy as np
import torch
import torch.nn as nn

import linger
from linger.examples_models import DigitsCNN, load_digits_data, set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared _train.py
from _train import accuracy, fit  # noqa: E402

DUMMY = torch.zeros(1, 1, 8, 8)


def stage1_model():
    model = DigitsCNN()
    linger.trace_layers(model, model, DUMMY, fuse_bn=True, ahead_conv_relu=True,
                        ahead_bn_relu=True, ahead_linear_relu=True)
    return linger.normalize_layers(model, normalize_modules=(nn.Conv2d, nn.Linear),
                                   normalize_weight_value=8, normalize_bias_value=8,
                                   normalize_output_value=8)


def stage2_model():
    return linger.init(stage1_model())


def run(seed: int, float_epochs: int, stage1_epochs: int, stage2_epochs: int) -> dict:
    xtr, ytr, xte, yte = load_digits_data()
    set_seed(seed)
    flt = fit(DigitsCNN(), xtr, ytr, float_epochs, 1e-2, seed)
    res = {"float": accuracy(flt, xte, yte)}
    s1 = stage1_model()
    s1.load_state_dict(flt.state_dict(), strict=True)        # float checkpoint -> stage 1
    fit(s1, xtr, ytr, stage1_epochs, 3e-3, seed)
    res["stage1"] = accuracy(s1, xte, yte)
    s2 = stage2_model()
    s2.load_state_dict(s1.state_dict(), strict=True)         # stage-1 checkpoint -> stage 2
    fit(s2, xtr, ytr, stage2_epochs, 1e-3, seed)
    res["two_stage_int8"] = accuracy(s2, xte, yte)
    direct = linger.init(copy.deepcopy(flt))
    fit(direct, xtr, ytr, stage1_epochs + stage2_epochs, 1e-3, seed)
    res["direct_qat_int8"] = accuracy(direct, xte, yte)
    graph = linger.onnx.export(s2, xte[:1], None, input_names=["input"],
                               dynamic_axes={"input": {0: "batch"}})
    got = linger.runtime.InferenceSession(graph).run(None, {"input": xte.numpy()})[0]
    with torch.no_grad():
        res["runtime_bit_exact"] = bool(np.array_equal(got, s2(xte).numpy()))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--float-epochs", type=int, default=10)
    p.add_argument("--stage1-epochs", type=int, default=4)
    p.add_argument("--stage2-epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = p.parse_args(argv)
    print(f"{'seed':>4} {'float':>7} {'stage1':>7} {'2-stage int8':>13} {'direct QAT int8':>16}"
          f" {'bit-exact':>9}")
    for seed in a.seeds:
        r = run(seed, a.float_epochs, a.stage1_epochs, a.stage2_epochs)
        print(f"{seed:>4} {r['float']:7.2f} {r['stage1']:7.2f} {r['two_stage_int8']:13.2f}"
              f" {r['direct_qat_int8']:16.2f} {str(r['runtime_bit_exact']):>9}")


if __name__ == "__main__":
    main()
