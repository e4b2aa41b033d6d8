"""Errors a user meets when an op runs in float: they name the op, where it ran, the real cause
and the fix -- never a bare TypeError from Python's operator protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import linger


class _Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, mask):
        return mask * self.fc(x)


def test_plain_tensor_times_quantized_works_with_on_unsupported_error(tmp_path):
    """``mask * x`` (a float model input times a quantized value) is the documented, bit-exact
    dequant boundary: it works with on_unsupported='error' as by default, and exports."""
    import linger.runtime
    torch.manual_seed(0)
    model = linger.init(_Masked(), on_unsupported="error").train()
    x, mask = torch.randn(2, 4), (torch.rand(2, 4) > 0.5).float()
    model(x, mask)
    model.eval()
    with torch.no_grad():
        want = model(x, mask).numpy()
    linger.onnx.export(model, (x, mask), tmp_path / "m.onnx", input_names=["x", "mask"])
    got = linger.runtime.InferenceSession(str(tmp_path / "m.onnx")).run(
        None, {"x": x.numpy(), "mask": mask.numpy()})[0]
    assert np.array_equal(got, want)


class _Pow(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4))
        self.head = _Square()

    def forward(self, x):
        return self.head(self.block(x))


class _Square(nn.Module):
    def forward(self, x):
        return x ** 2


def test_operator_without_quantized_version_raises_a_linger_error():
    model = linger.init(_Pow(), on_unsupported="error").train()
    with pytest.raises(linger.UnsupportedOperatorError, match=r"'pow' in 'head' \(_Square\)"):
        model(torch.randn(2, 4))


class _Token(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 4))
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        y = self.fc(x)
        return torch.cat([self.cls.expand(y.shape[0], -1, -1), y], 1) @ self.w.repeat(1, 1)


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.blk = _Token()

    def forward(self, x):
        return self.blk(x)


def test_export_error_names_the_real_cause_and_module():
    """A copy of a parameter (``repeat``) is not quantized: the error says so, names the module
    path and the source line, and gives the fix (a view)."""
    with pytest.raises(linger.UnsupportedError, match=r"blk: 'matmul'.*never quantized.*repeat"):
        linger.init(_Outer()).train()(torch.randn(2, 3, 4))  # refused on the first forward
    model = linger.init(_Outer(), on_unsupported="float").train()  # trained anyway: export
    model(torch.randn(2, 3, 4))
    model.eval()
    with pytest.raises(linger.ExportError) as info:
        linger.onnx.export(model, torch.randn(2, 3, 4), None)
    msg = str(info.value)
    assert "'matmul' in 'blk'" in msg and "test_ops_errors.py:" in msg
    assert "never quantized" in msg and "repeat" in msg and "view" in msg


def test_view_of_a_parameter_is_quantized_instead():
    model = _Outer()
    model.blk.forward = lambda x: torch.cat(
        [model.blk.cls.expand(x.shape[0], -1, -1), model.blk.fc(x)], 1) @ model.blk.w.t().t()
    model = linger.init(model).train()
    model(torch.randn(2, 3, 4))
    model.eval()
    graph = linger.onnx.export(model, torch.randn(2, 3, 4), None)
    assert {"iqCat", "MatMulInt"} <= {n.op_type for n in graph.graph.node}
