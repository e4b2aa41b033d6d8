"""An independent checker of memory plans, run on every plan the packer makes.

It does not reuse the planner's lifetimes: it re-derives, from the execution order alone, which
values must hold their bytes at each step, and verifies that

- every value has exactly one placement, in a memory the target has;
- every offset is aligned, every placement holds the value's bytes and ends within capacity;
- a placement shares another's bytes (``alias_of``) only when a reshape-like op made it from
  that value, at the same memory and offset;
- no two storages live at the same step overlap in bytes (parameters are live throughout).

>>> from types import SimpleNamespace as N
>>> steps = [N(name="a", op_type="Relu", inputs=("x",), outputs=("y",))]
>>> P = lambda m, o, s: N(memory=m, offset=o, size=s, alias_of=None)
>>> plan = N(alignment=16, placements={"x": P("share", 0, 16), "y": P("share", 0, 16)})
>>> check_plan(plan, steps, ["x"], ["y"], set(), {"x": 16, "y": 16}, {"share": 64})
["'x' [0, 16) and 'y' [0, 16) in share overlap while both are live at step 0 (a)"]
"""

from __future__ import annotations

import numpy as np

from ..errors import LingerError
from .graphinfo import ALIAS_OPS


class PlanError(LingerError, RuntimeError):
    """A memory plan broke an invariant (a packer bug: please report it)."""


class Problem(str):
    """One problem of a plan: its text, and ``kind`` ``"capacity"`` (the model does not fit the
    memory: a user-facing violation) or ``"invariant"`` (a packer bug)."""

    kind = "invariant"


def _capacity(text: str) -> Problem:
    p = Problem(text)
    p.kind = "capacity"
    return p


def check_plan(plan, steps, inputs, outputs, params, nbytes, capacities) -> list[str]:
    """Every problem of ``plan`` (empty list: valid).

    ``steps``: nodes in execution order (``name``, ``op_type``, ``inputs``, ``outputs``);
    ``inputs``/``outputs``: graph input/output names; ``params``: parameter names; ``nbytes``:
    name -> exact bytes; ``capacities``: memory kind -> bytes.
    """
    problems: list = []
    n = len(steps)
    start, end = {}, {}
    for x in inputs:
        start[x], end[x] = 0, 0
    for k, s in enumerate(steps):
        for i in s.inputs:
            if i and i not in params:
                end[i] = max(end.get(i, k), k)
        for o in s.outputs:
            if o:
                start[o] = k
                end[o] = max(end.get(o, k), k)
    for o in outputs:
        if o not in params:
            end[o] = max(n - 1, 0)
    for p in params:
        start[p], end[p] = 0, max(n - 1, 0)
    made_from = {}  # value -> the value whose bytes it may reuse
    for s in steps:
        src = s.inputs[0] if s.inputs else ""
        if s.op_type in ALIAS_OPS and src and src not in params and s.outputs and s.outputs[0]:
            made_from[s.outputs[0]] = made_from.get(src, src)
    placements = plan.placements
    for name in sorted(set(placements) - set(start)):
        problems.append(f"placement for '{name}', which is no value of the graph")
    storages = {}  # root -> (memory, offset, size, first, last)
    for name in start:
        p = placements.get(name)
        if p is None:
            problems.append(f"'{name}' has no placement")
            continue
        cap = capacities.get(p.memory)
        if cap is None:
            problems.append(f"'{name}' is in memory {p.memory!r}, which the target lacks")
            continue
        if p.offset < 0 or p.offset % plan.alignment:
            problems.append(f"'{name}' offset {p.offset} is not a non-negative multiple of"
                            f" {plan.alignment}")
        if p.size < nbytes[name]:
            problems.append(f"'{name}' gets {p.size} bytes but holds {nbytes[name]}")
        if p.offset + p.size > cap:
            problems.append(_capacity(f"'{name}' [{p.offset}, {p.offset + p.size}) exceeds"
                                      f" {p.memory} capacity {cap}"))
        root = name
        if p.alias_of is not None:
            if made_from.get(name) != p.alias_of:
                problems.append(f"'{name}' shares the bytes of '{p.alias_of}' but no reshape-like"
                                f" op made it from that value")
                continue
            r = placements.get(p.alias_of)
            if r is None or (r.memory, r.offset) != (p.memory, p.offset) or r.size < p.size:
                problems.append(f"'{name}' aliases '{p.alias_of}' at a different place")
                continue
            root = p.alias_of
        m, o, sz, f, la = storages.get(root, (p.memory, p.offset, p.size, start[name], end[name]))
        storages[root] = (m, o, max(sz, p.size), min(f, start[name]), max(la, end[name]))
    problems += _overlaps(storages, steps)
    return [q if isinstance(q, Problem) else Problem(q) for q in problems]


def _overlaps(storages, steps) -> list[str]:
    names = list(storages)
    if len(names) < 2:
        return []
    mem = np.array([hash(storages[k][0]) for k in names])
    off = np.array([storages[k][1] for k in names], dtype=np.int64)
    end = off + np.array([storages[k][2] for k in names], dtype=np.int64)
    t0 = np.array([storages[k][3] for k in names])
    t1 = np.array([storages[k][4] for k in names])
    clash = ((mem[:, None] == mem[None, :]) & (off[:, None] < end[None, :])
             & (off[None, :] < end[:, None]) & (t0[:, None] <= t1[None, :])
             & (t0[None, :] <= t1[:, None]))
    out = []
    for i, j in zip(*np.nonzero(np.triu(clash, 1))):
        a, b = names[i], names[j]
        step = max(t0[i], t0[j])
        label = steps[step].name if 0 <= step < len(steps) else "-"
        out.append(f"'{a}' [{off[i]}, {end[i]}) and '{b}' [{off[j]}, {end[j]}) in"
                   f" {storages[a][0]} overlap while both are live at step {step} ({label})")
    return out


def assert_plan_valid(plan, steps, inputs, outputs, params, nbytes, capacities) -> None:
    """Raise :class:`PlanError` listing every invariant problem of ``plan`` (capacity
    problems are the caller's to report: the model is too big, the plan is not wrong)."""
    problems = [p for p in check_plan(plan, steps, inputs, outputs, params, nbytes, capacities)
                if p.kind != "capacity"]
    if problems:
        raise PlanError("memory plan is invalid (a packer bug, please report it):\n  - "
                        + "\n  - ".join(problems))
