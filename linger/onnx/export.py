"""``linger.onnx.export``: write a quantized model as an ONNX graph of integer operators."""

from __future__ import annotations

import os
from contextlib import contextmanager

import onnx
import torch
from onnx import helper

from ..errors import ExportError, NumericError
from ..quant import trace as qtrace
from ..quant.qtensor import QTensor
from .recorder import _NP_TO_ONNX, DOMAIN, Recorder

DEFAULT_OPSET = 17


def export(model: torch.nn.Module, args, f, input_names=None, output_names=None,
           opset_version: int = DEFAULT_OPSET, dynamic_axes=None, format: str = "linger",
           debug_dir=None, check: bool = True) -> onnx.ModelProto:
    """Export ``model`` (after QAT) to ONNX at path or file object ``f``; returns the ModelProto.

    The model runs once in eval mode on ``args`` (a tensor or a tuple of tensors) and every op it
    executes becomes a node: quantized layers as ``ai.linger`` integer ops (docs/onnx_ops.md),
    ``Quant`` where float enters the quantized region, ``Dequant`` where it leaves. The model is
    not modified: parameters, buffers and the training flag of every sub-module are as before,
    inside or outside ``torch.no_grad()``. A NaN or infinite parameter or buffer is refused with
    :class:`~linger.errors.NumericError` naming it.

    Batch (axis 0 of every input) is dynamic unless the model cannot follow it; ``dynamic_axes``
    (like torch.onnx.export, ``{input_name: {axis: dim_name}}`` or ``{input_name: [axes]}``)
    makes other axes dynamic too. Every size that depends on them is computed in the graph, or
    the export refuses naming the node and the axis (:mod:`linger.onnx.dynamic`).

    ``format="qdq"`` writes standard QuantizeLinear/DequantizeLinear + float ops instead, for
    onnxruntime and other standard tools (see :mod:`linger.onnx.qdq`). ``format="exact"`` writes
    standard ONNX (default domain only) that any ONNX runtime executes bit-identically to
    linger's integers (see :mod:`linger.onnx.exact`; refuses the ops it cannot make exact).
    ``debug_dir``: also write the intermediate graphs of each export step there.
    """
    if format not in ("linger", "qdq", "exact"):
        raise ExportError(f"format={format!r} is unknown; use 'linger', 'qdq' or 'exact'")
    if opset_version < 13:
        raise ExportError(f"opset_version={opset_version} is too old; linger needs >= 13")
    inputs = args if isinstance(args, (tuple, list)) else (args,)
    from .dynamic import trace_dynamic
    graph_model, _, implicit = trace_dynamic(trace, model, inputs, input_names, output_names,
                                             opset_version, dynamic_axes)
    if debug_dir:
        os.makedirs(debug_dir, exist_ok=True)
        onnx.save(graph_model, os.path.join(debug_dir, "1_linger_traced.onnx"))
    if check:
        onnx.checker.check_model(graph_model)
    if format != "linger":  # a rewrite into standard ONNX
        if format == "qdq":
            from .qdq import to_qdq as rewrite
        else:
            from .exact import to_exact as rewrite
        try:
            graph_model = rewrite(graph_model)
        except ExportError:
            if not implicit:
                raise
            # the implicit batch axis may be what the rewrite cannot take (the time axis of a
            # time-first RNN input): the example's batch, as asked when no axis was named
            graph_model = trace_dynamic(trace, model, inputs, input_names, output_names,
                                        opset_version, dynamic_axes, implicit_batch=False)[0]
            graph_model = rewrite(graph_model)
        if debug_dir:
            onnx.save(graph_model, os.path.join(debug_dir, f"2_{format}.onnx"))
        if check:
            onnx.checker.check_model(graph_model)
    if f is not None:
        if isinstance(f, (str, os.PathLike)):
            onnx.save(graph_model, os.fspath(f))
        else:
            f.write(graph_model.SerializeToString())
    return graph_model


def trace_model(model, inputs, input_names=None, output_names=None,
                opset_version=DEFAULT_OPSET, dynamic_axes=None) -> onnx.ModelProto:
    """Run ``model`` once in eval mode under a :class:`Recorder` and build the ModelProto."""
    return trace(model, inputs, input_names, output_names, opset_version, dynamic_axes)[0]


def trace(model, inputs, input_names=None, output_names=None, opset_version=DEFAULT_OPSET,
          dynamic_axes=None):
    """Like :func:`trace_model`, also returning the :class:`Recorder` (its traced tensors)."""
    rec = Recorder(model)
    rec.opset = opset_version  # ops whose signature changed with the opset (ReduceMax axes)
    input_names = list(input_names or [f"input{'_' + str(i) if i else ''}"
                                       for i in range(len(inputs))])
    if len(input_names) != len(inputs):
        raise ExportError(f"{len(input_names)} input_names for {len(inputs)} inputs")
    traced = []
    for name, x in zip(input_names, inputs):
        if not isinstance(x, torch.Tensor):
            raise ExportError(f"input '{name}' must be a tensor, got {type(x).__name__}")
        t = QTensor.wrap(x.detach(), None, None)
        rec.bind(t, name)
        traced.append(t)
    refuse_non_finite(model)
    modes = {m: m.training for m in model.modules()}  # each sub-module's own mode
    try:
        model.eval()
        with torch.no_grad(), qtrace.recording(rec), _module_stack(model, rec):
            out = model(*traced)
    finally:
        for m, training in modes.items():
            m.training = training
    outs = _flatten_outputs(out)
    output_names = list(output_names or [f"output{'_' + str(i) if i else ''}"
                                         for i in range(len(outs))])
    if len(output_names) != len(outs):
        raise ExportError(f"{len(output_names)} output_names for {len(outs)} model outputs")
    for name, o in zip(output_names, outs):
        src = rec.float_name(o) if isinstance(o, QTensor) and o.bits is not None \
            else rec.name_of(o)
        rec.nodes.append(helper.make_node("Identity", [src], [name], name=f"{name}.identity"))
        rec.value_info[name] = (rec.value_info[src][0], tuple(o.shape))
    built = _build(rec, input_names, output_names, opset_version, dynamic_axes or {})
    built.graph.name = type(model).__name__  # the model's own name, for the packer's report
    return built, rec


def refuse_non_finite(model: torch.nn.Module) -> None:
    """Refuse a model holding NaN or +-inf in a floating-point parameter, or in a buffer of a
    normalization layer or a linger module (running statistics, ranges).

    Quantizing such a value has no meaning (a NaN BatchNorm mean would become the int32 bias
    -2**31), so the export names the tensor instead of writing a graph that disagrees with
    ``eval()``.
    """
    for path, m in model.named_modules():
        tensors = [("parameter", n, t) for n, t in m.named_parameters(recurse=False)]
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) \
                or type(m).__module__.startswith("linger."):
            # statistics; a user's own buffer (an attention mask of -inf) is data, not a weight
            tensors += [("buffer", n, t) for n, t in m.named_buffers(recurse=False)]
        for kind, name, t in tensors:
            flat = t.detach().flatten()
            if t.is_floating_point() and not bool(torch.isfinite(flat).all()):
                bad = flat[~torch.isfinite(flat)][0].item()
                full = f"{path}.{name}" if path else name
                raise NumericError(f"{kind} '{full}' (shape {list(t.shape)}) holds {bad}; the"
                                   f" exported integer model would not match eval(). Find where"
                                   f" it became non-finite (learning rate, a zero variance...)"
                                   f" and retrain or reset it before exporting")


@contextmanager
def _module_stack(model, rec):
    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: rec.stack.append(n)))
        handles.append(m.register_forward_hook(lambda mod, a, o: _pop(rec)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _pop(rec) -> None:
    rec.stack.pop()  # a forward hook must return None, or it would replace the output


def _flatten_outputs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for k in out for t in _flatten_outputs(out[k])]
    raise ExportError(f"model output of type {type(out).__name__} is not exportable; return"
                      f" tensors (or tuples/lists/dicts of them)")


def _value_info(name, dtype, shape, dyn):
    dims = [dyn.get(i, d) for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, _NP_TO_ONNX[dtype], dims)


def _build(rec, input_names, output_names, opset, dynamic_axes):
    batch_dynamic = {ax: n for axes in dynamic_axes.values() for ax, n in
                     (axes.items() if isinstance(axes, dict) else
                      ((a, f"dim{a}") for a in axes)) if ax == 0}

    def dyn_for(name):
        axes = dynamic_axes.get(name, {})
        return axes if isinstance(axes, dict) else {a: f"{name}_dim{a}" for a in axes}
    ins = [_value_info(n, *rec.value_info[n], dyn_for(n)) for n in input_names]
    outs = [_value_info(n, *rec.value_info[n], dyn_for(n)) for n in output_names]
    io = set(input_names) | set(output_names)
    inner = [_value_info(n, dt, shape, batch_dynamic) for n, (dt, shape) in
             rec.value_info.items() if n not in io and n not in rec.initializers]
    graph = helper.make_graph(rec.nodes, "linger", ins, outs,
                              initializer=list(rec.initializers.values()), value_info=inner)
    model = helper.make_model(graph, producer_name="linger",
                              opset_imports=[helper.make_opsetid("", opset),
                                             helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = min(model.ir_version, 8 if opset <= 17 else model.ir_version)
    return model
