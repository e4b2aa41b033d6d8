"""A model mixing the quantized tensor ops: training, state reload, pickling, multiprocessing,
export + runtime bit-exactness, stable state names, switches and fallbacks.

The model classes live in this module, which the spawn test imports by its plain name (the child
process must import them to unpickle the model), so it adds its own directory to ``sys.path``.
"""

from __future__ import annotations

import copy
import importlib
import os
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import linger
from linger.errors import NotCalibratedError
from linger.quant.qtensor import QTensor

HERE = os.path.dirname(os.path.abspath(__file__))


class MixNet(nn.Module):
    """(N, T, 8) -> (N, 4): attention (matmul + softmax), residual adds, layer norms, a gated
    sigmoid product, a concat skip and a mean over time."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.inp = nn.Linear(8, c)
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.gate, self.val = nn.Linear(c, c), nn.Linear(c, c)
        self.head = nn.Linear(2 * c, 4)
        self.scale = c ** -0.5

    def forward(self, x):
        h = self.inp(x)                                            # (N, T, C), QLinear quantizes x
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) * self.scale, dim=-1)
        h = self.ln1(h + att @ self.v(h))                          # residual add + layer norm
        g = torch.sigmoid(self.gate(h)) * self.val(h)              # gated product
        h2 = self.ln2(h + g)
        z = torch.cat([h2, h], dim=-1)                             # concat skip, (N, T, 2C)
        return self.head(z).mean(dim=1)                            # (N, 4)


def _data(n=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 8, generator=gen)
    teacher = torch.randn(8, 4, generator=gen)
    y = (x.mean(1) @ teacher + 0.5 * x[:, 0, :4]).argmax(-1)
    return x, y


def _trained(seed=0, steps=60):
    torch.manual_seed(seed)
    model = linger.init(MixNet())
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    model.train()
    for i in range(steps):
        idx = slice((i * 32) % 256, (i * 32) % 256 + 32)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.fixture(scope="module")
def trained():
    return _trained()


def _eval(model, x):
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, QTensor) and out.bits is not None
    return out.plain().clone()


def test_mixed_model_trains(trained):
    _, losses = trained
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses


def test_state_names_are_readable_and_complete(trained):
    model, _ = trained
    keys = [k for k in model.state_dict() if ".linger_iq." in k or k.startswith("linger_iq.")]
    sites = sorted({k.rsplit(".", 1)[0] for k in keys})
    ops = sorted({s.split(".")[-1].split("_forward")[0] for s in sites})
    assert ops == ["add", "matmul", "mean", "mul"], sites  # softmax/sigmoid/cat are stateless
    assert all(s.startswith("linger_iq.") and "_forward_L" in s for s in sites)
    assert sum(".matmul_" in s for s in sites) == 2  # q @ k^T and att @ v, one site each


def test_state_dict_reloads_into_fresh_model(trained):
    model, _ = trained
    fresh = linger.init(MixNet())
    fresh.load_state_dict(model.state_dict(), strict=True)  # sites are created by the pre-hook
    x = _data(8, seed=3)[0]
    assert torch.equal(_eval(fresh.eval(), x), _eval(model, x))


def test_fresh_model_without_statistics_refuses_eval():
    model = linger.init(MixNet()).eval()
    with pytest.raises(NotCalibratedError):
        model(torch.randn(2, 6, 8))


def test_pickle_and_deepcopy(trained):
    model, _ = trained
    x = _data(8, seed=4)[0]
    want = _eval(model, x)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert torch.equal(_eval(clone, x), want)
        clone.train()
        clone(x)  # still trainable: hooks and statistics survived


def test_export_runtime_bit_exact(trained, tmp_path):
    rt = pytest.importorskip("linger.runtime", reason="linger.runtime not built yet")
    model, _ = trained
    x = _data(8, seed=5)[0]
    linger.onnx.export(model, x, tmp_path / "mix.onnx")
    sess = rt.InferenceSession(str(tmp_path / "mix.onnx"))
    for k in (1.0, 10.0):
        xk = x * k
        got = sess.run(None, {"input": xk.numpy()})[0]
        assert np.array_equal(got, _eval(model, xk).numpy())


def test_packed_model_bit_exact(trained, tmp_path):
    rt = pytest.importorskip("linger.runtime", reason="linger.runtime not built yet")
    packer = pytest.importorskip("linger.packer", reason="linger.packer not built yet")
    model, _ = trained
    x = _data(8, seed=7)[0]
    linger.onnx.export(model, x, tmp_path / "mix.onnx")
    assert packer.check(str(tmp_path / "mix.onnx"), target="venus").violations == []
    packer.pack(str(tmp_path / "mix.onnx"), str(tmp_path / "mix.bin"), target="venus")
    got = rt.InferenceSession(str(tmp_path / "mix.bin")).run(None, {"input": x.numpy()})[0]
    assert np.array_equal(got, _eval(model, x).numpy())


def _spawn_worker(rank, model, x, out_dir):
    with torch.no_grad():
        y = model(x)
    torch.save(y.plain().clone(), os.path.join(out_dir, f"{rank}.pt"))


def test_multiprocessing_spawn(trained, tmp_path):
    sys.path.insert(0, HERE)
    try:
        mod = importlib.import_module("test_ops_model")  # importable by name in the children
        model = mod.linger.init(mod.MixNet())
        model.load_state_dict(trained[0].state_dict(), strict=True)
        model.eval()
        x = _data(4, seed=6)[0]
        torch.multiprocessing.spawn(mod._spawn_worker, args=(model, x, str(tmp_path)), nprocs=2,
                                    join=True, start_method="spawn")
    finally:
        sys.path.remove(HERE)
    want = _eval(model, x)
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"{rank}.pt"), want)


# -- stable names -------------------------------------------------------------------------------

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, mode: str):
        h = self.fc(x)
        if mode == "add":
            return h + h * 0.5
        out = h
        for _ in range(3):
            out = out * 0.9
        return out


def test_site_names_do_not_depend_on_call_order():
    torch.manual_seed(0)
    a, b = linger.init(Branchy()), linger.init(Branchy())
    x = torch.randn(2, 4)
    a(x, "add"), a(x, "loop")
    b(x, "loop"), b(x, "add")
    assert sorted(a.state_dict()) == sorted(b.state_dict())
    keys = {k.rsplit(".", 1)[0] for k in a.state_dict() if "linger_iq" in k}
    line = Branchy.forward.__code__.co_firstlineno
    assert f"linger_iq.mul_forward_L{line + 6}_call3" in keys  # third pass of the loop
    assert f"linger_iq.add_forward_L{line + 3}" in keys


def test_quant_tensor_named_state_and_requant():
    class Two(nn.Module):
        def forward(self, x):
            a = linger.quant_tensor(self, x, name="in")
            return linger.quant_tensor(self, a * 4.0, name="wide", bits=16)

    m = linger.init(Two())
    m(torch.randn(3, 5))
    assert {k.rsplit(".", 1)[0] for k in m.state_dict()} == {
        "linger_iq.quant_in", "linger_iq.quant_wide", "linger_iq.mul_forward_L" +
        str(Two.forward.__code__.co_firstlineno + 2)}
    out = m.eval()(torch.randn(3, 5))
    assert out.bits == 16


# -- switches, fallbacks ------------------------------------------------------------------------

class AddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return torch.sigmoid(self.a(x)) + self.b(x)


def test_switched_off_op_falls_back_to_float_and_exports_a_dequant(tmp_path):
    rt = pytest.importorskip("linger.runtime", reason="linger.runtime not built yet")
    model = linger.init(AddNet())
    model(torch.randn(8, 4))
    model.eval()
    linger.SetIQTensorAdd(False)
    try:
        x = torch.randn(3, 4)
        with torch.no_grad():
            y = model(x)
        assert not isinstance(y, QTensor)  # float after the dequant boundary
        graph = linger.onnx.export(model, x, tmp_path / "m.onnx")
        ops = [n.op_type for n in graph.graph.node]
        assert "Add" in ops and "iqAdd" not in ops and ops.count("Dequant") == 2
        got = rt.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
        assert np.array_equal(got, y.numpy())
    finally:
        linger.SetIQTensorAdd(True)
    with torch.no_grad():
        assert isinstance(model(x), QTensor)


def test_ops_outside_a_model_forward_run_in_float():
    model = linger.init(AddNet())
    y = model(torch.randn(2, 4))
    z = y * 2 + 1  # in the user's script, not in a forward: no owner for statistics
    assert isinstance(y, QTensor) and not isinstance(z, QTensor)


def test_disable_quant_keeps_ops_of_a_submodule_in_float():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.inner = AddTail()

        def forward(self, x):
            return self.inner(self.fc(x))

    model = Outer()
    linger.disable_quant(model.inner)
    model = linger.init(model)
    assert not isinstance(model(torch.randn(2, 4)), QTensor)
    assert not any("linger_iq" in k for k in model.state_dict())


class AddTail(nn.Module):
    def forward(self, x):
        return x + 1.0


def test_training_under_no_grad_gathers_statistics():
    model = linger.init(AddNet()).train()
    with torch.no_grad():
        model(torch.randn(4, 4))
    assert all(v for k, v in model.state_dict().items() if k.endswith("output_ready"))
    model.eval()(torch.randn(2, 4))


def test_switch_functions_are_exported():
    for name in ("SetIQTensorAdd", "SetIQTensorMul", "SetIQTensorCat", "SetIQTensorClamp",
                 "SetIQTensorSigmoid", "SetIQTensorTanh", "SetIQTensorDiv", "SetIQTensorSum",
                 "SetIQTensorSoftmax", "SetFunctionBmmQuant", "SetBnMomentumUpdate"):
        assert callable(getattr(linger, name))
    with pytest.raises(linger.ConfigError):
        linger.SetIQTensorMul("yes")
