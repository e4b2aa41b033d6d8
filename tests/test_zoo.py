"""The twelve zoo models convert: linger.init -> a short QAT -> export -> the runtime gives the
same bits as eval(), on random inputs and inputs that saturate; the audio models with a dynamic
time axis, at three other lengths and at batch sizes 1 and 5.

Nothing is refused first at export: every model that passes linger.init and its first training
step exports (a refusal must come earlier, as test_refusal.py shows). One model cannot have a
dynamic time axis, and the export says so: ``kwt`` slices its learned positional table to the
input length, and that slice is quantized with an exponent taken from the slice, so its result
depends on the length: a dynamic time axis is refused naming the node and the axis; it converts
at a fixed length (pad the input to ``max_frames`` to serve other lengths).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import linger
from linger.errors import ExportError
from linger.runtime import InferenceSession

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo import ZOO  # noqa: E402

#: Models whose time axis cannot be dynamic, and why (asserted below).
FIXED_LENGTH = {"kwt": "positional table sliced to the length"}


def _out(y):
    y = y[0] if isinstance(y, tuple) else y
    return y.plain() if hasattr(y, "plain") else y


def _qat(entry, make, steps=3):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = linger.init(make())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        _out(model(*entry.inputs(4, generator=gen))).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _cases(entry, dynamic):
    """(batch, length) pairs: the example's length at batch 2, then each other length at batch
    1 and 5 (or batch 1 and 5 at the fixed shape)."""
    if not dynamic:
        return [(1, None), (5, None)]
    return [(2, None)] + [(n, t) for t in entry.lengths for n in (1, 5)]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_converts_bit_exact(name):
    entry = ZOO[name]
    model = _qat(entry, entry.make)
    gen = torch.Generator().manual_seed(1)
    args = entry.inputs(2, generator=gen)
    names = ["x", "lengths"][:len(args)]
    dynamic = entry.time_axis is not None and name not in FIXED_LENGTH
    axes = {"x": {entry.time_axis: "T"}} if dynamic else None
    sess = InferenceSession(linger.onnx.export(model, args, None, input_names=names,
                                               dynamic_axes=axes))
    x_arg = sess.get_inputs()[0]
    assert x_arg.shape[0] == "N"  # batch is dynamic in every export
    if dynamic:
        assert x_arg.shape[entry.time_axis] == "T"
    for n, t in _cases(entry, dynamic):
        batch = entry.inputs(n, t, generator=gen)
        for scale in ((1.0, 1000.0) if n != 1 else (1.0,)):  # 1000: saturates every layer
            feed = tuple(a * scale if a.is_floating_point() else a for a in batch)
            with torch.no_grad():
                want = _out(model(*feed)).numpy()
            got = sess.run(None, {k: v.numpy() for k, v in zip(names, feed)})[0]
            assert got.shape == want.shape and np.array_equal(got, want), (
                f"{name} at batch {n}, length {t}, x{scale}: max diff"
                f" {np.abs(got - want).max() if got.shape == want.shape else got.shape}")


def test_kwt_dynamic_time_axis_is_refused_naming_node_and_axis():
    entry = ZOO["kwt"]
    model = _qat(entry, entry.make, steps=1)
    with pytest.raises(ExportError, match=r"node 'model\.add_forward_L\d+'.*axis 1 of input 'x'"):
        linger.onnx.export(model, entry.inputs(2), None, input_names=["x"],
                           dynamic_axes={"x": {1: "T"}})
