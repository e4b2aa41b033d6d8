"""QAT overhead: time of one QAT training step divided by one float training step.

Model: :class:`linger.examples_models.SmallResNet` (batch 32, 3x32x32 inputs, SGD with momentum,
cross-entropy). Measured for linger (``linger.init``) and, in the same run on the same model, for
PyTorch's own FX QAT (``prepare_qat_fx`` with the default 'x86' QAT qconfig mapping). Each time is
the median of ``--steps`` steps after ``--warmup`` warm-up steps; the float, linger and torch.ao
steps are interleaved so that all three see the same machine load.

    python bench/qat_overhead.py [--steps 30] [--warmup 5] [--threads N] [--profile]

``--profile`` adds a torch.profiler table of one linger QAT step (top ops by CPU time).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

# runs from a checkout, whether linger is installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import linger  # noqa: E402
from linger.examples_models import SmallResNet, set_seed  # noqa: E402


def step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def median_step_times(models: dict, x, y, steps, warmup) -> dict:
    """Median wall time in seconds of one training step (forward, backward, SGD update) of each
    model. Steps are interleaved round-robin so that every model sees the same machine load."""
    fns = {}
    for name, model in models.items():
        model.train()
        fns[name] = step_fn(model, x, y)
    for _ in range(warmup):
        for step in fns.values():
            step()
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name, step in fns.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def torch_fx_qat(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        from torch.ao.quantization import get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx
        return prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping("x86"), (x,))


def run(steps=30, warmup=5, batch=32, profile=False) -> dict:
    """``{"float": t, "linger": t, "torch.ao FX": t}``: median seconds per training step."""
    set_seed(0)
    base = SmallResNet()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    models = {"float": copy.deepcopy(base), "linger": linger.init(copy.deepcopy(base)),
              "torch.ao FX": torch_fx_qat(copy.deepcopy(base), x)}
    res = median_step_times(models, x, y, steps, warmup)
    if profile:
        profile_step(models["linger"], x, y)
    return res


def profile_step(model, x, y, steps=5):
    from torch.profiler import ProfilerActivity, profile
    step = step_fn(model, x, y)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"SmallResNet, batch {a.batch}, 3x32x32, SGD; median of {a.steps} steps after"
          f" {a.warmup} warm-up; torch {torch.__version__}, {torch.get_num_threads()} threads,"
          f" {platform.processor() or platform.machine()}")
    res = run(a.steps, a.warmup, a.batch, a.profile)
    print(f"{'training':<12} {'step':>9} {'ratio to float':>15}")
    for name, t in res.items():
        print(f"{name:<12} {t * 1e3:7.1f}ms {t / res['float']:15.2f}")


if __name__ == "__main__":
    main()
