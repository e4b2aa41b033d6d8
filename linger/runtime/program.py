"""A graph compiled for one set of wanted values: the steps to run, in order.

:func:`compile_program` walks the nodes the wanted values depend on and emits

- a **fast step** where the op has a fast version (``kernels.FAST``) that accepts the node
  (constant weights, known dtypes, float32 exactness bounds): float32 channels-last integers in
  and out (``kernels/_fast.py``), constants prepared once here;
- a **plain step** (the kernel of ``kernels.KERNELS`` on canonical arrays) otherwise;
- **conversions** where a value crosses between the two forms, and right after a fast step for
  each wanted value it produces (before any later step may overwrite it).

Two rewrites that change no output bit:

- a pointwise fast op (BatchNormInt, Requant, Relu, Clip: a :class:`Stage` on its input) whose
  input is a fast value nothing else reads is folded into the step producing it: a Relu or Clip
  narrows that step's last clip (two clips in a row are one clip), another stage runs right
  after it on its output, in place;
- a fast step may overwrite its first input when that is a buffer the runtime allocated and no
  later step reads; every value is dropped after its last reader.

:func:`execute` runs the steps. A fast step that fails re-runs the node's plain kernel on the
canonical inputs, so errors read exactly as without the fast path.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ..errors import LingerError, ModelFileError, ResourceError
from .kernels import FAST
from .kernels._fast import CANON, Arg, Scratch, to_canonical, to_fast


def _fast_key(name: str) -> str:
    return name + "\0fast"  # "\0" never appears in an ONNX name


@dataclass(eq=False)
class Step:
    run: object                  # callable(args, inplace, scratch) -> list of arrays
    ins: tuple                   # value keys read ("" for an input not passed)
    outs: tuple                  # value keys written ("" for an output not kept)
    node: object                 # the graph node it serves (errors, profiling)
    kind: str                    # "plain", "fast" or "convert"
    frees: tuple = ()            # keys no later step reads
    inplace: bool = False        # a fast step may overwrite ins[0]
    op: object = None            # the FastOp of a fast step
    folded: list = field(default_factory=list)  # pointwise nodes folded into it, in order
    post: list = field(default_factory=list)    # their stages, run on outs[0] after run
    scratch: Scratch = field(default_factory=Scratch)  # its buffers kept between runs
    need: int = 0                # outputs its kernel must return (plain steps: see below)


@dataclass(eq=False)
class Program:
    steps: list
    results: dict                # wanted value name -> key holding its canonical array
    initializers: tuple          # initializer names read by plain steps or wanted
    fast: dict                   # value name -> canonical dtype of its fast form
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards the scratch buffers


def compile_program(graph, wanted, use_fast: bool = True) -> Program:
    """Steps computing ``wanted`` (value names; ``None``: every value of the graph); with
    ``use_fast=False`` plain steps only."""
    inits = graph.initializers
    if wanted is None:
        wanted = tuple(inits) + tuple(a.name for a in graph.inputs) \
            + tuple(o for n in graph.nodes for o in n.outputs if o)
        nodes = list(graph.nodes)
    else:
        needed, nodes = set(wanted), []
        for node in reversed(graph.nodes):
            if any(o in needed for o in node.outputs):
                nodes.append(node)
                needed.update(i for i in node.inputs if i)
        nodes.reverse()
    wanted_set = set(wanted)
    readers = Counter(i for n in nodes for i in n.inputs if i)
    dtypes = {name: a.dtype for name, a in inits.items()}
    dtypes.update({a.name: a.dtype for a in graph.inputs if a.dtype is not None})
    canon = set(inits) | {a.name for a in graph.inputs}   # values held in canonical form
    fast = {}                                             # value -> dtype of its fast form
    producer = {}                                         # fast key -> the fast step
    steps, owned = [], set()

    def need(name, want, node):
        """Key of ``name`` in the form ``want`` (CANON or a dtype), converting if needed;
        ``None`` when the value exists only with another integer dtype."""
        if want is CANON:
            if name not in canon:
                steps.append(Step(_converter(to_canonical, fast[name]), (_fast_key(name),),
                                  (name,), node, "convert"))
                canon.add(name)
                owned.add(name)
            return name
        if name in fast:
            return _fast_key(name) if fast[name] == want else None
        steps.append(Step(_converter(to_fast, want), (name,), (_fast_key(name),), node,
                          "convert"))
        fast[name] = want
        owned.add(_fast_key(name))
        return _fast_key(name)

    for node in nodes:
        op = _prepare(node, inits, dtypes) if use_fast else None
        if op is not None and op.pointwise and _fold(node, op, readers, wanted_set, fast,
                                                     producer):
            dtypes[node.outputs[0]] = fast[node.outputs[0]]
            _publish(node.outputs[:1], wanted_set, fast, canon, need, node)
            continue
        if op is not None:
            ins = []
            for name, want in zip(node.inputs, op.takes):
                ins.append(need(name, want, node) if name and want is not None else "")
                if ins[-1] is None:
                    break
            if None in ins:
                op = None
        if op is None:
            ins = [need(name, CANON, node) if name else "" for name in node.inputs]
            used = [k for k, o in enumerate(node.outputs) if o]  # "" marks an unused output
            steps.append(Step(_plain(node), tuple(ins), node.outputs, node, "plain",
                              need=used[-1] + 1 if used else 0))
            canon.update(o for o in node.outputs if o)
            continue
        outs = []
        for name, dt in zip(node.outputs, op.gives):
            if not name:
                outs.append("")
            elif dt is None:
                outs.append(name)
                canon.add(name)
            else:
                outs.append(_fast_key(name))
                fast[name] = dtypes[name] = dt
                if op.fresh:
                    owned.add(_fast_key(name))
        step = Step(op.run, tuple(ins), tuple(outs), node, "fast", op=op)
        steps.append(step)
        for key in outs:
            producer[key] = step
        _publish(node.outputs, wanted_set, fast, canon, need, node)

    results = {name: name for name in wanted}
    # read by a plain step, a conversion or a fast step taking it as is (a graph may feed an
    # initializer to any input)
    initializers = tuple(n for n in inits if n in wanted_set
                         or any(n in s.ins for s in steps))
    _plan_memory(steps, set(results.values()), owned)
    return Program(steps, results, initializers, fast)


def _prepare(node, inits, dtypes):
    prep = FAST.get((node.domain, node.op_type))
    if prep is None or len([o for o in node.outputs if o]) > 1:
        return None
    args = [Arg(inits.get(i), dtypes.get(i)) if i else None for i in node.inputs]
    try:
        op = prep(node.attrs, args)
    except LingerError:   # a bad attribute: the plain kernel reports it when the node runs
        return None
    except Exception as e:  # the schema let through what the preparer cannot take: a gap
        raise ModelFileError(f"{node.where}: preparing its fast kernel failed"
                             f" ({type(e).__name__}: {e}); run with fast=False to avoid it,"
                             f" and please report it with the model") from e
    if op is None or len(op.gives) < len(node.outputs):
        return None
    # an input known to have another dtype: the plain kernel refuses it by name
    for name, want in zip(node.inputs, op.takes):
        if name and want is not None and want is not CANON and dtypes.get(name) not in (None,
                                                                                         want):
            return None
    return op


def _fold(node, op, readers, wanted, fast, producer) -> bool:
    """Fold a pointwise op into the fast step producing its input (see the module doc)."""
    src = node.inputs[0]
    step = producer.get(_fast_key(src))
    if step is None or not step.op.fresh or readers[src] != 1 or src in wanted \
            or len(step.outs) != 1 or fast[src] != op.takes[0]:
        return False
    last = step.post[-1] if step.post else step.op.stage
    if last is not None and op.stage.a is None and op.stage.c is None:
        last.clip_to(op.stage.lo, op.stage.hi)       # a clip after a clip: one clip
    else:
        step.post.append(op.stage)
    out = node.outputs[0]
    del producer[_fast_key(src)]
    step.outs = (_fast_key(out),)
    producer[_fast_key(out)] = step
    del fast[src]
    fast[out] = op.gives[0]
    step.folded.append(node)
    return True


def _publish(outputs, wanted, fast, canon, need, node):
    """Wanted values a fast step produced get their canonical copy now."""
    for name in outputs:
        if name and name in wanted and name in fast:
            need(name, CANON, node)


def _plan_memory(steps, results, owned):
    """Frees after each value's last reader; in-place permission for fast steps."""
    last = {}
    for k, step in enumerate(steps):
        for key in step.ins:
            if key:
                last[key] = k
    frees = [[] for _ in steps]
    for key, k in last.items():
        if key not in results:
            frees[k].append(key)
    for k, step in enumerate(steps):
        step.frees = tuple(frees[k])
        first = step.ins[0] if step.ins else ""
        step.inplace = (step.kind == "fast" and bool(first) and first in owned
                        and first not in results and last.get(first) == k
                        and step.ins.count(first) == 1)


def _plain(node):
    fn, attrs = node.fn, node.attrs
    return lambda args, inplace, scratch: fn(args, **attrs)


def _converter(fn, dtype):
    return lambda args, inplace, scratch: [fn(args[0], dtype)]


def execute(program, initializers, feed, profile=None, budget=None) -> dict:
    """Run the steps on ``feed``; returns ``{wanted name: canonical array}``.

    ``profile``: a dict that receives ``{op_type: seconds}`` summed over the steps (conversions
    under ``"<convert>"``, folded ops joined: ``"Conv2dInt+BatchNormInt+Relu"``).
    ``budget``: a :class:`~linger.runtime.budget.Budget` checked before each step.
    """
    meter = budget.meter(program, feed) if budget is not None else None
    if not program.lock.acquire(blocking=False):  # another thread runs it: own buffers
        return _execute(program, initializers, feed, profile, False, meter)
    try:
        return _execute(program, initializers, feed, profile, True, meter)
    finally:
        program.lock.release()


def _execute(program, initializers, feed, profile, keep, meter=None):
    values = {n: initializers[n] for n in program.initializers}
    values.update(feed)
    clock = time.perf_counter if profile is not None else None
    for step in program.steps:
        args = [values[k] if k else None for k in step.ins]
        if meter is not None:
            meter.before(step, args, initializers)
        if clock:
            t0 = clock()
        try:
            outs = step.run(args, step.inplace, step.scratch if keep else Scratch())
            for stage in step.post:
                stage(outs[0])
        except MemoryError as e:
            raise ResourceError(f"{step.node.where}: the machine ran out of memory while the"
                                f" node ran ({type(e).__name__}: {e}); feed a smaller batch or"
                                f" lower max_memory_bytes so the runtime refuses it early") from e
        except Exception as e:
            _explain(program, step, args, {**initializers, **values}, e)
        if clock:
            label = "<convert>" if step.kind == "convert" else \
                "+".join(n.op_type for n in [step.node, *step.folded])
            profile[label] = profile.get(label, 0.0) + clock() - t0
        if len(outs) < step.need:
            _too_few_outputs(step, outs)
        for key, arr in zip(step.outs, outs):
            if key:
                values[key] = arr
        if meter is not None:
            meter.after(step, outs)
        for key in step.frees:
            del values[key]
    if meter is not None:
        meter.done()
    return {name: values[key] for name, key in program.results.items()}


def _too_few_outputs(step, outs):
    """A plain kernel returned fewer outputs than its node's last used one (``step.need``)."""
    last = step.need - 1
    raise ModelFileError(f"{step.node.where} declares output '{step.node.outputs[last]}' at"
                         f" position {last}; the runtime's kernel produces only"
                         f" {len(outs)} output(s)")


def _explain(program, step, args, values, error):
    """Raise the error of a failing step, worded as the node's plain kernel words it."""
    node = step.node
    if step.kind != "plain":  # re-run the plain kernels on the canonical inputs
        prev = None
        for node in [step.node, *step.folded]:
            args = [prev if k == 0 and prev is not None else None if not n else
                    values[n] if n in values else
                    to_canonical(values[_fast_key(n)], program.fast[n])
                    for k, n in enumerate(node.inputs)]
            try:
                prev = node.fn(args, **node.attrs)[0]
            except Exception as plain_error:  # MemoryError included: reported as it is
                error = plain_error
                break
        else:
            raise ModelFileError(f"{node.where}: the fast kernel failed ({type(error).__name__}:"
                                 f" {error}) where the plain kernel does not; please report"
                                 f" this") from error
    if isinstance(error, LingerError):  # a kernel's own message: add where it happened
        raise type(error)(f"{node.where}: {error}") from error
    if isinstance(error, MemoryError):
        raise ResourceError(f"{node.where}: the machine ran out of memory while the node ran;"
                            f" feed a smaller batch") from error
    shapes = [None if a is None else f"{a.dtype}{list(a.shape)}" for a in args]
    raise ModelFileError(f"{node.where} failed on inputs {shapes}: {type(error).__name__}:"
                         f" {error}. The model file passed the loader's checks, so this is a"
                         f" gap in linger's validation or a bug: please report it with the"
                         f" model") from error
