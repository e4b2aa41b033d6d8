"""Dynamic batch and length: exported graphs compute at every size what eval() computes there."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import linger
from linger import packer
from linger.errors import ConfigError, ExportError, InputError
from linger.packer.cli import main as pack_main
from linger.packer.reader import read
from linger.runtime import InferenceSession


def _qat(model, make_input, steps=3):
    model = linger.init(model)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    for _ in range(steps):
        model(make_input()).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _assert_exact(model, sess, x, name="x"):
    with torch.no_grad():
        ref = model(x)
    out = sess.run(None, {name: x.numpy()})[0]
    assert out.shape == tuple(ref.shape) and np.array_equal(out, ref.numpy()), (
        f"input {list(x.shape)}: max diff {np.abs(out - ref.numpy()).max()}")


class GRUHead(nn.Module):
    """conv -> GRU -> last step + global mean over time: every size-dependent pattern at once."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):                                  # (N, T, 8)
        y = self.conv(x.transpose(1, 2)).relu()            # (N, 16, T)
        y, _ = self.gru(y.transpose(1, 2))                 # (N, T, 16)
        y = y[:, -1, :] + self.pool(y.transpose(1, 2)).flatten(1)
        return self.fc(y)


@pytest.fixture(scope="module")
def gru_model():
    torch.manual_seed(0)
    return _qat(GRUHead(), lambda: torch.randn(4, 50, 8))


@pytest.fixture(scope="module")
def gru_onnx(gru_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("dyn") / "gru.onnx"
    linger.onnx.export(gru_model, torch.randn(2, 50, 8), path, input_names=["x"],
                       output_names=["y"], dynamic_axes={"x": {0: "N", 1: "T"}})
    return path


@pytest.mark.parametrize("n,t", [(1, 104), (5, 33), (3, 200), (5, 7), (1, 50)])
def test_dynamic_time_axis_is_bitexact_at_every_length(gru_model, gru_onnx, n, t):
    torch.manual_seed(n * 1000 + t)
    sess = InferenceSession(gru_onnx)
    assert [a.shape for a in sess.get_inputs()] == [["N", "T", 8]]
    assert sess.get_outputs()[0].shape == ["N", 4]
    _assert_exact(gru_model, sess, torch.randn(n, t, 8))
    _assert_exact(gru_model, sess, torch.randn(n, t, 8) * 1000)  # saturating


def test_global_pooling_over_time_averages_the_actual_length(gru_onnx):
    nodes = [n.op_type for n in __import__("onnx").load(gru_onnx).graph.node]
    assert "GlobalAvgPoolInt" in nodes and "AvgPoolInt" not in nodes


def test_static_export_keeps_other_lengths_out_but_batch_is_dynamic(gru_model):
    graph = linger.onnx.export(gru_model, torch.randn(2, 50, 8), None, input_names=["x"])
    sess = InferenceSession(graph)
    assert sess.get_inputs()[0].shape == ["N", 50, 8]
    _assert_exact(gru_model, sess, torch.randn(5, 50, 8))
    _assert_exact(gru_model, sess, torch.randn(1, 50, 8) * 1000)
    with pytest.raises(InputError, match="dimension 1 must be 50"):
        sess.run(None, {"x": np.zeros((2, 104, 8), np.float32)})


class ClassToken(nn.Module):
    """A quantized token broadcast to the batch of another tensor with ``expand(x.size(0)...)``."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.tok = nn.Linear(1, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):                                   # (N, T, 6)
        h = self.proj(x)                                    # (N, T, 8)
        t = self.tok(torch.ones(1, 1, 1)).expand(x.size(0), -1, -1)   # (N, 1, 8)
        h = torch.cat([t, h], 1)                            # (N, T + 1, 8)
        return self.out(h[:, 0] + h[:, -1]).unsqueeze(1).expand(-1, 2, -1)


def test_expand_to_the_batch_of_another_tensor_follows_the_batch():
    torch.manual_seed(1)
    model = _qat(ClassToken(), lambda: torch.randn(4, 10, 6))
    graph = linger.onnx.export(model, torch.randn(3, 10, 6), None, input_names=["x"],
                               dynamic_axes={"x": {1: "T"}})
    ops = [n.op_type for n in graph.graph.node]
    assert "Shape" in ops  # the batch is read from the input, not the example's 3
    sess = InferenceSession(graph)
    for n, t in [(1, 10), (5, 4), (2, 31)]:
        _assert_exact(model, sess, torch.randn(n, t, 6))


class ParamToken(nn.Module):
    """A learned class token (an nn.Parameter) expanded to the batch and joined to the data."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.out = nn.Linear(8, 3)

    def forward(self, x):                                   # (N, T, 6)
        h = torch.cat([self.cls.expand(x.size(0), -1, -1), self.proj(x)], 1)
        return self.out(h[:, 0] + h[:, 1:].mean(1))


def test_parameter_expanded_to_the_batch_is_stored_once_and_follows_the_batch():
    torch.manual_seed(3)
    model = _qat(ParamToken(), lambda: torch.randn(4, 10, 6))
    graph = linger.onnx.export(model, torch.randn(3, 10, 6), None, input_names=["x"],
                               dynamic_axes={"x": {1: "T"}})
    assert any(n.op_type == "Expand" for n in graph.graph.node)
    assert all(t.dims[0] == 1 for t in graph.graph.initializer if t.name.endswith(".row"))
    sess = InferenceSession(graph)
    for n, t in [(1, 10), (5, 3), (2, 40)]:
        _assert_exact(model, sess, torch.randn(n, t, 6))
        _assert_exact(model, sess, torch.randn(n, t, 6) * 1000)


class CropsOneStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)[:, : x.size(1) - 1]


def test_a_size_frozen_from_the_example_is_refused_naming_node_and_axis():
    torch.manual_seed(2)
    model = _qat(CropsOneStep(), lambda: torch.randn(2, 9, 4))
    with pytest.raises(ExportError, match=r"node 'model.getitem.slice'.*T=9 but not at T=18.*"
                                          r"axis 1 of input 'x'"):
        linger.onnx.export(model, torch.randn(2, 9, 4), None, input_names=["x"],
                           dynamic_axes={"x": {1: "T"}})
    # without the dynamic axis the same model exports (the batch still follows)
    sess = InferenceSession(linger.onnx.export(model, torch.randn(2, 9, 4), None,
                                               input_names=["x"]))
    _assert_exact(model, sess, torch.randn(4, 9, 4))


def test_packer_plans_a_range_for_its_maximum(gru_model, gru_onnx, tmp_path):
    res = packer.pack(gru_onnx, dims={"T": (20, 120)})
    assert read(res.data).dims == {"N": 1, "T": 120}
    x = torch.randn(1, 77, 8)
    _assert_exact(gru_model, InferenceSession(res.data), x)
    fixed = packer.pack(gru_onnx, dims={"T": 120})
    assert res.plan.memories["share"].peak == fixed.plan.memories["share"].peak
    out = tmp_path / "gru.bin"
    assert pack_main(["pack", str(gru_onnx), "--dim", "T=50:200", "-o", str(out),
                      "--no-html"]) == 0
    assert read(out.read_bytes()).dims == {"N": 1, "T": 200}
    assert pack_main(["check", str(gru_onnx), "--dim", "T=200:50"]) == 2
    with pytest.raises(ConfigError, match="min <= max"):
        packer.check(gru_onnx, dims={"T": (0, 5)})


class ConvPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):                                   # (N, 8, T)
        return self.fc(self.pool(self.conv(x).relu()).flatten(1))


def test_exact_format_pools_over_the_actual_length_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    model = _qat(ConvPool(), lambda: torch.randn(4, 8, 30))
    graph = linger.onnx.export(model, torch.randn(2, 8, 30), None, input_names=["x"],
                               dynamic_axes={"x": {2: "T"}}, format="exact")
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for n, t in [(1, 7), (5, 30), (3, 101)]:
        for scale in (1.0, 1000.0):
            x = torch.randn(n, 8, t) * scale
            with torch.no_grad():
                want = model(x).numpy()
            assert np.array_equal(sess.run(None, {"x": x.numpy()})[0], want)


class HalfLength(nn.Module):
    """Crops a stride-2 output (ceil(T/2) long) to floor(T/2): at even T both are the same."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):                                   # (N, 4, T)
        return self.conv(x)[..., : x.size(2) // 2]


def test_a_size_that_matches_only_at_the_traced_lengths_is_caught_at_a_third():
    torch.manual_seed(5)
    model = _qat(HalfLength(), lambda: torch.randn(2, 4, 50))
    with pytest.raises(ExportError, match=r"at T=51 the exported graph computes other numbers"):
        linger.onnx.export(model, torch.randn(2, 4, 50), None, input_names=["x"],
                           dynamic_axes={"x": {2: "T"}})
