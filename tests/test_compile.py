"""torch.compile: a compiled QAT model trains, and its eval equals the eager model's exactly.

Under ``torch.compile`` linger takes its device path (exponents as tensors, no values read back);
QTensor and the owner-tracking hooks make dynamo fall back to eager in places (graph breaks),
which is allowed. Eval computes on exact integers, so compiled and eager eval must agree bit for
bit for the same weights and statistics.
"""

import copy
import shutil

import pytest
import torch
import torch.nn as nn

import linger
from linger.examples_models import set_seed


def _compiler_missing() -> str:
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if shutil.which("cc") is None and shutil.which("gcc") is None and shutil.which("clang") is None:
        return "no C compiler on PATH: torch.compile's inductor backend cannot build kernels"
    return ""


class _Net(nn.Module):
    """conv + BN + ReLU, a residual add (an op site), pooling and a classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y + self.conv2(y)
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.mark.skipif(bool(_compiler_missing()), reason=_compiler_missing() or "ok")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit notices inside inductor
@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace")  # scope's frame walk
def test_compiled_qat_model_trains_and_evaluates_like_eager():
    torch._dynamo.reset()
    set_seed(0)
    model = linger.init(_Net())
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)  # shares parameters and buffers with `model`
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 1, 6, 6, generator=g) for _ in range(3)]
    ys = [torch.randint(0, 3, (8,), generator=g) for _ in range(3)]
    losses = {}
    for name, net, params in (("compiled", compiled, model.parameters()),
                              ("eager", eager, eager.parameters())):
        opt = torch.optim.SGD(params, lr=0.1)
        losses[name] = []
        for x, y in zip(xs, ys):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses["compiled"])))
    # the compiled run trains like the eager one (kernels may differ in the last float bit)
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    assert bool(model.conv.output_ready) and model.linger_iq is not None  # statistics gathered

    x = torch.randn(5, 1, 6, 6, generator=g)
    with torch.no_grad():
        out_compiled = compiled.eval()(x)
        out_eager = model.eval()(x)  # same weights and statistics, eager
    assert torch.equal(out_compiled, out_eager)
    # the compiled model's state exports like any other
    onnx_model = linger.onnx.export(model, x, None)
    assert len(onnx_model.graph.node) > 0
