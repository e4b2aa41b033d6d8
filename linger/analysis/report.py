"""``write_report``: one HTML page with the weight, output, SQNR and sensitivity analyses.

The page references its PNG images by relative path (``<stem>_files/*.png``, written next to
it), so the page and its folder can be moved or zipped together. Without matplotlib the page is
written with the tables only and says how to get the plots.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import torch
import torch.nn as nn

from .dumper import Dumper
from .error import _batches, _modes, _split, layer_sqnr, quantized_layers
from .weights import wb_analyse


def write_report(path, model: nn.Module, batches=None, *, sensitivity_rows=None,
                 match_pattern: str = r".*", title: str = "linger analysis") -> Path:
    """Write an HTML report on ``model`` to ``path``; return the path.

    Sections: weight statistics (:func:`~linger.wb_analyse`) and per-layer weight histograms;
    if ``batches`` are given, output statistics of every matching leaf layer over them (eval
    mode, :class:`~linger.Dumper`) with histograms, and, for a quantized model, the SQNR per layer
    (:func:`~linger.analysis.layer_sqnr`) as a table and a bar chart; ``sensitivity_rows`` (from
    :func:`~linger.analysis.sensitivity`, which needs a metric and time) as a table and a chart.
    Histograms mark the quantization range ``+-qmax * 2**-exp``.
    """
    path = Path(path)
    files = path.parent / f"{path.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    try:
        from . import plots
        plots.require_matplotlib()
    except ImportError:
        plots = None
    parts = [f"<h1>{_e(title)}</h1>", f"<p>Model: <code>{_e(type(model).__name__)}</code></p>"]
    if plots is None:
        parts.append("<p><b>No plots:</b> matplotlib is not installed"
                     " (<code>pip install 'linger[plots]'</code>).</p>")

    def image(name, draw):
        if plots is None:
            return ""
        draw(files / name)
        return f'<p><img src="{_e(files.name)}/{_e(name)}" alt="{_e(name)}"></p>'

    weights = wb_analyse(model, None, quiet=True)
    parts += ["<h2>Weights</h2>", _stats_table(weights),
              image("weights.png", lambda p: plots.plot_histograms(
                  plots.weight_histograms(model), p, "weights"))]
    if batches is not None:
        batches = _batches(batches)
        with Dumper() as d, _modes(model, train=False), torch.no_grad():
            d.analyse_layer_output(model, match_pattern)
            for b in batches:
                model(_split(b)[0])
        parts += ["<h2>Layer outputs</h2>", _stats_table(d.stats()),
                  image("outputs.png", lambda p: plots.plot_histograms(
                      plots.output_histograms(d), p, "layer outputs"))]
        if quantized_layers(model):
            rows = sorted(layer_sqnr(model, batches), key=lambda r: r.order)
            parts += ["<h2>Per-layer SQNR</h2>",
                      "<p>Each quantized layer's integer output against its float op on the same"
                      " input: 10 log10(signal / noise) dB. Low is bad.</p>",
                      _table(["layer", "type", "SQNR dB", "signal power", "noise power"],
                             [[r.name, r.type, _n(r.sqnr_db), _n(r.signal_power),
                               _n(r.noise_power)] for r in rows]),
                      image("sqnr.png", lambda p: plots.plot_bars(
                          [r.name for r in rows], [r.sqnr_db for r in rows], p, "SQNR (dB)",
                          "per-layer SQNR"))]
    if sensitivity_rows:
        rows = list(sensitivity_rows)
        parts += ["<h2>Sensitivity (one layer quantized at a time), worst first</h2>",
                  _table(["layer", "type", "metric", "all-float", "delta", "output SQNR dB"],
                         [[r.name, r.type, _n(r.value), _n(r.baseline), _n(r.delta),
                           _n(r.output_sqnr_db)] for r in rows]),
                  image("sensitivity.png", lambda p: plots.plot_bars(
                      [r.name for r in rows], [r.value for r in rows], p,
                      "metric with only this layer quantized", "sensitivity"))]
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


_CSS = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:13px}"
        " td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        " td:first-child{text-align:left} tr.flag{background:#fde0dc} img{max-width:100%}")


def _stats_table(rows) -> str:
    body = [[r.name, "x".join(str(d) for d in r.shape), _n(r.mean_abs), _n(r.max_abs),
             _n(r.max_over_mean), _n(r.p99_abs), _n(r.max_over_p99), "outlier" if r.outlier else ""]
            for r in rows]
    return _table(["name", "shape", "mean|v|", "max|v|", "max/mean", "99%|v|", "max/99%", "flag"],
                  body, flagged=[r.outlier for r in rows])


def _table(head, body, flagged=None) -> str:
    flagged = flagged or [False] * len(body)
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row, flag in zip(body, flagged):
        cls = ' class="flag"' if flag else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return "\n".join(out + ["</table>"])


def _n(v: float) -> str:
    return str(v) if math.isinf(v) or math.isnan(v) else f"{v:.4g}"


def _e(s) -> str:
    return html.escape(os.fspath(s) if isinstance(s, os.PathLike) else str(s), quote=True)
