"""Dynamic axes: a graph that computes, at every input size, what the model computes at that size.

A traced graph only sees the example's sizes. To know which numbers in it depend on them, the
model is traced once at the example's sizes and once more per dynamic dimension, with that
dimension grown (axis 0: one more sample; any other axis: doubled, which keeps every divisibility
the example had, for strided convolutions and their transposes, or by one where the model refuses
the doubled size). Both graphs must run the same nodes; every number that differs between them
depends on the size and is resolved or refused:

- an int64 constant input of a node (Reshape/Expand shapes, Slice bounds, Split sizes): each
  element that changed is computed in the graph from the dimension of a value that changed by
  the same amounts (``Gather(Shape(v), [k])``, joined by ``Concat``); one element of a
  Reshape shape that no value explains is inferred (``-1``);
- a constant that is one row repeated along an axis (a parameter expanded to the batch:
  ``cls.expand(x.size(0), -1, -1)``) is stored once and expanded to the size read from the graph;
- an ``AvgPoolInt`` whose window is its whole input in both traces becomes ``GlobalAvgPoolInt``,
  which averages over the length it is given (docs/onnx_ops.md);
- anything else (a float constant made from the size, another attribute, different nodes) is
  refused with :class:`~linger.errors.ExportError`, naming the node, the input axis and the fix.

Then the runtime runs the graph at a third size of each named dimension and must give eval's bits
(:func:`verify`), or the export refuses.

Batch is dynamic by default: axis 0 of every input (of the first input's leading size) is named
``N`` unless ``dynamic_axes`` names it. A model whose graph cannot follow the batch keeps the
example's batch, with a warning (the runtime then refuses other batch sizes instead of computing
something else).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from onnx import helper, numpy_helper

from ..errors import ExportError

#: Name of the default (implicit) batch dimension.
BATCH = "N"


def normalize_axes(dynamic_axes, input_names, output_names, inputs,
                   implicit_batch: bool = True) -> tuple[dict, dict, set]:
    """``(axes, out_axes, defaults)``: ``axes[input] = {axis: dim_name}`` with the default batch
    axis added, ``out_axes`` the user's names for output axes, ``defaults`` the dim names that
    only the implicit batch rule introduced."""
    def norm(name, spec):
        if isinstance(spec, dict):
            return {int(a): str(n) for a, n in spec.items()}
        if isinstance(spec, (list, tuple)):
            return {int(a): f"{name}_dim{int(a)}" for a in spec}
        raise ExportError(f"dynamic_axes['{name}'] must be a dict {{axis: name}} or a list of"
                          f" axes, got {type(spec).__name__}")
    dynamic_axes = dict(dynamic_axes or {})
    known = set(input_names) | set(output_names)
    unknown = [k for k in dynamic_axes if k not in known]
    if unknown:
        raise ExportError(f"dynamic_axes names {unknown}, which are neither inputs {input_names}"
                          f" nor outputs {output_names}")
    axes, explicit = {}, set()
    for name, x in zip(input_names, inputs):
        ax = norm(name, dynamic_axes.get(name, {}))
        for a in list(ax):
            if not -x.dim() <= a < x.dim():
                raise ExportError(f"dynamic_axes['{name}'] names axis {a}, but the example input"
                                  f" has shape {list(x.shape)}")
            ax[a % x.dim()] = ax.pop(a)
        explicit |= set(ax.values())
        axes[name] = ax
    batch = BATCH if BATCH not in explicit else "batch"
    defaults = set()
    lead = inputs[0].shape[0] if inputs and inputs[0].dim() else None
    for name, x in zip(input_names, inputs):  # inputs of another leading size are not batched
        if implicit_batch and x.dim() and 0 not in axes[name] and x.shape[0] == lead:
            axes[name][0] = batch
            defaults.add(batch)
    defaults -= explicit
    out_axes = {n: norm(n, dynamic_axes[n]) for n in output_names if n in dynamic_axes}
    return axes, out_axes, defaults


def grown(inputs, input_names, axes, dim, double=True):
    """The inputs with every axis named ``dim`` grown: doubled (``double``, not for axis 0),
    else by one."""
    out, sizes = [], set()
    for name, x in zip(input_names, inputs):
        for a, n in axes[name].items():
            if n == dim:
                twice = double and a != 0
                sizes.add((int(x.shape[a]), 2 * int(x.shape[a]) if twice else x.shape[a] + 1))
                x = torch.cat([x, x if twice else x.narrow(a, 0, 1)], a)
        out.append(x)
    if len(sizes) != 1:
        raise ExportError(f"dimension '{dim}' has different sizes in the example inputs"
                          f" ({sorted(s for s, _ in sizes)}); give each its own name in"
                          f" dynamic_axes")
    return out, sizes.pop()


class _Diff:
    """What tracing at two sizes of one dimension changed, and how to compute it instead."""

    def __init__(self, dim, sizes, where):
        self.dim, self.sizes, self.where = dim, sizes, where

    def refuse(self, node, what, fix) -> ExportError:
        a, b = self.sizes
        return ExportError(
            f"node '{node}': {what} at {self.dim}={a} but not at {self.dim}={b}: it depends on the"
            f" example's size of {self.where}, so the graph would compute something else at"
            f" other sizes. {fix}")


def resolve(base, alts, axes):
    """Make graph ``base`` follow every dynamic dimension; ``alts``: ``dim -> (graph, rec,
    (size_base, size_grown))`` traced with that dimension grown. Returns the new ModelProto."""
    graph, rec = base
    nodes = list(graph.graph.node)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    consumers = {}
    for k, n in enumerate(nodes):
        for i in n.input:
            consumers.setdefault(i, []).append(k)
    inputs = [v.name for v in graph.graph.input]
    patches: dict = {}   # initializer -> {element: ("dim", value, axis) | ("infer",)}
    broadcasts: dict = {}  # initializer -> {axis: ("dim", value, axis)} it is expanded along
    global_pools: set = set()
    for dim, (alt, alt_rec, sizes) in alts.items():
        where = " and ".join(f"axis {a} of input '{n}'" for n, ax in axes.items()
                             for a, d in ax.items() if d == dim)
        diff = _Diff(dim, sizes, where)
        _same_nodes(nodes, list(alt.graph.node), diff)
        for k, (na, nb) in enumerate(zip(nodes, alt.graph.node)):
            if _attrs(na) != _attrs(nb):
                if _is_global_pool(na, rec) and _is_global_pool(nb, alt_rec):
                    global_pools.add(k)
                else:
                    changed = sorted(a for a in _attrs(na) if _attrs(na)[a] != _attrs(nb).get(a))
                    raise diff.refuse(na.name, f"attribute(s) {changed} of {na.op_type} take one"
                                      f" value", "Compute it from the input inside the model, or"
                                      " export without this dynamic axis.")
        alt_inits = {t.name: t for t in alt.graph.initializer}
        for name, a in inits.items():
            b = numpy_helper.to_array(alt_inits[name]) if name in alt_inits else None
            if b is not None and a.shape == b.shape and np.array_equal(a, b):
                continue
            users = [nodes[k] for k in consumers.get(name, [])]
            user = users[0].name if users else name
            first = min(consumers.get(name, [len(nodes)]))
            if b is not None and _broadcast_of(a, b) is not None:  # e.g. cls.expand(N, -1, -1)
                slot = broadcasts.setdefault(name, {})
                for k in _broadcast_of(a, b):
                    src = _explain(a.shape[k], b.shape[k], inputs, nodes[:first], rec, alt_rec)
                    if src is None:
                        raise diff.refuse(user, f"constant '{name}' is broadcast to"
                                          f" {a.shape[k]} along its axis {k}", "Broadcast it"
                                          " to a size read from a tensor (x.size(k)).")
                    slot[k] = src
                continue
            if b is None or a.shape != b.shape or a.dtype != np.int64 or a.ndim != 1:
                raise diff.refuse(user, f"constant '{name}' (shape {list(a.shape)}) holds one"
                                  f" value", "Make the constant from a model parameter or"
                                  " buffer of fixed size (e.g. a positional table sliced with"
                                  " x.size(1) is not exportable: pad or crop the input instead),"
                                  " or export without this dynamic axis.")
            for j in np.flatnonzero(a != b):
                src = _explain(int(a[j]), int(b[j]), inputs, nodes[:first], rec, alt_rec)
                slot = patches.setdefault(name, {})
                if j in slot and slot[j] != src:
                    raise diff.refuse(user, f"element {j} of constant '{name}' ({a.tolist()})"
                                      f" depends on more than one dimension", "Reshape with one"
                                      " dynamic dimension at a time.")
                if src is None:
                    reshape = users and all(u.op_type == "Reshape" and u.input[1] == name
                                            for u in users)
                    if not reshape or -1 in a or any(s == ("infer",) for i, s in slot.items()
                                                     if i != j):
                        raise diff.refuse(user, f"element {j} of constant '{name}'"
                                          f" ({a.tolist()} vs {b.tolist()}) takes one value",
                                          "Use sizes read from the tensor (x.size(k)) or -1,"
                                          " or export without this dynamic axis.")
                    src = ("infer",)
                slot[j] = src
    return _rewrite(graph, nodes, inits, patches, global_pools, broadcasts)


def _same_nodes(na, nb, diff) -> None:
    for x, y in zip(na, nb):
        if (x.op_type, x.domain, list(x.input), list(x.output)) != \
                (y.op_type, y.domain, list(y.input), list(y.output)):
            raise diff.refuse(x.name, f"the model runs {x.op_type} '{x.name}'", f"At the other"
                              f" size it runs {y.op_type} '{y.name}' instead: the forward takes a"
                              f" different path by size; make it the same for every size.")
    if len(na) != len(nb):
        longer = na if len(na) > len(nb) else nb
        raise diff.refuse(longer[min(len(na), len(nb))].name, f"the graph has {len(na)} nodes",
                          f"At the other size it has {len(nb)}: the forward takes a different"
                          f" path by size; make it the same for every size.")


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_global_pool(node, rec) -> bool:
    if node.op_type != "AvgPoolInt":
        return False
    a = _attrs(node)
    spatial = list(rec.value_info[node.input[0]][1][2:])
    nd = len(a["kernel_shape"])
    spatial = spatial[-nd:]
    return (list(a["kernel_shape"]) == spatial and not any(a.get("pads", []))
            and list(a.get("strides", a["kernel_shape"])) == spatial)


def _explain(va, vb, inputs, earlier, rec, alt_rec):
    """``("dim", value, axis)`` of a value whose dimension is ``va`` in the base trace and ``vb``
    grown, produced before the node that needs it (graph inputs first, then the latest)."""
    names = list(inputs) + [o for n in reversed(earlier) for o in n.output]
    for name in names:
        if name not in rec.value_info or name not in alt_rec.value_info:
            continue
        sa, sb = rec.value_info[name][1], alt_rec.value_info[name][1]
        if len(sa) != len(sb):
            continue
        for k, (x, y) in enumerate(zip(sa, sb)):
            if (x, y) == (va, vb):
                return ("dim", name, k)
    return None


def _broadcast_of(a, b):
    """The axes along which constants ``a`` and ``b`` (same rank, other sizes) are one row
    repeated, the same row in both; ``None`` when they are not."""
    if a.ndim != b.ndim or a.dtype != b.dtype:
        return None
    axes = [k for k in range(a.ndim) if a.shape[k] != b.shape[k]]
    rows = []
    for arr in (a, b):
        row = arr
        for k in axes:
            row = row.take([0], axis=k)
            if not np.array_equal(np.broadcast_to(row, arr.shape), arr):
                return None
        rows.append(row)
    return axes if axes and np.array_equal(rows[0], rows[1]) else None


def _rewrite(model, nodes, inits, patches, global_pools, broadcasts):
    for k in global_pools:
        n = nodes[k]
        a = _attrs(n)
        nodes[k] = helper.make_node("GlobalAvgPoolInt", list(n.input), list(n.output),
                                    name=n.name, domain=n.domain, exp=a["exp"], bits=a["bits"])
    for name, slot in broadcasts.items():  # one row, expanded to sizes read from the graph
        arr = inits.pop(name)
        row = arr
        for k in slot:
            row = row.take([0], axis=k)
        inits[f"{name}.row"] = row
        inits[f"{name}.shape"] = np.asarray(arr.shape, dtype=np.int64)
        patches[f"{name}.shape"] = slot
        first = min(k for k, n in enumerate(nodes) if name in n.input)
        nodes.insert(first, helper.make_node("Expand", [f"{name}.row", f"{name}.shape"], [name],
                                             name=f"{name}.expand"))
    computed = []
    for name, slot in patches.items():
        arr = inits[name].copy()
        for j, src in slot.items():
            if src == ("infer",):
                arr[j] = -1
        parts = [(j, src) for j, src in sorted(slot.items()) if src[0] == "dim"]
        if not parts:
            inits[name] = arr
            continue
        del inits[name]
        pieces, new_nodes, run = [], [], []
        for j in range(len(arr)):
            src = slot.get(j)
            if src is not None and src[0] == "dim":
                if run:
                    pieces.append(_const(inits, f"{name}.part{j}", run))
                    run = []
                out = f"{name}.dim{j}"  # Shape then Gather: opset 11 has no Shape start/end
                axis = _const(inits, f"{out}.axis", [src[2]])
                new_nodes += [helper.make_node("Shape", [src[1]], [f"{out}.shape"],
                                               name=f"{out}.shape"),
                              helper.make_node("Gather", [f"{out}.shape", axis], [out],
                                               name=out, axis=0)]
                pieces.append(out)
            else:
                run.append(int(arr[j]))
        if run:
            pieces.append(_const(inits, f"{name}.part{len(arr)}", run))
        new_nodes.append(helper.make_node("Concat", pieces, [name], name=f"{name}.concat",
                                          axis=0))
        computed.append((name, new_nodes))
    # each computed shape goes right before its first consumer
    for name, new_nodes in computed:
        first = min(k for k, n in enumerate(nodes) if name in n.input)
        nodes[first:first] = new_nodes
    g = model.graph
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), k)
                         for k, v in inits.items())
    return model


def _const(inits, name, values) -> str:
    inits[name] = np.asarray(values, dtype=np.int64)
    return name


def symbolic_shapes(model, rec, alts, axes, out_axes) -> None:
    """Declare in ``model`` every dimension that changed with a dynamic dimension: its name when
    it equals that input dimension, unknown (no value) when it is derived from it."""
    g = model.graph
    infos = list(g.input) + list(g.output) + list(g.value_info)
    for vi in infos:
        if vi.name not in rec.value_info:
            continue
        shape = rec.value_info[vi.name][1]
        dims = vi.type.tensor_type.shape.dim
        named = dict(axes.get(vi.name, {}))
        named.update(out_axes.get(vi.name, {}))
        for k in range(len(shape)):
            label = named.get(k)
            for dim, (_, alt_rec, sizes) in alts.items():
                other = alt_rec.value_info.get(vi.name, (None, shape))[1]
                if len(other) == len(shape) and other[k] != shape[k] and label is None:
                    label = dim if (shape[k], other[k]) == sizes else ""
            if label is None:
                continue
            dims[k].Clear()
            if label:
                dims[k].dim_param = label


def trace_dynamic(trace, model, inputs, input_names, output_names, opset, dynamic_axes,
                  implicit_batch: bool = True):
    """Trace ``model`` with ``trace`` (``linger.onnx.export.trace``) at the example's sizes and
    once per dynamic dimension grown; return ``(ModelProto, recorder, implicit)``: the graph
    that follows them all, the base trace's recorder, whether the implicit batch axis is in it."""
    names = list(input_names or [f"input{'_' + str(i) if i else ''}" for i in range(len(inputs))])
    base = trace(model, inputs, names, output_names, opset, None)
    outs = [v.name for v in base[0].graph.output]
    axes, out_axes, defaults = normalize_axes(dynamic_axes, names, outs, inputs, implicit_batch)
    dims = list(dict.fromkeys(d for ax in axes.values() for d in ax.values()))
    alts = {}
    for dim in dims:
        try:
            alt, sizes = _trace_grown(trace, model, inputs, names, output_names, opset, axes,
                                      dim)
            trial = dict(alts)
            trial[dim] = (alt[0], alt[1], sizes)
            resolve(_copy(base), trial, axes)  # refuses early, per dimension
        except Exception as e:
            if dim not in defaults:
                if isinstance(e, ExportError):
                    raise
                raise ExportError(f"dynamic dimension '{dim}': the model fails when it grows"
                                  f" ({type(e).__name__}: {e}); it cannot be exported with"
                                  f" this axis dynamic") from e
            warnings.warn(f"linger export: the batch axis keeps the example's size"
                          f" ({inputs[0].shape[0] if inputs[0].dim() else 1}) because {e}",
                          stacklevel=3)
            for ax in axes.values():
                for a in [a for a, d in ax.items() if d == dim]:
                    del ax[a]
            continue
        alts[dim] = trial[dim]
    model_proto = resolve(_copy(base), alts, axes) if alts else base[0]
    symbolic_shapes(model_proto, base[1], alts, axes, out_axes)
    for dim in alts:
        if dim not in defaults:
            verify(model_proto, model, inputs, names, axes, dim)
    return model_proto, base[1], bool(defaults & set(alts))


def resized(inputs, input_names, axes, dim, size):
    """The inputs with every axis named ``dim`` made ``size`` long (the example repeated)."""
    out = []
    for name, x in zip(input_names, inputs):
        for a, n in axes[name].items():
            if n == dim:
                reps = -(-size // x.shape[a])
                x = torch.cat([x] * reps, a).narrow(a, 0, size)
        out.append(x)
    return out


def verify(graph, model, inputs, input_names, axes, dim) -> None:
    """A third size, that neither trace saw: the runtime on ``graph`` must give eval's bits.

    The two traces prove the graph's numbers follow the dimension at two sizes; a size taken
    from a tensor whose length matched at both (``ceil(T/2)`` for ``floor(T/2)`` at even ``T``)
    would differ at odd ones. Sizes tried: one more than the example's, then three times it
    (which keeps its divisibility); a size the model itself refuses is skipped.
    """
    from ..runtime import InferenceSession
    from ..quant.qtensor import QTensor

    size = next(int(x.shape[a]) for n, x in zip(input_names, inputs)
                for a, d in axes[n].items() if d == dim)
    sess = None
    was_training = model.training
    for other in (size + 1, 3 * size):
        feed = resized(inputs, input_names, axes, dim, other)
        try:
            model.eval()
            with torch.no_grad():
                want = model(*feed)
        except Exception:
            continue  # the model does not take this size
        finally:
            model.train(was_training)
        want = want[0] if isinstance(want, (tuple, list)) else want
        want = (want.plain() if isinstance(want, QTensor) else want).detach().cpu().numpy()
        sess = sess or InferenceSession(graph)
        try:
            got = sess.run(None, {n: x.detach().cpu().numpy() for n, x in zip(input_names, feed)})
        except Exception as e:
            raise ExportError(f"dynamic dimension '{dim}': the exported graph fails at {dim}="
                              f"{other}, where the model runs ({type(e).__name__}: {e}); report"
                              f" this with the model") from e
        if got[0].shape != want.shape or not np.array_equal(got[0], want):
            raise ExportError(f"dynamic dimension '{dim}': at {dim}={other} the exported graph"
                              f" computes other numbers than eval (shape {list(got[0].shape)} vs"
                              f" {list(want.shape)}): a size in it follows another tensor than"
                              f" the model's. Export without this dynamic axis, and report this"
                              f" with the model")


def _trace_grown(trace, model, inputs, names, output_names, opset, axes, dim):
    """Trace with ``dim`` doubled or, if the model refuses that size (a learned positional table
    of limited length...), grown by one."""
    try:
        grown_inputs, sizes = grown(inputs, names, axes, dim)
        return trace(model, grown_inputs, names, output_names, opset, None), sizes
    except Exception:
        grown_inputs, sizes2 = grown(inputs, names, axes, dim, double=False)
        if sizes2 == sizes:
            raise
        return trace(model, grown_inputs, names, output_names, opset, None), sizes2


def _copy(base):
    graph, rec = base
    m = type(graph)()
    m.CopyFrom(graph)
    return m, rec
