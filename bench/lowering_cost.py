"""What lowering costs on the five zoo models that need it for venus.

For each model (init, two QAT steps, export at batch 1): the file packed as exported
(``lower=False, force=True``: what the chip cannot run, written anyway as the baseline) and the
lowered file. Prints the layers lowered, the op count, the share-memory peak and parameter bytes
of both plans, the pack time and the numpy runtime's time per inference of the lowered file as a
ratio to the unlowered one (interleaved, median of ``--repeats`` runs each, same process). Both
files' outputs are checked equal bit for bit.

    python bench/lowering_cost.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

import linger  # noqa: E402
from linger import packer  # noqa: E402
from linger.runtime import InferenceSession  # noqa: E402
from _machine import cpu_name  # noqa: E402
from zoo import ZOO  # noqa: E402

MODELS = ["mobilenet_v2", "resnet8", "tc_resnet8", "ds_cnn", "crnn"]


def export(name, folder):
    entry = ZOO[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = linger.init(entry.make()).train()
    with torch.no_grad():
        for _ in range(2):
            model(*entry.inputs(4, generator=gen))
    model.eval()
    args = entry.inputs(1, generator=gen)
    path = os.path.join(folder, f"{name}.onnx")
    linger.onnx.export(model, args, path)
    return path, args[0].numpy()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args(argv)
    print(f"machine: {cpu_name()}; torch {torch.__version__}, numpy {np.__version__}")
    print("| model | layers lowered | ops (exported -> lowered) | share-memory peak | parameter"
          " bytes | pack time lowered / exported | runtime lowered / exported |")
    print("|---|---:|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in MODELS:
            path, x = export(name, folder)
            base, t_base = timed(lambda: packer.pack(path, target="venus", force=True,
                                                     lower=False))
            low, t_low = timed(lambda: packer.pack(path, target="venus"))
            assert not low.violations
            sa, sb = InferenceSession(base.data), InferenceSession(low.data)
            feed = {sa.get_inputs()[0].name: x}
            assert np.array_equal(sa.run(None, feed)[0], sb.run(None, feed)[0])
            ta, tb = [], []
            for _ in range(args.repeats):            # interleaved: same load for both
                ta.append(timed(lambda: sa.run(None, feed))[1])
                tb.append(timed(lambda: sb.run(None, feed))[1])
            peak = [r.plan.memories["share"].peak for r in (base, low)]
            params = [sum(v.nbytes for v in r.graph.values.values() if v.kind == "param")
                      for r in (base, low)]
            print(f"| {name} | {len(low.lowerings)} | {len(base.graph.nodes)} ->"
                  f" {len(low.graph.nodes)} | {peak[0]} -> {peak[1]} | {params[0]} ->"
                  f" {params[1]} | {t_low / t_base:.2f} |"
                  f" {statistics.median(tb) / statistics.median(ta):.2f} |")


if __name__ == "__main__":
    main()
