"""Packer lowering: every venus limit walked from just inside to well past it.

Each row is a one-layer integer graph (Quant -> layer, integer output) with random int8 weights
and int32 biases. For each row: the strict check (``lower=False``) flags the expected rule
exactly when the row is past the limit; ``packer.pack`` (lowering on) writes the file with no
violation left (the memory plan checker runs inside ``pack``); the lowered file, run by the
numpy runtime, equals the unlowered graph bit for bit on ordinary and saturating inputs. The
unlowered graph equals PyTorch ``eval()`` (tests/test_bitexact.py); the zoo models at the end
close the loop from PyTorch to the packed file.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from linger import packer
from linger.packer.lower.layer import fixable_rules
from linger.runtime import InferenceSession
from linger.targets import load_target

L = "ai.linger"
VENUS = load_target("venus")


def _engine(data):
    """The lowered file in the C engine (the device's executor), or None without a compiler."""
    from linger import engine
    return engine.Engine(data) if engine.compiler() is not None else None


def layer_model(op, x_shape, w_shape=None, *, kernel=None, strides=None, pads=None,
                dilations=None, group=1, bias=True, bits_o=8, exp_o=3, y_shape=None,
                w_scale=127, seed=0) -> onnx.ModelProto:
    """``Quant(x, exp 4) -> op -> int output``; ``op`` a conv (``w_shape``), LinearInt or
    MatMulInt (``y_shape``: a constant right matrix)."""
    rng = np.random.default_rng(seed)
    inits, attrs = [], dict(exp_x=4, bits_x=8, exp_o=exp_o, bits_o=bits_o)
    ins = ["q"]
    if op == "MatMulInt":
        inits.append(numpy_helper.from_array(rng.integers(-127, 128, y_shape).astype(np.int8),
                                             "y"))
        ins.append("y")
        attrs.update(exp_y=6, bits_y=8)
    else:
        w = rng.integers(-w_scale, w_scale + 1, w_shape).astype(np.int8)
        inits.append(numpy_helper.from_array(w, "w"))
        ins.append("w")
        attrs.update(exp_w=6, bits_w=8)
        cout = w_shape[1] * group if op.startswith("ConvTranspose") else w_shape[0]
        if bias:
            inits.append(numpy_helper.from_array(rng.integers(-3000, 3000, cout).astype(np.int32),
                                                 "b"))
            ins.append("b")
        if op != "LinearInt":
            nd = len(w_shape) - 2
            attrs.update(kernel_shape=list(w_shape[2:]), strides=strides or [1] * nd,
                         pads=pads or [0] * (2 * nd), dilations=dilations or [1] * nd,
                         group=group)
    nodes = [helper.make_node("Quant", ["x"], ["q"], "quant", domain=L, exp=4, bits=8),
             helper.make_node(op, ins, ["out"], "layer", domain=L, **attrs)]
    out_type = {8: TensorProto.INT8, 16: TensorProto.INT16, 32: TensorProto.INT32}[bits_o]
    g = helper.make_graph(nodes, "one_layer",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("out", out_type, None)],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid(L, 1)])
    m.ir_version = 8
    return m


def conv(x, w, **kw):
    return ("Conv2dInt" if len(w) == 4 else "Conv1dInt", x, w, kw)


# (id, rule broken past the limit or None, layer) -- each limit from just inside to well past
ROWS = [
    # kernel 1..5
    ("kernel_5", None, conv((1, 3, 9, 9), (4, 3, 5, 5))),
    ("kernel_6", "kernel", conv((1, 3, 9, 9), (4, 3, 6, 6))),
    ("kernel_7x3_pad", "kernel", conv((1, 3, 12, 10), (4, 3, 7, 3), pads=[3, 1, 3, 1])),
    ("kernel_11", "kernel", conv((1, 2, 16, 16), (3, 2, 11, 11), strides=[2, 2])),
    ("kernel_1x9_conv1d", "kernel", conv((1, 8, 20), (6, 8, 9), pads=[4, 4])),
    # stride in {1, 2, 4}, kernel >= stride
    ("stride_4", None, conv((1, 3, 17, 17), (4, 3, 5, 5), strides=[4, 4])),
    ("stride_3", "stride", conv((1, 3, 17, 17), (4, 3, 3, 3), strides=[3, 3])),
    ("stride_8x2_crnn", "stride", conv((1, 1, 40, 23), (8, 1, 20, 5), strides=[8, 2])),
    ("stride_8_kernel_8", "stride", conv((1, 2, 33, 33), (4, 2, 8, 8), strides=[8, 8])),
    ("kernel_1_stride_2", "kernel_ge_stride", conv((1, 8, 9, 9), (6, 8, 1, 1), strides=[2, 2])),
    ("kernel_2_stride_4", "kernel_ge_stride", conv((1, 4, 13, 13), (4, 4, 2, 2),
                                                   strides=[4, 4])),
    ("kernel_1x1_stride_1x2_conv1d", "kernel_ge_stride", conv((1, 8, 15), (4, 8, 1),
                                                              strides=[2])),
    # pad 0..4, pad < kernel
    ("pad_4", None, conv((1, 3, 8, 8), (4, 3, 5, 5), pads=[4, 4, 4, 4])),
    ("pad_5", "pad", conv((1, 3, 8, 8), (4, 3, 5, 5), pads=[5, 5, 5, 5])),
    ("pad_3_kernel_3", "pad_lt_kernel", conv((1, 3, 6, 6), (4, 3, 3, 3), pads=[3, 0, 3, 0])),
    ("pad_9", "pad", conv((1, 3, 4, 4), (4, 3, 3, 3), pads=[9, 2, 9, 2])),
    ("input_2x2_kernel_3", "input_ge_kernel", conv((1, 4, 2, 2), (4, 4, 3, 3),
                                                   pads=[1, 1, 1, 1])),
    # dilation 1
    ("dilation_2", "dilation", conv((1, 3, 12, 12), (4, 3, 3, 3), dilations=[2, 2])),
    ("dilation_3_stride_2", "dilation", conv((1, 3, 16, 16), (4, 3, 3, 3), dilations=[3, 3],
                                             strides=[2, 2], pads=[3, 3, 3, 3])),
    # input buffer: align8(Cin) * align(W, 8*stride_w) * kernel_h <= 65536
    ("input_buffer_64000", None, conv((1, 64, 6, 200), (4, 64, 5, 5))),
    ("input_buffer_66560", "input_buffer", conv((1, 64, 6, 208), (4, 64, 5, 5))),
    ("input_buffer_wide", "input_buffer", conv((1, 64, 5, 1024), (4, 64, 5, 5),
                                               pads=[2, 2, 2, 2], strides=[1, 2])),
    # weight buffer: align2(Cout) * align8(Cin) * kh * kw <= 32768
    ("weight_32256", None, conv((1, 56, 5, 5), (64, 56, 3, 3))),
    ("weight_33264", "weight_buffer", conv((1, 56, 5, 5), (66, 56, 3, 3))),
    ("weight_cout_512", "weight_buffer", conv((1, 512, 4, 4), (64, 512, 3, 3),
                                              pads=[1, 1, 1, 1])),
    ("weight_cin_4096", "weight_buffer", conv((1, 4096, 3, 3), (4, 4096, 3, 3), w_scale=20)),
    # depthwise weight: align16(C) * kh * kw <= 32768
    ("depthwise_1296", None, conv((1, 1296, 6, 6), (1296, 1, 5, 5), group=1296)),
    ("depthwise_1312", "depthwise_weight", conv((1, 1312, 6, 6), (1312, 1, 5, 5), group=1312)),
    ("depthwise_5x5_4096", "depthwise_weight", conv((1, 4096, 5, 5), (4096, 1, 5, 5),
                                                    group=4096, pads=[2, 2, 2, 2])),
    # conv output: Cout * Ho * Wo * bytes_o <= 65536
    ("output_65536", None, conv((1, 2, 66, 66), (16, 2, 3, 3))),
    ("output_66560", "output_size", conv((1, 2, 67, 66), (16, 2, 3, 3))),
    ("output_one_channel_too_big", "output_size", conv((1, 1, 302, 300), (1, 1, 3, 3))),
    ("output_rows_only", "output_size", conv((1, 1, 70000, 3), (1, 1, 3, 3), pads=[1, 0, 1, 0])),
    ("output_int32", "output_size", conv((1, 2, 35, 34), (16, 2, 3, 3), bits_o=32, exp_o=10)),
    ("left_shift_kernel_7", "kernel", conv((1, 2, 10, 10), (3, 2, 7, 7), exp_o=12, w_scale=3)),
    # linear left matrix: align4(M) * align8(N) <= 65536
    ("linear_64x1024", None, ("LinearInt", (1, 64, 1024), (8, 1024), {})),
    ("linear_65x1024", "left_int8", ("LinearInt", (1, 65, 1024), (8, 1024), {})),
    ("linear_512x512", "left_int8", ("LinearInt", (1, 512, 512), (4, 512), {})),
    # matmul: left align4(M) * align8(N) <= 65536, right align8(N) * align4(L) <= 32768
    ("matmul_fits", None, ("MatMulInt", (1, 64, 64), None, {"y_shape": (1, 64, 512)})),
    ("matmul_left_past", "left_matrix", ("MatMulInt", (1, 600, 128), None,
                                         {"y_shape": (1, 128, 16)})),
    ("matmul_right_past", "right_matrix", ("MatMulInt", (1, 8, 64), None,
                                           {"y_shape": (1, 64, 516)})),
    ("matmul_right_wide", "right_matrix", ("MatMulInt", (1, 8, 128), None,
                                           {"y_shape": (1, 128, 2048)})),
]


def _build(layer):
    op, x, w, kw = layer
    return layer_model(op, x, w, **kw), x


def _inputs(x_shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(np.float32) * 3
    return [x, x * 1000]            # ordinary, and saturating the int8 input


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_each_venus_limit_is_lowered_exactly(row):
    _, rule, layer = row
    model, x_shape = _build(layer)
    strict = packer.check(model, "venus", lower=False, memory=False)
    broken = {v.rule.split(".", 1)[1] for v in strict.errors}
    assert (rule in broken) if rule else not broken, broken
    res = packer.pack(model, target="venus")          # plans memory and checks the plan
    assert not res.violations, [v.message for v in res.violations]
    assert bool(res.lowerings) == bool(rule)
    for lw in res.lowerings:
        assert (lw.extra_ops > 0 or lw.extra_params > 0) and lw.steps and lw.fixed
    want, got = InferenceSession(model), InferenceSession(res.data)
    device = _engine(res.data)           # the C engine runs the lowered ops too
    for x in _inputs(x_shape):
        a, b = want.run(None, {"x": x})[0], got.run(None, {"x": x})[0]
        assert a.dtype == b.dtype and np.array_equal(a, b)
        if device is not None:
            assert np.array_equal(device.run(None, {"x": x})[0], a)


def test_lowered_graph_uses_only_ops_every_executor_runs():
    model, _ = _build(conv((1, 1, 40, 23), (8, 1, 20, 5), strides=[8, 2]))
    res = packer.pack(model, target="venus")
    ops = {n.op_type for n in res.graph.nodes}
    assert ops <= {"Quant", "Conv2dInt", "Slice", "Concat", "Pad", "iqAdd", "Requant"}
    # one requantization: the partials are exact int32 (shift 0), the Requant rounds once
    convs = [n for n in res.graph.nodes if n.op_type == "Conv2dInt"]
    assert all(n.attrs["bits_o"] == 32 and n.attrs["exp_o"] == 4 + 6 for n in convs)
    [rq] = [n for n in res.graph.nodes if n.op_type == "Requant"]
    assert (rq.attrs["exp_in"], rq.attrs["bits_in"], rq.attrs["exp"], rq.attrs["bits"]) == \
        (10, 32, 3, 8)


def test_kernel_split_refuses_when_int32_partials_could_saturate():
    # a bias near 2^31 plus 4096 x 3x3 products of up to 127 * 128: the accumulator bound
    # exceeds int32, so partial sums could saturate where the exact accumulator does not
    model, _ = _build(conv((1, 4096, 3, 3), (2, 4096, 3, 3)))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(
        np.array([2_000_000_000, 0], np.int32), "b"))
    res = packer.check(model, "venus")
    assert {v.rule for v in res.errors} == {"Conv2dInt.input_buffer", "Conv2dInt.weight_buffer"}
    assert all("partial sums could saturate int32" in v.message for v in res.errors)
    assert not res.lowerings


def test_no_lower_keeps_the_strict_check_and_reports_say_how(tmp_path):
    model, _ = _build(conv((1, 1, 40, 23), (8, 1, 20, 5), strides=[8, 2]))
    assert {v.rule for v in packer.check(model, "venus", lower=False).errors} == \
        {"Conv2dInt.kernel", "Conv2dInt.stride"}
    res = packer.check(model, "venus")
    assert res.ok and len(res.lowerings) == 1
    text = res.report(full=False)
    assert "lowered automatically (1 layer(s)" in text and "Conv2d `layer`" in text
    assert "stride [8, 2] computed as stride [4, 2]" in text and "kernel_split" in text
    lw = res.lowerings[0]
    assert f"+{lw.extra_ops} ops" in text and f"+{lw.extra_bytes} bytes" in text
    assert "Lowered automatically (1)" in res.html()
    from linger.packer.cli import main
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert main(["check", str(path)]) == 0
    assert main(["check", str(path), "--no-lower"]) == 1


def test_a_new_target_gets_the_same_lowering_from_its_profile(tmp_path):
    prof = tmp_path / "k3.toml"      # a chip with kernels 1..3 only, and no Concat
    prof.write_text('extends = "venus"\nname = "k3"\nops_removed = ["Concat"]\n'
                    '[[rulesets.conv_shape]]\nid = "kernel"\nrange = "kernel"\nmin = 1\n'
                    'max = 3\nfix = "Split it."\n')
    model, x_shape = _build(conv((1, 3, 9, 9), (4, 3, 5, 5), pads=[1, 1, 1, 1]))
    assert packer.check(model, "venus").lowerings == []       # 5x5 fits venus
    res = packer.pack(model, target=str(prof))
    assert not res.violations and "kernel [5, 5] split into 4 partial convs of <= [3, 3]" in \
        res.lowerings[0].steps[0]
    for x in _inputs(x_shape):
        assert np.array_equal(InferenceSession(model).run(None, {"x": x})[0],
                              InferenceSession(res.data).run(None, {"x": x})[0])
    # an output-channel split needs Concat, which this chip lacks: the input channels are split
    # instead (int32 partials, no Concat)
    wide, x_shape = _build(conv((1, 56, 5, 5), (66, 56, 3, 3)))
    res = packer.pack(wide, target=str(prof))
    assert not res.violations and res.lowerings[0].steps[0].startswith("input_channels:")
    x = _inputs(x_shape)[1]
    assert np.array_equal(InferenceSession(wide).run(None, {"x": x})[0],
                          InferenceSession(res.data).run(None, {"x": x})[0])


def test_what_cannot_be_lowered_is_reported_by_its_own_name():
    # 16-bit output of a transposed conv: no pass changes bit widths; the layer stays as it is
    model, _ = _build(("ConvTranspose2dInt", (1, 4, 6, 6), (4, 2, 7, 7), {"strides": [2, 2]}))
    res = packer.check(model, "venus")
    assert not res.lowerings
    assert {v.node for v in res.errors} == {"layer"}


def test_a_huge_dilation_is_reported_not_written_out():
    """Writing out dilation 4096 would grow the weights ~2700x into thousands of kernel pieces
    (the packer ground for minutes); past dilation.MAX_GROWTH the pass does not apply and the
    layer is reported by name, with the rule and what to do."""
    from linger.packer.lower import dilation
    model = layer_model("Conv2dInt", (1, 4, 9, 9), (8, 4, 3, 3), strides=[64, 1],
                        pads=[4096, 1, 4096, 1], dilations=[4096, 1])
    res = packer.check(model, "venus")
    assert not res.lowerings
    assert {v.node for v in res.errors} == {"layer"}
    assert any("dilation" in v.rule for v in res.errors)
    # just inside the growth limit it is still lowered, exactly
    d = (dilation.MAX_GROWTH * 3 - 1) // 2
    model = layer_model("Conv1dInt", (1, 2, 2 * d + 1), (3, 2, 3), dilations=[d])
    res = packer.check(model, "venus")
    assert res.lowerings and not res.errors


def test_transposed_conv_weight_split_is_exact():
    # align8(Cout) * align2(Cin) * kh * kw <= 32768: 64 x 64 x 3 x 3 = 36864 is past it
    model, x_shape = _build(("ConvTranspose2dInt", (1, 64, 4, 4), (64, 64, 3, 3),
                             {"strides": [2, 2]}))
    res = packer.pack(model, target="venus")
    assert not res.violations and res.lowerings
    for x in _inputs(x_shape):
        assert np.array_equal(InferenceSession(model).run(None, {"x": x})[0],
                              InferenceSession(res.data).run(None, {"x": x})[0])


def test_symbolic_length_is_fixed_to_the_planned_size_in_a_lowered_file():
    model = layer_model("Conv1dInt", ("N", 8, "T"), (6, 8, 9), pads=[4, 4])
    res = packer.pack(model, target="venus", dims={"T": 50})
    assert res.lowerings and not res.violations
    sess = InferenceSession(res.data)
    assert sess.get_inputs()[0].shape[1:] == [8, 50]       # the batch stays free
    x = np.random.default_rng(2).standard_normal((3, 8, 50)).astype(np.float32) * 4
    assert np.array_equal(sess.run(None, {"x": x})[0],
                          InferenceSession(model).run(None, {"x": x})[0])
    from linger.errors import InputError
    with pytest.raises(InputError, match="dimension 2 must be 50"):
        sess.run(None, {"x": x[:, :, :40]})


@pytest.mark.parametrize("q,fixed", [
    ({"kernel": (7, 7), "stride": (1, 1), "pads": (3, 3, 3, 3), "Cin": 8, "Cout": 8}, {"kernel"}),
    ({"kernel": (1, 1), "stride": (2, 2), "pads": (0,) * 4, "Cin": 8, "Cout": 8},
     {"kernel_ge_stride"}),
    ({"kernel": (3, 3), "stride": (1, 1), "pads": (1,) * 4, "Cin": 8, "Cout": 8, "bits_x": 16},
     set()),
    ({"kernel": (3, 3), "stride": (2, 2), "pads": (0,) * 4, "Cin": 64, "Cout": 64,
      "op": "ConvTranspose2dInt"}, {"weight_buffer"}),
    ({"kernel": (3, 3), "stride": (2, 2), "pads": (0,) * 4, "Cin": 8, "Cout": 8, "groups": 2,
      "op": "ConvTranspose2dInt"}, set()),
])
def test_init_time_question_uses_the_same_passes(q, fixed):
    from linger.targets import check_op
    from linger.targets.quantities import _conv
    op = q.get("op", "Conv2dInt")
    full = _conv(q["kernel"], q["stride"], q["pads"], [1, 1], q.get("groups", 1), q["Cin"],
                 q["Cout"], 2)
    bits = {"bits_x": 8, "bits_w": 8, "bits_o": 8, **{k: v for k, v in q.items()
                                                      if k.startswith("bits")}}
    full.update({**bits, **{"bytes" + k[4:]: -(-v // 8) for k, v in bits.items()}})
    broken = {v.rule for v in check_op(VENUS, op, "l", full)}
    assert broken
    assert {r.split(".")[1] for r in fixable_rules(VENUS, op, full)} == fixed
    assert {r.split(".")[1] for r in broken} >= fixed


# -- random layers on a chip with tight limits: the passes compose and stay exact ---------------
TIGHT = """extends = "venus"
name = "tight"
[[rulesets.conv_shape]]
id = "kernel"
range = "kernel"
min = 1
max = 3
[[rulesets.conv_shape]]
id = "stride"
one_of = "stride"
values = [1, 2]
[[rulesets.conv_shape]]
id = "pad"
range = "pads"
min = 0
max = 1
[[rulesets.conv_shape]]
id = "dilation"
one_of = "dilation"
values = [1]
[[rulesets.conv_shape]]
id = "kernel_ge_stride"
require = "kernel_h >= stride_h and kernel_w >= stride_w"
text = "kernel >= stride"
[[rulesets.conv_shape]]
id = "pad_lt_kernel"
require = "max(pad_top, pad_bottom) < kernel_h and max(pad_left, pad_right) < kernel_w"
text = "pad < kernel"
[[rulesets.conv_buffers]]
id = "input_buffer"
limit = "align8(Cin) * align(W, 8 * stride_w) * kernel_h * bytes_x"
max = 1024
[[rulesets.conv_buffers]]
id = "weight_buffer"
when = "not depthwise"
limit = "align2(Cout_g) * align8(Cin_g) * kernel_h * kernel_w * bytes_w"
max = 256
[[rulesets.conv_buffers]]
id = "depthwise_weight"
when = "depthwise"
limit = "align16(Cout) * kernel_h * kernel_w * bytes_w"
max = 256
[[rulesets.conv_buffers]]
id = "output_size"
limit = "Cout * Ho * Wo * bytes_o"
max = 512
"""


@pytest.mark.parametrize("seed", range(12))
def test_random_conv_on_a_tight_chip_is_lowered_exactly(seed, tmp_path):
    """Kernel <= 3, stride 1 or 2, pad <= 1, 256-byte weights, 512-byte outputs: every random
    conv below breaks several limits at once; the lowered file must fit and be exact."""
    prof = tmp_path / "tight.toml"
    prof.write_text(TIGHT)
    rng = np.random.default_rng(seed)
    nd = int(rng.integers(1, 3))
    k = [int(rng.integers(1, 6)) for _ in range(nd)]
    s = [int(rng.integers(1, 5)) for _ in range(nd)]
    d = [int(rng.integers(1, 3)) for _ in range(nd)]
    pads = [int(rng.integers(0, v + 1)) for v in k] + [int(rng.integers(0, v + 1)) for v in k]
    depthwise = rng.random() < 0.25
    cin = int(rng.integers(1, 13))
    cout = cin if depthwise else int(rng.integers(1, 13))
    g = cin if depthwise else 1
    x = (1, cin, *[d[i] * (k[i] - 1) + 1 + int(rng.integers(0, 9)) for i in range(nd)])
    model = layer_model("Conv2dInt" if nd == 2 else "Conv1dInt", x, (cout, cin // g, *k),
                        strides=s, pads=pads, dilations=d, group=g,
                        bits_o=int(rng.choice([8, 32])), exp_o=int(rng.choice([3, 12])),
                        seed=seed)
    strict = packer.check(model, str(prof), lower=False, memory=False)
    res = packer.pack(model, target=str(prof))
    assert not res.violations and bool(res.lowerings) == bool(strict.errors)
    for xx in _inputs(x):
        assert np.array_equal(InferenceSession(model).run(None, {"x": xx})[0],
                              InferenceSession(res.data).run(None, {"x": xx})[0])


# -- published architectures: PyTorch eval == the lowered packed file, bit for bit --------------
DONE_WHEN = ["mobilenet_v2", "resnet8", "tc_resnet8", "ds_cnn", "crnn"]


@pytest.mark.parametrize("name", DONE_WHEN)
def test_zoo_model_packs_for_venus_and_runs_bitexact(name, tmp_path):
    import os
    import sys

    import torch

    import linger
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from zoo import ZOO

    entry = ZOO[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = linger.init(entry.make(), target="venus").train()  # nothing it cannot lower
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        y = model(*entry.inputs(4, generator=gen))
        y = y.plain() if hasattr(y, "plain") else y
        y.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    args = entry.inputs(1, generator=gen)
    path = str(tmp_path / f"{name}.onnx")
    linger.onnx.export(model, args, path)
    assert packer.check(path, "venus", lower=False, memory=False).errors  # refused unlowered
    res = packer.pack(path, tmp_path / f"{name}.bin", target="venus")
    assert not res.violations and res.lowerings
    sess = InferenceSession(str(tmp_path / f"{name}.bin"))
    device = _engine(res.data)
    for x in (args[0], args[0] * 1000):
        with torch.no_grad():
            want = model(x)
        want = (want.plain() if hasattr(want, "plain") else want).numpy()
        feed = {sess.get_inputs()[0].name: x.numpy()}
        got = sess.run(None, feed)[0]
        assert got.dtype == want.dtype and np.array_equal(got, want)
        if device is not None:
            assert np.array_equal(device.run(None, feed)[0], want)
