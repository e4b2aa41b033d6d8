"""linger's integer runtime vs onnxruntime on the small ResNet-style CNN, 1 thread.

Four graphs of the same calibrated model: linger's integer graph run by ``linger.runtime``,
its QDQ export run by onnxruntime, its ``format="exact"`` export (standard ONNX, bit-identical to
linger) run by onnxruntime, and the float model exported by ``torch.onnx.export`` run by
onnxruntime. Batch 1 and 32; every repetition runs the three in turn (interleaved, so load
changes hit all alike); prints medians with the 25-75 % range, the ratios runtime / onnxruntime,
the machine and its load. ``--profile`` adds the runtime's time per op type.

Recurrent models (on by default; ``--recurrent-only`` runs just them): the keyword-spotting GRU
and LSTM of ``bench/qat_overhead.py`` (49 frames of 40 MFCCs, 128 units), linger's runtime against
the float model in onnxruntime, batch 1 and 32; the runtime's outputs are checked bit for bit
against PyTorch eval and against onnxruntime on the ``format="exact"`` export (the step functions
unrolled as standard ONNX), with one saturating sample (x 1000) in the batch.

Usage: ``python bench/runtime_speed.py [--reps 50] [--profile] [--no-recurrent |
--recurrent-only] [--openblas-coretype SkylakeX]``

``--openblas-coretype`` sets ``OPENBLAS_CORETYPE`` before numpy loads: OpenBLAS 0.3.31 does not
recognise AMD Zen 5 and falls back to its AVX2 (Haswell) kernels; ``SkylakeX`` selects its
AVX-512 kernels (only on a CPU with AVX-512). Outputs are the same bits either way.
"""

import os
import sys

# Thread counts and OpenBLAS's kernel choice are read when numpy / onnxruntime load: set first.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if "--openblas-coretype" in sys.argv[:-1]:
    os.environ["OPENBLAS_CORETYPE"] = sys.argv[sys.argv.index("--openblas-coretype") + 1]

import argparse  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import linger  # noqa: E402
from linger.examples_models import SmallResNet, set_seed  # noqa: E402
from _machine import cpu_name  # noqa: E402  (bench/ is on sys.path when run as a script)


def _ort(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _machine() -> str:
    blas = "?"
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{d['internal_api']} {d['version']} ({d.get('architecture')} kernels,"
                         f" {d['num_threads']} thread)" for d in threadpool_info()
                         if d["user_api"] == "blas")
    except ImportError:
        pass
    return (f"{cpu_name()}; Python {platform.python_version()}, numpy"
            f" {np.__version__}, BLAS {blas}, onnxruntime {ort.__version__}, torch"
            f" {torch.__version__}")


def _models():
    torch.set_num_threads(1)
    set_seed(0)
    float_model = SmallResNet().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(float_model, torch.randn(1, 3, 32, 32), buf, dynamo=False,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    model = linger.init(SmallResNet())
    model.load_state_dict(float_model.state_dict())
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    model.eval()
    x1 = torch.randn(1, 3, 32, 32)
    dyn = {"input": {0: "batch"}, "output": {0: "batch"}}
    ours = linger.runtime.InferenceSession(linger.onnx.export(model, x1, None, dynamic_axes=dyn))
    qdq = _ort(linger.onnx.export(model, x1, None, format="qdq",
                                  dynamic_axes=dyn).SerializeToString())
    exact = _ort(linger.onnx.export(model, x1, None, format="exact",
                                    dynamic_axes=dyn).SerializeToString())
    return model, ours, qdq, _ort(buf.getvalue()), exact


def _timed(runners: dict, x, reps: int) -> dict:
    """Median [q1, q3] milliseconds per runner, interleaved repetitions after one warm-up."""
    times = {k: [] for k in runners}
    for fn in runners.values():
        fn(x)
    for _ in range(reps):
        for name, fn in runners.items():
            t = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t)
    return {k: [v * 1e3 for v in statistics.quantiles(ts, n=4)] for k, ts in times.items()}


def recurrent(reps: int) -> None:
    """linger runtime vs onnxruntime float on the keyword-spotting GRU and LSTM."""
    from qat_overhead import KWSRecurrent
    for cell in (torch.nn.GRU, torch.nn.LSTM):
        set_seed(0)
        float_model = KWSRecurrent(cell).eval()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(float_model, torch.randn(1, 49, 40), buf, dynamo=False,
                              input_names=["input"], dynamic_axes={"input": {0: "batch"}})
        flt = _ort(buf.getvalue())
        model = linger.init(KWSRecurrent(cell))
        model.load_state_dict(float_model.state_dict())
        with torch.no_grad():
            model.train()(torch.randn(32, 49, 40))
        model.eval()
        dyn = {"input": {0: "batch"}}
        ours = linger.runtime.InferenceSession(linger.onnx.export(
            model, torch.randn(1, 49, 40), None, dynamic_axes=dyn))
        # an independent check of the runtime's prepared recurrence: the exact export unrolls
        # the step functions as standard ONNX, run by onnxruntime
        unrolled = _ort(linger.onnx.export(model, torch.randn(1, 49, 40), None, format="exact",
                                           dynamic_axes=dyn).SerializeToString())
        name, uname = ours.get_inputs()[0].name, unrolled.get_inputs()[0].name
        runners = {"linger runtime": lambda x: ours.run(None, {name: x}),
                   "onnxruntime float": lambda x: flt.run(None, {"input": x})}
        for batch in (1, 32):
            x = np.random.default_rng(0).standard_normal((batch, 49, 40)).astype(np.float32)
            x[0] *= 1000                                        # saturating inputs
            got = runners["linger runtime"](x)[0]
            with torch.no_grad():
                exact = np.array_equal(got, model(torch.from_numpy(x)).plain().numpy()) \
                    and np.array_equal(got, unrolled.run(None, {uname: x})[0])
            med = _timed(runners, x, reps)
            print(f"KWS {cell.__name__} 49x40 h128, batch {batch:2d} (bit-exact with PyTorch"
                  f" eval and the exact export in onnxruntime: {exact}): "
                  + ", ".join(f"{k} {v[1]:.2f} ms [{v[0]:.2f}-{v[2]:.2f}]"
                              for k, v in med.items())
                  + f"; linger/ort-float ="
                  f" {med['linger runtime'][1] / med['onnxruntime float'][1]:.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--profile", action="store_true", help="print the runtime's time per op type")
    p.add_argument("--no-recurrent", action="store_true", help="skip the GRU/LSTM models")
    p.add_argument("--recurrent-only", action="store_true", help="only the GRU/LSTM models")
    p.add_argument("--openblas-coretype", metavar="NAME",
                   help="OPENBLAS_CORETYPE for this run (e.g. SkylakeX), set before numpy loads")
    args = p.parse_args(argv)
    if args.recurrent_only:
        print(f"machine: {_machine()}")
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        recurrent(args.reps)
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        return
    model, ours, qdq, flt, exact = _models()
    runners = {"linger runtime": lambda x: ours.run(None, {"input": x}),
               "onnxruntime QDQ": lambda x: qdq.run(None, {"input": x}),
               "onnxruntime float": lambda x: flt.run(None, {"input": x}),
               "onnxruntime exact": lambda x: exact.run(None, {"input": x})}
    print(f"SmallResNet 3x32x32, 1 thread, median [25-75 %] of {args.reps} interleaved reps")
    print(f"machine: {_machine()}")
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).plain().numpy()
        same = np.array_equal(runners["linger runtime"](x)[0], want)
        same_exact = np.array_equal(runners["onnxruntime exact"](x)[0], want)
        print(f"batch {batch:2d} (bit-exact with PyTorch eval: runtime {same}, onnxruntime on"
              f" the exact export {same_exact}):")
        med = {}
        for name, (q1, med[name], q3) in _timed(runners, x, args.reps).items():
            print(f"  {name:18s} {med[name]:7.2f} ms  [{q1:.2f}-{q3:.2f}]")
        print(f"  linger/ort-QDQ = {med['linger runtime'] / med['onnxruntime QDQ']:.2f},"
              f" linger/ort-float = {med['linger runtime'] / med['onnxruntime float']:.2f},"
              f" ort-exact/ort-QDQ = {med['onnxruntime exact'] / med['onnxruntime QDQ']:.2f}")
        if args.profile:
            prof = ours.profile({"input": x}, repeat=args.reps)
            total = sum(prof.values())
            print(f"  runtime profile (sum of steps {total * 1e3:.2f} ms):")
            for op, sec in prof.items():
                print(f"    {op:30s} {sec * 1e3:7.3f} ms {100 * sec / total:5.1f} %")
    if not args.no_recurrent:
        recurrent(args.reps)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
