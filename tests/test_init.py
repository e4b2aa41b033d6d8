"""linger.init on whole models: printing, checkpoints, determinism, errors, disable_quant, QAT."""

import copy
import io

import pytest
import torch
import torch.nn as nn

import linger
from linger.demo import accuracy, train_epochs
from linger.errors import ConfigError, NotCalibratedError, NumericError
from linger.examples_models import (DepthwiseCNN, DigitsCNN, SmallResNet, load_digits_data,
                                    set_seed)
from linger.quant.base import STATE_BUFFERS
from linger.quant.layers import QBatchNorm2d, QConv2d, QLinear
from linger.quant.qtensor import QTensor


@pytest.fixture(scope="module")
def digits():
    return load_digits_data(0)


def fresh(cls=DigitsCNN, seed=0, **kw):
    set_seed(seed)
    return cls(**kw)


def qat(model, x, steps=3):
    """A few training-mode batches so every layer has statistics."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for i in range(steps):
        out = model(x[i::steps])
        loss = torch.as_tensor(out).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_print_shows_quant_info():
    text = repr(linger.init(fresh(), data_bits=16, parameter_bits=4, out_bits=16))
    assert "QConv2d(1, 16, kernel_size=(3, 3)" in text
    assert "QBatchNorm2d(16" in text and "QLinear(in_features=32" in text
    assert text.count("quant(data=16, weight=4, out=16)") == 8  # 3 conv, 3 bn, pool, linear


def test_init_replaces_layers_in_place_and_keeps_parameters():
    model = fresh()
    w = model.features[0][0].weight
    q = linger.init(model)
    assert q is model
    assert type(model.features[0][0]) is QConv2d and type(model.features[0][1]) is QBatchNorm2d
    assert type(model.classifier) is QLinear
    assert model.features[0][0].weight is w  # same Parameter: optimizers keep working


def test_state_dict_has_quant_buffers():
    keys = linger.init(fresh()).state_dict().keys()
    for b in STATE_BUFFERS:
        assert f"classifier.{b}" in keys


def test_float_checkpoint_loads_strict_into_init_model():
    float_model = fresh(seed=1)
    sd = float_model.state_dict()
    q = linger.init(fresh(seed=2))
    result = q.load_state_dict(sd, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(q.classifier.weight, float_model.classifier.weight)
    assert not bool(q.classifier.input_ready)  # statistics untouched: to be gathered by QAT


def test_strict_load_still_reports_real_problems():
    q = linger.init(fresh())
    sd = fresh().state_dict()
    del sd["classifier.weight"]
    with pytest.raises(RuntimeError, match="classifier.weight"):
        q.load_state_dict(sd, strict=True)
    sd = fresh().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="extra.weight"):
        q.load_state_dict(sd, strict=True)


def test_state_dict_round_trip_gives_identical_eval(digits):
    xtr, _, xte, _ = digits
    q = qat(linger.init(fresh()), xtr[:96])
    q.eval()
    expected = q(xte[:64])
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    q2 = linger.init(fresh(seed=5))
    q2.load_state_dict(torch.load(buf), strict=True)
    q2.eval()
    got = q2(xte[:64])
    assert isinstance(got, QTensor) and got.int_exp() == expected.int_exp()
    assert torch.equal(got.plain(), expected.plain())


def test_deterministic_eval(digits):
    xtr, _, xte, _ = digits
    q = qat(linger.init(fresh()), xtr[:96]).eval()
    a, b = q(xte[:50]), q(xte[:50])
    assert torch.equal(a.plain(), b.plain())
    # and independent of the batch it is computed in
    c = torch.cat([q(xte[i:i + 1]).plain() for i in range(50)])
    assert torch.equal(a.plain(), c)


def test_to_device_keeps_quant_buffers_with_the_module():
    q = linger.init(fresh())
    devices = {t.device.type for t in list(q.parameters()) + list(q.buffers())}
    assert devices == {"cpu"}
    q.to("meta")  # every parameter and every quantization buffer moves together
    tensors = list(q.parameters()) + list(q.buffers())
    assert {t.device.type for t in tensors} == {"meta"}
    assert q.classifier.input_exp.device.type == "meta"
    assert q.classifier.input_exp.dtype == torch.int32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_eval_equals_cpu_eval(digits):
    xtr, _, xte, _ = digits
    q = qat(linger.init(fresh()), xtr[:96]).eval()
    cpu = q(xte[:64]).plain()
    gpu = copy.deepcopy(q).cuda()(xte[:64].cuda()).plain().cpu()
    assert torch.equal(cpu, gpu)


def test_unsupported_layer_type_is_a_config_error():
    with pytest.raises(ConfigError, match="contains RNN"):
        linger.init(fresh(), quant_modules=(nn.Conv2d, nn.RNN))


@pytest.mark.parametrize("kwargs, name", [({"data_bits": 7}, "data_bits"),
                                          ({"data_bits": 32}, "data_bits"),
                                          ({"parameter_bits": 2}, "parameter_bits"),
                                          ({"out_bits": 12}, "out_bits"),
                                          ({"out_bits": True}, "out_bits")])
def test_bits_outside_the_set_are_a_config_error(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        linger.init(fresh(), **kwargs)


def test_eval_before_training_statistics_names_the_layer(digits):
    q = linger.init(fresh()).eval()
    with pytest.raises(NotCalibratedError, match=r"QConv2d 'features\.0\.0'"):
        q(digits[2][:4])


def test_nan_input_names_the_layer(digits):
    xtr = digits[0]
    bad = xtr[:8].clone()
    bad[3, 0, 2, 2] = float("nan")
    q = linger.init(fresh())
    with pytest.raises(NumericError, match=r"'features\.0\.0'"):
        q.train()(bad)
    qat(q, xtr[:96]).eval()
    with pytest.raises(NumericError, match=r"'features\.0\.0'.*NaN"):
        q(bad)


def test_disable_quant_before_init():
    model = fresh()
    linger.disable_quant(model.classifier)
    linger.init(model)
    assert type(model.classifier) is nn.Linear
    assert type(model.features[0][0]) is QConv2d


def test_disable_quant_after_init(digits):
    xtr, _, xte, _ = digits
    model = qat(linger.init(fresh()), xtr[:96])
    w = model.classifier.weight
    linger.disable_quant(model.classifier)
    assert type(model.classifier) is nn.Linear and model.classifier.weight is w
    assert not any(k.startswith("classifier.input") for k in model.state_dict())
    model.eval()
    feats = model.features(xte[:8])
    assert isinstance(feats, QTensor)
    out = model(xte[:8])
    assert type(out) is torch.Tensor  # the float classifier received the dequantized value
    assert torch.equal(out, nn.functional.linear(feats.plain(), w, model.classifier.bias))


def test_disable_quant_whole_subtree():
    model = fresh()
    linger.disable_quant(model.features[0])
    linger.init(model)
    assert type(model.features[0][0]) is nn.Conv2d and type(model.features[0][1]) is nn.BatchNorm2d
    assert type(model.features[1][0]) is QConv2d


def test_qat_loss_decreases_on_digits(digits):
    xtr, ytr, xte, yte = digits
    model = linger.init(fresh())
    losses = train_epochs(model, xtr, ytr, epochs=3, lr=1e-2, quiet=True)
    assert losses[-1] < 0.5 * losses[0], losses
    assert accuracy(model, xte, yte) > 85.0


@pytest.mark.parametrize("cls, shape", [(SmallResNet, (4, 3, 32, 32)),
                                        (DepthwiseCNN, (4, 3, 32, 32))])
def test_example_models_train_and_eval_quantized(cls, shape):
    model = linger.init(fresh(cls))
    x = torch.randn(*shape)
    qat(model, torch.cat([x, x, x]))
    model.eval()
    y = model(x)
    assert isinstance(y, QTensor) and y.bits == 8 and y.shape == (4, 10)
    assert torch.equal(y.plain(), model(x).plain())
