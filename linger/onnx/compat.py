"""``linger.onnx.export`` with the keywords of ``torch.onnx.export`` and of the original linger,
opset 11/12 output, and nested / keyword model inputs.

The core exporter (:mod:`linger.onnx.export`) writes an opset >= 13 graph from flat tensor inputs;
this front end maps everything an original linger script passes onto it (docs/export.md, "Keywords
of torch.onnx.export and of the original linger", and docs/migration.md).
"""

from __future__ import annotations

import inspect
import os

import onnx
import torch

from ..errors import ConfigError, ExportError
from ..onnx_opsets import NATIVE_OPSET, OLD_OPSETS, downgrade
from .export import DEFAULT_OPSET
from .export import export as _core_export  # (the package's `export` is this module's)
from .float_tail import check_no_island

#: Keywords accepted for compatibility that change nothing in linger's graph, and why.
ACCEPTED_UNNECESSARY = {
    "do_constant_folding": "linger's graph has no foldable float subgraph: every constant is"
                           " already an initializer",
    "operator_export_type": "linger writes standard ONNX and ai.linger operators only; there is"
                            " no ATen fallback to choose",
    "is_update_dequant": "linger places every Dequant while it traces; the original's repair"
                         " pass does not exist",
    "is_scoped_info": "node names are always the PyTorch module paths (``backbone.3.conv``)",
    "strip_doc_string": "linger writes no doc strings",
    "example_outputs": "the outputs come from running the model on ``args``",
    "_retain_param_name": "initializers are always named after the parameters",
    "dynamo": "linger has its own tracer; torch's TorchScript/dynamo choice does not apply",
    "custom_opsets": "linger declares its ai.linger opset itself",
}

_REFUSED_TRUE = {
    "aten": "an ATen graph cannot hold linger's integer operators",
    "export_raw_ir": "a raw TorchScript IR graph cannot hold linger's integer operators",
    "is_input_quant": "linger graphs take float inputs and begin with a Quant node; feed the"
                      " float input (the runtime quantizes it bit-exactly)",
}


def export(model, args, f=None, input_names=None, output_names=None,
           opset_version: int = DEFAULT_OPSET, dynamic_axes=None, *, kwargs=None,
           export_params: bool = True, verbose: bool = False, training=None,
           keep_initializers_as_inputs=None, debug_dump: bool = False,
           enable_onnx_checker=None, use_external_data_format: bool = False,
           **options) -> onnx.ModelProto:
    """Export ``model`` (after QAT) to ONNX at path or file object ``f``; returns the ModelProto.

    The integer graph itself is described in :func:`linger.onnx.export.export` (docs/export.md).
    Here, on top of it:

    - ``args``: a tensor, a tuple of tensors, nested tuples/lists/dicts of tensors, or a tuple
      whose last element is a dict (keyword arguments of ``forward``, as torch.onnx.export);
      ``kwargs=``: keyword arguments of ``forward``. Graph inputs are the tensors in order
      (default names ``input``, ``input_1``... for flat positional inputs; the keyword names and
      ``<name>_<index/key>`` paths otherwise).
    - ``opset_version``: 11 or 12 writes the opset-11/12 forms of the standard ops
      (:mod:`linger.onnx_opsets`); 13 and above as before.
    - torch.onnx.export's keywords: ``export_params`` (must be True: the integer parameters are the
      model), ``verbose`` (print the graph), ``training`` (only eval/``False``/``PRESERVE``: the
      graph is the model's eval() computation), ``keep_initializers_as_inputs`` (also list the
      parameters as graph inputs), ``enable_onnx_checker`` (= ``check``),
      ``use_external_data_format`` (parameters in ``<f>.data``); accepted and unnecessary:
      :data:`ACCEPTED_UNNECESSARY`.
    - the original linger's keywords: ``debug_dump=True`` writes the intermediate graphs next to
      ``f`` (``<f stem>_debug/``); ``is_update_dequant``, ``is_scoped_info`` are accepted and
      unnecessary; ``is_input_quant=True``, ``aten=True``, ``export_raw_ir=True`` are refused
      with the reason.

    Any other keyword is a :class:`~linger.errors.ConfigError` naming it and the valid ones.
    """
    core_options = _split_options(options)
    if export_params is not True:
        raise ConfigError("export_params=False: a linger graph always carries its integer"
                          " parameters (they are the quantized model); drop the keyword")
    _check_training(training)
    if enable_onnx_checker is not None:
        core_options["check"] = bool(enable_onnx_checker)
    if debug_dump and not core_options.get("debug_dir"):
        core_options["debug_dir"] = _debug_dir(f)
    opset_version = DEFAULT_OPSET if opset_version is None else int(opset_version)
    old = opset_version in OLD_OPSETS
    if opset_version < OLD_OPSETS[0]:
        raise ExportError(f"opset_version={opset_version} is too old; linger writes opset 11, 12"
                          f" or >= {NATIVE_OPSET}")
    if old and core_options.get("format", "linger") != "linger":
        raise ExportError(f"format={core_options['format']!r} writes the opset its standard"
                          f" operators need (int16/int32 QuantizeLinear, integer ops: >= 13);"
                          f" opset_version={opset_version} applies to format='linger' only."
                          f" Drop opset_version or use format='linger'")
    target, flat, names = structured(model, args, kwargs, input_names)
    graph = _core_export(target, tuple(flat), None, names, output_names,
                        NATIVE_OPSET if old else opset_version, dynamic_axes, **core_options)
    check_no_island(graph)
    if old:
        graph = downgrade(graph, opset_version)
        if core_options.get("debug_dir"):
            onnx.save(graph, os.path.join(core_options["debug_dir"],
                                          f"2_opset{opset_version}.onnx"))
        if core_options.get("check", True):
            onnx.checker.check_model(graph)
    if keep_initializers_as_inputs:
        graph.graph.input.extend(onnx.helper.make_tensor_value_info(
            t.name, t.data_type, list(t.dims)) for t in graph.graph.initializer)
    if verbose:
        print(onnx.printer.to_text(graph.graph))
    _save(graph, f, use_external_data_format)
    return graph


def export_debug(model, args, f, debug_dir=None, **kw):
    """The original linger's ``export_debug``: :func:`export` writing every intermediate graph
    (``debug_dir``, default ``<f stem>_debug/``), then a layer-by-layer check of the runtime
    against PyTorch eval. Returns the :class:`linger.validate.Report` (``.ok`` is True when every
    value is bit-exact; otherwise it names the first node that differs)."""
    from ..runtime import InferenceSession
    from ..validate import capture, compare, tail_values

    kw["debug_dir"] = debug_dir or _debug_dir(f)
    graph = export(model, args, f, **kw)  # the file as written (opset 11/12 included) is checked
    target, flat, names = structured(model, args, kw.get("kwargs"), kw.get("input_names"))
    _, reference = capture(target, tuple(flat), names)
    sess = InferenceSession(graph)
    actual = sess.run_with_intermediates({i.name: reference[i.name] for i in sess.get_inputs()})
    report = compare(reference, actual, list(actual), tail_values(graph))
    with open(os.path.join(kw["debug_dir"], "validate.txt"), "w") as out:
        out.write(str(report) + "\n")
    return report


def structured(model, args, kwargs=None, input_names=None):
    """``(callable model, flat tensors, input names)`` for ``args`` of any nesting: the callable
    rebuilds the nesting from the flat tensors and calls ``model`` with it."""
    if isinstance(args, dict):
        args, kwargs = (), {**args, **(kwargs or {})}
    elif isinstance(args, (tuple, list)) and args and isinstance(args[-1], dict):
        args, kwargs = tuple(args[:-1]), {**args[-1], **(kwargs or {})}
    elif not isinstance(args, (tuple, list)):
        args = (args,)
    kwargs = dict(kwargs or {})
    flat_plain = not kwargs and all(isinstance(a, torch.Tensor) for a in args)
    leaves, paths = [], []
    template = (_collect(tuple(args), leaves, paths, ()), _collect(kwargs, leaves, paths, ()))
    if flat_plain:
        return model, list(args), input_names
    if input_names is None:
        input_names = [_default_name(path) for path in paths]
    return _Structured(model, template), leaves, input_names


def _default_name(path) -> str:
    """``input``, ``input_1``... for positional paths (as the core exporter names flat inputs),
    the keyword (``mask``, ``mask_0``) for keyword arguments."""
    if isinstance(path[0], int):
        return "input" if path == (0,) else "input_" + "_".join(str(p) for p in path)
    return "_".join(str(p) for p in path)


class _Structured:
    """Calls ``model`` with the nesting of the original arguments rebuilt around flat tensors;
    otherwise behaves as ``model`` (eval/train/named_modules, attributes)."""

    def __init__(self, model, template):
        self.__dict__["_model"], self.__dict__["_template"] = model, template

    def __call__(self, *flat):
        pos, kw = _fill(self._template, iter(flat))
        return self._model(*pos, **kw)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        setattr(self._model, name, value)


_LEAF = object()


def _collect(obj, leaves, paths, path):
    if isinstance(obj, torch.Tensor):
        leaves.append(obj)
        paths.append(path)
        return _LEAF
    if isinstance(obj, dict):
        return {k: _collect(v, leaves, paths, path + (k,)) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_collect(v, leaves, paths, path + (i,)) for i, v in enumerate(obj))
    return obj  # a python constant passed through unchanged


def _fill(template, it):
    if template is _LEAF:
        return next(it)
    if isinstance(template, dict):
        return {k: _fill(v, it) for k, v in template.items()}
    if isinstance(template, (tuple, list)):
        return type(template)(_fill(v, it) for v in template)
    return template


def _split_options(options):
    core_params = set(inspect.signature(_core_export).parameters) - {
        "model", "args", "f", "input_names", "output_names", "opset_version", "dynamic_axes"}
    out = {}
    for key, value in options.items():
        if key in core_params:
            out[key] = value
        elif key in _REFUSED_TRUE:
            if value:
                raise ConfigError(f"{key}={value!r} is not supported: {_REFUSED_TRUE[key]}."
                                  f" Drop the keyword")
        elif key not in ACCEPTED_UNNECESSARY:
            valid = sorted(core_params | set(ACCEPTED_UNNECESSARY) | set(_REFUSED_TRUE) | {
                "input_names", "output_names", "opset_version", "dynamic_axes", "kwargs",
                "export_params", "verbose", "training", "keep_initializers_as_inputs",
                "debug_dump", "enable_onnx_checker", "use_external_data_format"})
            raise ConfigError(f"linger.onnx.export got an unknown keyword {key!r}; valid: {valid}")
    return out


def _check_training(training):
    if training is None or training is False:
        return
    mode = getattr(training, "name", str(training))
    if mode in ("EVAL", "PRESERVE"):
        return
    raise ConfigError(f"training={training!r}: linger exports the model's eval() integer"
                      f" computation only (training-mode fake quantization has no integer"
                      f" graph); drop the keyword or pass torch.onnx.TrainingMode.EVAL")


def _debug_dir(f):
    if isinstance(f, (str, os.PathLike)):
        return os.path.splitext(os.fspath(f))[0] + "_debug"
    return "linger_export_debug"


def _save(graph, f, external):
    if f is None:
        return
    if isinstance(f, (str, os.PathLike)):
        path = os.fspath(f)
        if external:
            onnx.save_model(graph, path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(path) + ".data", size_threshold=0)
            onnx.load_external_data_for_model(graph, os.path.dirname(path) or ".")
        else:
            onnx.save(graph, path)
    elif external:
        raise ConfigError("use_external_data_format=True needs a file path for f (the"
                          " parameters go to a file next to it)")
    else:
        f.write(graph.SerializeToString())


def parser_dequant(onnx_model, is_change_in_out_type=False):
    """Refused with the reason: the original's Dequant repair pass. linger's exporter places
    every Dequant while it traces, so there is nothing to repair; export with
    :func:`export`."""
    from ..errors import UnsupportedError
    raise UnsupportedError("parser_dequant is not needed: linger.onnx.export places every"
                           " Dequant while it traces. Export with linger.onnx.export")
