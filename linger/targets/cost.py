"""A first-order cost model per target: estimated cycles of one layer from its work and traffic.

For a layer that performs ``macs`` multiply-accumulates, produces ``elements`` output values and
moves ``bytes_m`` bytes (inputs and parameters read, outputs written) in each memory ``m``::

    compute  = ceil(macs / macs_per_cycle)           if macs > 0
             = ceil(elements / elements_per_cycle)   otherwise (element-wise, tables, copies)
    transfer = sum over m of ceil(bytes_m / bytes_per_cycle[m])
    cycles   = op_overhead_cycles + max(compute, transfer)

(compute and transfer overlap: the NPU works while the DMA streams the next block). A layer whose
output is a view of its input (reshape-like ops) costs nothing. Time is ``cycles / clock_mhz``
microseconds. The parameters are the ``[cost]`` table of the target profile; the numbers in the
built-in profiles are rough assumptions for comparing layers and models with each other, not
measurements of the chip: calibrate them against the device and put yours in a custom profile.

>>> c = CostModel(clock_mhz=100, macs_per_cycle=64, elements_per_cycle=16,
...               op_overhead_cycles=200, bytes_per_cycle={"share": 16, "psram": 2})
>>> c.cycles(macs=6400, elements=100, traffic={"share": 320, "psram": 1000})
720
>>> c.cycles(macs=0, elements=1600, traffic={"share": 3200})
400
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

_KEYS = {"clock_mhz", "macs_per_cycle", "elements_per_cycle", "op_overhead_cycles",
         "bytes_per_cycle"}


@dataclass(frozen=True)
class CostModel:
    """The ``[cost]`` table of a target profile (see the module docstring for the formula)."""

    clock_mhz: float
    macs_per_cycle: int
    elements_per_cycle: int
    op_overhead_cycles: int
    bytes_per_cycle: dict = field(default_factory=dict)   # memory kind -> bytes per cycle

    def cycles(self, macs: int, elements: int, traffic: dict) -> int:
        """Estimated cycles of one layer; ``traffic``: memory kind -> bytes moved."""
        compute = (-(-macs // self.macs_per_cycle) if macs
                   else -(-elements // self.elements_per_cycle))
        transfer = sum(-(-int(b) // self.bytes_per_cycle[m]) for m, b in traffic.items() if b)
        return self.op_overhead_cycles + max(compute, transfer)

    def microseconds(self, cycles: int) -> float:
        return cycles / self.clock_mhz


def parse_cost(raw, memories, where: str) -> CostModel | None:
    """The checked :class:`CostModel` of a profile's ``cost`` table (None when absent)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: cost must be a table")
    extra, missing = sorted(set(raw) - _KEYS), sorted(_KEYS - set(raw))
    if extra or missing:
        raise ConfigError(f"{where}: cost has unknown keys {extra} / lacks {missing}; it needs"
                          f" exactly {sorted(_KEYS)} (docs/packer.md, 'Cost estimate')")
    for key in _KEYS - {"bytes_per_cycle"}:
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (
                key != "clock_mhz" and not isinstance(v, int)):
            raise ConfigError(f"{where}: cost.{key} must be a positive"
                              f" {'number' if key == 'clock_mhz' else 'integer'}, got {v!r}")
    bpc = raw["bytes_per_cycle"]
    if not isinstance(bpc, dict) or not set(memories) <= set(bpc) or any(
            isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in bpc.values()):
        raise ConfigError(f"{where}: cost.bytes_per_cycle must give a positive integer for each"
                          f" memory {sorted(memories)}, got {bpc!r}")
    return CostModel(float(raw["clock_mhz"]), raw["macs_per_cycle"], raw["elements_per_cycle"],
                     raw["op_overhead_cycles"], dict(bpc))
