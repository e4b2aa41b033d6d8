"""The two-stage flow: normalize (clamp) training, conv+BN fusion, ahead ReLU, checkpoints.

Fusion is checked against float PyTorch (fused eval == unfused eval within float tolerance),
export against the integer runtime (exact equality), and the whole recipe on the digits data.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import linger
from linger.config import SWITCHES
from linger.errors import ConfigError
from linger.examples_models import DigitsCNN, load_digits_data, set_seed
from linger.quant import two_stage
from linger.quant.fuse import FusedBatchNorm1d, FusedBatchNorm2d
from linger.quant.normalize import NormalizeConv2d, NormalizeLinear


@pytest.fixture(autouse=True)
def _reset_bn_switch():
    yield
    SWITCHES.bn_momentum_update = False


def _randomize_bn(model):
    """Non-trivial BN statistics and affine parameters (a fresh BN folds to the identity)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


class Block(nn.Module):
    """Custom forward: functional ReLU, a residual add, and a conv whose output is used twice."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y)) + y          # residual: bn2's output is not followed by ReLU
        z = self.conv3(y)
        z = self.bn3(z) + z                      # conv3's output has two consumers: no fusion
        return torch.relu(self.fc(z.mean((2, 3))))


class TutorialNet(nn.Module):
    """A small conv+BN+linear model with the attribute names of the original tutorial."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.mid_conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.last_fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        x = F.max_pool2d(self.relu1(self.bn1(self.mid_conv(x))), 2)
        return self.last_fc(x.flatten(1))


# -- normalize ----------------------------------------------------------------------------------

def test_normalize_clamps_forward_and_gradient_is_zero_only_where_clamped():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, 3.0, -0.2], [-4.0, 0.1, 1.0]]))
        lin.bias.copy_(torch.tensor([2.5, -0.3]))
    keys = list(lin.state_dict())
    net = linger.normalize_layers(nn.Sequential(lin), normalize_weight_value=1,
                                  normalize_bias_value=2, normalize_output_value=2.5)
    assert isinstance(net[0], NormalizeLinear) and net[0] is lin and list(lin.state_dict()) == keys
    x = torch.tensor([[1.0, 1.0, 1.0], [0.1, -0.1, 0.2]])
    y = net(x)                          # first output 3.3 is clamped to 2.5, the others are not
    want = F.linear(x, lin.weight.clamp(-1, 1), lin.bias.clamp(-2, 2)).clamp(-2.5, 2.5)
    assert torch.equal(y, want) and y[0, 0] == 2.5
    y.sum().backward()
    clamped_w = lin.weight.abs() > 1
    assert (lin.weight.grad[clamped_w] == 0).all() and (lin.weight.grad[~clamped_w] != 0).all()
    assert lin.bias.grad[0] == 0 and lin.bias.grad[1] == 2   # bias 2.5 clamped to 2


def test_normalize_module_wins_disable_normalize_skips_and_bad_settings_are_refused():
    model = TutorialNet()
    linger.disable_normalize(model.last_fc)
    linger.normalize_module(model.mid_conv, type_modules=(nn.Conv2d), normalize_weight_value=16,
                            normalize_bias_value=16, normalize_output_value=16)
    model = linger.normalize_layers(model, normalize_modules=(nn.Conv2d, nn.Linear))
    assert two_stage.spec_of(model.mid_conv).weight == 16
    assert two_stage.spec_of(model.conv).output == 8
    assert type(model.last_fc) is nn.Linear and two_stage.spec_of(model.last_fc) is None
    linger.disable_normalize(model.conv)               # after the fact: clamps removed
    assert type(model.conv) is nn.Conv2d
    with pytest.raises(ConfigError, match="TransformerEncoderLayer cannot be normalized"):
        linger.normalize_layers(model, normalize_modules=(nn.Conv2d, nn.TransformerEncoderLayer))
    with pytest.raises(ConfigError, match="positive number"):
        linger.normalize_layers(model, normalize_weight_value=-1)


# -- trace_layers -------------------------------------------------------------------------------

def test_trace_finds_pairs_and_ahead_relu_in_custom_forward():
    model = Block()
    keys = list(model.state_dict())
    linger.trace_layers(model, model, torch.randn(1, 3, 6, 6))
    assert list(model.state_dict()) == keys            # same names, nothing added or removed
    assert two_stage.fused_bn(model.conv1) is model.bn1 and isinstance(model.bn1, FusedBatchNorm2d)
    assert two_stage.fused_bn(model.conv2) is model.bn2
    assert two_stage.fused_bn(model.conv3) is None and type(model.bn3) is nn.BatchNorm2d
    marked = {n for n, m in model.named_modules() if m.__dict__.get(two_stage.AHEAD_RELU_ATTR)}
    assert marked == {"conv1", "fc"}                   # conv1->bn1->F.relu, fc->torch.relu


@pytest.mark.parametrize("conv,bn,shape", [
    (nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), (4, 3, 6, 6)),
    (nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4), (4, 4, 6, 6)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6), (4, 4, 5, 5)),
    (nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), (4, 3, 9)),
    (nn.ConvTranspose1d(3, 5, 4, stride=2, padding=1), nn.BatchNorm1d(5), (4, 3, 7)),
], ids=["conv2d", "depthwise_nobias", "convT2d_groups", "conv1d", "convT1d"])
def test_fused_matches_unfused_float(conv, bn, shape):
    ref = _randomize_bn(nn.Sequential(conv, bn, nn.ReLU()))
    fused = copy.deepcopy(ref)
    linger.trace_layers(fused, fused, torch.randn(*shape))
    assert two_stage.fused_bn(fused[0]) is fused[1]
    assert isinstance(fused[1], (FusedBatchNorm1d, FusedBatchNorm2d))
    x = torch.randn(*shape)
    ref.eval(), fused.eval()
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)
    # training: batch statistics, running statistics updated as nn.BatchNorm does
    ref.train(), fused.train()
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[1].running_var, ref[1].running_var)
    assert fused[1].num_batches_tracked == ref[1].num_batches_tracked == 1


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3)

    def forward(self, a, b):
        return self.bn(self.conv(a + b))


@pytest.mark.parametrize("call", ["varargs", "tuple", "keyword"])
def test_trace_accepts_the_dummy_input_forms_of_both_apis(call):
    model, a, b = TwoInputs(), torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    if call == "varargs":                                 # linger 1.x: trace_layers(m, m, *args)
        linger.trace_layers(model, model, a, b, fuse_bn=True)
    elif call == "tuple":
        linger.trace_layers(model, model, (a, b))
    else:
        linger.trace_layers(model, model, dummy_input=(a, b))
    assert two_stage.fused_bn(model.conv) is model.bn
    with pytest.raises(ConfigError, match="dummy input is missing"):
        linger.trace_layers(model, model)


def test_trace_is_idempotent_and_refuses_what_it_cannot_do():
    set_seed(0)
    model = _randomize_bn(DigitsCNN())
    x = torch.randn(2, 1, 8, 8)
    linger.trace_layers(model, model, x)
    text, state = repr(model), copy.deepcopy(model.state_dict())
    model.eval()
    out = model(x)
    linger.trace_layers(model, model, x)
    assert repr(model) == text and torch.equal(model(x), out)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ConfigError, match="fusion cannot be undone"):
        linger.trace_layers(model, model, x, fuse_bn=False)
    with pytest.raises(ConfigError, match="sub-modules"):
        linger.trace_layers(model, DigitsCNN(), x)
    linger.init(model)
    with pytest.raises(ConfigError, match="before linger.init"):
        linger.trace_layers(model, model, x)


def test_copies_keep_the_fusion_and_disable_quant_restores_the_stage1_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    linger.trace_layers(model, model, torch.zeros(1, 1, 5, 5))
    clone = copy.deepcopy(model)
    assert two_stage.fused_bn(clone[0]) is clone[1]
    linger.init(clone)
    linger.disable_quant(clone[0])
    assert type(clone[0]) is NormalizeConv2d and two_stage.fused_bn(clone[0]) is clone[1]


# -- stage 2: ahead ReLU, normalize values as ranges, BN statistics ------------------------------

def _one_conv(ahead: bool):
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(-3.0)                       # outputs mostly negative
    model = nn.Sequential(conv, nn.ReLU())
    linger.trace_layers(model, model, torch.zeros(1, 1, 2, 2), ahead_conv_relu=ahead)
    return linger.init(model)


def test_ahead_relu_takes_the_output_range_from_the_positive_part():
    x = torch.linspace(-5, 5, 16).view(1, 1, 4, 4)   # conv output in [-8, 2]
    plain, ahead = _one_conv(False), _one_conv(True)
    assert ahead[0].__dict__.get(two_stage.AHEAD_RELU_ATTR) and \
        not plain[0].__dict__.get(two_stage.AHEAD_RELU_ATTR)
    plain(x), ahead(x)
    assert float(plain[0].output_range) == 8.0       # max |y|
    assert float(ahead[0].output_range) == 2.0       # max relu(y)
    assert int(plain[0].output_exp) == 3 and int(ahead[0].output_exp) == 5
    ahead.eval()
    graph = linger.onnx.export(ahead, x, None)
    assert [n.op_type for n in graph.graph.node][1:3] == ["Conv2dInt", "Relu"]
    sess = linger.runtime.InferenceSession(graph)
    for batch in (x, x * 50):                        # negatives saturate, then ReLU: exact
        got = sess.run(None, {"input": batch.numpy()})[0]
        assert np.array_equal(got, ahead(batch).detach().numpy())


def test_normalize_values_become_minimum_exponents_in_stage_2():
    assert [two_stage.min_exp_for_clamp(v, 8) for v in (8, 16, 10, 1, 0.5)] == [4, 3, 3, 7, 8]
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.fill_(0.01)
        model[0].weight[0, 0] = 20.0                  # beyond the weight value 8
    linger.normalize_layers(model, normalize_weight_value=8, normalize_output_value=8)
    linger.init(model)
    model(torch.full((2, 4), 10.0))                    # outputs up to ~80
    assert int(model[0].weight_exp(model[0].weight)) == 4   # grid [-8, 7.9375]: w saturates
    assert int(model[0].output_exp) == 4 and float(model[0].output_range) > 50


def test_bn_momentum_switch_freezes_statistics_and_training_equals_eval():
    set_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)))
    x = torch.randn(4, 2, 6, 6)
    linger.trace_layers(model, model, x, fuse_bn=True)  # model[2] stays a standalone BN
    linger.normalize_layers(model)
    linger.SetBnMomentumUpdate(True)
    before = copy.deepcopy(model.state_dict())
    model.train()
    train_out = model(x)
    model.eval()
    torch.testing.assert_close(train_out, model(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    linger.init(model)
    model.train()
    model(x)
    for k in ("1.running_mean", "1.running_var", "2.running_mean", "2.running_var"):
        assert torch.equal(model.state_dict()[k], before[k])


# -- checkpoints --------------------------------------------------------------------------------

DUMMY = torch.zeros(1, 1, 8, 8)


def _stage1(model):
    linger.trace_layers(model, model, DUMMY, fuse_bn=True)
    return linger.normalize_layers(model, normalize_modules=(nn.Conv2d, nn.Linear))


def _stage2(model):
    return linger.init(_stage1(model))


def _trained(stage):
    """A checkpoint of ``stage`` ('float', 'stage1', 'stage2') after a few training steps."""
    set_seed(0)
    model = {"float": lambda m: m, "stage1": _stage1, "stage2": _stage2}[stage](DigitsCNN())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(2):
        loss = model(torch.rand(8, 1, 8, 8)).square().mean()
        opt.zero_grad(), loss.backward(), opt.step()
    return model.state_dict()


# (checkpoint stage, target stage, when: "before" every linger call, "between" (after trace and
# normalize, before init), "after" every call)
CHECKPOINT_PATHS = [
    ("float", "stage1", "before"), ("float", "stage1", "after"),
    ("float", "stage2", "before"), ("float", "stage2", "between"), ("float", "stage2", "after"),
    ("stage1", "stage2", "before"), ("stage1", "stage2", "between"),
    ("stage1", "stage2", "after"), ("stage2", "stage2", "after"),
]


@pytest.mark.parametrize("src,dst,when", CHECKPOINT_PATHS,
                         ids=[f"{s}-into-{d}-{w}" for s, d, w in CHECKPOINT_PATHS])
def test_checkpoint_loads_strict(src, dst, when):
    state = _trained(src)
    torch.manual_seed(123)                             # different init: loading must overwrite
    model = DigitsCNN()
    if when == "before":
        model.load_state_dict(state, strict=True)
    model = _stage1(model)
    if when == "between":
        model.load_state_dict(state, strict=True)
    if dst == "stage2":
        model = linger.init(model)
    if when == "after":
        model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


def test_stage2_from_float_checkpoint_keeps_float_accuracy_shape():
    """Loading a float checkpoint into the fused stage-1 model changes nothing numerically
    (clamps wide enough): fused eval equals the float model's eval."""
    set_seed(0)
    float_model = _randomize_bn(DigitsCNN()).eval()
    model = DigitsCNN()
    linger.trace_layers(model, model, DUMMY)
    linger.normalize_layers(model, normalize_weight_value=1e6, normalize_bias_value=1e6,
                            normalize_output_value=1e6)
    model.load_state_dict(float_model.state_dict(), strict=True)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(model.eval()(x), float_model(x), rtol=1e-5, atol=1e-5)


# -- export -------------------------------------------------------------------------------------

def test_exported_fused_model_is_bit_exact_and_has_no_batchnorm():
    set_seed(0)
    model = _stage2(_randomize_bn(DigitsCNN()))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 8, 8))
    model.eval()
    x = torch.rand(4, 1, 8, 8)
    graph = linger.onnx.export(model, x, None, input_names=["input"],
                               dynamic_axes={"input": {0: "batch"}})
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("Conv2dInt") == 3 and not any("BatchNorm" in op for op in ops)
    conv = next(n for n in graph.graph.node if n.op_type == "Conv2dInt")
    assert len(conv.input) == 3                        # folded bias although the conv had none
    sess = linger.runtime.InferenceSession(graph)
    for batch in (x, x * 100.0 - 50.0):
        got = sess.run(None, {"input": batch.numpy()})[0]
        assert np.array_equal(got, model(batch).detach().numpy())


# -- the original tutorial, unchanged, and the recipe on digits ---------------------------------

def test_original_tutorial_calls_run_unchanged():
    dummy_input = torch.randn(1, 1, 8, 8)
    # stage 1 (doc/tutorial/get_started_for_two_stage.md of linger 1.x)
    model = TutorialNet()
    linger.trace_layers(model, model, dummy_input, fuse_bn=True)
    linger.disable_normalize(model.last_fc)
    type_modules = (nn.Conv2d)
    normalize_modules = (nn.Conv2d, nn.Linear)
    linger.normalize_module(model.mid_conv, type_modules=type_modules, normalize_weight_value=16,
                            normalize_bias_value=16, normalize_output_value=16)
    model = linger.normalize_layers(model, normalize_modules=normalize_modules,
                                    normalize_weight_value=8, normalize_bias_value=8,
                                    normalize_output_value=8)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    stage1_state = model.state_dict()
    # stage 2
    model = TutorialNet()
    linger.trace_layers(model, model, dummy_input, fuse_bn=True)
    linger.disable_normalize(model.last_fc)
    linger.normalize_module(model.mid_conv, type_modules=type_modules, normalize_weight_value=16,
                            normalize_bias_value=16, normalize_output_value=16)
    model = linger.normalize_layers(model, normalize_modules=normalize_modules,
                                    normalize_weight_value=8, normalize_bias_value=8,
                                    normalize_output_value=8)
    linger.disable_quant(model.last_fc)
    quant_modules = (nn.Conv2d, nn.Linear)
    model = linger.init(model, quant_modules=quant_modules)
    model.load_state_dict(stage1_state)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    assert int(model.mid_conv.output_exp) >= two_stage.min_exp_for_clamp(16, 8)
    model.eval()
    # a float last layer after the quantized ones: integer graph up to a Dequant, float32 after
    graph = linger.onnx.export(model, dummy_input, None, opset_version=12)
    assert [n.op_type for n in graph.graph.node][-3:] == ["Dequant", "Gemm", "Identity"]


def _fit(model, xtr, ytr, epochs, lr):
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def _accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100


def test_two_stage_recipe_on_digits_reaches_float_accuracy():
    pytest.importorskip("sklearn")
    xtr, ytr, xte, yte = load_digits_data()
    set_seed(0)
    float_model = _fit(DigitsCNN(), xtr, ytr, epochs=6, lr=1e-2)
    float_acc = _accuracy(float_model, xte, yte)
    stage1 = _stage1(DigitsCNN())
    stage1.load_state_dict(float_model.state_dict(), strict=True)
    _fit(stage1, xtr, ytr, epochs=2, lr=3e-3)
    stage2 = _stage2(DigitsCNN())
    stage2.load_state_dict(stage1.state_dict(), strict=True)
    _fit(stage2, xtr, ytr, epochs=2, lr=1e-3)
    int8_acc = _accuracy(stage2, xte, yte)
    assert float_acc > 95
    assert int8_acc >= float_acc - 1.0, (float_acc, int8_acc)
