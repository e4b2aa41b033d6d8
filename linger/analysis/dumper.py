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

import numpy as np
import torch
import torch.nn as nn

from .. import numerics
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
        names = []
        for name, module in _matching_leaves(model, match_pattern):
            self._handles.append(module.register_forward_hook(self._hook(name)))
            names.append(name)
        return names

    def enable_dump_quanted(self, model: nn.Module, path: str | os.PathLike = "./dump",
                            match_pattern: str = r".*") -> list[str]:
        """The original's integer dump: every forward of a matching quantized layer writes its
        integer input, weight and output as text (``<path>/<layer>_q_input.txt``,
        ``_q_weight.txt``, ``_q_output.txt``, one value per line; ``_q_*_exp.txt``: exponents).
        Values are ``q`` with ``real = q * 2**-exp``. Returns the hooked layer names."""
        from ..quant.base import QuantMixin
        os.makedirs(path, exist_ok=True)
        names = []
        for name, module in _matching_leaves(model, match_pattern):
            if isinstance(module, QuantMixin):
                self._handles.append(module.register_forward_hook(
                    _dump_quant_hook(name, os.fspath(path))))
                names.append(name)
        return names

    def enable_dump_model(self, model: nn.Module, path: str | os.PathLike = "./dump",
                          match_pattern: str = r".*", hook_forward: bool = True) -> list[str]:
        """The original's float dump: every forward of a matching leaf layer writes its float
        input and output as text (``<path>/<layer>_input.txt``, ``_output.txt``, one value per
        line). ``hook_forward=False`` hooks nothing. Returns the hooked layer names."""
        if not hook_forward:
            return []
        os.makedirs(path, exist_ok=True)
        names = []
        for name, module in _matching_leaves(model, match_pattern):
            self._handles.append(module.register_forward_hook(
                _dump_float_hook(name, os.fspath(path))))
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


def _matching_leaves(model, match_pattern):
    """Leaf modules whose name matches (``re.match``); the original named layers ``root.<name>``,
    so a pattern written for it (``"root."``, ``"root.conv"``) matches here too."""
    pattern = re.compile(match_pattern)
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()) and \
                (pattern.match(name) or pattern.match("root." + name)):
            yield name, module


def _save(path, name, suffix, values):
    np.savetxt(os.path.join(path, f"{name}_{suffix}.txt"), np.asarray(values).reshape(-1),
               fmt="%d" if np.issubdtype(np.asarray(values).dtype, np.integer) else "%.9g")


def _ints(t, exp):
    return np.rint(t.detach().double().cpu().numpy() * 2.0 ** exp).astype(np.int64)


def _dump_quant_hook(name, path):
    def dump(module, args, output):
        x = args[0] if args else None
        y = output[0] if isinstance(output, (tuple, list)) else output
        if getattr(x, "bits", None) is not None:
            _save(path, name, "q_input", _ints(x.plain(), x.int_exp()))
            _save(path, name, "q_input_exp", [x.int_exp()])
        elif isinstance(x, torch.Tensor) and bool(getattr(module, "input_ready", False)):
            exp, bits = int(module.input_exp), module.linger_cfg.data_bits  # as the layer does
            q = numerics.quantize(x.detach().double(), exp, bits)
            _save(path, name, "q_input", q.cpu().numpy().astype(np.int64))
            _save(path, name, "q_input_exp", [exp])
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and hasattr(module, "int_weight"):
            q, exp = module.int_weight(weight)
            _save(path, name, "q_weight", q.cpu().numpy().astype(np.int64))
            _save(path, name, "q_weight_exp", [exp])
        if getattr(y, "bits", None) is not None:
            _save(path, name, "q_output", _ints(y.plain(), y.int_exp()))
            _save(path, name, "q_output_exp", [y.int_exp()])
    return dump


def _dump_float_hook(name, path):
    def dump(module, args, output):
        x = args[0] if args else None
        y = output[0] if isinstance(output, (tuple, list)) else output
        for suffix, t in (("input", x), ("output", y)):
            if isinstance(t, torch.Tensor):
                plain = t.plain() if hasattr(t, "plain") else t
                _save(path, name, suffix, plain.detach().float().cpu().numpy())
    return dump
