"""``check`` and ``pack``: an exported ONNX model against a target, then into one binary file."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .._files import refuse_overwrite, write_atomic
from ..errors import ConfigError, ExportError
from ..targets import Target, Violation, check_op, from_node, load_target, raise_if_errors
from ..packfile import format as F
from .graphinfo import PackGraph, load
from .plancheck import assert_plan_valid
from .planner import MemoryPlan, plan_memory
from .report import MEMORY_NAMES, html_report, peak_tensors, summary_text, text_report


@dataclass
class CheckResult:
    """Every violation of a graph on a target, and the memory plan (``None`` if not planned)."""

    target: Target
    graph: PackGraph
    violations: list
    plan: MemoryPlan | None = None
    lowerings: list = field(default_factory=list)   # nodes rewritten to fit (packer.lower)

    @property
    def errors(self) -> list:
        return [v for v in self.violations if v.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def report(self, full: bool = True) -> str:
        """Text memory report (requires a plan); ``full=False``: memories and peaks only.
        Layers lowered automatically are listed after it, apart from the violations."""
        return text_report(self.graph, self.plan, self.target, self.violations, full) \
            + lowering_text(self.lowerings)

    def html(self) -> str:
        page = html_report(self.graph, self.plan, self.target, self.violations)
        if not self.lowerings:
            return page
        import html as _html
        items = "".join(f"<li>{_html.escape(str(lw))}</li>" for lw in self.lowerings)
        block = f"<h2>Lowered automatically ({len(self.lowerings)})</h2><ul>{items}</ul>"
        return page.replace("</body></html>", block + "</body></html>")


@dataclass
class PackResult(CheckResult):
    data: bytes = b""
    path: str | None = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    def summary(self) -> str:
        return summary_text(self.plan, self.target)


def check_graph(pg: PackGraph, target: Target) -> list[Violation]:
    """Every node of the graph against the target's rules, in execution order."""
    out = []
    for node in pg.nodes:
        ins = [pg.values[i] if i else None for i in node.inputs]
        outs = [pg.values[o] for o in node.outputs if o]
        q = from_node(node.op_type, node.attrs,
                      [v.shape if v is not None else None for v in ins],
                      [v.dtype.name if v is not None else None for v in ins],
                      [v.shape for v in outs], [v.dtype.name for v in outs])
        out += check_op(target, node.op_type, node.name, q)
    return out


def memory_violations(pg, plan, target) -> list[Violation]:
    """Memories whose plan exceeds their capacity, naming the layers at the peak."""
    out = []
    for kind, u in plan.memories.items():
        if u.peak <= u.capacity:
            continue
        name = MEMORY_NAMES[kind]
        what = f"{u.params_bytes} bytes of parameters" if u.params_bytes else ""
        if u.peak_step >= 0:
            node = pg.nodes[u.peak_step]
            live = peak_tensors(plan, kind)[:4]
            made = ", ".join(f"`{p.name}` ({p.size} bytes)" for p in live)
            act = (f"activations peak at step {u.peak_step} `{node.name}` ({node.op_type}) with"
                   f" {made}")
            what = f"{what} and {act}" if what else act
        cap = f"{u.capacity} bytes" + (f" ({u.capacity / 1024:g} KiB)" if u.capacity >= 1024
                                        else "")
        msg = (f"{name} needs {u.peak} bytes on target {target.name} but has {cap}: {what}."
               f" Shrink those layers (fewer channels or a"
               f" smaller input), put parameters in another memory (--params), or choose a"
               f" target with more memory.")
        out.append(Violation(target.name, "memory", name, f"memory.{kind}", "error", msg,
                             u.peak, u.capacity))
    return out


def lowering_text(lowerings) -> str:
    """The "lowered automatically" block of the reports (empty when nothing was lowered)."""
    if not lowerings:
        return ""
    lines = [f"\nlowered automatically ({len(lowerings)} layer(s); exact rewrites, see"
             f" docs/packer.md):"]
    lines += [f"  - [lowered] {lw}" for lw in lowerings]
    return "\n".join(lines) + "\n"


def lower_graph(pg: PackGraph, target: Target, violations, dims):
    """``(graph, violations, lowerings)``: ``pg`` with every node it can lower rewritten
    (:mod:`.lower`), measured again and re-checked; ``pg`` itself when nothing was lowered.
    Violations that remain get what stopped each pass appended."""
    from .lower import lower_model

    if not any(v.severity == "error" for v in violations):
        return pg, violations, []
    res = lower_model(pg.model, pg.values, pg.nodes, target)
    if res.lowerings:
        where = pg.source
        pg = load(res.model, dims)
        pg.source = pg.graph.source = where
        violations = check_graph(pg, target)
    violations = [_with_note(v, res.notes) for v in violations
                  if v.node not in res.kept or v.rule in res.kept[v.node]]
    return pg, violations, res.lowerings


def _with_note(v, notes):
    why = notes.get(v.node)
    if not why or v.severity != "error":
        return v
    return Violation(v.target, v.op_type, v.node, v.rule, v.severity,
                     f"{v.message} (Not lowered automatically: {'; '.join(dict.fromkeys(why))}.)",
                     v.value, v.limit)


def check(source, target="venus", dims=None, params=None, memory: bool = True,
          lower: bool = True) -> CheckResult:
    """List every violation of ``source`` (ONNX path, bytes or ModelProto) on ``target``:
    op support and limits of every node, then (``memory=True``) the memory plan's capacity.

    ``dims``: symbolic dimension -> size, or ``(min, max)``: then layers are checked at both ends
    and memory is planned for the largest sizes (every activation grows with its input).
    ``lower=True``: a node that breaks a limit is first rewritten into an exact equivalent the
    target runs where one exists (``.lowerings`` says how and at what cost; the plan and the
    packed file are those of the lowered graph); only what cannot be lowered is a violation.
    ``lower=False``: the graph as exported, every limit a violation."""
    target = load_target(target)
    lows, highs = split_ranges(dims)
    pg = load(source, highs)
    violations = check_graph(pg, target)
    lowerings = []
    if lower:
        pg, violations, lowerings = lower_graph(pg, target, violations, pg.dims)
    if lows != highs:  # a range: the graph must also run and conform at the smallest sizes
        seen = {v.message for v in violations}
        low = load(source, lows)
        low_violations = check_graph(low, target)
        if lower:
            low_violations = lower_graph(low, target, low_violations, low.dims)[1]
        violations += [v for v in low_violations if v.message not in seen]
    plan = None
    if memory:
        plan = _plan(pg, target, params)
        violations += memory_violations(pg, plan, target)
    return CheckResult(target, pg, violations, plan, lowerings)


def split_ranges(dims) -> tuple[dict, dict]:
    """``({dim: min}, {dim: max})`` of ``dims`` whose values are sizes or ``(min, max)``."""
    lows, highs = {}, {}
    for name, v in (dims or {}).items():
        lo, hi = (v, v) if isinstance(v, int) else v
        if not 1 <= int(lo) <= int(hi):
            raise ConfigError(f"dimension '{name}': range {lo}:{hi} must have 1 <= min <= max")
        lows[name], highs[name] = int(lo), int(hi)
    return lows, highs


def _plan(pg, target, params):
    plan = plan_memory(pg.values, [n.name for n in pg.nodes], target, params)
    assert_plan_valid(plan, pg.nodes, [a.name for a in pg.graph.inputs],
                      [o.name for o in pg.graph.outputs],
                      {k for k, v in pg.values.items() if v.kind == "param"},
                      {k: v.nbytes for k, v in pg.values.items()},
                      {k: m.capacity for k, m in target.memories.items()})
    return plan


def pack(source, output=None, target="venus", dims=None, params=None, force: bool = False,
         report_html=None, lower: bool = True) -> PackResult:
    """Check, plan and write ``source`` as a packed model for ``target``.

    ``output``: path to write (``None``: only returned in ``.data``). ``dims``: sizes of symbolic
    input dimensions, or ``(min, max)`` ranges (planned for max; see :func:`check`; a symbolic
    batch axis defaults to 1). ``params``: memory of parameters
    (``"flash"``/``"psram"``; default: the profile's). ``force``: write even if there are
    violations (they stay listed in the result). ``lower``: rewrite layers that break a limit
    into exact equivalents the target runs (see :func:`check`). Raises
    :class:`~linger.errors.TargetError` listing every violation otherwise.

    Files are written atomically (a temporary file in the same directory, then
    ``os.replace``): a crash or a full disk never leaves a half-written model. Writing over
    the input model (``-o`` naming the source, or a ``.bin`` repacked to its own name) is
    refused with :class:`~linger.errors.ConfigError` before anything is read.
    """
    refuse_overwrite([source], {"output": output, "HTML report": report_html})
    t0 = time.perf_counter()
    res = check(source, target, dims, params, lower=lower)
    t1 = time.perf_counter()
    if not force:
        raise_if_errors(res.violations, f"{res.graph.source} (use force=True / --force to pack"
                                        f" anyway)")
    pm = build_packed(res.graph, res.plan, res.target)
    data = F.write(pm)
    t2 = time.perf_counter()
    out = PackResult(res.target, res.graph, res.violations, res.plan, res.lowerings, data, None)
    if output is not None:
        out.path = os.fspath(output)
        write_atomic(out.path, data)
    if report_html is not None:
        write_atomic(report_html, out.html().encode("utf-8"))
    out.seconds = time.perf_counter() - t0
    out.timings = {"check_and_plan": t1 - t0, "write": t2 - t1}
    return out


# -- PackGraph + plan -> PackedModel -------------------------------------------------------------
def build_packed(pg: PackGraph, plan: MemoryPlan, target: Target) -> F.PackedModel:
    from .. import __version__

    ids = {name: i for i, name in enumerate(pg.values)}
    outputs = {o.name for o in pg.graph.outputs}
    inputs = {a.name for a in pg.graph.inputs}
    tensors, params = [], {}
    for name, v in pg.values.items():
        p = plan.placements[name]
        flags = ((F.F_INPUT if name in inputs else 0) | (F.F_OUTPUT if name in outputs else 0)
                 | (F.F_PARAM if v.kind == "param" else 0) | (F.F_ALIAS if p.alias_of else 0))
        if v.dtype.name not in F.DTYPE_CODES or len(v.shape) > F.MAX_DIMS:
            raise ExportError(f"value '{name}' ({v.dtype}, rank {len(v.shape)}) cannot be packed:"
                              f" supported dtypes {sorted(F.DTYPE_CODES)}, rank <= {F.MAX_DIMS}")
        tensors.append(F.TensorRecord(name, v.dtype.name, v.shape, flags, p.memory,
                                      ids[p.alias_of] if p.alias_of else -1, p.first, p.last,
                                      p.offset, v.nbytes, p.size))
        if v.kind == "param":
            params[ids[name]] = pg.graph.initializers[name]
    protos = {tuple(n.output): n for n in pg.model.graph.node}
    ops = []
    for node in pg.nodes:
        proto = protos[tuple(node.outputs)]
        ops.append(F.OpRecord(node.op_type, node.domain, node.name,
                              [ids[i] if i else -1 for i in node.inputs],
                              [ids[o] if o else -1 for o in node.outputs],
                              [_attr(a, node) for a in proto.attribute]))
    inits = set(pg.graph.initializers)
    ios = ([_io(v, ids) for v in pg.model.graph.input if v.name not in inits],
           [_io(v, ids) for v in pg.model.graph.output])
    memories = [F.MemoryRecord(k, plan.alignment, u.capacity, u.params_bytes, u.peak,
                               u.lower_bound) for k, u in plan.memories.items()]
    return F.PackedModel(target.id, target.name,
                         [(o.domain, o.version) for o in pg.model.opset_import],
                         pg.model.ir_version, pg.model.graph.name, f"linger {__version__}",
                         dict(pg.dims), tensors, ops, ios[0], ios[1], memories, plan.strategy,
                         params)


def _attr(a, node):
    from onnx import AttributeProto, numpy_helper  # only here: `linger --help` stays light

    t = a.type
    if t == AttributeProto.INT:
        return a.name, F.A_INT, a.i
    if t == AttributeProto.FLOAT:
        return a.name, F.A_FLOAT, a.f
    if t == AttributeProto.STRING:
        return a.name, F.A_STRING, a.s
    if t == AttributeProto.INTS:
        return a.name, F.A_INTS, list(a.ints)
    if t == AttributeProto.FLOATS:
        return a.name, F.A_FLOATS, list(a.floats)
    if t == AttributeProto.STRINGS:
        return a.name, F.A_STRINGS, list(a.strings)
    if t == AttributeProto.TENSOR:
        arr = numpy_helper.to_array(a.t)
        if arr.dtype.name in F.DTYPE_CODES and arr.ndim <= F.MAX_DIMS:
            return a.name, F.A_TENSOR, arr
    raise ExportError(f"{node.where}: attribute '{a.name}' (type {t}) cannot be packed")


def _io(v, ids) -> F.IORecord:
    tt = v.type.tensor_type
    dims = None
    if tt.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else
                (d.dim_param if d.HasField("dim_param") else None) for d in tt.shape.dim]
    return F.IORecord(ids[v.name], tt.elem_type, dims)
