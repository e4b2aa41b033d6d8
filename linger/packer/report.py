"""The memory report: a text table for the terminal and a self-contained HTML page with charts.

Both are deterministic (no dates, no user names, no paths), so a golden copy can be compared.
Contents: per memory its capacity, parameter bytes, peak and the lower bound of the plan (its
parameters plus the largest set of activations live at one step: no plan can use less), the step
of the peak with the tensors live there and the layers that produced them; per layer its
parameter bytes and multiply-accumulates (MACs); per tensor its kind, memory, offset, size and
first/last use; per layer a cost estimate (MACs, bytes moved, estimated cycles:
:mod:`.costs`). The title names the model (the exported graph's name: the PyTorch class).
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass

from ..targets import MEMORY_KINDS
from .costs import cost_rows, op_costs, plot_svg, total_text

MEMORY_NAMES = {"share": "share-memory", "psram": "PSRAM", "flash": "flash"}


@dataclass(frozen=True)
class LayerStat:
    step: int
    name: str
    op_type: str
    params_bytes: int
    macs: int
    out_bytes: int


def macs_of(op_type: str, in_shapes, out_shapes, attrs=None) -> int:
    """Multiply-accumulates of one node: the products it computes, each added to a sum.

    conv: per output ``Cin/g * k``; conv-transpose: per input ``Cout/g * k``; linear/matmul:
    per output the reduced length; GRU/LSTM: per time step and sequence every weight element
    (``X W_ih^T`` and ``h W_hh^T`` of each layer and direction); batch-norm, element-wise
    multiply: one per output; layer-norm: two per element (scale, then gain); average pooling:
    one accumulate per window element of each output; sum/mean: one per input element. Table
    lookups (sigmoid, tanh, softmax...), additions, quantize and layout ops: 0.

    >>> macs_of("GRUInt", [(1, 8, 8), (192, 8), (192, 64), (192,), (192,)], [(1, 8, 64)])
    110592
    """
    x = in_shapes[0] if in_shapes else None
    y = out_shapes[0] if out_shapes else None
    if x is None or y is None:
        return 0
    w = in_shapes[1] if len(in_shapes) > 1 else None
    if op_type in ("Conv1dInt", "Conv2dInt") and w is not None:
        return math.prod(y) * math.prod(w[1:])                # per output: Cin/g * k
    if op_type in ("ConvTranspose1dInt", "ConvTranspose2dInt") and w is not None:
        return math.prod(x) * math.prod(w[1:])                # per input: Cout/g * k
    if op_type in ("LinearInt", "MatMulInt"):
        return math.prod(y) * int(x[-1])
    if op_type in ("GRUInt", "LSTMInt"):                      # Y: (N, T, D*H) or (T, N, D*H)
        weights = [s for s in in_shapes[1:] if s is not None and len(s) == 2]
        return math.prod(y[:2]) * sum(math.prod(s) for s in weights)
    if op_type in ("BatchNormInt", "iqMul", "Mul"):
        return math.prod(y)
    if op_type == "LayerNormInt":
        return 2 * math.prod(y)
    if op_type == "AvgPoolInt" and attrs and attrs.get("kernel_shape"):
        return math.prod(y) * math.prod(int(k) for k in attrs["kernel_shape"])
    if op_type in ("iqSum", "iqMean"):
        return math.prod(x)
    return 0


def model_name(pg) -> str:
    """The exported graph's name (the model's class); older exports named every graph
    "linger": their file name is used instead."""
    name = pg.model.graph.name
    if name and name != "linger":
        return name
    base = os.path.basename(str(pg.source).strip("'"))
    return os.path.splitext(base)[0] if base and not base.startswith("<") else "model"


def layer_stats(pg) -> list[LayerStat]:
    out = []
    for k, node in enumerate(pg.nodes):
        ins = [pg.values[i].shape if i else None for i in node.inputs]
        outs = [pg.values[o].shape for o in node.outputs if o]
        params = sum(pg.values[i].nbytes for i in node.inputs
                     if i and pg.values[i].kind == "param")
        out_bytes = sum(pg.values[o].nbytes for o in node.outputs if o)
        out.append(LayerStat(k, node.name, node.op_type, params,
                             macs_of(node.op_type, ins, outs, node.attrs), out_bytes))
    return out


def peak_tensors(plan, kind: str) -> list:
    """Placements of ``kind`` live at its peak step, largest first (alias groups once)."""
    step = plan.memories[kind].peak_step
    live = [p for p in plan.placements.values()
            if p.memory == kind and p.kind != "param" and p.alias_of is None
            and p.first <= step <= p.last]
    return sorted(live, key=lambda p: (-p.size, p.name))


def _producer(pg, name) -> str:
    v = pg.values[name]
    if v.producer is None:
        return "graph input" if v.kind == "input" else "parameter"
    return pg.nodes[v.producer].name


def _kib(n: int) -> str:
    return f"{n} ({n / 1024:.1f} KiB)"


def _table(header, rows) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 or not str(c).lstrip("-").isdigit()
                         else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def summary_rows(plan) -> list:
    rows = []
    for kind in MEMORY_KINDS:
        u = plan.memories.get(kind)
        if u is None:
            continue
        use = f"{100.0 * u.peak / u.capacity:.1f}%" if u.capacity else "-"
        lower = u.params_bytes + u.lower_bound  # no plan of this memory can use less
        rows.append([MEMORY_NAMES[kind], u.capacity, u.params_bytes, u.peak, lower, use])
    return rows


def text_report(pg, plan, target, violations=(), full: bool = True) -> str:
    """The report as plain text. ``full=False``: memories and peaks only (what ``linger pack``
    prints); ``True`` adds the per-layer and per-tensor tables (``--report``)."""
    lines = [f"{model_name(pg)}: memory report on target {target.name} (id {target.id})",
             f"plan: strategy {plan.strategy}, alignment {plan.alignment} bytes, {len(plan.steps)}"
             f" steps" + (f", spilled to PSRAM: {', '.join(plan.spilled)}" if plan.spilled else ""),
             ""]
    lines += _table(["memory", "capacity", "parameters", "peak", "lower bound", "use"],
                    summary_rows(plan))
    for kind in ("share", "psram"):
        u = plan.memories.get(kind)
        if u is None or u.peak_step < 0:
            continue
        node = pg.nodes[u.peak_step]
        lines += ["", f"{MEMORY_NAMES[kind]} peak: {u.lower_bound} bytes of activations live at"
                      f" step {u.peak_step} `{node.name}` ({node.op_type}); tensors there:"]
        rows = [[p.name, p.size, f"`{_producer(pg, p.name)}`"] for p in peak_tensors(plan, kind)]
        lines += ["  " + r for r in _table(["tensor", "bytes", "made by"], rows)]
    lines += float_input_notes(pg, plan)
    stats = layer_stats(pg)
    costs = op_costs(pg, plan, target, macs_of)
    if not full:
        lines.append(f"\n{sum(s.params_bytes for s in stats)} parameter bytes in {len(stats)}"
                     f" layers; {total_text(costs, target)}")
        return "\n".join(lines) + "\n"
    lines += ["", "layers:"]
    rows = [[s.step, s.name, s.op_type, s.params_bytes, s.macs, s.out_bytes] for s in stats]
    lines += ["  " + r for r in _table(["step", "layer", "op", "param bytes", "MACs",
                                        "output bytes"], rows)]
    lines.append(f"  total: {sum(s.params_bytes for s in stats)} parameter bytes,"
                 f" {sum(s.macs for s in stats)} MACs")
    header, rows = cost_rows(costs, _used_memories(plan))
    lines += ["", "cost estimate (docs/packer.md, 'Cost estimate'):"]
    lines += ["  " + r for r in _table(header, rows)]
    lines.append(f"  total: {total_text(costs, target)}")
    lines += ["", "tensors:"]
    rows = [[p.name, p.kind + (f" (alias of {p.alias_of})" if p.alias_of else ""),
             MEMORY_NAMES[p.memory], p.offset, p.size, p.first, p.last]
            for p in plan.placements.values()]
    lines += ["  " + r for r in _table(["tensor", "kind", "memory", "offset", "size", "first",
                                        "last"], rows)]
    if violations:
        lines += ["", f"violations ({len(violations)}):"] + [f"  - [{v.severity}] {v.message}"
                                                            for v in violations]
    return "\n".join(lines) + "\n"


def _used_memories(plan) -> list:
    return [k for k in MEMORY_KINDS if k in plan.memories
            and any(p.memory == k for p in plan.placements.values())]


def float_input_notes(pg, plan) -> list[str]:
    """A line per float graph input held in share-memory: the plan keeps it there (4 bytes per
    element) until its last reader, usually the first Quant, has run."""
    lines = []
    for a in pg.graph.inputs:
        p = plan.placements.get(a.name)
        v = pg.values.get(a.name)
        if p is None or v is None or v.dtype.kind != "f" or p.memory != "share":
            continue
        n = math.prod(v.shape)
        lines.append(f"\nnote: input '{a.name}' is {v.dtype.name} {list(v.shape)}: the plan"
                     f" holds it in {MEMORY_NAMES['share']} as floats ({p.size} bytes, steps"
                     f" {p.first}..{p.last}), as the packed model's input is float and the chip"
                     f" quantizes it; firmware that feeds int8 data directly needs about {n}"
                     f" bytes instead.")
    return lines


def summary_text(plan, target) -> str:
    """The short memory summary ``linger pack`` always prints."""
    parts = []
    for row in summary_rows(plan):
        name, cap, params, peak, _, use = row
        if peak or params:
            parts.append(f"{name} {peak}/{cap} bytes ({use})")
    return f"memory on {target.name}: " + ", ".join(parts)


# -- HTML -----------------------------------------------------------------------------------------
_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px}
td.n{text-align:right;font-family:monospace}th{background:#eee}h2{margin-top:1.5em}
.v{color:#a00}svg text{font-size:11px;font-family:sans-serif}"""


def _svg_live(plan, kind, width=760, height=220) -> str:
    live = plan.live_bytes(kind)
    cap = plan.memories[kind].capacity
    n = max(len(live), 1)
    top = max(max(live, default=0), 1)
    show_cap = cap <= 2 * top
    ymax = max(top, cap if show_cap else 0) * 1.1
    x = lambda s: 50 + (width - 60) * s / n  # noqa: E731
    y = lambda b: height - 20 - (height - 40) * b / ymax  # noqa: E731
    pts = []
    for s, b in enumerate(live):
        pts += [f"{x(s):.1f},{y(b):.1f}", f"{x(s + 1):.1f},{y(b):.1f}"]
    peak = plan.memories[kind].peak_step
    out = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
           f'<line x1="50" y1="{y(0):.1f}" x2="{width - 10}" y2="{y(0):.1f}" stroke="#888"/>',
           f'<line x1="50" y1="10" x2="50" y2="{y(0):.1f}" stroke="#888"/>',
           f'<polyline fill="none" stroke="#1565c0" stroke-width="2" points="{" ".join(pts)}"/>',
           f'<text x="2" y="{y(top) + 4:.1f}">{top}</text>',
           f'<text x="50" y="{height - 4}">step 0</text>',
           f'<text x="{width - 60}" y="{height - 4}">step {n - 1}</text>']
    if show_cap:
        out.append(f'<line x1="50" y1="{y(cap):.1f}" x2="{width - 10}" y2="{y(cap):.1f}"'
                   f' stroke="#c62828" stroke-dasharray="4"/><text x="{width - 150}"'
                   f' y="{y(cap) - 3:.1f}" fill="#c62828">capacity {cap}</text>')
    else:
        out.append(f'<text x="{width - 260}" y="22" fill="#c62828">capacity {cap} bytes'
                   f' (off the chart)</text>')
    if peak >= 0:
        out.append(f'<circle cx="{x(peak + 0.5):.1f}" cy="{y(live[peak]):.1f}" r="4"'
                   f' fill="#c62828"><title>peak {live[peak]} bytes at step {peak}</title>'
                   f'</circle>')
    for s, b in enumerate(live):
        out.append(f'<rect x="{x(s):.1f}" y="10" width="{x(s + 1) - x(s):.1f}"'
                   f' height="{y(0) - 10:.1f}" fill="transparent"><title>step {s}'
                   f' {html.escape(plan.steps[s])}: {b} bytes live</title></rect>')
    out.append("</svg>")
    return "\n".join(out)


def _svg_map(plan, kind, width=760, height=260) -> str:
    """Each tensor as a rectangle: x = its lifetime (steps), y = its bytes in the memory."""
    items = [p for p in plan.placements.values()
             if p.memory == kind and p.kind != "param" and p.alias_of is None]
    n = max(len(plan.steps), 1)
    top = max([p.offset + p.size for p in items] + [1])
    x = lambda s: 50 + (width - 60) * s / n  # noqa: E731
    y = lambda b: height - 20 - (height - 30) * b / top  # noqa: E731
    out = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
           f'<line x1="50" y1="{y(0):.1f}" x2="{width - 10}" y2="{y(0):.1f}" stroke="#888"/>',
           f'<text x="2" y="14">{top}</text><text x="2" y="{y(0):.1f}">0</text>']
    for i, p in enumerate(sorted(items, key=lambda p: (p.offset, p.name))):
        hue = (i * 47) % 360
        out.append(f'<rect x="{x(p.first):.1f}" y="{y(p.offset + p.size):.1f}"'
                   f' width="{max(x(p.last + 1) - x(p.first), 1):.1f}"'
                   f' height="{max(y(p.offset) - y(p.offset + p.size), 1):.1f}"'
                   f' fill="hsl({hue},60%,70%)" stroke="#555" stroke-width="0.5">'
                   f'<title>{html.escape(p.name)}: offset {p.offset}, {p.size} bytes,'
                   f' steps {p.first}..{p.last}</title></rect>')
    out.append("</svg>")
    return "\n".join(out)


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for r in rows:
        cells = "".join(f'<td class="n">{c}</td>' if isinstance(c, int) else
                        f"<td>{html.escape(str(c))}</td>" for c in r)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>"


def html_report(pg, plan, target, violations=()) -> str:
    """A self-contained HTML page (inline SVG charts, no external files)."""
    title = f"{model_name(pg)}: memory report on target {target.name}"
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>Plan strategy <b>{plan.strategy}</b>, alignment {plan.alignment} bytes,"
             f" {len(plan.steps)} steps.</p>",
             _html_table(["memory", "capacity", "parameters", "peak", "lower bound", "use"],
                         summary_rows(plan))]
    if violations:
        parts.append("<h2>Violations</h2><ul>" + "".join(
            f'<li class="v">[{v.severity}] {html.escape(v.message)}</li>' for v in violations)
            + "</ul>")
    for kind in ("share", "psram"):
        u = plan.memories.get(kind)
        if u is None or u.peak_step < 0:
            continue
        node = pg.nodes[u.peak_step]
        parts += [f"<h2>{MEMORY_NAMES[kind]}</h2>",
                  f"<p>Live activation bytes at each step of the execution order; peak"
                  f" {u.lower_bound} bytes at step {u.peak_step} <code>{html.escape(node.name)}"
                  f"</code> ({node.op_type}); highest byte used by the plan: {u.peak}.</p>",
                  _svg_live(plan, kind),
                  "<p>Tensors at the peak and the layers that made them:</p>",
                  _html_table(["tensor", "bytes", "made by"],
                              [[p.name, p.size, _producer(pg, p.name)]
                               for p in peak_tensors(plan, kind)]),
                  "<p>Placement of each tensor (x: lifetime in steps, y: bytes):</p>",
                  _svg_map(plan, kind)]
    parts += [f"<p>{html.escape(line.strip())}</p>" for line in float_input_notes(pg, plan)]
    stats = layer_stats(pg)
    costs = op_costs(pg, plan, target, macs_of)
    header, rows = cost_rows(costs, _used_memories(plan))
    parts += ["<h2>Cost estimate</h2>",
              "<p>MACs, bytes each layer reads and writes in each memory, and cycles from the"
              " target's cost model (an estimate with assumed parameters: docs/packer.md, 'Cost"
              " estimate').</p>",
              _html_table(header, rows), f"<p>Total: {html.escape(total_text(costs, target))}</p>",
              plot_svg(costs, f"{model_name(pg)} on {target.name}: estimated cycles per layer")]
    parts += ["<h2>Layers</h2>", _html_table(
        ["step", "layer", "op", "param bytes", "MACs", "output bytes"],
        [[s.step, s.name, s.op_type, s.params_bytes, s.macs, s.out_bytes] for s in stats]),
        f"<p>Total: {sum(s.params_bytes for s in stats)} parameter bytes,"
        f" {sum(s.macs for s in stats)} MACs.</p>",
        "<h2>Tensors</h2>", _html_table(
            ["tensor", "kind", "memory", "offset", "size", "first", "last"],
            [[p.name, p.kind + (f" (alias of {p.alias_of})" if p.alias_of else ""),
              MEMORY_NAMES[p.memory], p.offset, p.size, p.first, p.last]
             for p in plan.placements.values()]),
        "</body></html>"]
    return "\n".join(parts) + "\n"
