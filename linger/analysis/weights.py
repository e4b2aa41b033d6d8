"""``linger.wb_analyse``: range statistics of every floating tensor of a checkpoint.

Run it on the float model *before* ``linger.init``: a tensor flagged here (max over 10x its 99%
range) will be quantized with a grid stretched by a few outliers. Fixes: the constraint stage
(``linger.normalize_layers``), weight decay or clipping, or 16-bit parameters for that layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from ..errors import ModelFileError
from .stats import OUTLIER_RATIO, TensorStats, format_table, tensor_stats

#: Keys under which training scripts commonly nest the state dict in a checkpoint.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")

#: linger's own quantization-state buffers: statistics, not parameters (left out of the table).
_LINGER_BUFFERS = ("input_range", "input_ready", "input_exp", "output_range", "output_ready",
                   "output_exp")


def wb_analyse(checkpoint, log_path: str | os.PathLike | None = "wb_analyse.log", *,
               threshold: float = OUTLIER_RATIO, quiet: bool = False,
               save_log_path=None) -> list[TensorStats]:
    """Mean, max, 99% range and their ratios of ``|w|`` for every floating tensor; outliers flagged.

    ``checkpoint``: a state dict, an ``nn.Module``, or the path of a file saved with
    ``torch.save`` (a state dict, possibly nested under "state_dict"/"model"...). Files are read
    with ``weights_only=True``: nothing in them is executed. The table is printed (unless
    ``quiet``) and written to ``log_path`` (unless None). A row is flagged when
    ``max|w| > threshold * 99th percentile of |w|``; see :mod:`linger.analysis.stats`.

    Returns one :class:`~linger.analysis.TensorStats` per tensor, in state-dict order.
    ``save_log_path`` is the original linger's name of ``log_path``.

    >>> import torch
    >>> rows = wb_analyse({"w": torch.tensor([1.0, -1.0, 1.0, 50.0])}, None, quiet=True)
    >>> rows[0].max_abs, rows[0].outlier
    (50.0, False)
    """
    if save_log_path is not None:
        log_path = save_log_path
    state, source = _state_dict(checkpoint)
    rows = [tensor_stats(name, t, threshold) for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
            and name.rsplit(".", 1)[-1] not in _LINGER_BUFFERS]
    text = format_table(rows, f"linger.wb_analyse: {source}", threshold)
    if not quiet:
        print(text)
    if log_path is not None:
        with open(log_path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return rows


def load_checkpoint(path) -> dict:
    """The state dict stored in ``path`` (``torch.load(weights_only=True, map_location="cpu")``).

    Raises :class:`~linger.errors.ModelFileError` naming the file and what to do when it is
    missing, not a PyTorch checkpoint, damaged, holds pickled objects other than tensors, or holds
    no tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"checkpoint {path!r} does not exist (or is not a file); give the"
                             f" path of a file written by torch.save(model.state_dict(), path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... by cause
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"cannot read checkpoint {path!r}: it is not a PyTorch checkpoint, is damaged or"
            f" truncated, or pickles objects other than tensors ({type(e).__name__}: {reason})."
            f" Save the weights with torch.save(model.state_dict(), path) and pass that file,"
            f" or pass the state dict or the model itself") from None
    return extract_state_dict(obj, f"checkpoint {path!r}")


def extract_state_dict(obj, where: str = "checkpoint") -> dict:
    """The ``name -> tensor`` mapping inside ``obj``: a state dict, or a dict nesting one under
    one of :data:`WRAPPER_KEYS` (e.g. ``{"epoch": 3, "state_dict": {...}}``)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:  # state dict values are tensors, never dicts: no ambiguity
            inner = obj.get(key)
            if isinstance(inner, (Mapping, nn.Module)):
                return extract_state_dict(inner, f"{where}[{key!r}]")
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        raise ModelFileError(f"{where} holds no tensors (top-level keys: {keys}); expected a state"
                             f" dict, possibly nested under one of {list(WRAPPER_KEYS)}")
    raise ModelFileError(f"{where} is a {type(obj).__name__}, not a state dict; save"
                         f" model.state_dict() instead")


def _state_dict(checkpoint):
    if isinstance(checkpoint, (str, os.PathLike)):
        return load_checkpoint(checkpoint), os.fspath(checkpoint)
    if isinstance(checkpoint, nn.Module):
        return checkpoint.state_dict(), type(checkpoint).__name__
    return extract_state_dict(checkpoint, "state dict"), "state dict"
