"""The long fuzz campaign of docs/reliability.md: mutated ONNX and packed files (checksums
recomputed) through the fast and the plain runtime, each case in a worker process with an
address-space limit and a time limit (tests/fuzzing.py).

    PYTHONPATH=. python bench/fuzz_campaign.py --seed 18 --cases 20000

Prints the outcome counts per mutation kind, the slowest cases and every failure with the
command that reproduces it; exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzzing  # noqa: E402
from _machine import cpu_name  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=20.0, help="time limit per case and path")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = fuzzing.run_campaign(args.seed, args.cases, args.seconds)
    wall = time.perf_counter() - t0
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"seed {args.seed}: {args.cases} cases x 2 paths = {len(results)} runs in {wall:.0f} s;"
          f" session limit {fuzzing.SESSION_MEMORY >> 20} MiB, worker address space +"
          f"{fuzzing.WORKER_HEADROOM >> 30} GiB, {args.seconds:.0f} s per run")
    table = collections.defaultdict(collections.Counter)
    for r in results:
        head = r["outcome"] if r["outcome"] in ("ran", "timeout", "crash", "oom") \
            else r["outcome"].split(":")[0] + ":" + r["outcome"].split(":")[1]
        table[r.get("kind", "?")][head] += 1
    for kind in sorted(table):
        print(f"  {kind:13s} " + ", ".join(f"{k} {v}" for k, v in table[kind].most_common()))
    times = sorted((r for r in results if r["seconds"] is not None), key=lambda r: -r["seconds"])
    print("slowest runs: " + ", ".join(f"case {r['case']} {r['seconds']:.3f} s"
                                       for r in times[:3]))
    bad = fuzzing.failures(results)
    print(f"failures: {len(bad)}")
    for r in bad:
        print(f"  case {r['case']} ({'fast' if r['fast'] else 'plain'}): {r['outcome']}"
              f"  -> python tests/fuzzing.py --case {args.seed} {r['case']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
