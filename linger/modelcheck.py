"""``linger.check``: everything that would be refused, listed before a day of QAT.

A dry run on a copy of the model (the model itself is not touched): the static scan of layer types
``linger.init`` does, one training-mode forward pass (the ops that run in float on quantized
values), the export's trace with the given dynamic axes (every op it cannot write, not only the
first; listed when the first two found nothing, as the rest would mostly be their consequences)
and, with ``target=``, the chip's checks of the exported graph (op support, limits, memory).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from .errors import LingerError


@dataclass
class CheckReport:
    """What :func:`check` found. ``problems``: lines naming the layer/node, the op and the fix
    (empty: the model exports); ``violations``: the target's (``None``: no target checked)."""

    problems: list = field(default_factory=list)
    violations: list | None = None
    target: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and not any(v.severity == "error" for v in self.violations or ())

    def __str__(self) -> str:
        lines = [f"[export] {p}" for p in self.problems]
        lines += [f"[{v.severity}] {v.message}" for v in self.violations or ()]
        if self.ok:
            lines.append("the model exports" + (f" and fits target {self.target}"
                                                if self.target else ""))
        return "\n".join(lines)


def check(model: torch.nn.Module, example_input, target=None, *, dynamic_axes=None,
          input_names=None, dims=None, **init_kwargs) -> CheckReport:
    """List everything the export (and ``target``, if given) would refuse for ``model``.

    ``model``: a float model (it is ``linger.init``-ed on a copy with ``init_kwargs``) or an
    already quantized one. ``example_input``: a tensor or tuple of tensors. ``dynamic_axes`` and
    ``input_names`` as for :func:`linger.onnx.export`; ``dims``: sizes (or ``(min, max)``) of
    symbolic dimensions for the target check (``linger.packer.check``).

    >>> import torch, linger
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Softplus())
    >>> print(linger.check(net, torch.randn(2, 4)))  # doctest: +ELLIPSIS
    [export] 1: Softplus (softplus) has no quantized version ...
    >>> linger.check(torch.nn.Linear(4, 2), torch.randn(2, 4), target="venus").ok
    True
    """
    from . import onnx as lonnx
    from .onnx import layout
    from .quant import qtensor, refusal
    from .quant.api import _DISABLED, init
    from .quant.base import QuantMixin

    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    report = CheckReport(target=None if target is None else str(target))
    work = copy.deepcopy(model)
    saved = dict(qtensor.POLICY)
    try:
        report.problems += [str(f) for f in refusal.scan_modules(work, _DISABLED)]
        if not any(isinstance(m, QuantMixin) for m in work.modules()):
            work = init(work, **dict(init_kwargs, on_unsupported="float"))
        qtensor.POLICY["on_unsupported"] = "dequant"  # record, do not raise (collecting)
        with refusal.collecting(), torch.no_grad():
            try:
                work.train()(*inputs)
            except LingerError as e:
                report.problems.append(f"training forward: {e}")
                return report
            found = refusal.findings_for(work, refusal.take_pending())
        static = {p.split(":")[0] for p in report.problems}
        report.problems += [str(f) for f in found if f.path not in static]
        earlier = bool(report.problems)
        layout.COLLECT.problems = []
        try:
            graph = lonnx.export(work, tuple(inputs), None, input_names=input_names,
                                 dynamic_axes=dynamic_axes, check=False)
        except LingerError as e:
            graph = None
            report.problems.append(f"export: {e}")
        seen = set()
        for path, op in [] if earlier else layout.COLLECT.problems:  # else: their consequences
            if (path, op) not in seen:
                seen.add((path, op))
                report.problems.append(f"{path}: '{op}' has no exact ONNX form (on a value that"
                                       f" is not quantized; quantize it first or move it out of"
                                       f" the model)")
        if graph is not None and target is not None and not report.problems:
            from .packer import check as pack_check
            try:
                report.violations = pack_check(graph, target, dims).violations
            except LingerError as e:
                report.problems.append(f"target {target}: {e}")
    finally:
        layout.COLLECT.problems = None
        qtensor.POLICY.update(saved)
    return report


def check_script(spec: str, input_shapes=None, target=None, dims=None) -> int:
    """``linger check model.py[:ClassName]``: print :func:`check`'s report; exit status 0 when
    nothing is refused, 1 otherwise. ``ClassName`` is built without arguments; without it the
    script's ``build_model()``. Inputs: ``input_shapes`` (``"1,1,49,10"`` strings, random
    normal values), else the script's ``example_input()``."""
    import importlib.util
    import os

    from .errors import ConfigError

    path, _, cls = spec.partition(".py:")
    path = path + ".py" if cls else spec
    if not os.path.isfile(path):
        raise ConfigError(f"model script {path!r} not found")
    loader = importlib.util.spec_from_file_location("linger_check_script", path)
    mod = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mod)
    name = cls or "build_model"
    if not hasattr(mod, name):
        raise ConfigError(f"{path} defines no {name!r}; name the model class as"
                          f" {path}:ClassName or define build_model()")
    model = getattr(mod, name)()
    if input_shapes:
        try:
            shapes = [[int(d) for d in s.split(",")] for s in input_shapes]
        except ValueError:
            raise ConfigError(f"--input-shape takes comma-separated sizes such as 1,1,49,10,"
                              f" got {input_shapes}") from None
        inputs = tuple(torch.randn(*s) for s in shapes)
    elif hasattr(mod, "example_input"):
        inputs = mod.example_input()
    else:
        raise ConfigError(f"give --input-shape (e.g. --input-shape 1,1,49,10) or define"
                          f" example_input() in {path}")
    report = check(model, inputs, target, dims=dims)
    print(report)
    return 0 if report.ok else 1
