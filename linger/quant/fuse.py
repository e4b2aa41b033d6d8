"""``linger.trace_layers``: find Conv->BatchNorm pairs and ops followed by ReLU, by running the
model once.

The model runs once, in eval mode and without gradients, on the dummy input while
:class:`_Tracer` watches (forward hooks name the leaf module running; a ``TorchFunctionMode`` sees
every torch function and which tensors it used). This works for ``nn.Sequential``, custom
``forward`` code, functional ReLUs and control flow, and nothing in ``torch`` is patched. A pair
is fused only when it is certain:

- Conv1d/Conv2d/ConvTranspose1d/ConvTranspose2d whose output has exactly one consumer, a
  BatchNorm1d/2d of as many channels that tracks running statistics, each called once;
- an op is marked *ahead ReLU* when its (fused) output's only consumer is a ReLU or ReLU6
  (module or function).

Fusing changes two objects in place: the conv becomes its stage-1 class holding a reference to the
BatchNorm (two_stage.py computes with folded weights), and the BatchNorm becomes a
:class:`FusedBatchNorm2d` pass-through that keeps its parameters and buffers under the same
state_dict keys. Calling ``trace_layers`` again finds the same pairs already fused and changes
nothing.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError
from .base import QuantMixin
from .normalize import STAGE1_CLASSES, _Stage1, float_type
from .two_stage import AHEAD_RELU_ATTR, BN_ATTR, SPEC_ATTR, fused_bn

_CONVS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d,
          nn.ConvTranspose1d: nn.BatchNorm1d, nn.ConvTranspose2d: nn.BatchNorm2d}
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCS = {F.relu, F.relu_, F.relu6, torch.relu, torch.relu_, torch.Tensor.relu,
               torch.Tensor.relu_}


class _FusedBatchNorm:
    """A BatchNorm folded into the conv before it: forward returns its input unchanged.

    Parameters and buffers stay here under their usual names (the conv reads them), so
    checkpoints keep their keys; ``linger.init`` leaves this module alone."""

    def forward(self, x):
        return x

    def extra_repr(self) -> str:
        return f"{self.num_features}, fused into '{self.__dict__.get('linger_fused_into', '?')}'"


class FusedBatchNorm1d(_FusedBatchNorm, nn.BatchNorm1d):
    pass


class FusedBatchNorm2d(_FusedBatchNorm, nn.BatchNorm2d):
    pass


_FUSED_BN = {nn.BatchNorm1d: FusedBatchNorm1d, nn.BatchNorm2d: FusedBatchNorm2d}


def trace_layers(root_model: nn.Module, target_model: nn.Module, *args, fuse_bn: bool = True,
                 ahead_conv_relu: bool = True, ahead_bn_relu: bool = True,
                 ahead_linear_relu: bool = True, dummy_input=None,
                 ahead_conv_sigmoid: bool = True, ahead_linear_sigmoid: bool = True) -> nn.Module:
    """Fuse Conv->BatchNorm pairs and mark ops followed by ReLU in ``target_model`` (``root_model``
    or one of its sub-modules), in place, by running it once on the dummy input: ``args`` (one
    tensor, several, or one tuple of them) or ``dummy_input=``. The flags are keyword-only, as in
    linger 1.x. Returns ``root_model``.

    Call it on the freshly built model, before ``normalize_layers`` and ``linger.init``, in both
    stages; checkpoints may be loaded before or after (keys do not change). Calling it again is
    harmless. ``fuse_bn``: fold BatchNorms into their conv (docs/two_stage.md);
    ``ahead_conv_relu`` / ``ahead_bn_relu`` / ``ahead_linear_relu``: a conv (fused or not),
    BatchNorm or Linear whose only consumer is a ReLU quantizes its output range from the positive
    part only. ``ahead_conv_sigmoid`` / ``ahead_linear_sigmoid`` (linger 1.x) are accepted and
    unnecessary: linger's sigmoid reads its input at the producer's own exponent.

    >>> import torch, linger
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    >>> net = linger.trace_layers(net, net, torch.zeros(1, 1, 5, 5))
    >>> net[1]
    FusedBatchNorm2d(4, fused into '0')
    >>> type(net[0]).__name__, net[0].linger_ahead_relu, list(net.state_dict())[:3]
    ('NormalizeConv2d', True, ['0.weight', '0.bias', '1.weight'])
    """
    _check_models(root_model, target_model)
    inputs = _inputs(args if dummy_input is None else (dummy_input,) + args)
    for name, flag in (("fuse_bn", fuse_bn), ("ahead_conv_relu", ahead_conv_relu),
                       ("ahead_bn_relu", ahead_bn_relu), ("ahead_linear_relu", ahead_linear_relu),
                       ("ahead_conv_sigmoid", ahead_conv_sigmoid),
                       ("ahead_linear_sigmoid", ahead_linear_sigmoid)):
        if not isinstance(flag, bool):
            raise ConfigError(f"trace_layers: {name} must be True or False, got {flag!r}")
    already = [m for m in target_model.modules() if fused_bn(m) is not None]
    if already and not fuse_bn:
        raise ConfigError(
            f"trace_layers(fuse_bn=False): {len(already)} conv+BatchNorm pairs of this model were"
            f" fused by an earlier trace_layers(fuse_bn=True) and fusion cannot be undone in"
            f" place. Build a fresh model and call trace_layers once with the settings you want")
    trace = _run(target_model, inputs)
    paths = {id(m): n for n, m in root_model.named_modules()}
    if fuse_bn:
        for conv, bn in _find_pairs(trace):
            _fuse(conv, bn, paths.get(id(conv), "?"))
    flags = {"conv": ahead_conv_relu, "bn": ahead_bn_relu, "linear": ahead_linear_relu}
    for m in target_model.modules():
        m.__dict__.pop(AHEAD_RELU_ATTR, None)
    for m in _ahead_relu_layers(trace, flags):
        m.__dict__[AHEAD_RELU_ATTR] = True
    return root_model


def _check_models(root, target):
    if not isinstance(root, nn.Module) or not isinstance(target, nn.Module):
        raise ConfigError("trace_layers(root_model, target_model, dummy_input): both models must"
                          " be torch.nn.Module instances")
    if not any(m is target for m in root.modules()):
        raise ConfigError("trace_layers: target_model must be root_model or one of its"
                          " sub-modules (pass the model twice to trace all of it)")
    quantized = [n for n, m in target.named_modules() if isinstance(m, QuantMixin)]
    if quantized:
        raise ConfigError(
            f"trace_layers must run before linger.init, but '{quantized[0]}' is already"
            f" quantized. Call trace_layers right after building the model (then"
            f" normalize_layers, then linger.init), and load checkpoints at any point")


# -- tracing ---------------------------------------------------------------------------------

class _Call:
    __slots__ = ("module", "inputs", "output")

    def __init__(self, module, inputs):
        self.module, self.inputs, self.output = module, inputs, None


class _Tracer(TorchFunctionMode):
    """Records, for every tensor, who used it: a leaf-module call (``("call", index)``) or a torch
    function called outside leaf modules (``("func", index, func)``). Uses are function calls
    that return tensors (``x.shape``, ``x.dim()`` are not uses)."""

    def __init__(self):
        super().__init__()
        self.calls: list[_Call] = []
        self.stack: list[int] = []            # indices into calls of the running leaf modules
        self.uses = defaultdict(set)          # id(tensor) -> consumer keys
        self.keep: list = []                  # keeps tensors alive so ids stay unique
        self.nfunc = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _tensors(out):
            if self.stack:
                key = ("call", self.stack[-1])
            else:
                self.nfunc += 1
                key = ("func", self.nfunc, func)
            for t in _tensors((args, kwargs)):
                self.uses[id(t)].add(key)
                self.keep.append(t)
        return out

    def pre(self, module, args):
        if not any(True for _ in module.children()):      # leaf modules only
            self.calls.append(_Call(module, args))
            self.stack.append(len(self.calls) - 1)
            self.keep.append(args)

    def post(self, module, args, output):
        if self.stack and self.calls[self.stack[-1]].module is module:
            self.calls[self.stack.pop()].output = output
            self.keep.append(output)


def _tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _inputs(args) -> tuple:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    if not args:
        raise ConfigError("trace_layers(root_model, target_model, dummy_input): the dummy input"
                          " is missing; pass a tensor shaped like a real batch (batch size 1 is"
                          " fine)")
    return args


def _run(model, inputs) -> _Tracer:
    tracer = _Tracer()
    modes = {m: m.training for m in model.modules()}
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(tracer.pre))
        handles.append(m.register_forward_hook(tracer.post))
    try:
        model.eval()                  # no BatchNorm statistics update, no dropout
        with torch.no_grad(), tracer:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return tracer


def _consumers(trace, t) -> set:
    return trace.uses.get(id(t), set()) if isinstance(t, torch.Tensor) else {None}


def _calls_of(trace, module) -> list:
    return [c for c in trace.calls if c.module is module]


def _find_pairs(trace):
    """(conv, bn) pairs to fuse, in execution order."""
    pairs = []
    for i, c in enumerate(trace.calls):
        conv = c.module
        ftype = float_type(conv)
        if ftype not in _CONVS or fused_bn(conv) is not None or _unconvertible(conv):
            continue
        users = _consumers(trace, c.output)
        if len(users) != 1:
            continue
        kind, *rest = next(iter(users))
        if kind != "call":
            continue
        b = trace.calls[rest[0]]
        bn = b.module
        if (float_type(bn) is _CONVS[ftype] and type(bn) not in _FUSED_BN.values()
                and bn.track_running_stats and bn.num_features == conv.out_channels
                and len(b.inputs) == 1 and b.inputs[0] is c.output
                and len(_calls_of(trace, conv)) == 1 and len(_calls_of(trace, bn)) == 1):
            pairs.append((conv, bn))
    return pairs


def _unconvertible(m) -> bool:
    # a user subclass with its own forward cannot be given the fused forward
    return not (type(m) in STAGE1_CLASSES or isinstance(m, _Stage1))


def _fuse(conv, bn, conv_path: str) -> None:
    if type(conv) in STAGE1_CLASSES:
        conv.__class__ = STAGE1_CLASSES[type(conv)]
    conv.__dict__[BN_ATTR] = bn                   # a plain attribute: not a sub-module, no keys
    for attr in (SPEC_ATTR, AHEAD_RELU_ATTR):     # the conv's settings now cover the pair
        bn.__dict__.pop(attr, None)
    bn.__class__ = _FUSED_BN[float_type(bn)]
    bn.__dict__["linger_fused_into"] = conv_path


def _ahead_relu_layers(trace, flags):
    """Modules whose every call's (fused) output is consumed only by a ReLU."""
    verdict = {}
    for c in trace.calls:
        m = c.module
        ftype = float_type(m)
        kind = ("conv" if ftype in _CONVS else "linear" if ftype is nn.Linear else
                "bn" if ftype in _FUSED_BN and not isinstance(m, _FusedBatchNorm) else None)
        if kind is None or not flags[kind]:
            continue
        out = c.output
        bn = fused_bn(m)
        if bn is not None:  # first trace: the BN still ran as its own call; later: pass-through
            bn_calls = _calls_of(trace, bn)
            if bn_calls and bn_calls[0].output is not None:
                out = bn_calls[0].output
        verdict[m] = verdict.get(m, True) and _only_relu(trace, out)
    return [m for m, ok in verdict.items() if ok]


def _only_relu(trace, t) -> bool:
    users = _consumers(trace, t)
    if len(users) != 1:
        return False
    kind, *rest = next(iter(users))
    if kind == "call":
        return isinstance(trace.calls[rest[0]].module, _RELU_MODULES)
    return rest[1] in _RELU_FUNCS
