"""``linger.Dumper``: range statistics of every layer's output, gathered over all batches seen.

>>> import torch, linger
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
>>> with linger.Dumper() as d:
...     names = d.analyse_layer_output(model, match_pattern=r"0")
...     _ = model(torch.randn(5, 4)); _ = model(torch.randn(5, 4))
...     rows = d.stats()
>>> [(r.name, r.count) for r in rows]
[('0', 30)]
"""

from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from .stats import OUTLIER_RATIO, RESERVOIR_SIZE, RunningStats, TensorStats, format_table


class Dumper:
    """Context manager collecting per-layer output statistics through forward hooks.

    ``analyse_layer_output(model, match_pattern)`` hooks every leaf module whose qualified name
    matches the regular expression (``re.match``, as in linger 1: a prefix match; use ``$`` to
    anchor the end). Each forward pass then adds the layer's output to running aggregates: exact
    mean and max of ``|y|`` and a uniform sample of ``reservoir_size`` values for the 99th
    percentile (see :class:`~linger.analysis.stats.RunningStats`). A quantized output (a
    ``QTensor``) also records its exponent and bits, so plots can mark the quantization range.
    Layers returning several tensors get one row each, named ``name[i]``.

    Leaving the ``with`` block (or calling :meth:`remove`) removes every hook; the statistics stay.
    """

    def __init__(self, reservoir_size: int = RESERVOIR_SIZE, seed: int = 0):
        self.reservoir_size, self.seed = int(reservoir_size), seed
        self.running: dict[str, RunningStats] = {}   # row name -> aggregates, in first-seen order
        self.quant: dict[str, tuple[int, int]] = {}  # row name -> (exp, bits) of the last output
        self._handles = []

    def __enter__(self) -> "Dumper":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove all hooks this dumper installed (statistics are kept)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def analyse_layer_output(self, model: nn.Module, match_pattern: str = r".*") -> list[str]:
        """Hook the leaf layers of ``model`` whose name matches ``match_pattern``; return their
        names. Raises ``re.error`` for an invalid pattern."""
        pattern = re.compile(match_pattern)
        names = []
        for name, module in model.named_modules():
            if name and not any(True for _ in module.children()) and pattern.match(name):
                self._handles.append(module.register_forward_hook(self._hook(name)))
                names.append(name)
        return names

    def _hook(self, name):
        def record(module, args, output):
            tensors = [output] if isinstance(output, torch.Tensor) else (
                list(output) if isinstance(output, (tuple, list)) else [])
            for i, t in enumerate(tensors):
                if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                    continue
                key = name if len(tensors) == 1 else f"{name}[{i}]"
                if key not in self.running:
                    self.running[key] = RunningStats(key, self.reservoir_size,
                                                     self.seed + len(self.running))
                self.running[key].update(t)
                if getattr(t, "bits", None) is not None:
                    self.quant[key] = (int(t.exp), int(t.bits))
        return record

    def stats(self, threshold: float = OUTLIER_RATIO) -> list[TensorStats]:
        """One :class:`~linger.analysis.TensorStats` per recorded output, in first-seen order."""
        return [r.stats(threshold) for r in self.running.values()]

    def table(self, threshold: float = OUTLIER_RATIO) -> str:
        return format_table(self.stats(threshold), "linger.Dumper: layer outputs", threshold)

    def save_out_analyse_log(self, save_log_path: str | os.PathLike = "analyse_layer_output.log",
                             threshold: float = OUTLIER_RATIO) -> list[TensorStats]:
        """Write the table of output statistics to ``save_log_path``; return its rows."""
        rows = self.stats(threshold)
        with open(save_log_path, "w", encoding="utf-8") as f:
            f.write(format_table(rows, "linger.Dumper: layer outputs", threshold) + "\n")
        return rows
