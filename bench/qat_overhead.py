"""QAT overhead: time of one QAT training step divided by one float training step, on the CPU.

Models (batch 32, SGD with momentum, cross-entropy):

- ``resnet``: :class:`linger.examples_models.SmallResNet`, 3x32x32 inputs (conv+BN+ReLU blocks,
  residual adds) -- the issue's target model;
- ``depthwise``: :class:`linger.examples_models.DepthwiseCNN`, 3x32x32 (depthwise-separable
  blocks with ReLU6);
- ``gru``: ``nn.GRU(8, 64) -> nn.Linear(64, 10)`` on 8 steps of 8 features (the digits GRU of
  ``examples/digits_gru.py``);
- ``kws_gru`` / ``kws_lstm``: keyword spotting, 49 frames of 40 MFCCs, ``nn.GRU``/``nn.LSTM``
  with 128 hidden units, linear on the last hidden state;
- ``transformer``: one ``nn.TransformerEncoderLayer`` (d=64, 4 heads, batch_first) over 49
  frames of 40 features, a linear patch embedding in front and a linear head on the mean.

Each model is measured for float, linger (``linger.init``) and, where it applies, PyTorch's own
FX QAT (``prepare_qat_fx`` with the default 'x86' QAT qconfig mapping; torch.ao has no QAT for
``nn.GRU``). Steps of the three are interleaved round-robin so that they see the same machine
load; each time is the median of ``--steps`` steps after ``--warmup`` warm-up steps, and the
whole measurement is repeated ``--repeats`` times (the report gives every repeat and the median
ratio).

Allocator: glibc returns freed heap memory to the system when much of it is free at once and
then faults it back in page by page; which steps pay for that depends on the heap's history, and
it moved the float step of SmallResNet between 25 and 31 ms on the reference machine. By default
the benchmark first allocates and frees one 32 MB block, which raises glibc's dynamic mmap
threshold so that no model pays page faults in the steady state (``--cold-allocator`` skips it).

    python bench/qat_overhead.py [--models resnet,depthwise,gru] [--steps 20] [--warmup 5]
                                 [--repeats 3] [--threads N] [--cold-allocator] [--profile]
                                 [--memory]

``--memory`` also reports the memory a training forward saves for backward (activations,
masks, weights: every tensor autograd keeps, counted once per storage), float and linger.

``--profile`` adds a torch.profiler table of one linger QAT step of each model.
"""

from __future__ import annotations

import argparse
import copy
import os
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
from linger.examples_models import DepthwiseCNN, SmallResNet, set_seed  # noqa: E402
from _machine import cpu_name  # noqa: E402  (bench/ is on sys.path when run as a script)


class GRUNet(nn.Module):
    """``(N, 8, 8)`` sequences -> GRU(8, 64) -> linear on the last hidden state."""

    def __init__(self, features: int = 8, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        _, h = self.gru(x)                    # h: (1, N, hidden)
        return self.fc(h[-1])


class KWSRecurrent(nn.Module):
    """``(N, 49, 40)`` MFCC frames -> GRU or LSTM (128 units) -> linear on the last hidden state."""

    def __init__(self, cell: type = nn.GRU, features: int = 40, hidden: int = 128,
                 num_classes: int = 10):
        super().__init__()
        self.rnn = cell(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        _, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h  # LSTM: (h, c)
        return self.fc(h[-1])


class TransformerBlock(nn.Module):
    """``(N, 49, 40)`` -> linear patch embedding (64) -> one TransformerEncoderLayer -> mean ->
    linear."""

    def __init__(self, features: int = 40, dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.patch = nn.Linear(features, dim)
        self.block = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(self.block(self.patch(x)).mean(dim=1))


#: name -> (model factory, input shape without batch, whether torch.ao FX QAT applies)
MODELS = {
    "resnet": (SmallResNet, (3, 32, 32), True),
    "depthwise": (DepthwiseCNN, (3, 32, 32), True),
    "gru": (GRUNet, (8, 8), False),
    "kws_gru": (lambda: KWSRecurrent(nn.GRU), (49, 40), False),
    "kws_lstm": (lambda: KWSRecurrent(nn.LSTM), (49, 40), False),
    "transformer": (TransformerBlock, (49, 40), False),
}


def saved_for_backward_mb(model, x, y) -> float:
    """MB that one training forward saves for backward (every tensor autograd keeps, counted once
    per storage), read with ``torch.autograd.graph.saved_tensors_hooks``."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    return sum(seen.values()) / 2 ** 20


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


def warm_allocator() -> None:
    """Allocate and free one 32 MB block: glibc then keeps freed activations in the heap instead
    of returning them to the system after every step (see the module docstring)."""
    block = torch.empty(8 * 1024 * 1024 - 1024)
    block.fill_(0.0)
    del block


def run(name="resnet", steps=20, warmup=5, batch=32, profile=False) -> dict:
    """``{"float": t, "linger": t[, "torch.ao FX": t]}``: median seconds per training step."""
    factory, shape, ao_applies = MODELS[name]
    set_seed(0)
    base = factory()
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    models = {"float": copy.deepcopy(base), "linger": linger.init(copy.deepcopy(base))}
    if ao_applies:
        models["torch.ao FX"] = torch_fx_qat(copy.deepcopy(base), x)
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


def machine() -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu_name()}, load average {load}; torch {torch.__version__},"
            f" {torch.get_num_threads()} threads, Python {platform.python_version()}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet,depthwise,gru")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--cold-allocator", action="store_true", help="skip the allocator warm-up")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--memory", action="store_true", help="peak extra memory of a step")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.cold_allocator:
        warm_allocator()
    print(f"batch {a.batch}, SGD; median of {a.steps} steps after {a.warmup} warm-up,"
          f" {a.repeats} repeats; allocator {'cold' if a.cold_allocator else 'warmed'}")
    print(machine())
    for name in a.models.split(","):
        ratios = {}
        print(f"\n{name}: {'repeat':>6} " + " ".join(f"{k:>22}" for k in
                                                     ("float", "linger", "torch.ao FX")))
        for r in range(a.repeats):
            res = run(name, a.steps, a.warmup, a.batch, a.profile and r == 0)
            cells = []
            for k in ("float", "linger", "torch.ao FX"):
                if k in res:
                    ratio = res[k] / res["float"]
                    ratios.setdefault(k, []).append(ratio)
                    cells.append(f"{res[k] * 1e3:8.2f} ms ({ratio:5.2f}x)")
                else:
                    cells.append(f"{'n/a':>22}")
            print(f"{'':{len(name) + 1}} {r + 1:>7} " + " ".join(f"{c:>22}" for c in cells))
        print(f"{'':{len(name) + 1}} {'median':>7} " + " ".join(
            f"{statistics.median(ratios[k]):21.2f}x" if k in ratios else f"{'n/a':>22}"
            for k in ("float", "linger", "torch.ao FX")))
        if a.memory:
            factory, shape = MODELS[name][:2]
            set_seed(0)
            base = factory()
            x, y = torch.randn(a.batch, *shape), torch.randint(0, 10, (a.batch,))
            mem = {"float": saved_for_backward_mb(copy.deepcopy(base), x, y),
                   "linger": saved_for_backward_mb(linger.init(copy.deepcopy(base)), x, y)}
            print(f"{'':{len(name) + 1}} saved for backward: float {mem['float']:.1f} MB,"
                  f" linger {mem['linger']:.1f} MB ({mem['linger'] / max(mem['float'], 0.1):.2f}x)")


if __name__ == "__main__":
    main()
