"""More rows for the table of :mod:`test_ops_table`: the activations, dropout variants, parameters
used as tensors, reductions, resampling and pooling added for published small networks.

Each row goes through the same three checks as the main table (training and gradients, eval vs
float within the documented SQNR, export + runtime bit-exact on typical, saturating (x8) and tiny
inputs).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import linger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the table's own helpers
import test_ops_table as table  # noqa: E402
from test_ops_table import Row, _params, _rand  # noqa: E402

sys.path.pop(0)

ROWS = [
    # hard-sigmoid / hard-swish (MobileNetV3)
    Row("hardsigmoid", lambda e, a: F.hardsigmoid(a), [(4, 16)], 35, [3.0],
        op_types=("iqHardSigmoid",)),
    Row("hardsigmoid_module", lambda e, a: e.act(a), [(2, 4, 3, 3)], 35, [3.0],
        extra=lambda: _params(act=nn.Hardsigmoid()), op_types=("iqHardSigmoid",)),
    Row("hardswish", lambda e, a: F.hardswish(a), [(4, 16)], 27, [3.0],
        op_types=("iqHardSwish",)),
    Row("hardswish_module_inplace", lambda e, a: e.act(a), [(2, 4, 3, 3)], 28, [3.0],
        extra=lambda: _params(act=nn.Hardswish(inplace=True)), op_types=("iqHardSwish",)),
    Row("hardswish_by_hand", lambda e, a: a * F.relu6(a + 3.0) / 6.0, [(2, 4, 5)], 10, [3.0],
        op_types=("iqAdd", "Clip", "iqMul", "iqDiv")),
    Row("hardswish_16bit", lambda e, a: F.hardswish(a), [(4, 16)], 75, [3.0], bits=16,
        op_types=("iqHardSwish",)),
    # PReLU / LeakyReLU / ELU
    Row("prelu_per_channel", lambda e, a: e.act(a), [(2, 6, 5)], 26,
        extra=lambda: _params(act=_prelu(6)), op_types=("iqPReLU",)),
    Row("prelu_single", lambda e, a: e.act(a), [(2, 3, 4, 4)], 28,
        extra=lambda: _params(act=_prelu(1)), op_types=("iqPReLU",)),
    Row("prelu_functional", lambda e, a: F.prelu(a, e.w), [(4, 8)], 31,
        extra=lambda: _params(w=torch.rand(8, generator=table.g)), op_types=("iqPReLU",)),
    Row("leaky_relu", lambda e, a: F.leaky_relu(a, 0.1), [(4, 16)], 30,
        op_types=("iqPReLU",)),
    Row("leaky_relu_module", lambda e, a: e.act(a), [(2, 4, 6)], 29,
        extra=lambda: _params(act=nn.LeakyReLU()), op_types=("iqPReLU",)),
    Row("prelu_16bit", lambda e, a: e.act(a), [(2, 6, 5)], 50, bits=16,
        extra=lambda: _params(act=_prelu(6)), op_types=("iqPReLU",)),
    Row("elu", lambda e, a: F.elu(a), [(4, 16)], 26, [2.0], op_types=("iqELU",)),
    Row("elu_module_alpha", lambda e, a: e.act(a), [(2, 4, 6)], 26, [2.0],
        extra=lambda: _params(act=nn.ELU(alpha=0.5)), op_types=("iqELU",)),
    # dropout variants: identity in eval, nothing exported
    Row("dropout_variants", lambda e, a: e.d3(e.d1(e.d2(e.ad(e.fad(
        F.dropout2d(a, 0.05, e.training)))).flatten(2)).view(2, 4, 1, 3, 5)),
        [(2, 4, 3, 5)], 30, extra=lambda: _params(
            d1=nn.Dropout1d(0.05), d2=nn.Dropout2d(0.05), d3=nn.Dropout3d(0.05),
            ad=nn.AlphaDropout(0.05), fad=nn.FeatureAlphaDropout(0.05)),
        op_types=("Quant",)),
    # parameters used as tensors (KWT: class token, positional embedding; learned scales)
    Row("cat_class_token", lambda e, a: torch.cat([e.cls.expand(a.shape[0], -1, -1), a], 1),
        [(3, 5, 8)], 30, extra=lambda: _params(cls=_rand(1, 1, 8)), op_types=("iqCat",)),
    Row("add_positional_slice", lambda e, a: a + e.pos[:, :a.shape[1]], [(3, 5, 8)], 28,
        extra=lambda: _params(pos=0.5 * _rand(1, 7, 8)), op_types=("iqAdd",)),
    Row("mul_scale_view", lambda e, a: a * e.s.view(1, -1, 1), [(2, 6, 4)], 24,
        extra=lambda: _params(s=_rand(6)), op_types=("iqMul",)),
    # max / min over dims (PANNs: max + mean pooling over time)
    Row("max_dim_values", lambda e, a: a.max(-1)[0], [(2, 4, 6)], 31, op_types=("ReduceMax",)),
    Row("amax_dims_keepdim", lambda e, a: torch.amax(a, (1, 2), keepdim=True), [(2, 4, 6)], 35,
        op_types=("ReduceMax",)),
    Row("amin", lambda e, a: a.amin(1), [(2, 4, 6)], 31, op_types=("ReduceMin",)),
    Row("max_all", lambda e, a: torch.max(a), [(2, 4, 6)], 35, op_types=("ReduceMax",)),
    Row("min_dim_keepdim", lambda e, a: a.min(dim=1, keepdim=True).values, [(2, 4, 6)], 33,
        op_types=("ReduceMin",)),
    # pooling: adaptive of any size (TCN: AdaptiveAvgPool2d((2, 2))), functional forms
    Row("adaptive_avg_2x2_divides", lambda e, a: e.p(a), [(2, 3, 6, 4)], 20,
        extra=lambda: _params(p=nn.AdaptiveAvgPool2d((2, 2))), op_types=("AdaptiveAvgPoolInt",)),
    Row("adaptive_avg_not_dividing", lambda e, a: e.p(a), [(2, 3, 7, 5)], 22,
        extra=lambda: _params(p=nn.AdaptiveAvgPool2d((3, None))),
        op_types=("AdaptiveAvgPoolInt",)),
    Row("adaptive_avg_1d", lambda e, a: e.p(a), [(2, 3, 11)], 25,
        extra=lambda: _params(p=nn.AdaptiveAvgPool1d(4)), op_types=("AdaptiveAvgPoolInt",)),
    Row("adaptive_avg_functional", lambda e, a: F.adaptive_avg_pool2d(a, (2, 3)),
        [(2, 3, 5, 7)], 18, op_types=("AdaptiveAvgPoolInt",)),
    Row("adaptive_avg_functional_global", lambda e, a: F.adaptive_avg_pool1d(a, 1),
        [(2, 3, 9)], 20, op_types=("AdaptiveAvgPoolInt",)),
    Row("adaptive_max", lambda e, a: e.p(a), [(2, 3, 7, 5)], 33,
        extra=lambda: _params(p=nn.AdaptiveMaxPool2d((3, 2))), op_types=("AdaptiveMaxPool",)),
    Row("adaptive_max_functional_1d", lambda e, a: F.adaptive_max_pool1d(a, 4), [(2, 3, 10)],
        0, op_types=("AdaptiveMaxPool",)),
    Row("avg_pool2d_functional", lambda e, a: F.avg_pool2d(a, 2), [(2, 3, 6, 4)], 20,
        op_types=("AvgPoolInt",)),
    Row("avg_pool1d_functional_pad", lambda e, a: F.avg_pool1d(a, 3, 2, 1,
                                                               count_include_pad=False),
        [(2, 3, 9)], 28, op_types=("AvgPoolInt",)),
    Row("max_pool_functional", lambda e, a: F.max_pool2d(a, 2), [(2, 3, 6, 4)], 35,
        op_types=("MaxPool",)),
    # upsampling (U-Net decoders): nearest and (bi)linear, sizes and scale factors
    Row("upsample_nearest_x2", lambda e, a: e.up(a), [(2, 3, 4, 5)], 28,
        extra=lambda: _params(up=nn.Upsample(scale_factor=2)), op_types=("UpsampleNearest",)),
    Row("interpolate_nearest_size", lambda e, a: F.interpolate(a, size=(7, 9)), [(2, 3, 4, 5)],
        0, op_types=("UpsampleNearest",)),
    Row("interpolate_nearest_1d_scale", lambda e, a: F.interpolate(a, scale_factor=1.7),
        [(2, 3, 10)], 30, op_types=("UpsampleNearest",)),
    Row("upsample_bilinear_x2", lambda e, a: e.up(a), [(2, 3, 4, 5)], 24,
        extra=lambda: _params(up=nn.Upsample(scale_factor=2, mode="bilinear")),
        op_types=("UpsampleLinearInt",)),
    Row("interpolate_bilinear_align_corners", lambda e, a: F.interpolate(
        a, size=(7, 9), mode="bilinear", align_corners=True), [(2, 3, 4, 5)], 31,
        op_types=("UpsampleLinearInt",)),
    Row("interpolate_linear_1d", lambda e, a: F.interpolate(a, scale_factor=2.5, mode="linear"),
        [(2, 3, 6)], 26, op_types=("UpsampleLinearInt",)),
    # attention (KWT): nn.MultiheadAttention, nn.TransformerEncoderLayer, masks
    Row("mha_batch_first_key_padding", lambda e, a: e.m(a, a, a, key_padding_mask=_kpm(a))[0],
        [(3, 6, 16)], 17, extra=lambda: _params(m=nn.MultiheadAttention(16, 4, batch_first=True)),
        op_types=("LinearInt", "MatMulInt", "SoftmaxInt")),
    Row("mha_seq_first_bool_mask", lambda e, a: e.m(a, a, a, attn_mask=_causal(a.shape[0],
                                                                              True))[0],
        [(5, 2, 8)], 17, extra=lambda: _params(m=nn.MultiheadAttention(8, 2)),
        op_types=("SoftmaxInt",)),
    Row("mha_output_and_weights", lambda e, a: (lambda o, w: torch.cat(
        [o.transpose(0, 1), w], -1))(*e.m(a, a, a, attn_mask=_causal(a.shape[0]))),
        [(5, 2, 8)], 24, extra=lambda: _params(m=nn.MultiheadAttention(8, 2)),
        op_types=("SoftmaxInt", "iqMean")),
    Row("transformer_post_norm_causal", lambda e, a: e.t(a, src_mask=_causal(a.shape[1])),
        [(2, 6, 16)], 25, extra=lambda: _params(t=nn.TransformerEncoderLayer(
            16, 4, 32, dropout=0.0, batch_first=True)), op_types=("LayerNormInt", "SoftmaxInt")),
    Row("transformer_pre_norm_gelu_seq_first", lambda e, a: e.t(a), [(6, 2, 16)], 24,
        extra=lambda: _params(t=nn.TransformerEncoderLayer(
            16, 2, 32, dropout=0.1, activation="gelu", norm_first=True)),
        op_types=("LayerNormInt", "iqGELU")),
]


def _kpm(a):
    """Key padding mask (N, S): the second sequence's last two steps are padding."""
    m = torch.zeros(a.shape[0], a.shape[1], dtype=torch.bool)
    m[1, -2:] = True
    return m


def _causal(n, as_bool=False):
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    return upper if as_bool else torch.zeros(n, n).masked_fill(upper, float("-inf"))


def _prelu(n):
    m = nn.PReLU(n)
    with torch.no_grad():
        m.weight.copy_(0.5 * torch.rand(n, generator=table.g) - 0.1)
    return m


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_training_pass_and_gradients(row):
    table.test_training_pass_and_gradients(row)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_eval_matches_float_within_sqnr(row):
    table.test_eval_matches_float_within_sqnr(row)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_export_runtime_bit_exact(row, tmp_path):
    table.test_export_runtime_bit_exact(row, tmp_path)


def _export(row, tmp_path):
    model, _ = table.build(row)
    xs = table._inputs(row)
    path = tmp_path / f"{row.name}.onnx"
    linger.onnx.export(model, tuple(xs), path, input_names=[f"x{i}" for i in range(len(xs))])
    return model, xs, path


@pytest.mark.parametrize("target", ["venus", "arcs", "venusA"])
def test_hand_written_hardswish_packs_for_every_target(target, tmp_path):
    """``y + 3.0`` is an add of a scalar constant, not a broadcast the chip must expand."""
    from linger import packer
    row = next(r for r in ROWS if r.name == "hardswish_by_hand")
    _, _, path = _export(row, tmp_path)
    res = packer.pack(path, target=target)
    assert not res.violations


def test_quant_of_a_parameter_runs_on_the_fast_runtime(tmp_path):
    """A Quant node reading a constant (a parameter given to quant_tensor) on the fast path."""
    import linger.runtime

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.p = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return self.fc(x) + linger.quant_tensor(self, self.p, name="p")

    model = linger.init(Net()).train()
    model(torch.randn(3, 4))
    model.eval()
    x = torch.randn(3, 4) * 8
    linger.onnx.export(model, x, tmp_path / "p.onnx", input_names=["x"])
    with torch.no_grad():
        want = model(x).plain().numpy()
    for fast in (True, False):
        sess = linger.runtime.InferenceSession(str(tmp_path / "p.onnx"), fast=fast)
        assert np.array_equal(sess.run(None, {"x": x.numpy()})[0], want)


class _ArgNet(nn.Module):
    def forward(self, x):
        x = linger.quant_tensor(self, x, name="x")
        v, i = x.max(1)
        return (v, i, torch.argmax(x, -1, keepdim=True), x.argmin(), torch.min(x, 2).indices,
                torch.argmin(x, dim=1))


def test_indices_of_max_and_min_match_on_ties_and_saturation(tmp_path):
    """Quantized values tie often: the runtime returns the first index of the extreme, as PyTorch
    does on the CPU, also where the input saturates (many equal values)."""
    import linger.runtime
    model = linger.init(_ArgNet()).train()
    model(torch.randn(3, 5, 7))
    model.eval()
    x = torch.randn(3, 5, 7)
    linger.onnx.export(model, x, tmp_path / "arg.onnx", input_names=["x"])
    for fast in (True, False):
        sess = linger.runtime.InferenceSession(str(tmp_path / "arg.onnx"), fast=fast)
        for k in (1.0, 8.0, 0.01):
            with torch.no_grad():
                want = [table._plain(o).numpy() for o in model(x * k)]
            got = sess.run(None, {"x": (x * k).numpy()})
            for g_, w in zip(got, want):
                assert g_.dtype == w.dtype and np.array_equal(g_, w)


@pytest.mark.parametrize("size_in", [1, 3, 4, 5, 7, 10, 16, 33])
def test_nearest_indices_are_pytorchs(size_in):
    """linger's integer nearest indices equal the ones PyTorch picks, for sizes and factors."""
    from linger import iqops
    x = torch.arange(size_in, dtype=torch.float64).view(1, 1, -1)
    for size_out in [1, 2, 3, size_in, 2 * size_in, 3 * size_in + 1, 7, 13, 100]:
        want = F.interpolate(x, size=size_out).view(-1).long().numpy()
        assert np.array_equal(iqops.nearest_index(size_in, size_out), want), size_out
    for f in [0.5, 1.0, 1.3, 1.7, 2.0, 2.5, 3.0, 1 / 3, 4.2]:
        if iqops.out_size(size_in, None, f) < 1:
            continue
        want = F.interpolate(x, scale_factor=f).view(-1).long().numpy()
        got = iqops.nearest_index(size_in, iqops.out_size(size_in, None, f), f)
        assert np.array_equal(got, want), f


class _Encoder(nn.Module):
    """A KWT-like block: linear embedding, encoder layer with a causal mask and a key padding
    mask given as a model input, then a separate attention layer with the same mask."""

    def __init__(self, batch_first, norm_first):
        super().__init__()
        self.batch_first = batch_first
        self.fc = nn.Linear(4, 16)
        self.enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=batch_first,
                                              norm_first=norm_first)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=batch_first)

    def forward(self, x, key_padding):
        y = self.fc(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        y = self.enc(y, src_mask=_causal(x.shape[1]), src_key_padding_mask=key_padding)
        return self.mha(y, y, y, key_padding_mask=key_padding)


@pytest.mark.parametrize("batch_first,norm_first", [(True, False), (False, True)])
def test_attention_with_mask_inputs_is_bit_exact(batch_first, norm_first, tmp_path):
    import linger.runtime
    model = linger.init(_Encoder(batch_first, norm_first)).train()
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    for _ in range(3):
        model(torch.randn(3, 6, 4), pad)
    model.eval()
    x = torch.randn(3, 6, 4)
    graph = linger.onnx.export(model, (x, pad), tmp_path / "enc.onnx", input_names=["x", "pad"])
    assert {"SoftmaxInt", "Or", "LayerNormInt"} <= {n.op_type for n in graph.graph.node}
    from linger import packer
    assert not packer.pack(tmp_path / "enc.onnx", target="venus").violations  # 3-d ops only
    pad2 = torch.zeros(3, 6, dtype=torch.bool)
    pad2[0, 3:] = True  # another padding pattern than the example's: the mask is an input
    for fast in (True, False):
        sess = linger.runtime.InferenceSession(str(tmp_path / "enc.onnx"), fast=fast)
        for k, p in ((1.0, pad), (8.0, pad2)):
            with torch.no_grad():
                want = [o.plain().numpy() for o in model(x * k, p)]
            got = sess.run(None, {"x": (x * k).numpy(), "pad": p.numpy()})
            assert all(np.array_equal(g_, w) for g_, w in zip(got, want))


def test_additive_float_mask_is_refused_with_the_fix():
    m = linger.init(nn.Sequential(nn.Linear(4, 8)))
    attn = linger.init(nn.MultiheadAttention(8, 2, batch_first=True)).train()
    x = m.train()(torch.randn(2, 3, 4))
    with pytest.raises(linger.UnsupportedError, match="bool mask"):
        attn(x, x, x, attn_mask=torch.full((3, 3), 0.5))


class _SkipFromInput(nn.Module):
    """U-Net style: the float model input concatenated with a quantized feature map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.out = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.out(torch.cat([self.conv(x), x], 1))) * x


def test_cat_with_the_float_input_quantizes_it_at_its_own_site(tmp_path):
    import linger.runtime
    model = linger.init(_SkipFromInput()).train()
    for _ in range(3):
        model(torch.randn(2, 1, 8, 6))
    assert any(k.endswith("_in1.output_exp") for k in model.state_dict())
    model.eval()
    x = torch.randn(2, 1, 8, 6)
    graph = linger.onnx.export(model, x, tmp_path / "u.onnx", input_names=["x"])
    assert [n.op_type for n in graph.graph.node].count("Quant") == 2  # conv input, cat operand
    sess = linger.runtime.InferenceSession(str(tmp_path / "u.onnx"))
    for k in (1.0, 8.0):
        with torch.no_grad():
            want = model(x * k).numpy()
        assert np.array_equal(sess.run(None, {"x": (x * k).numpy()})[0], want)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_exact_standard_onnx_form_or_a_refusal_naming_the_node(row):
    """format='exact' (standard ONNX, any runtime): equal to eval in onnxruntime, or refused with
    the node and op it has no exact rule for (use the linger graph and runtime there)."""
    import onnxruntime as ort
    model, _ = table.build(row)
    xs = table._inputs(row)
    names = [f"x{i}" for i in range(len(xs))]
    ops = {n.op_type for n in linger.onnx.export(model, tuple(xs), None,
                                                 input_names=names).graph.node}
    try:
        graph = linger.onnx.export(model, tuple(xs), None, input_names=names, format="exact")
    except linger.ExportError as e:
        assert "node '" in str(e) and any(f"({op})" in str(e) for op in ops), str(e)
        return
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for k in (1.0, 8.0, 0.05):
        xk = table._inputs(row, k)
        with torch.no_grad():
            want = table._plain(model(*xk)).numpy()
        got = sess.run(None, {n: x.numpy() for n, x in zip(names, xk)})[0]
        assert np.array_equal(got, want), row.name


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16))

    def forward(self, x, key_padding):
        return self.enc(self.fc(x), src_key_padding_mask=key_padding)


def test_transformer_encoder_stack_with_a_mask_input(tmp_path):
    """nn.TransformerEncoder converts bool masks to float ones and may switch to nested tensors;
    linger's version passes the bool mask to its layers, so it stays a graph input."""
    import linger.runtime
    model = linger.init(_Stack()).train()
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    for _ in range(3):
        model(torch.randn(3, 6, 4), pad)
    model.eval()
    x = torch.randn(3, 6, 4)
    linger.onnx.export(model, (x, pad), tmp_path / "s.onnx", input_names=["x", "pad"])
    sess = linger.runtime.InferenceSession(str(tmp_path / "s.onnx"))
    for k in (1.0, 8.0):
        with torch.no_grad():
            want = model(x * k, pad).plain().numpy()
        assert np.array_equal(sess.run(None, {"x": (x * k).numpy(), "pad": pad.numpy()})[0], want)


class _TimeOps(nn.Module):
    """Resampling, adaptive pooling and max over time on a variable-length axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.up = nn.Upsample(scale_factor=2, mode="linear")

    def forward(self, x):
        y = self.conv(x)
        a = self.pool(F.interpolate(y, scale_factor=1.5))
        b = F.adaptive_max_pool1d(self.up(y), 3)
        return torch.cat([a, b], -1), y.amax(-1)


def test_new_ops_follow_a_dynamic_time_axis(tmp_path):
    """Output lengths, adaptive windows and scale factors come from the actual input in the
    runtime: bit-exact at lengths and batch sizes other than the example's."""
    import linger.runtime
    model = linger.init(_TimeOps()).train()
    for t in (10, 13, 20):
        model(torch.randn(2, 3, t))
    model.eval()
    linger.onnx.export(model, torch.randn(2, 3, 10), tmp_path / "t.onnx", input_names=["x"],
                       dynamic_axes={"x": {0: "N", 2: "T"}})
    for fast in (True, False):  # the fast versions of UpsampleNearest, AdaptiveMaxPool, ReduceMax
        sess = linger.runtime.InferenceSession(str(tmp_path / "t.onnx"), fast=fast)
        for n, t in ((1, 7), (5, 10), (3, 33)):
            x = torch.randn(n, 3, t) * 4
            with torch.no_grad():
                want = [o.plain().numpy() for o in model(x)]
            got = sess.run(None, {"x": x.numpy()})
            assert all(np.array_equal(g_, w) and g_.shape == w.shape
                       for g_, w in zip(got, want)), (n, t, fast)


@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_max_follows_the_opset_signature(opset, tmp_path):
    """ReduceMax takes ``axes`` as an attribute before opset 18 and as an input from 18 on."""
    import onnx

    import linger.runtime
    model, _ = table.build(next(r for r in ROWS if r.name == "amax_dims_keepdim"))
    x = table._inputs(ROWS[0])[0].reshape(2, 4, 8)[..., :6]
    graph = linger.onnx.export(model, x, tmp_path / "r.onnx", input_names=["x0"],
                               opset_version=opset)
    node = next(n for n in graph.graph.node if n.op_type == "ReduceMax")
    assert (len(node.input) == 2) == (opset >= 18)
    onnx.checker.check_model(graph, full_check=True)
    with torch.no_grad():
        want = table._plain(model(x)).numpy()
    got = linger.runtime.InferenceSession(str(tmp_path / "r.onnx")).run(None, {"x0": x.numpy()})
    assert np.array_equal(got[0], want)
