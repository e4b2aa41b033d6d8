"""Hostile model files and bad model state (issue 18): each case the fuzz campaign found is a
named test here. A bad file always ends in a LingerError naming the node, the fast and the plain
kernels agree, memory is bounded before anything is allocated, and an export neither changes the
model's modes nor writes non-finite weights."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from onnx import helper

import linger
from linger.errors import InputError, LingerError, ModelFileError, NumericError, ResourceError
from linger.packer import format as F
from linger.packer.reader import read
from linger.runtime import KERNELS, InferenceSession
from linger.runtime.schema import SCHEMAS

sys.path.insert(0, os.path.dirname(__file__))
import fuzzing  # noqa: E402  (tests/ helper shared with bench/fuzz_campaign.py)

X = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)


def _with_attr(model, node_name, attr, value):
    """A copy of ``model`` with attribute ``attr`` of node ``node_name`` set to ``value``."""
    m = type(model)()
    m.CopyFrom(model)
    node = next(n for n in m.graph.node if n.name == node_name)
    for a in list(node.attribute):
        if a.name == attr:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(attr, value))
    return m


def _packed_with_attr(model, node_name, attr, value):
    """The packed file of ``model`` with one attribute rewritten by the packer's own writer:
    every checksum valid, as a hostile file would have."""
    pm = read(fuzzing.seeds()["conv"][1] if model is None else _pack(model))
    op = next(o for o in pm.ops if o.name == node_name)
    typ = F.A_INTS if isinstance(value, list) else F.A_INT if isinstance(value, int) \
        else F.A_STRING
    op.attrs = [a for a in op.attrs if a[0] != attr] + [(attr, typ, value)]
    return F.write(pm)


def _pack(model):
    from linger import packer
    return packer.pack(model, force=True).data


def _refused(source, node, words, error=ModelFileError, feed=None):
    """Loading and running ``source`` raises ``error`` naming ``node`` and ``words``, on the fast
    and the plain path alike; returns the message."""
    messages = []
    for fast in (True, False):
        with pytest.raises(error) as e:
            InferenceSession(source, fast=fast).run(None, feed or {"x": X})
        messages.append(str(e.value))
        assert f"'{node}'" in messages[-1] and all(w in messages[-1] for w in words), \
            messages[-1]
    assert messages[0] == messages[1]
    return messages[0]


# -- attribute values the campaign found, on ONNX and packed (valid CRC) files ----------------
ISSUE_CASES = [
    ("pads_2_43_fast_conv_hang", "conv", "pads", [1, 1, 1 << 43, 1]),
    ("huge_negative_dilation", "conv", "dilations", [1, -(1 << 40)]),
    ("bits_2_40", "conv", "bits_o", 1 << 40),
    ("exp_o_2_40", "conv", "exp_o", 1 << 40),
    ("pads_2_31", "conv", "pads", [1 << 31, 1, 1, 1]),
    ("pads_2_20_asks_4_5_GiB", "conv", "pads", [1, 1, 1 << 20, 1]),
    ("bits_0_negative_shift", "conv", "bits_x", 0),
    ("attribute_of_wrong_type", "conv", "exp_x", "abc"),
    ("dilations_0_fast_silently_wrong", "conv", "dilations", [0, 1]),
    ("strides_minus_1_plain_flipped", "conv", "strides", [-1, 1]),
    ("pool_kernel_2_31", "pool", "kernel_shape", [1 << 31, 2]),
    ("linear_bits_w_64", "fc", "bits_w", 64),
]


@pytest.mark.parametrize("case", ISSUE_CASES, ids=[c[0] for c in ISSUE_CASES])
@pytest.mark.parametrize("packed", [False, True], ids=["onnx", "packed"])
def test_hostile_attribute_is_refused_at_load_naming_node_and_attribute(case, packed):
    _, node, attr, value = case
    source = _packed_with_attr(fuzzing.conv_model(), node, attr, value) if packed else \
        _with_attr(fuzzing.conv_model(), node, attr, value).SerializeToString()
    for fast in (True, False):  # refused before any kernel compiles: at construction
        with pytest.raises(ModelFileError) as e:
            InferenceSession(source, fast=fast)
        assert f"node '{node}'" in str(e.value) and f"attribute '{attr}'" in str(e.value)


def test_gru_hidden_size_2_31_is_refused():
    m = _with_attr(fuzzing.rnn_model("GRU"), "rnn", "hidden_size", 1 << 31)
    with pytest.raises(ModelFileError, match="node 'rnn'.*hidden_size"):
        InferenceSession(m)


def test_gru_hidden_size_disagreeing_with_weights_is_refused():
    m = _with_attr(fuzzing.rnn_model("GRU"), "rnn", "hidden_size", 4)
    with pytest.raises(ModelFileError, match=r"node 'rnn'.*W_ih #0 \[15, 3\].*hidden_size=4"):
        InferenceSession(m)


def test_empty_name_for_a_required_input_is_refused():
    m = fuzzing.conv_model()
    m.graph.node[1].input[0] = ""
    with pytest.raises(ModelFileError, match=r"node 'conv'.*required input\(s\) \[0\]"):
        InferenceSession(m)


def test_graph_input_of_undefined_element_type_is_refused():
    m = fuzzing.conv_model()
    m.graph.input[0].type.tensor_type.elem_type = 999
    with pytest.raises(ModelFileError, match="'x' has element type 999"):
        InferenceSession(m)


def test_exponent_65_runs_and_fast_equals_plain():
    """A large but valid exponent (shift 66) used to overflow the fast path's int64 constant;
    now the fast preparer declines it and both paths give the plain kernel's bits."""
    m = _with_attr(fuzzing.conv_model(), "conv", "exp_w", 65)
    a = InferenceSession(m).run(None, {"x": X})[0]
    b = InferenceSession(m, fast=False).run(None, {"x": X})[0]
    assert np.array_equal(a, b)


def test_window_larger_than_input_reads_the_same_on_both_paths():
    m = _with_attr(fuzzing.conv_model(), "conv", "dilations", [4, 4])
    _refused(m, "conv", ["kernel extent 9"])


# -- run(): anything unexpected is a LingerError that asks for a report ----------------------
def test_unexpected_kernel_error_is_wrapped_with_please_report(monkeypatch):
    def broken(inputs):
        raise ValueError("boom")
    broken.pass_num_outputs = False
    monkeypatch.setitem(KERNELS, ("", "Relu"), broken)
    sess = InferenceSession(fuzzing.conv_model(), fast=False)
    with pytest.raises(LingerError, match="node 'relu'.*ValueError: boom.*please report") as e:
        sess.run(None, {"x": X})
    assert isinstance(e.value.__cause__, ValueError)


def test_memory_error_inside_a_kernel_is_a_resource_error(monkeypatch):
    def starving(inputs):
        raise MemoryError()
    starving.pass_num_outputs = False
    monkeypatch.setitem(KERNELS, ("", "Relu"), starving)
    with pytest.raises(ResourceError, match="node 'relu'") as e:
        InferenceSession(fuzzing.conv_model(), fast=False).run(None, {"x": X})
    assert isinstance(e.value.__cause__, MemoryError) and isinstance(e.value, MemoryError)


# -- the memory bound ----------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False])
def test_memory_bound_names_the_node_and_the_size(fast):
    sess = InferenceSession(fuzzing.conv_model(), fast=fast, max_memory_bytes=200_000)
    x = np.zeros((64, 1, 6, 6), np.float32)
    with pytest.raises(ResourceError, match=r"node 'conv'.*would need about .* KiB.*"
                                            r"max_memory_bytes=200000"):
        sess.run(None, {"x": x})
    y = sess.run(None, {"x": x[:2]})[0]            # a smaller batch fits
    assert y.shape == (2, 3)


def test_huge_batch_is_refused_by_the_default_limit_before_allocating():
    x = np.zeros((1 << 22, 1, 6, 6), np.float32)    # 604 MB of untouched (lazy) pages
    with pytest.raises(ResourceError, match="node 'quant'.*4294967296"):
        InferenceSession(fuzzing.conv_model()).run(None, {"x": x})


def test_max_memory_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_memory_bytes"):
        InferenceSession(fuzzing.conv_model(), max_memory_bytes=0)


# -- zero-size batches -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["conv", "gru", "lstm", "arith"])
@pytest.mark.parametrize("fast", [True, False])
def test_zero_size_batch_gives_an_empty_result_in_the_runtime(name, fast):
    onnx_bytes, packed = fuzzing.seeds()[name]
    shape = {"conv": (0, 1, 6, 6), "gru": (0, 4, 3), "lstm": (0, 4, 3), "arith": (0, 2, 8)}[name]
    for source in (onnx_bytes, packed):
        [y] = InferenceSession(source, fast=fast).run(None, {"x": np.zeros(shape, np.float32)})
        assert y.shape[0] == 0


class _Rnn(nn.Module):
    def __init__(self, cls, **kw):
        super().__init__()
        self.rnn, self.head = cls(3, 5, batch_first=True, **kw), nn.Linear(
            5 * (2 if kw.get("bidirectional") else 1), 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.ln, self.b = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        return torch.softmax(self.b(self.ln(torch.relu(self.a(x)))), -1)


def _zero_batch_models():
    from linger.examples_models import DepthwiseCNN, DigitsCNN, SmallResNet
    return {"gru": (lambda: _Rnn(nn.GRU), (3, 7, 3)),
            "lstm_2layer_bidirectional": (lambda: _Rnn(nn.LSTM, num_layers=2,
                                                       bidirectional=True), (3, 7, 3)),
            "mlp_layernorm_softmax": (_Mlp, (3, 6)), "digits_cnn": (DigitsCNN, (3, 1, 8, 8)),
            "depthwise_cnn": (DepthwiseCNN, (3, 3, 8, 8)),
            "small_resnet": (SmallResNet, (3, 3, 8, 8))}


@pytest.mark.parametrize("name", list(_zero_batch_models()))
def test_zero_size_batch_in_eval_and_runtime(name):
    make, shape = _zero_batch_models()[name]
    torch.manual_seed(0)
    model = linger.init(make()).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(*shape))
    model.eval()
    f = io.BytesIO()
    linger.onnx.export(model, torch.randn(*shape), f, input_names=["x"],
                       dynamic_axes={"x": {0: "N"}})
    z = torch.zeros(0, *shape[1:])
    with torch.no_grad():
        want = model(z)
    want = (want.plain() if hasattr(want, "plain") else want).numpy()
    for fast in (True, False):
        [got] = InferenceSession(f.getvalue(), fast=fast).run(None, {"x": z.numpy()})
        assert got.shape == want.shape and got.shape[0] == 0


def test_zero_size_batch_against_a_fixed_batch_is_an_input_error():
    m = fuzzing.conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    with pytest.raises(InputError, match="dimension 0 must be 2"):
        InferenceSession(m).run(None, {"x": np.zeros((0, 1, 6, 6), np.float32)})


# -- export --------------------------------------------------------------------------------------
class _ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _calibrated_conv_bn():
    torch.manual_seed(0)
    model = linger.init(_ConvBn()).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 1, 6, 6))
    return model


def test_export_restores_each_submodule_mode():
    model = _calibrated_conv_bn()
    bn = next(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase))
    bn.eval()                                      # a frozen BatchNorm inside a training model
    before = {name: m.training for name, m in model.named_modules()}
    linger.onnx.export(model, torch.randn(1, 1, 6, 6), io.BytesIO())
    assert {name: m.training for name, m in model.named_modules()} == before
    assert model.training and not bn.training


@pytest.mark.parametrize("buffer,value", [("running_mean", float("nan")),
                                          ("running_var", float("inf"))])
def test_export_refuses_non_finite_statistics_naming_the_tensor(buffer, value):
    model = _calibrated_conv_bn().eval()
    name, bn = next((n, m) for n, m in model.named_modules()
                    if isinstance(m, nn.modules.batchnorm._NormBase))
    getattr(bn, buffer)[1] = value
    with pytest.raises(NumericError, match=rf"buffer '{name}.{buffer}'.*{value}"):
        linger.onnx.export(model, torch.randn(1, 1, 6, 6), io.BytesIO())


def test_export_refuses_a_nan_weight_naming_it():
    model = _calibrated_conv_bn().eval()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(NumericError, match=r"parameter 'fc.weight' \(shape \[2, 4\]\) holds nan"):
        linger.onnx.export(model, torch.randn(1, 1, 6, 6), io.BytesIO())


# -- the schema covers every op -------------------------------------------------------------------
def test_every_op_with_a_runtime_kernel_has_a_schema_entry():
    """An op added without its schema entry still gets the generic checks; list it here so the
    entry is added (linger/runtime/schema.py explains how)."""
    missing = sorted(f"{d or 'ai.onnx'}::{op}" for d, op in KERNELS if (d, op) not in SCHEMAS)
    assert not missing, f"ops with a kernel but no schema entry: {missing}"


def test_an_op_without_schema_gets_the_generic_checks(monkeypatch):
    monkeypatch.delitem(SCHEMAS, ("ai.linger", "Quant"))
    m = _with_attr(fuzzing.conv_model(), "quant", "bits", 1 << 40)
    with pytest.raises(ModelFileError, match="node 'quant'.*attribute 'bits'"):
        InferenceSession(m)
    m = _with_attr(fuzzing.conv_model(), "quant", "exp", -(1 << 40))
    with pytest.raises(ModelFileError, match="node 'quant'.*attribute 'exp'"):
        InferenceSession(m)


def test_initializer_fed_to_a_fast_input_is_loaded():
    """Campaign case (7, 392): a node reading an initializer where activations usually come
    made the fast path look up a value it had not loaded (raw KeyError)."""
    m = fuzzing.conv_model()
    node = next(n for n in m.graph.node if n.name == "conv")
    node.input[0] = "cw"                     # the weight read as the input: wrong, but defined
    _refused(m, "flatten", ["Reshape cannot be applied", "[4, 4, 1, 1]"])


def test_pack_refuses_a_declared_input_shape_too_large_to_measure():
    from linger import packer
    m = fuzzing.conv_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 1 << 40
    with pytest.raises(InputError, match=r"input 'x' of shape \[1, 1, 1099511627776, 6\]"):
        packer.pack(m, force=True)


def test_the_documented_ranges_are_the_schema():
    """docs/reliability.md holds the schema table for other executors (the C engine): it must
    be the one the runtime enforces. Regenerate with linger.runtime.schema.markdown_table()."""
    from pathlib import Path

    from linger.runtime.schema import markdown_table
    doc = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text()
    start = doc.index("<!-- schema-table-start -->\n") + len("<!-- schema-table-start -->\n")
    assert doc[start:doc.index("<!-- schema-table-end -->")] == markdown_table()


def test_pooling_with_huge_windows_is_bounded_before_it_computes():
    """A pool of 65536-wide windows over 65536 pads each side fits in little memory but would
    sum 2**32 elements per channel: the estimate counts window elements, so it is refused."""
    m = fuzzing.arith_model()
    m = _with_attr(_with_attr(m, "avg", "kernel_shape", [65536]), "avg", "pads", [65536, 65536])
    sess = InferenceSession(m, max_memory_bytes=256 << 20)
    with pytest.raises(ResourceError, match=r"node 'avg'.*'q': \[2, 2, 8\]"):
        sess.run(None, {"x": np.zeros((2, 2, 8), np.float32)})
