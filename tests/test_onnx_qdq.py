"""QDQ export: standard ONNX that onnxruntime runs, close to linger's integer results.

The documented bound (docs/export.md): the final output differs from linger's eval by at most
``QDQ_STEPS`` steps of the output scale. QuantizeLinear rounds half to even where linger rounds
half up, and float sums are not exact, so a requantization can land one integer away; the
differences compound through the layers of a deep graph.
"""

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

import linger
from linger.examples_models import DepthwiseCNN, SmallResNet, set_seed

ort = pytest.importorskip("onnxruntime")

QDQ_STEPS = 8

_spec = importlib.util.spec_from_file_location(
    "ops_model", pathlib.Path(__file__).with_name("test_ops_model.py"))
ops_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ops_model)


def _steps(model, x, level):
    m = linger.onnx.export(model, x, None, format="qdq")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    got = ort.InferenceSession(m.SerializeToString(), opts).run(None, {"input": x.numpy()})[0]
    want = model(x).detach().numpy()
    dq = [n for n in linger.onnx.export(model, x, None).graph.node if n.op_type == "Dequant"][-1]
    exp = next(a.i for a in dq.attribute if a.name == "exp")
    return float(np.abs(got - want).max() * 2.0 ** exp)


def _calibrated(factory, x, seed):
    set_seed(seed)
    model = linger.init(factory())
    for _ in range(3):
        model(x)
    return model.eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_residual_cnn_qdq_runs_in_onnxruntime_within_bound(seed):
    x = torch.randn(8, 3, 32, 32)
    model = _calibrated(SmallResNet, x, seed)
    steps = _steps(model, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert steps <= QDQ_STEPS


def test_depthwise_cnn_qdq_within_bound():
    x = torch.randn(8, 3, 32, 32)
    model = _calibrated(DepthwiseCNN, x, 0)
    assert _steps(model, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL) <= QDQ_STEPS


def test_attention_model_qdq_within_bound_with_basic_optimizations():
    # onnxruntime 1.32's extended QDQ fusions (QLinearSoftmax) reject int8 softmax graphs:
    # ORT_ENABLE_BASIC runs them (docs/export.md).
    x = ops_model._data(8)[0]
    model = _calibrated(ops_model.MixNet, x, 0)
    assert _steps(model, x, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC) <= QDQ_STEPS
