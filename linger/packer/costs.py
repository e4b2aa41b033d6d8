"""Per-layer cost estimate of a planned graph: MACs, bytes moved per memory, estimated cycles.

The bytes a layer moves are the bytes of the tensors it reads (activations and parameters) and
writes, each counted in the memory the plan put it in; reshape-like layers (their output is a
view of their input) move nothing. Cycles come from the target's cost model
(:mod:`linger.targets.cost`); without a ``[cost]`` table in the profile only MACs and bytes are
given. The HTML report plots the cycles per layer as an inline SVG bar chart.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from .graphinfo import ALIAS_OPS


@dataclass(frozen=True)
class OpCost:
    step: int
    name: str
    op_type: str
    macs: int
    elements: int                                  # output elements
    traffic: dict = field(default_factory=dict)    # memory kind -> bytes read + written
    cycles: int | None = None                      # None: the target has no cost model

    @property
    def bytes_moved(self) -> int:
        return sum(self.traffic.values())


def op_costs(pg, plan, target, macs_of) -> list[OpCost]:
    """One :class:`OpCost` per node in execution order (``macs_of`` from the report)."""
    out = []
    for k, node in enumerate(pg.nodes):
        ins = [i for i in node.inputs if i]
        outs = [o for o in node.outputs if o]
        macs = macs_of(node.op_type, [pg.values[i].shape for i in ins],
                       [pg.values[o].shape for o in outs], node.attrs)
        elements = sum(math.prod(pg.values[o].shape) for o in outs)
        traffic: dict = {}
        if node.op_type not in ALIAS_OPS:
            for name in ins + outs:
                mem = plan.placements[name].memory
                traffic[mem] = traffic.get(mem, 0) + pg.values[name].nbytes
        cycles = None
        if target.cost is not None:
            cycles = 0 if node.op_type in ALIAS_OPS else target.cost.cycles(macs, elements,
                                                                             traffic)
        out.append(OpCost(k, node.name, node.op_type, macs, elements, traffic, cycles))
    return out


def cost_rows(costs, memories) -> tuple[list, list]:
    """``(header, rows)`` of the cost table; one bytes column per memory in ``memories``."""
    from .report import MEMORY_NAMES

    header = (["step", "layer", "op", "MACs"] + [f"{MEMORY_NAMES[m]} bytes" for m in memories]
              + ["est. cycles"])
    rows = [[c.step, c.name, c.op_type, c.macs] + [c.traffic.get(m, 0) for m in memories]
            + ["-" if c.cycles is None else c.cycles] for c in costs]
    return header, rows


def total_text(costs, target) -> str:
    """``N MACs, B bytes moved, estimated C cycles (T ms at F MHz)``."""
    text = (f"{sum(c.macs for c in costs)} MACs, {sum(c.bytes_moved for c in costs)} bytes"
            f" moved")
    if target.cost is None:
        return text + f" (target {target.name} has no [cost] table: no cycle estimate)"
    cycles = sum(c.cycles for c in costs)
    ms = target.cost.microseconds(cycles) / 1000
    return (f"{text}, estimated {cycles} cycles ({ms:.3f} ms at {target.cost.clock_mhz:g} MHz,"
            f" cost model of target {target.name}: an estimate, see docs/packer.md)")


def plot_svg(costs, title: str, width: int = 760) -> str:
    """Estimated cycles per layer as an inline SVG bar chart (no plotting library needed: the
    report stays fast to write and byte-for-byte deterministic); a note when there is no cost
    model."""
    shown = [c for c in costs if c.cycles]
    if not shown:
        return "<p>(No cycle plot: the target profile has no [cost] table.)</p>"
    top = max(c.cycles for c in shown)
    left, bar, gap = 260, 12, 4
    height = 30 + len(shown) * (bar + gap)
    out = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
           f'<text x="2" y="14">{html.escape(title)}</text>']
    for i, c in enumerate(shown):
        y = 24 + i * (bar + gap)
        w = max((width - left - 80) * c.cycles / top, 1)
        label = html.escape(f"{c.step} {c.name} ({c.op_type})"[:42])
        out.append(f'<text x="2" y="{y + bar - 2}">{label}</text>'
                   f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="#1565c0">'
                   f'<title>{html.escape(c.name)}: {c.cycles} cycles, {c.macs} MACs,'
                   f' {c.bytes_moved} bytes</title></rect>'
                   f'<text x="{left + w + 4:.1f}" y="{y + bar - 2}">{c.cycles}</text>')
    out.append("</svg>")
    return "\n".join(out)
