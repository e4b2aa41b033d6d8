"""Which kernels onnxruntime actually runs for linger's QDQ export of SmallResNet, read from
onnxruntime's own profiler (not inferred from the graph).

Run: ``python bench/ort_qdq_profile.py`` (about 10 s). Prints the op types of the exported QDQ graph
and, for optimisation levels EXTENDED and ALL, the kernels executed per batch-32 run with their
time per op type (1 thread). bench/RESULTS.md quotes its output.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runtime_speed  # noqa: E402  (builds the same calibrated SmallResNet as the speed bench)

import linger  # noqa: E402

RUNS = 5


def profile(model_bytes: bytes, level, tag: str, x: np.ndarray):
    """Kernel counts and microseconds per op type, per run, from onnxruntime's profile JSON."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = level
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="linger-ortprof-"), tag)
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    for _ in range(RUNS):
        sess.run(None, {"input": x})
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    count, micros = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name")
            count[op] += 1
            micros[op] += e["dur"]
    return ({k: v // RUNS for k, v in count.items()}, {k: v // RUNS for k, v in micros.items()})


def main():
    model = runtime_speed._models()[0]
    import torch
    x1 = torch.randn(1, 3, 32, 32)
    dyn = {"input": {0: "batch"}, "output": {0: "batch"}}
    qdq = linger.onnx.export(model, x1, None, format="qdq", dynamic_axes=dyn)
    print("QDQ graph op types:", dict(collections.Counter(n.op_type for n in qdq.graph.node)))
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    for tag, level in (("EXTENDED", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
                       ("ALL", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        count, micros = profile(qdq.SerializeToString(), level, tag, x)
        print(f"{tag}: kernels per run {count}")
        print(f"{tag}: us per run by op type {micros}")


if __name__ == "__main__":
    main()
