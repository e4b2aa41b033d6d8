"""PNG plots of the analysis (needs matplotlib: ``pip install 'linger[plots]'``).

Figures are drawn with ``matplotlib.figure.Figure`` directly, never through ``pyplot``, so the
user's backend and open figures are left alone.

- :func:`plot_histograms`: one small histogram per layer (weights or outputs), log-scaled counts,
  with the quantization range ``+-qmax * 2**-exp`` (red) and the 99% range of ``|v|`` (dashed);
- :func:`plot_bars`: one horizontal bar per layer (SQNR in dB, a sensitivity metric...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .. import numerics
from ..quant.base import QuantMixin


@dataclass
class Histogram:
    """Values of one tensor or layer output, and its quantization range (None: not quantized)."""

    name: str
    values: np.ndarray
    qrange: float | None = None
    bits: int | None = None


def require_matplotlib():
    """The ``Figure`` class; ImportError with the install hint when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("linger's plots need matplotlib: pip install 'linger[plots]'") from e
    return Figure


def quant_range(exp: int, bits: int) -> float:
    """Largest representable value of a ``bits``-bit grid at exponent ``exp``: ``qmax * 2**-exp``.

    >>> quant_range(6, 8)
    1.984375
    """
    return math.ldexp(numerics.qmax(bits), -int(exp))


def weight_histograms(model: nn.Module, default_bits: int = 8) -> list[Histogram]:
    """One :class:`Histogram` per layer with a floating ``weight``: the values that layer
    quantizes as its weight (a conv with a BatchNorm fused by ``trace_layers``: the folded
    weight; a BatchNorm: its scale ``gamma / sqrt(var + eps)``), and their range. A quantized
    layer's range comes from its own weight-exponent rule and bits; a float layer's from
    ``n_w = floor(log2(qmax / max|w|))`` at ``default_bits``. Fused (pass-through) BatchNorms are
    skipped: their scale is in the conv."""
    items = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not name or not isinstance(w, torch.Tensor) or not w.is_floating_point() \
                or "linger_fused_into" in m.__dict__:
            continue
        w, label = _quantized_weight(m), name
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            label = f"{name} (BN scale)"
        w = w.detach()
        if isinstance(m, QuantMixin):
            bits, exp = m.linger_cfg.parameter_bits, int(m.weight_exp(w))
        else:
            bits = default_bits
            exp = numerics.exponent_for_range(float(w.abs().max()) if w.numel() else 0.0, bits)
        items.append(Histogram(label, w.double().cpu().numpy().reshape(-1),
                               quant_range(exp, bits), bits))
    return items


def _quantized_weight(m: nn.Module) -> torch.Tensor:
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
        return m.weight / torch.sqrt(m.running_var + m.eps)
    if hasattr(m, "_float_op"):  # conv/linear: folded with a fused BatchNorm, if any
        try:
            from ..quant.two_stage import folded_parameters
        except ImportError:  # pragma: no cover - older linger without the two-stage flow
            return m.weight
        return folded_parameters(m)[0]
    return m.weight


def output_histograms(dumper) -> list[Histogram]:
    """One :class:`Histogram` per output recorded by a :class:`~linger.Dumper` (its sample), with
    the range of the last quantized output seen (None for float layers)."""
    items = []
    for name, running in dumper.running.items():
        exp_bits = dumper.quant.get(name)
        qr = quant_range(*exp_bits) if exp_bits else None
        items.append(Histogram(name, running.sample(), qr, exp_bits[1] if exp_bits else None))
    return items


def plot_histograms(items, path, title: str = "", bins: int = 60, columns: int = 4) -> str:
    """Small multiples of :class:`Histogram` items, written as a PNG to ``path``."""
    Figure = require_matplotlib()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    n = max(len(items), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for ax, item in zip(axes, items):
        v = np.asarray(item.values, dtype=np.float64)
        ax.hist(v, bins=bins, color="#4c72b0", log=True)
        if item.qrange is not None:
            for x in (-item.qrange, item.qrange):
                ax.axvline(x, color="#c44e52", lw=1.2)
        if v.size:
            p99 = float(np.percentile(np.abs(v), 99.0))
            for x in (-p99, p99):
                ax.axvline(x, color="0.3", lw=1.0, ls="--")
        label = f"{item.name}" + (f"  (int{item.bits})" if item.bits else "")
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda c, _: f"{c:g}"))  # counts, not 2x10^0
        ax.yaxis.set_minor_formatter(NullFormatter())
    for ax in axes[len(items):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(f"{title}   red: quantization range +-qmax*2^-exp, dashed: 99% of |v|",
                     fontsize=9)
    fig.savefig(path, dpi=90)
    return str(path)


def plot_bars(names, values, path, xlabel: str, title: str = "", cap: float | None = None) -> str:
    """Horizontal bars, first name on top; infinite values are drawn at ``cap`` (default: 10%
    beyond the largest finite value) and labelled "inf"."""
    Figure = require_matplotlib()
    vals = np.asarray(values, dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    if cap is None:
        cap = float(finite.max()) * 1.1 if finite.size and finite.max() > 0 else 1.0
    shown = np.where(np.isposinf(vals), cap, np.where(np.isneginf(vals), 0.0, vals))
    fig = Figure(figsize=(7, 0.32 * len(vals) + 1.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(vals))
    ax.barh(y, shown, color="#4c72b0")
    for yi, v, s in zip(y, vals, shown):
        ax.text(s, yi, f" {v:.1f}" if np.isfinite(v) else f" {v}", va="center", fontsize=7)
    ax.set_yticks(y, labels=list(names), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=90)
    return str(path)
