"""Start-up time of the ``linger`` command line, against baselines measured in the same run.

Each command runs in a fresh interpreter (``python -m linger.cli ...`` with this checkout first
on the path); the time is the median wall time of ``--repeat`` runs, interleaved round-robin so
that every command sees the same machine load. Baselines: the bare interpreter
(``python -c pass``) and ``import torch`` (what every command paid when the CLI imported it).
The model for ``run`` and ``check`` is the demo's digits CNN (``linger demo``, 1 epoch).

    python bench/cli_startup.py [--repeat 15] [--before DIR]

``--before DIR``: also run the linger commands from another checkout (e.g. ``git archive main |
tar -x -C DIR``), interleaved with this one, to compare code versions under the same load.

Results and machine: bench/RESULTS.md. No test asserts a time; this script prints the ratios.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._machine import cpu_name  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _packed_model(d):
    """digits_int8.onnx/.bin from a short `linger demo` run, and an input for them."""
    import numpy as np

    from linger.demo import run_demo

    run_demo(out_dir=d, epochs=1, qat_epochs=1, quiet=True)
    for ext in ("onnx", "bin"):
        os.replace(os.path.join(d, f"digits_int8.{ext}"), os.path.join(d, f"m.{ext}"))
    np.save(os.path.join(d, "x.npy"), np.zeros((1, 1, 8, 8), np.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--before", help="another checkout whose linger commands run alongside")
    args = ap.parse_args()
    versions = {"": REPO, **({" [before]": os.path.abspath(args.before)} if args.before else {})}
    with tempfile.TemporaryDirectory() as d:
        _packed_model(d)
        cli = [sys.executable, "-m", "linger.cli"]
        cases = {  # name -> (command, checkout on the path)
            "python -c pass (baseline)": ([sys.executable, "-c", "pass"], REPO),
            "python -c 'import torch' (baseline)": ([sys.executable, "-c", "import torch"],
                                                    REPO)}
        for tag, path in versions.items():
            cases.update({f"linger --help{tag}": (cli + ["--help"], path),
                          f"linger run m.bin x.npy{tag}": (cli + ["run", "m.bin", "x.npy"], path),
                          f"linger check m.onnx{tag}": (cli + ["check", "m.onnx"], path)})
        times = {k: [] for k in cases}
        for _ in range(args.repeat):
            for name, (cmd, path) in cases.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, cwd=d, env={**os.environ, "PYTHONPATH": path}, check=True,
                               capture_output=True)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_t = med["python -c 'import torch' (baseline)"]
    print(f"machine: {cpu_name()}; Python {sys.version.split()[0]}; median of {args.repeat}"
          f" runs, interleaved")
    print(f"{'command':<40} {'median':>9} {'vs import torch':>16}")
    for name, t in med.items():
        print(f"{name:<40} {t * 1000:7.0f} ms {t / torch_t:15.2f}x")
    for name in (n for n in med if n.endswith(" [before]")):
        print(f"{name[:-9]}: {med[name] / med[name[:-9]]:.1f}x faster than before")


if __name__ == "__main__":
    main()
