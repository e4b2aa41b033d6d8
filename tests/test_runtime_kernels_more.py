"""Runtime kernels of the standard ops added for published networks, against onnxruntime:
ReduceMax/ReduceMin/ArgMax/ArgMin on integers (with ties) and Or on bool masks."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from onnx import TensorProto

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_runtime_kernels as rk  # noqa: E402

sys.path.pop(0)
rk._ONNX_TYPE.setdefault(np.dtype(np.bool_), TensorProto.BOOL)

RNG = np.random.default_rng(7)
X = RNG.integers(-3, 3, size=(2, 5, 6)).astype(np.int8)  # many ties
X16 = RNG.integers(-300, 300, size=(3, 4)).astype(np.int16)
X16[1, 2] = X16[0, 2] = 300  # a tie


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes,keep", [([1], 0), ([1, 2], 1), ([-1], 1), (None, 0)])
def test_reduce_max_min_vs_onnxruntime(op, axes, keep):
    attrs = {"keepdims": keep} if axes is None else {"axes": axes, "keepdims": keep}
    rk.vs_ort(op, {"x": X}, **attrs)


def test_reduce_and_arg_on_int16():
    """ONNX's type lists of these ops stop at int8; linger's runtime also takes 16-bit data."""
    from linger.runtime.kernels.reduce import arg_max, reduce_min
    assert np.array_equal(reduce_min([X16], axes=[1], keepdims=0)[0], X16.min(1))
    assert reduce_min([X16], axes=[1], keepdims=0)[0].dtype == np.int16
    assert np.array_equal(arg_max([X16], axis=0, keepdims=1)[0], X16.argmax(0)[None])


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis,keep,last", [(1, 0, 0), (-1, 1, 0), (0, 0, 1), (2, 1, 1)])
def test_arg_max_min_vs_onnxruntime(op, axis, keep, last):
    rk.vs_ort(op, {"x": X}, axis=axis, keepdims=keep, select_last_index=last)


def test_or_vs_onnxruntime():
    a = RNG.random((2, 1, 1, 6)) > 0.5
    b = RNG.random((5, 6)) > 0.7
    rk.vs_ort("Or", {"a": a, "b": b})
