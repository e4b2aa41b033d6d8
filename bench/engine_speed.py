"""linger's C engine vs onnxruntime (QDQ export, and float) vs the numpy runtime, batch 1, 1 thread.

Models: SmallResNet (3x32x32), the demo's DigitsCNN (1x8x8) and a GRU (``nn.GRU(8, 64)`` over 8
steps, linear head; the GRU of bench/qat_overhead.py). Each is calibrated, exported, packed
(target arcs) and run by: the C engine (``-O2 -march=native`` shared library through ctypes:
the timing includes copying the input in and the outputs out), the numpy runtime on the same
integer graph, onnxruntime on linger's QDQ export (where it has one: the GRU has none) and on the
float model (``torch.onnx.export``). Every repetition runs all of them in turn (interleaved).
Each call is timed twice: CPU time of the process (``time.process_time``; every runner uses one
thread) and wall time. On a shared, loaded machine the wall time of a long call grows with the
time slices other processes take in the middle of it, so the CPU time is the fairer ratio; both
are printed. Prints medians with the 25-75 % range, ratios against onnxruntime QDQ (where it
has the model), bit-exactness of the C engine with the numpy runtime and PyTorch eval, the
machine and its load.

Usage: ``python bench/engine_speed.py [--reps 200]``
"""

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import linger  # noqa: E402
from linger import engine, packer  # noqa: E402
from linger.examples_models import DigitsCNN, SmallResNet, set_seed  # noqa: E402
from _machine import cpu_name  # noqa: E402  (bench/ is on sys.path when run as a script)
from qat_overhead import GRUNet  # noqa: E402

MODELS = {"SmallResNet": (SmallResNet, (3, 32, 32)), "DigitsCNN": (DigitsCNN, (1, 8, 8)),
          "GRU(8, 64) x 8 steps": (GRUNet, (8, 8))}


def _ort(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _runners(factory, shape, lib):
    torch.set_num_threads(1)
    set_seed(0)
    float_model = factory().eval()
    x1 = torch.randn(1, *shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(float_model, x1, buf, dynamo=False, input_names=["input"])
    model = linger.init(factory())
    model.load_state_dict(float_model.state_dict())
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape))
    model.eval()
    graph = linger.onnx.export(model, x1, None, input_names=["input"])
    data = packer.pack(graph, target="arcs", force=True).data
    c = engine.Engine(data, library=lib)
    numpy_rt = linger.runtime.InferenceSession(graph)
    runners = {"C engine": lambda x: c.run(None, {"input": x}),
               "numpy runtime": lambda x: numpy_rt.run(None, {"input": x})}
    try:
        qdq = _ort(linger.onnx.export(model, x1, None, format="qdq").SerializeToString())
        runners["onnxruntime QDQ"] = lambda x: qdq.run(None, {"input": x})
    except linger.errors.LingerError as e:
        print(f"  (no QDQ export: {str(e).splitlines()[0][:100]})")
    flt = _ort(buf.getvalue())
    runners["onnxruntime float"] = lambda x: flt.run(None, {"input": x})
    return model, runners, len(data)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args(argv)
    lib = engine.build(native=True)
    print(f"batch 1, 1 thread, median [25-75 %] of {args.reps} interleaved reps")
    print(f"machine: {cpu_name()}; Python {platform.python_version()}, numpy {np.__version__},"
          f" onnxruntime {ort.__version__}, torch {torch.__version__}, C engine: {engine.compiler()}"
          f" -O2 -march=native")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name, (factory, shape) in MODELS.items():
        print(f"{name}:")
        model, runners, size = _runners(factory, shape, lib)
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).plain().numpy()
        got = runners["C engine"](x)[0]
        exact = np.array_equal(got, want) and np.array_equal(got, runners["numpy runtime"](x)[0])
        cpu, wall = {k: [] for k in runners}, {k: [] for k in runners}
        for fn in runners.values():
            fn(x)
        for _ in range(args.reps):
            for key, fn in runners.items():
                t, w = time.process_time(), time.perf_counter()
                fn(x)
                cpu[key].append(time.process_time() - t)
                wall[key].append(time.perf_counter() - w)
        print(f"  packed file {size} bytes; C engine bit-exact with numpy runtime and PyTorch"
              f" eval: {exact}")
        base = "onnxruntime QDQ" if "onnxruntime QDQ" in runners else "onnxruntime float"
        for label, times in (("CPU", cpu), ("wall", wall)):
            med = {}
            for key, ts in times.items():
                q1, med[key], q3 = (v * 1e6 for v in statistics.quantiles(ts, n=4))
                print(f"  {label:4s} {key:18s} {med[key]:9.1f} us  [{q1:.1f}-{q3:.1f}]")
            print(f"  {label:4s} " + ", ".join(f"{k}/{base} = {v / med[base]:.2f}"
                                               for k, v in med.items() if k != base))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
