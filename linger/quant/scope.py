"""Where quantized tensor ops keep their state, under stable names.

An op such as ``a + b`` on quantized values needs an output range statistic. It lives in the
state_dict of the *owner*: the innermost module whose ``forward`` is running when the op executes
(tracked per thread by forward pre/post hooks that ``linger.init`` installs). The owner gets one
child ``linger_iq`` (an :class:`IQState`) holding one :class:`IQStat` per op *site*::

    blocks.0.linger_iq.add_forward_L42.output_range     # running max |y|
    blocks.0.linger_iq.add_forward_L42.output_ready     # True once a training batch was seen
    blocks.0.linger_iq.add_forward_L42.output_exp       # the exponent eval and export use

Site names: ``<op>_<function>_L<line>`` for an op written in the model's own code (the first
caller frame outside torch and ``linger.quant``); ``<op>`` alone for an op inside a torch built-in
module such as ``nn.Softmax`` (whose source lines belong to torch, not to the model); explicit
``quant_<name>`` for :func:`linger.quant_tensor`. The k-th execution of the same site within one
call of the owner gets ``_call<k>`` (k >= 2), e.g. in a loop. Names therefore depend on the source
code, never on the order in which different inputs visit the ops.

A fresh ``linger.init``-ed model has no sites yet; a load_state_dict pre-hook on every module
creates the sites named in the checkpoint before the values are copied, so
``load_state_dict(strict=True)`` works before any forward pass. All hooks are module-level
functions: models stay picklable (``copy.deepcopy``, ``pickle``, ``torch.multiprocessing``).
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading

import torch
import torch.nn as nn

from ..config import QuantConfig
from ..errors import NotCalibratedError, NumericError
from .functions import observe

#: Attribute (child module name) holding the op states of a module.
STATE_ATTR = "linger_iq"
#: Attribute holding the QuantConfig ops in a module use (set by linger.init).
CFG_ATTR = "_linger_op_cfg"
_DISABLED = "_linger_quant_disabled"

_local = threading.local()
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_QUANT_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_DEFAULT_CFG = QuantConfig()


class IQStat(nn.Module):
    """Output range statistic of one op site (the same buffers as a quantized layer's output)."""

    def __init__(self, device=None):
        super().__init__()
        self.register_buffer("output_range", torch.zeros((), device=device))
        self.register_buffer("output_ready", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("output_exp", torch.zeros((), dtype=torch.int32, device=device))

    def forward(self, *args):  # pragma: no cover - a container of buffers, never called
        raise RuntimeError("IQStat holds statistics only; it is not a layer")

    def observe(self, y: torch.Tensor, bits: int, momentum: float, where):
        """Update the running ``max|y|`` with this batch (reduced over DDP ranks); return the new
        exponent: an int on the CPU, a 0-dim int32 device tensor elsewhere. ``where``: the op's
        description for the error message, or a function giving it (only called on error)."""
        buf = self._buffers
        return observe(buf["output_range"], buf["output_ready"], buf["output_exp"], y, bits,
                       momentum,
                       where=lambda: f"{where() if callable(where) else where}: the output"
                                     f" contains NaN or infinity; check the data and the"
                                     f" learning rate (quantization needs finite values)")

    def stored_exp(self, where: str) -> int:
        if not bool(self.output_ready):
            raise NotCalibratedError(
                f"{where} has no output range yet: run at least one training-mode forward pass"
                f" (model.train()) before eval or export, or load a checkpoint that has it")
        r = float(self.output_range)
        if not math.isfinite(r):  # training on a GPU reports NaN/inf here, not per step
            raise NumericError(f"{where}: the output range is {r}: a training batch contained"
                               f" NaN or infinity; check the data and the learning rate")
        return int(self.output_exp)


class IQState(nn.Module):
    """The ``linger_iq`` child of a module: one :class:`IQStat` per op site, by name."""

    def forward(self, *args):  # pragma: no cover
        raise RuntimeError("IQState holds statistics only; it is not a layer")


class Frame:
    """One running ``forward``: its module, per-site call counts, whether quantization is off."""

    __slots__ = ("module", "counts", "disabled")

    def __init__(self, module, disabled):
        self.module, self.counts, self.disabled = module, {}, disabled


def _stack() -> list:
    st = getattr(_local, "stack", None)
    if st is None:
        st = _local.stack = []
    return st


def _pre_hook(module, args):
    st = _stack()
    # (linger.disable_quant sets a plain attribute: in __dict__, no Module.__getattr__ detour)
    disabled = bool(module.__dict__.get(_DISABLED, False)) or bool(st and st[-1].disabled)
    st.append(Frame(module, disabled))


def _post_hook(module, args, output):
    st = _stack()
    for i in range(len(st) - 1, -1, -1):  # also repairs the stack after an exception
        if st[i].module is module:
            del st[i:]
            if not st:  # the outermost forward returned: refuse what will not export
                from .refusal import flush
                flush(module)
            return


def owner() -> Frame | None:
    """The innermost running forward that can own state (containers are skipped), or None."""
    for fr in reversed(_stack()):
        if not isinstance(fr.module, _CONTAINERS):
            return fr
    return None


def config_of(frame: Frame | None) -> QuantConfig:
    """The QuantConfig governing ops of the owner (set by ``linger.init``)."""
    if frame is not None:
        cfg = getattr(frame.module, CFG_ATTR, None)
        if cfg is not None:
            return cfg
    return _DEFAULT_CFG


def _sanitize(name: str) -> str:
    return re.sub(r"\W", "", name) or "fn"


#: torch.compile resumes a function after a graph break in a generated code object named
#: ``torch_dynamo_resume_in_<function>_at_<line>``; sites keep the original function's name.
_DYNAMO_RESUME = re.compile(r"^torch_dynamo_resume_in_(.+)_at_\d+$")


def _code_name(code) -> str:
    m = _DYNAMO_RESUME.match(code.co_name)
    return m.group(1) if m else code.co_name


#: (code object, line, op) -> site name without the call count: the name is a function of these
_SITE_NAMES: dict = {}


def site_key(frame: Frame, op: str) -> str:
    """The stable site name of ``op`` executed now in ``frame``'s module (see module docstring)."""
    if type(frame.module).__module__.startswith("torch."):
        base = op
    else:
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename.startswith((_TORCH_DIR, _QUANT_DIR)):
            f = f.f_back
        if f is None:
            base = op
        else:
            key = (f.f_code, f.f_lineno, op)
            base = _SITE_NAMES.get(key)
            if base is None:
                base = _SITE_NAMES[key] = f"{op}_{_sanitize(_code_name(f.f_code))}_L{f.f_lineno}"
    k = frame.counts.get(base, 0) + 1
    frame.counts[base] = k
    return base if k == 1 else f"{base}_call{k}"


def get_stat(module: nn.Module, key: str, create: bool, device=None) -> IQStat | None:
    """The statistic ``module.linger_iq.<key>``; created (on ``device``) when ``create``."""
    state = module._modules.get(STATE_ATTR)
    if state is None:
        if not create:
            return None
        state = IQState()
        module.add_module(STATE_ATTR, state)
    stat = state._modules.get(key)
    if stat is None and create:
        stat = IQStat(device=device)
        state.add_module(key, stat)
    return stat


def where(frame_module: nn.Module, key: str) -> str:
    return f"op '{key}' of {type(frame_module).__name__}"


def _load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected,
                   errors):
    """Create the op sites a checkpoint names, so strict loading into a fresh model works."""
    head = prefix + STATE_ATTR + "."
    sites = {k[len(head):].split(".", 1)[0] for k in state_dict if k.startswith(head)}
    if sites:
        device = _module_device(module)
        for key in sorted(sites):
            get_stat(module, key, create=True, device=device)


def _has_hook(hooks, fn) -> bool:
    return any(h is fn or getattr(h, "hook", None) is fn for h in hooks.values())


def install(model: nn.Module, cfg: QuantConfig) -> None:
    """Install the owner-tracking hooks, the state-loading pre-hook and the op config on every
    module of ``model`` (idempotent; modules that already carry a config keep it)."""
    from .base import QuantMixin
    for m in model.modules():
        if isinstance(m, (IQState, IQStat, QuantMixin)):
            continue
        if not _has_hook(m._forward_pre_hooks, _pre_hook):
            m.register_forward_pre_hook(_pre_hook)
            m.register_forward_hook(_post_hook, always_call=True)
        if not _has_hook(m._load_state_dict_pre_hooks, _load_pre_hook):
            m._register_load_state_dict_pre_hook(_load_pre_hook, with_module=True)
        if CFG_ATTR not in m.__dict__:
            m.__dict__[CFG_ATTR] = cfg


def _module_device(m) -> torch.device:
    for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
        return t.device
    for t in m.parameters():
        return t.device
    return torch.device("cpu")
