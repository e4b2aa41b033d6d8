"""Range statistics of a tensor (or of a stream of tensors) and the table that prints them.

For values ``v`` (weights of one tensor, or one layer's outputs over all batches)::

    mean      = mean |v|
    max       = max |v|
    max/mean  = max / mean
    99%       = 99th percentile of |v|   (linear interpolation, numpy's default)
    max/99%   = max / 99%
    outlier   = max > threshold * 99%    (threshold 10 by default)

Why ``max/99%`` matters here: linger picks one power-of-two scale per tensor from ``max|v|``
(``n = floor(log2(qmax / max))``), so a few values far above the bulk stretch the grid and the
bulk lands on a handful of integer levels. A ratio of 10 costs more than 3 bits of resolution.

Ratios of zero by zero (an all-zero tensor) are reported as 1 (no spread); a positive value over a
zero 99% range is ``inf`` and flagged.

>>> import torch
>>> s = tensor_stats("w", torch.arange(1.0, 101.0))
>>> s.mean_abs, s.max_abs, round(s.p99_abs, 2), s.outlier
(50.5, 100.0, 99.01, False)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

#: ``max > OUTLIER_RATIO * 99%`` flags a tensor as dominated by outliers.
OUTLIER_RATIO = 10.0

#: Default size of the uniform sample a :class:`RunningStats` keeps for its percentile.
RESERVOIR_SIZE = 1 << 16


@dataclass(frozen=True)
class TensorStats:
    """One row of the range table: statistics of ``|v|`` for tensor or layer ``name``."""

    name: str
    shape: tuple
    count: int          # number of values the statistics cover
    mean_abs: float
    max_abs: float
    max_over_mean: float
    p99_abs: float      # the "99% range"
    max_over_p99: float
    outlier: bool       # max_abs > threshold * p99_abs

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def ratio(a: float, b: float) -> float:
    """``a / b`` with ``0 / 0 = 1`` (no spread) and ``a / 0 = inf`` for ``a > 0``."""
    if b > 0:
        return a / b
    return 1.0 if a == 0 else math.inf


def make_stats(name: str, shape, count: int, mean_abs: float, max_abs: float, p99_abs: float,
               threshold: float = OUTLIER_RATIO) -> TensorStats:
    """Assemble a :class:`TensorStats` row from the three measured numbers."""
    return TensorStats(name, tuple(shape), int(count), float(mean_abs), float(max_abs),
                       ratio(max_abs, mean_abs), float(p99_abs), ratio(max_abs, p99_abs),
                       bool(max_abs > threshold * p99_abs))


def tensor_stats(name: str, t, threshold: float = OUTLIER_RATIO) -> TensorStats:
    """Statistics of ``|t|`` over all its values (``t``: tensor or array, any shape)."""
    a = _abs_values(t)
    if a.size == 0:
        return make_stats(name, np.shape(t), 0, 0.0, 0.0, 0.0, threshold)
    return make_stats(name, tuple(getattr(t, "shape", a.shape)), a.size, a.mean(), a.max(),
                      np.percentile(a, 99.0), threshold)


class RunningStats:
    """Statistics of ``|v|`` over a stream of tensors in bounded memory.

    Mean and max are exact running aggregates (float64). The 99th percentile is taken over a
    uniform sample of at most ``size`` values (bottom-k of random keys: each value seen so far is
    in the sample with the same probability), so it is exact while fewer than ``size`` values have
    been seen.

    >>> r = RunningStats("out")
    >>> r.update(torch.tensor([1.0, -2.0])); r.update(torch.tensor([3.0]))
    >>> r.stats().mean_abs, r.stats().max_abs, r.stats().count
    (2.0, 3.0, 3)
    """

    def __init__(self, name: str, size: int = RESERVOIR_SIZE, seed: int = 0):
        self.name, self.size = name, int(size)
        self.count, self.total, self.max = 0, 0.0, 0.0
        self.shape: tuple = ()
        self._gen = torch.Generator().manual_seed(seed)
        self._values = torch.empty(0)   # (<= size,) float32 sample of the values (signed)
        self._keys = torch.empty(0)     # (<= size,) its random keys in [0, 1)

    def update(self, t: torch.Tensor) -> None:
        a = plain(t).reshape(-1).float().cpu()  # (numel,) signed values
        if a.numel() == 0:
            return
        self.shape = tuple(t.shape)
        self.count += a.numel()
        self.total += float(a.double().abs().sum())
        self.max = max(self.max, float(a.abs().max()))
        keys = torch.rand(a.numel(), generator=self._gen)
        if a.numel() > self.size:  # keep only this batch's candidates before merging
            keys, idx = torch.topk(keys, self.size, largest=False)
            a = a[idx]
        keys, values = torch.cat([self._keys, keys]), torch.cat([self._values, a])
        if keys.numel() > self.size:
            keys, idx = torch.topk(keys, self.size, largest=False)
            values = values[idx]
        self._keys, self._values = keys, values

    def sample(self) -> np.ndarray:
        """The sampled values, signed (all of them while ``count <= size``), in no set order."""
        return self._values.double().numpy()

    def stats(self, threshold: float = OUTLIER_RATIO) -> TensorStats:
        mean = self.total / self.count if self.count else 0.0
        p99 = float(np.percentile(np.abs(self.sample()), 99.0)) if self.count else 0.0
        return make_stats(self.name, self.shape, self.count, mean, self.max, p99, threshold)


def format_table(rows, title: str = "", threshold: float = OUTLIER_RATIO) -> str:
    """Fixed-width text table of :class:`TensorStats` rows; outliers are marked ``<-- max > 10x``.

    >>> print(format_table([tensor_stats("w", torch.tensor([1.0, 3.0]))]))
    name  shape  mean|v|  max|v|  max/mean  99%|v|  max/99%  flag
    w     (2,)   2        3       1.5       2.98    1.007
    1 tensors, 0 with max > 10x their 99% range
    """
    head = ["name", "shape", "mean|v|", "max|v|", "max/mean", "99%|v|", "max/99%", "flag"]
    body = []
    for r in rows:
        flag = f"<-- max > {_num(threshold)}x 99%" if r.outlier else ""
        body.append([r.name, _shape(r.shape), _num(r.mean_abs), _num(r.max_abs),
                     _num(r.max_over_mean), _num(r.p99_abs), _num(r.max_over_p99), flag])
    lines = [title] if title else []
    lines += _columns([head] + body)
    n_out = sum(r.outlier for r in rows)
    if rows:
        lines.append(f"{len(rows)} tensors, {n_out} with max > {_num(threshold)}x their 99%"
                     f" range")
    return "\n".join(lines)


def _columns(table) -> list:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]


def _num(v: float) -> str:
    if math.isinf(v) or math.isnan(v):
        return str(v)
    return f"{v:.4g}"


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a plain detached ``torch.Tensor`` (a QTensor's values, without its metadata)."""
    if hasattr(t, "plain"):
        t = t.plain()
    return t.detach()


def _abs_values(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = plain(t).cpu().double().numpy()
    return np.abs(np.asarray(t, dtype=np.float64)).reshape(-1)
