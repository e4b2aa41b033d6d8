"""The memory bound of a run: before each node runs, what it may allocate (its schema's
estimate, :func:`linger.runtime.schema.node_memory`, from the actual input shapes) plus what the
run already holds must stay within the session's ``max_memory_bytes``.

A run whose input shapes were already checked under the same limit skips the accounting: the
shapes every node sees depend only on the input shapes and the constants.
"""

from __future__ import annotations

import numpy as np

from ..errors import LingerError, ResourceError
from .schema import In, node_memory

#: Default ``max_memory_bytes`` of a session: 4 GiB.
DEFAULT_MAX_MEMORY = 4 << 30
#: Canonical integer arrays up to this many elements are shown to the estimates by value
#: (shape, pads and axes vectors).
_SMALL = 64


def size_text(n: int) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class Budget:
    """The limit of one session and the input signatures already checked under it."""

    def __init__(self, limit: int | None):
        if limit is not None and (not isinstance(limit, (int, np.integer)) or limit <= 0):
            raise ValueError(f"max_memory_bytes must be a positive int or None, got {limit!r}")
        self.limit = DEFAULT_MAX_MEMORY if limit is None else int(limit)
        self._checked: set = set()

    def meter(self, program, feed) -> "Meter | None":
        """A :class:`Meter` for this run, ``None`` when these shapes were already checked."""
        key = (id(program), tuple((k, v.shape, v.dtype.str) for k, v in sorted(feed.items())))
        if key in self._checked:
            return None
        return Meter(self, key, program, sum(v.nbytes for v in feed.values()))


class Meter:
    """Running total of the bytes a run holds, checked before each node."""

    def __init__(self, budget, key, program, held):
        self.budget, self.key, self.program, self.held = budget, key, program, held
        self.owned: dict = {}                     # value key -> bytes, for values the run made

    def before(self, step, args, initializers) -> None:
        ins = []
        if step.kind == "convert":
            need = 2 * sum(a.nbytes for a in args if a is not None)
        else:
            ins = self._ins(step, args, initializers)
            try:
                need = node_memory(step.node, ins, step.kind == "fast")
            except LingerError as e:  # the geometry does not fit: as the kernel would say
                raise type(e)(f"{step.node.where}: {e}") from e
        if self.held + need > self.budget.limit:
            node = step.node
            shapes = {n: list(i.shape) for n, i in zip(node.inputs, ins) if n and i is not None}
            raise ResourceError(
                f"{node.where} would need about {size_text(need)} for inputs {shapes}"
                f" ({size_text(self.held)} already held), above the session's limit"
                f" max_memory_bytes={self.budget.limit} ({size_text(self.budget.limit)}). Feed"
                f" a smaller batch, or pass a larger max_memory_bytes to InferenceSession if the"
                f" machine has the memory")

    def after(self, step, outs) -> None:
        for key, arr in zip(step.outs, outs):
            if key and hasattr(arr, "nbytes"):
                self.held += arr.nbytes - self.owned.get(key, 0)
                self.owned[key] = arr.nbytes
        for key in step.frees:
            self.held -= self.owned.pop(key, 0)

    def done(self) -> None:
        if len(self.budget._checked) >= 4096:  # many input shapes (variable lengths): forget
            self.budget._checked.clear()
        self.budget._checked.add(self.key)

    def _ins(self, step, args, initializers) -> list:
        """The node's inputs as the estimates see them: canonical shape and dtype."""
        node = step.node
        out = []
        for k, name in enumerate(node.inputs):
            key = step.ins[k] if k < len(step.ins) else ""
            a = args[k] if k < len(args) else None
            if not name:
                out.append(None)
            elif a is None:
                c = initializers.get(name)
                out.append(None if c is None else In(c.shape, c.dtype, _small(c)))
            elif key != name:                        # fast form: (N, *S, C) float32
                shape = a.shape if a.ndim < 3 else (a.shape[0], a.shape[-1], *a.shape[1:-1])
                out.append(In(shape, np.dtype(self.program.fast[name]), None))
            else:
                out.append(In(a.shape, a.dtype, _small(a)))
        return out


def _small(a):
    return a if a.size <= _SMALL and a.dtype.kind in "iu" else None
