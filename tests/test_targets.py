"""Target profiles and the conformity checker.

Every rule of every built-in profile gets a passing and a failing case, built as a graph node
(attributes + shapes, through ``from_node``, as ``linger check`` sees it). A new rule id without
an entry in CASES fails the table on purpose: add its cases there.
"""

import json
import sys
import warnings

import pytest
import torch

import linger
from linger.errors import ConfigError, TargetError
from linger.targets import (available_targets, check_layers, check_op, from_node, load_target)
from linger.targets.expr import Expr

TARGETS = available_targets()
_DT = {4: "int8", 8: "int8", 16: "int16", 32: "int32"}


# -- graph nodes as the checker sees them --------------------------------------------------------
def conv_node(op, kernel=3, stride=1, pad=1, dil=1, groups=1, cin=8, cout=8, H=8, W=8, bx=8,
              bw=8, bo=8):
    nd = 1 if "1d" in op else 2
    k = [kernel] * nd
    if "Transpose" in op:
        w = (cin, cout // groups, *k)
        out = [(n - 1) * stride - 2 * pad + dil * (kernel - 1) + 1 for n in ([H, W][-nd:])]
    else:
        w = (cout, cin // groups, *k)
        out = [max((n + 2 * pad - dil * (kernel - 1) - 1) // stride + 1, 1)
               for n in ([H, W][-nd:])]
    x = (1, cin, *([H, W][-nd:]))
    attrs = {"kernel_shape": k, "strides": [stride] * nd, "pads": [pad] * 2 * nd,
             "dilations": [dil] * nd, "group": groups, "bits_x": bx, "bits_w": bw, "bits_o": bo}
    return attrs, [x, w, (cout,)], [_DT[bx], _DT[bw], "int32"], [(1, cout, *out)], [_DT[bo]]


def linear_node(op, M=1, N=64, L=10, bx=8, bw=8, bo=8):
    return ({"bits_x": bx, "bits_w": bw, "bits_o": bo}, [(M, N), (L, N), (L,)],
            [_DT[bx], _DT[bw], "int32"], [(M, L)], [_DT[bo]])


def matmul_node(op, rank=3, M=4, N=8, L=4, bx=8):
    lead = (1,) * (rank - 2)
    return ({"bits_x": bx, "bits_y": bx}, [lead + (M, N), lead + (N, L)], [_DT[bx]] * 2,
            [lead + (M, L)], ["int8"])


def pool_node(op, kernel=2, stride=2, pad=0, H=8, W=8, bx=8):
    attrs = {"kernel_shape": [kernel] * 2, "strides": [stride] * 2, "pads": [pad] * 4}
    if op == "AvgPoolInt":
        attrs.update(bits=bx, exp=0)
    out = [(n + 2 * pad - kernel) // stride + 1 for n in (H, W)]
    return attrs, [(1, 4, H, W)], [_DT[bx]], [(1, 4, *out)], [_DT[bx]]


def global_pool_node(op, bx=8):
    return {"bits": bx, "exp": 0}, [(1, 4, 8, 8)], [_DT[bx]], [(1, 4, 1, 1)], [_DT[bx]]


def transpose_node(op, shape=(1, 4, 8, 8), perm=(0, 1, 3, 2)):
    out = tuple(shape[p] for p in perm)
    return {"perm": list(perm)}, [shape], ["int8"], [out], ["int8"]


def softmax_node(op, length=100):
    return {"axis": -1}, [(1, length)], ["int8"], [(1, length)], ["int16"]


def eltwise_node(op, bdims=1):
    b = (1, 4, 8, 1) if bdims == 1 else (1, 4, 1, 1)
    return {}, [(1, 4, 8, 8), b], ["int8"] * 2, [(1, 4, 8, 8)], ["int8"]


BUILDERS = {"Conv2dInt": conv_node, "Conv1dInt": conv_node, "ConvTranspose2dInt": conv_node,
            "ConvTranspose1dInt": conv_node, "LinearInt": linear_node, "MatMulInt": matmul_node,
            "AvgPoolInt": pool_node, "GlobalAvgPoolInt": global_pool_node, "MaxPool": pool_node,
            "Transpose": transpose_node, "SoftmaxInt": softmax_node,
            "LogSoftmaxInt": softmax_node, "SoftmaxLuna": softmax_node, "iqAdd": eltwise_node,
            "iqSub": eltwise_node}


def _bad_bits(rule):
    return next(b for b in (16, 4, 8, 32) if b not in rule.values)


#: rule id -> (passing overrides, failing overrides); each a function of the rule (its limits).
CASES = {
    "kernel": (lambda r: {}, lambda r: {"kernel": r.max + 1, "pad": 0, "H": 64, "W": 64}),
    "kernel_dilated": (lambda r: {"dil": 2, "kernel": 3, "pad": 0, "H": 64, "W": 64},
                       lambda r: {"dil": 2, "kernel": r.max + 1, "pad": 0, "H": 128, "W": 128}),
    "stride": (lambda r: {}, lambda r: {"stride": 3}),
    "pad": (lambda r: {}, lambda r: {"pad": r.max + 1, "kernel": r.max + 2, "H": 64, "W": 64}),
    "dilation": (lambda r: {}, lambda r: {"dil": 3}),
    "kernel_ge_stride": (lambda r: {}, lambda r: {"kernel": 1, "stride": 2, "pad": 0}),
    "pad_lt_kernel": (lambda r: {}, lambda r: {"kernel": 1, "pad": 1}),
    "input_ge_kernel": (lambda r: {}, lambda r: {"H": 2, "W": 2, "kernel": 3, "pad": 0}),
    "data_bits": (lambda r: {"bx": r.values[-1]}, lambda r: {"bx": _bad_bits(r)}),
    "weight_bits": (lambda r: {"bw": r.values[-1]}, lambda r: {"bw": _bad_bits(r)}),
    "out_bits": (lambda r: {"bo": r.values[-1]}, lambda r: {"bo": _bad_bits(r)}),
    "input_buffer": (lambda r: {}, lambda r: {"cin": 256, "W": 512, "H": 16}),
    "weight_buffer": (lambda r: {}, lambda r: {"cin": 256, "cout": 256}),
    "depthwise_weight": (lambda r: {"groups": 8},
                         lambda r: {"groups": 16384, "cin": 16384, "cout": 16384, "H": 4, "W": 4}),
    "depthwise_input_buffer": (lambda r: {"groups": 8},
                               lambda r: {"groups": 512, "cin": 512, "cout": 512, "W": 256}),
    "output_size": (lambda r: {}, lambda r: {"cout": 64, "H": 64, "W": 2048}),
    "groups": (lambda r: {}, lambda r: {"groups": 2}),
    "stride2_kernel": (lambda r: {"stride": 2, "kernel": 4, "pad": 1},
                       lambda r: {"stride": 2, "kernel": 1, "pad": 0}),
    "stride4_kernel": (lambda r: {"stride": 4, "kernel": 4, "pad": 0},
                       lambda r: {"stride": 4, "kernel": 3, "pad": 0}),
    "left_int8": (lambda r: {"bx": 8}, lambda r: {"M": 64, "N": 2048}),
    "left_int16": (lambda r: {"bx": 16}, lambda r: {"bx": 16, "M": 64, "N": 1024}),
    "left_matrix": (lambda r: {}, lambda r: {"M": 256, "N": 2048}),
    "right_matrix": (lambda r: {}, lambda r: {"N": 512, "L": 512}),
    "rank": (lambda r: {}, lambda r: {"_rank": True}),
    "plane_hw": (lambda r: {}, lambda r: {"shape": (1, 4, 256, 512)}),
    "plane_wc": (lambda r: {"perm": (0, 3, 2, 1)},
                 lambda r: {"shape": (1, 512, 2, 256), "perm": (0, 3, 2, 1)}),
    "axis_length": (lambda r: {}, lambda r: {"length": r.max + 1}),
    "broadcast": (lambda r: {}, lambda r: {"bdims": 2}),
}


def _node(op, overrides):
    overrides = dict(overrides)
    if overrides.pop("_rank", False):  # a rank the target refuses: 7 axes (or 4 for a matmul)
        if op == "MatMulInt":
            overrides["rank"] = 4
        else:
            overrides.update(shape=(2,) * 7, perm=tuple(range(7))[::-1])
    return BUILDERS[op](op, **overrides)


def _applies(rule, q):
    return rule.names <= q.keys() and (rule.when is None or rule.when(q))


ROWS = [(t, op, rule.id) for t in TARGETS for op, spec in load_target(t).ops.items()
        for rule in spec.rules]


def test_every_rule_has_cases():
    missing = sorted({rid for _, _, rid in ROWS} - set(CASES))
    assert not missing, f"add passing/failing cases for rules {missing} to CASES"


@pytest.mark.parametrize("target,op,rule_id", ROWS, ids=[f"{t}-{o}-{r}" for t, o, r in ROWS])
def test_rule_passing_and_failing_case(target, op, rule_id):
    t = load_target(target)
    spec = t.ops[op]
    rule = next(r for r in spec.rules if r.id == rule_id)
    good, bad = CASES[rule_id]
    # passing: the rule applies to the node and holds
    q = from_node(op, *_node(op, good(rule)))
    assert _applies(rule, q), f"passing case does not exercise {op}.{rule_id}: {q}"
    assert f"{op}.{rule_id}" not in {v.rule for v in check_op(t, op, "net.layer", q)}
    # failing: the violation names the layer, the value, the limit and the fix
    q = from_node(op, *_node(op, bad(rule)))
    found = {v.rule: v for v in check_op(t, op, "net.layer", q)}
    assert f"{op}.{rule_id}" in found, f"{op}.{rule_id} did not fire on {q}"
    v = found[f"{op}.{rule_id}"]
    msg = v.message
    assert msg.startswith(f"{spec.display} `net.layer` (") and f"target {t.name}: " in msg
    assert msg.endswith(rule.fix) and rule.fix
    if rule.kind == "range":
        assert f"must be {rule.min}..{rule.max}" in msg and f"{rule.label} " in msg
    elif rule.kind == "one_of":
        assert f"{rule.label} must be" in msg
        assert all(str(x) in msg for x in rule.values)
    elif rule.kind == "limit":
        assert f"must be <= {rule.max}" in msg and f"= {rule.formula.text}" in msg
    else:
        assert rule.text in msg


def test_spec_capacities_and_ids():
    venus, venus_a, arcs = (load_target(n) for n in ("venus", "venusA", "arcs"))
    assert venus.memories["share"].capacity == 640 * 1024
    assert venus_a.memories["share"].capacity == arcs.memories["share"].capacity == 384 * 1024
    assert {t.memories["psram"].capacity for t in (venus, venus_a, arcs)} == {8 * 1024 * 1024}
    assert (venus.id, arcs.id, venus_a.id) == (0, 2, 3)
    assert load_target("VENUSA") is venus_a  # names are case-insensitive, profiles cached


def test_example_message_exactly():
    q = from_node("Conv2dInt", *conv_node("Conv2dInt", kernel=7, pad=3, H=32, W=32))
    msgs = [str(v) for v in check_op(load_target("venus"), "Conv2dInt", "backbone.3.conv", q)]
    assert msgs == ["Conv2d `backbone.3.conv` (kernel 7x7) exceeds target venus: kernel must be"
                    " 1..5. Split the kernel (e.g. stacked 3x3 convs), or dilate it and choose"
                    " target arcs or venusA."]


def test_unsupported_op_is_named():
    [v] = check_op(load_target("venus"), "FancyOp", "head.fancy", {})
    assert v.rule == "FancyOp.supported" and "`head.fancy`" in v.message
    assert "not supported by target venus" in v.message


# -- init-time checks on PyTorch layers ----------------------------------------------------------
nn = torch.nn


class Backbone(nn.Module):
    def __init__(self, k=7):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Identity(),
                                      nn.Sequential(nn.Conv2d(8, 8, k, padding=k // 2)))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.backbone(x)).mean((2, 3)))


def test_init_refuses_7x7_and_names_the_layer():
    model = Backbone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # strict (no lowering): the 7x7 kernel is reported, naming the layer
    [v] = check_layers(model, "venus", raise_errors=False, lower=False)
    assert v.message.startswith("Conv2d `backbone.3.0` (kernel 7x7) exceeds target venus:"
                                " kernel must be 1..5.")
    # linger.init reports only what `linger pack` cannot lower: 16-bit conv data, not the kernel
    with pytest.raises(TargetError) as e:
        linger.init(model, target="venus", data_bits=16)
    assert sorted((v.node, v.rule) for v in e.value.violations) == [
        ("backbone.0", "Conv2dInt.data_bits"), ("backbone.3.0", "Conv2dInt.data_bits")]
    assert str(e.value).startswith("2 violations of target venus")
    # nothing changed: no layer converted, no buffer added
    assert type(model.backbone[0]) is nn.Conv2d and model.state_dict().keys() == before.keys()
    assert type(linger.init(Backbone(), target="venus").backbone[3][0]).__name__ == "QConv2d"


def test_init_lists_every_violation_and_accepts_fitting_models():
    model = nn.Sequential(nn.Conv2d(3, 8, 7), nn.Conv2d(8, 8, 3, stride=3),
                          nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2), nn.Conv2d(8, 8, 3,
                                                                                     dilation=2))
    strict = check_layers(model, "venus", linger.QuantConfig(parameter_bits=4),
                          raise_errors=False, lower=False)
    rules = sorted((v.node, v.rule) for v in strict)
    assert ("0", "Conv2dInt.kernel") in rules and ("1", "Conv2dInt.stride") in rules
    assert ("2", "ConvTranspose2dInt.groups") in rules and ("3", "Conv2dInt.dilation") in rules
    with pytest.raises(TargetError) as e:
        linger.init(model, target="venus", parameter_bits=4)
    rules = sorted((v.node, v.rule) for v in e.value.violations)
    # kernel 7 (kernel split), stride 3 (stride 1 + sub-sampling) and dilation (dense kernel)
    # are lowered at pack time; 4-bit weights and a grouped transposed conv are not
    assert ("2", "ConvTranspose2dInt.groups") in rules
    assert not {"Conv2dInt.kernel", "Conv2dInt.stride", "Conv2dInt.dilation"} & {r for _, r in
                                                                               rules}
    assert sum(r == "Conv2dInt.weight_bits" for _, r in rules) == 3
    assert str(e.value).startswith(f"{len(rules)} violations of target venus")
    # the dilated conv and 4-bit weights fit arcs; the 7x7 kernel is lowered there too
    fine = linger.init(nn.Sequential(nn.Conv2d(3, 8, 7), nn.Conv2d(8, 8, 3, dilation=2)),
                       target="arcs", parameter_bits=4)
    assert type(fine[0]).__name__ == "QConv2d"
    fine = linger.init(Backbone(k=5), target="venus")
    assert type(fine.backbone[0]).__name__ == "QConv2d"


def test_init_checks_bits_already_quantized_and_disabled_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.Conv2d(8, 8, 7)),
                          nn.Sequential(nn.Conv2d(8, 8, 9)))
    linger.quant_module(model[1], data_bits=16)   # converted earlier, with its own config
    linger.disable_quant(model[2])                  # stays float: not checked
    with pytest.raises(TargetError) as e:
        linger.init(model, target="venus")
    # the 7x7 kernel is lowered at pack time; 16-bit data is not
    assert sorted(v.rule for v in e.value.violations) == ["Conv2dInt.data_bits"]
    assert {v.node for v in e.value.violations} == {"1.0"}


def test_check_layers_without_raising_and_warnings(tmp_path):
    path = tmp_path / "soft.toml"
    path.write_text('extends = "venus"\nname = "soft"\n[[rulesets.conv_shape]]\nid = "kernel"\n'
                    'range = "kernel"\nmin = 1\nmax = 3\nseverity = "warning"\nfix = "Fine."\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = check_layers(nn.Sequential(nn.Conv2d(3, 8, 5)), str(path))
    assert [v.severity for v in found] == ["warning"] and "kernel must be 1..3" in found[0].message
    assert any("kernel must be 1..3" in str(w.message) for w in caught)


# -- custom profiles -----------------------------------------------------------------------------
def test_custom_profile_extends_and_json(tmp_path):
    toml = tmp_path / "board.toml"
    toml.write_text('format = 1\nextends = "venus"\nname = "board"\nid = 42\n'
                    'ops_removed = ["LinearInt"]\n[memory.share]\ncapacity = 131072\n'
                    '[placement]\nparameters = "flash"\n')
    t = load_target(str(toml))
    assert (t.name, t.id, t.memories["share"].capacity, t.parameters) == ("board", 42, 131072,
                                                                         "flash")
    assert t.memories["psram"].capacity == 8 * 1024 * 1024 and not t.supports("LinearInt")
    assert [r.id for r in t.ops["Conv2dInt"].rules] == [r.id for r in
                                                        load_target("venus").ops["Conv2dInt"].rules]
    js = tmp_path / "tiny.json"
    js.write_text(json.dumps({"name": "tiny", "memory": {"share": {"capacity": 1024}},
                              "placement": {"parameters": "share"},
                              "ops": {"Relu": {}, "Conv2dInt": {"rules": [
                                  {"id": "k", "range": "kernel", "min": 1, "max": 3}]}}}))
    t = load_target(str(js))
    assert t.id == 255 and t.alignment == 16 and sorted(t.ops) == ["Conv2dInt", "Relu"]


@pytest.mark.parametrize("body,expected", [
    ('name = "x"\nbogus = 1\n', "unknown keys ['bogus']"),
    ('name = "x"\n[memory.share]\ncapacity = -1\n', "capacity must be a byte count"),
    ('name = "x"\n[memory.sram]\ncapacity = 1\n', "memory.sram is not a memory kind"),
    ('name = "x"\n[memory.share]\ncapacity = 9\n[ops.Conv2dInt]\nuse = ["nope"]\n',
     "no [[rulesets.nope]]"),
    ('name = "x"\n[memory.share]\ncapacity = 9\n[[ops.Conv2dInt.rules]]\nid = "a"\n'
     'limit = "kernal_h * 2"\nmax = 3\n', "cannot use ['kernal_h']"),
    ('name = "x"\n[memory.share]\ncapacity = 9\n[[ops.Conv2dInt.rules]]\nid = "a"\n'
     'require = "__import__(\'os\').system(\'true\')"\ntext = "t"\n', "is not allowed"),
    ('name = "x"\n[memory.share]\ncapacity = 9\n[[ops.Conv2dInt.rules]]\nid = "a"\n'
     'range = "kernel"\nmin = 3\nmax = 1\n', "min <= max"),
    ('name = "x"\n[memory.share]\ncapacity = 9\n[[ops.Conv2dInt.rules]]\nid = "a"\n'
     'range = "kernel"\nmin = 1\nmax = 3\nmx = 2\n', "unknown keys ['mx']"),
    ('extends = "self.toml"\nname = "x"\n', "cycle"),
    ('name = "x"\n[memory.share]\ncapacity = 9\n[placement]\nparameters = "flash"\n',
     "placement.parameters = 'flash'"),
    ('format = 2\nname = "x"\n', "profile format 1"),
    ('name = [1\n', "cannot be read"),
])
def test_bad_profiles_are_refused_with_the_key(tmp_path, body, expected):
    path = tmp_path / "self.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_target(str(path))
    assert expected in str(e.value) and "self.toml" in str(e.value)


def test_unknown_target_lists_builtins():
    with pytest.raises(ConfigError, match="built-in targets are venus, venusA, arcs"):
        load_target("mars")


@pytest.mark.parametrize("text", ["x.y", "x[0]", "lambda: 1", "'a'", "1.5", "2 ** 100",
                                  "open('f')", "max", "[1, 2]", "x if y else z if", "a / b"])
def test_formulas_accept_only_the_whitelist(text):
    with pytest.raises(ConfigError):
        Expr(text)


def test_formula_functions():
    assert Expr("align(W, 8 * s)")({"W": 17, "s": 2}) == 32
    assert Expr("ceil_div(a, 4) + align16(b) - min(a, b) * max(1, 2)")({"a": 9, "b": 1}) == 17
    assert Expr("not (a < b < c)")({"a": 1, "b": 3, "c": 2}) is True
    with pytest.raises(ConfigError, match="divides by zero"):
        Expr("a // b")({"a": 1, "b": 0})


def test_targets_package_imports_no_torch():
    import subprocess
    from pathlib import Path
    code = ("import linger.targets, sys; linger.targets.load_target('venus');"
            " assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(linger.__file__).resolve().parents[1])


def test_docs_tables_are_generated_from_the_profiles():
    from pathlib import Path
    from linger.targets.describe import update_doc
    doc = Path(linger.__file__).resolve().parents[1] / "docs" / "packer.md"
    text = doc.read_text(encoding="utf-8")
    assert update_doc(text) == text, ("docs/packer.md is out of date: run"
                                      " python -m linger.targets.describe docs/packer.md")
