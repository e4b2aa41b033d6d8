"""Memory planning: where every tensor lives on the chip, as small pure functions.

1. **Lifetimes** from the execution order: a value is live from the step that writes it (graph
   inputs: step 0) to the last step that reads it (graph outputs: the last step).
2. **Aliases**: the output of a reshape-like op (``ALIAS_OPS``) reuses its input's bytes; the
   group is planned once, live over the union of its members' lifetimes.
3. **Parameters** go, back to back and aligned, to the profile's parameter memory (flash or
   PSRAM; ``params=`` overrides it).
4. **Activations** go to share-memory unless larger than ``placement.max_share_tensor``; they
   share space when their lifetimes do not overlap. Several greedy strategies place them
   (:data:`STRATEGIES`) and the smallest peak wins. While the share-memory plan exceeds its
   capacity, the largest tensor live where the peak is reached moves to PSRAM, after the
   parameters there.
5. The plan is checked by :func:`linger.packer.plancheck.check_plan` (independent code).

>>> reqs = [Request("a", 100, 0, 1), Request("b", 100, 1, 2), Request("c", 100, 2, 3)]
>>> offsets, peak = place(reqs, 16, STRATEGIES["size_first_fit"])
>>> offsets, peak    # a and c do not overlap in time: they share offset 0
({'a': 0, 'b': 112, 'c': 0}, 224)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..targets import Target


def align(n: int, a: int) -> int:
    return -(-int(n) // a) * a


@dataclass(frozen=True)
class Request:
    """A block to place: ``size`` bytes (already aligned or not), live from step ``first`` to
    step ``last`` inclusive."""

    name: str
    size: int
    first: int
    last: int


@dataclass
class Placement:
    """Where one tensor lives. ``size``: its aligned footprint; ``nbytes``: its exact bytes."""

    name: str
    memory: str
    offset: int
    size: int
    nbytes: int
    first: int
    last: int
    kind: str                    # "input", "param", "activation"
    alias_of: str | None = None  # the root whose bytes it shares


@dataclass
class MemoryUsage:
    kind: str
    capacity: int
    params_bytes: int = 0        # aligned bytes of parameters at the start of this memory
    peak: int = 0                # highest byte in use (parameters + activations)
    lower_bound: int = 0         # largest live set of activations at one step (aligned bytes)
    peak_step: int = -1          # step where the most activation bytes are live


@dataclass
class MemoryPlan:
    alignment: int
    steps: list                  # node name per step
    placements: dict             # tensor name -> Placement
    memories: dict               # kind -> MemoryUsage
    strategy: str = ""
    spilled: list = field(default_factory=list)   # activations moved to PSRAM for capacity

    def live_bytes(self, kind: str) -> list[int]:
        """Aligned bytes of activations (alias groups once) live in ``kind`` at each step."""
        out = [0] * len(self.steps)
        for p in self.placements.values():
            if p.memory == kind and p.kind != "param" and p.alias_of is None:
                for s in range(max(p.first, 0), min(p.last, len(self.steps) - 1) + 1):
                    out[s] += p.size
        return out


# -- placement strategies ------------------------------------------------------------------------
def _order_size(reqs, live):
    return sorted(reqs, key=lambda r: (-r.size, r.first, r.name))


def _order_first_use(reqs, live):
    return sorted(reqs, key=lambda r: (r.first, -r.size, r.name))


def _order_lifetime(reqs, live):
    return sorted(reqs, key=lambda r: (-(r.last - r.first), -r.size, r.name))


def _order_breadth(reqs, live):
    """Tensors live at the busiest steps first (the steps that decide the peak)."""
    busiest = {r.name: max(live[max(r.first, 0):r.last + 1], default=0) for r in reqs}
    return sorted(reqs, key=lambda r: (-busiest[r.name], -r.size, r.name))


#: name -> (order function, best_fit). best_fit: smallest gap that fits, else the first one.
STRATEGIES = {
    "size_first_fit": (_order_size, False),
    "size_best_fit": (_order_size, True),
    "breadth_first_fit": (_order_breadth, False),
    "lifetime_first_fit": (_order_lifetime, False),
    "first_use_best_fit": (_order_first_use, True),
}


def live_profile(reqs, n_steps: int) -> list[int]:
    live = [0] * max(n_steps, 1)
    for r in reqs:
        for s in range(max(r.first, 0), min(r.last, n_steps - 1) + 1):
            live[s] += r.size
    return live


def place(reqs, alignment: int, strategy, base: int = 0) -> tuple[dict, int]:
    """Offsets (aligned, ``>= base``) for ``reqs`` so that blocks live at the same step never
    share bytes; returns ``(offsets, peak)`` with ``peak`` the highest byte used."""
    order_fn, best_fit = strategy
    n = max((r.last for r in reqs), default=0) + 1
    placed: list[tuple[int, int, Request]] = []   # (offset, end, request)
    offsets = {}
    base = align(base, alignment)
    for r in order_fn(reqs, live_profile(reqs, n)):
        size = align(r.size, alignment)
        busy = sorted((o, e) for o, e, q in placed if q.first <= r.last and r.first <= q.last)
        cursor, best = base, None
        for o, e in busy:
            if o - cursor >= size:  # a gap before this block
                if not best_fit:
                    best = (cursor, 0)
                    break
                if best is None or o - cursor < best[1]:
                    best = (cursor, o - cursor)
            cursor = max(cursor, align(e, alignment))
        offset = best[0] if best is not None else cursor
        offsets[r.name] = offset
        placed.append((offset, offset + size, r))
    peak = max((e for _, e, _ in placed), default=base)
    return offsets, peak


def best_placement(reqs, alignment: int, base: int = 0, strategies=None):
    """``(strategy name, offsets, peak)`` of the strategy with the lowest peak (ties: the
    first in :data:`STRATEGIES`); ``strategies``: names to try (default: all)."""
    best = None
    for name in strategies or STRATEGIES:
        offsets, peak = place(reqs, alignment, STRATEGIES[name], base)
        if best is None or peak < best[2]:
            best = (name, offsets, peak)
    return best


# -- the whole plan -------------------------------------------------------------------------------
def lifetime(v, last_step: int) -> tuple[int, int]:
    """Steps ``(first, last)`` a value holds its bytes: from the step writing it (graph inputs:
    0) to the last step reading it (graph outputs: the last step)."""
    first = 0 if v.kind == "input" else v.producer
    return first, max([first] + v.consumers + ([last_step] if v.is_output else []))


def plan_memory(values: dict, steps: list, target: Target, params: str | None = None,
                strategies=None) -> MemoryPlan:
    """Plan every value (name -> :class:`~linger.packer.graphinfo.Value`) of a graph whose
    nodes, in execution order, are named ``steps`` on ``target``.

    ``strategies``: names from :data:`STRATEGIES` to try (default: all). Raises nothing for
    capacity: an over-full plan is returned as it is and reported by the
    checker (``linger check`` lists it with the other violations).
    """
    a = target.alignment
    params = params or target.parameters
    if params not in target.memories:
        raise ConfigError(f"parameters cannot go to {params!r} on target {target.name}; its"
                          f" memories are {sorted(target.memories)}")
    n = len(steps)
    last_step = max(n - 1, 0)
    placements: dict[str, Placement] = {}
    usage = {k: MemoryUsage(k, m.capacity) for k, m in target.memories.items()}
    # parameters: back to back in their memory, live for the whole run
    cursor = 0
    for v in values.values():
        if v.kind == "param":
            placements[v.name] = Placement(v.name, params, cursor, align(max(v.nbytes, 1), a),
                                           v.nbytes, 0, last_step, "param")
            cursor += align(max(v.nbytes, 1), a)
    usage[params].params_bytes = cursor
    # activations: lifetimes, alias groups folded into their root
    span = {}
    for v in values.values():
        if v.kind == "param":
            continue
        first, last = lifetime(v, last_step)
        root = v.alias_of or v.name
        f0, l0 = span.get(root, (first, last))
        span[root] = (min(f0, first), max(l0, last))
    sizes = {name: align(max(values[name].nbytes, 1), a) for name in span}
    big = {r for r in span if sizes[r] > target.max_share_tensor}
    where = {r: ("psram" if r in big else "share") for r in span}
    if big and "psram" not in target.memories:
        raise ConfigError(f"target {target.name} has no PSRAM for tensors larger than"
                          f" placement.max_share_tensor: {sorted(big)}")
    spilled = []
    while True:
        share = [Request(r, sizes[r], *span[r]) for r in span if where[r] == "share"]
        strategy, offsets, peak = best_placement(
            share, a, usage["share"].params_bytes if params == "share" else 0, strategies)
        if peak <= usage["share"].capacity or not share or "psram" not in target.memories:
            break
        victim = _spill_choice(share, offsets, usage["share"].capacity, a)
        where[victim] = "psram"
        spilled.append(victim)
    offs = {"share": offsets}
    peaks = {"share": peak}
    for kind in ("psram",):
        reqs = [Request(r, sizes[r], *span[r]) for r in span if where[r] == kind]
        if reqs:
            _, offs[kind], peaks[kind] = best_placement(reqs, a, usage[kind].params_bytes,
                                                        strategies)
    for name, v in values.items():
        if v.kind == "param":
            continue
        root = v.alias_of or name
        first, last = lifetime(v, last_step)
        mem = where[root]
        placements[name] = Placement(name, mem, offs[mem][root], sizes[root], v.nbytes, first,
                                     last, v.kind, v.alias_of)
    for kind, u in usage.items():
        reqs = [Request(r, sizes[r], *span[r]) for r in span if where[r] == kind]
        live = live_profile(reqs, max(n, 1))
        u.lower_bound = max(live, default=0)
        u.peak_step = live.index(u.lower_bound) if reqs and n else -1
        u.peak = max(peaks.get(kind, 0), u.params_bytes)
    return MemoryPlan(a, steps, placements, usage, strategy, spilled)


def _spill_choice(share, offsets, capacity, a) -> str:
    """The share tensor to move to PSRAM: the largest one live where the plan overflows."""
    over = [r for r in share if offsets[r.name] + align(r.size, a) > capacity]
    worst = max(over, key=lambda r: (offsets[r.name] + r.size, r.name))
    rivals = [r for r in share if r.first <= worst.last and worst.first <= r.last]
    return max(rivals, key=lambda r: (r.size, r.name)).name
