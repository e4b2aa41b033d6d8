"""Refuse early: what will not export is refused by linger.init or the first training step, as one
error naming every offending module; linger.check and `linger check model.py` list it all."""

import textwrap

import pytest
import torch
import torch.nn as nn

import linger
from linger.errors import ExportError, UnsupportedError
from linger.packer.cli import main as cli_main
from linger.quant.base import QuantMixin


class BadLayers(nn.Module):
    """Two layer types with no quantized form, one nested."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.act = nn.Softplus()
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Mish(), nn.Linear(8, 2))

    def forward(self, x):                                   # (N, 4, T)
        return self.head(self.act(self.conv(x)).mean(-1))


class Cumulative(nn.Module):
    def forward(self, x):
        return x.cumsum(-1)


class BadOps(nn.Module):
    """Ops without a quantized version on quantized values, in the root and in a sub-module,
    and one exact float op (allowed: it exports as a float Mul after a Dequant)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.cum = Cumulative()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):                                   # (N, 4, T)
        y = torch.exp(self.conv(x))                         # exp on a quantized value
        y = self.cum(self.conv(x)) + y
        return self.fc(y.mean(-1)) * 0.5


def test_init_refuses_every_layer_type_that_cannot_export():
    model = BadLayers()
    with pytest.raises(UnsupportedError) as e:
        linger.init(model)
    msg = str(e.value)
    assert "2 part(s)" in msg and "act: Softplus (softplus)" in msg and "head.1: Mish (mish)" in msg
    assert "linger.init" in msg and "disable_quant" in msg
    assert not any(isinstance(m, QuantMixin) for m in model.modules())  # nothing changed


def test_first_training_step_refuses_every_float_op_in_one_error():
    torch.manual_seed(0)
    model = linger.init(BadOps())
    with pytest.raises(UnsupportedError) as e:
        model(torch.randn(2, 4, 6))
    msg = str(e.value)
    assert "2 part(s)" in msg and "first forward pass" in msg
    assert "<root>: 'exp' in BadOps.forward (test_refusal.py:" in msg
    assert "cum: 'cumsum' in Cumulative.forward" in msg
    assert "'mul'" not in msg and "'__mul__'" not in msg  # `* 0.5` exports exactly


def test_float_policy_trains_and_the_export_refuses_the_same_op():
    torch.manual_seed(0)
    model = linger.init(BadOps(), on_unsupported="float")
    model(torch.randn(2, 4, 6)).sum().backward()
    with pytest.raises(ExportError, match="exp"):
        linger.onnx.export(model.eval(), torch.randn(2, 4, 6), None)
    linger.init(nn.Linear(2, 2))  # the next init restores the default policy


def test_an_unquantized_operand_is_named_with_its_fix():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return torch.maximum(self.fc(x), self.scale)

    model = linger.init(Mixed())
    with pytest.raises(UnsupportedError, match=r"<root>: 'maximum' in Mixed\.forward"
                                               r" \(test_refusal\.py:\d+, in forward\).*never"
                                               r" quantized.*linger\.quant_tensor"):
        model(torch.randn(2, 4))


def test_a_layer_left_out_of_quant_modules_is_named():
    model = linger.init(nn.Sequential(nn.Conv1d(2, 4, 1), nn.Conv1d(4, 2, 1)),
                        quant_modules=(nn.Linear,))
    model(torch.randn(1, 2, 5))  # no quantized value anywhere: nothing to refuse
    model = linger.init(nn.Sequential(nn.Linear(3, 4), nn.Conv1d(4, 2, 1)),
                        quant_modules=(nn.Linear,))
    with pytest.raises(UnsupportedError, match=r"1: Conv1d was not quantized.*quant_modules"):
        model(torch.randn(1, 4, 3).transpose(1, 2).transpose(1, 2))


def test_disable_quant_keeps_a_part_in_float_without_refusal():
    model = BadOps()
    linger.disable_quant(model.cum)
    model = linger.init(model)
    with pytest.raises(UnsupportedError) as e:
        model(torch.randn(2, 4, 6))
    assert "exp" in str(e.value) and "cumsum" not in str(e.value)


class Fine(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_check_lists_everything_without_touching_the_model():
    model = BadOps()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = linger.check(model, torch.randn(2, 4, 6))
    text = str(report)
    assert not report.ok and "'exp'" in text and "'cumsum'" in text
    assert not any(isinstance(m, QuantMixin) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not linger.check(BadLayers(), torch.randn(2, 4, 6)).ok

    good = linger.check(Fine(), torch.randn(2, 1, 8, 8), target="venus")
    assert good.ok and good.violations == [] and "fits target venus" in str(good)


def test_check_reports_what_the_target_refuses():
    net = nn.Sequential(nn.Linear(4, 4096), nn.Softmax(dim=-1))  # venus: softmax axis <= 2048
    report = linger.check(net, torch.randn(1, 4), target="venus")
    assert not report.ok and not report.problems
    assert any("softmax axis length" in v.message for v in report.violations)


def test_check_names_the_node_a_dynamic_axis_cannot_follow():
    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)[:, : x.size(1) - 1]

    report = linger.check(Crop(), torch.randn(2, 9, 4), dynamic_axes={"x": {1: "T"}},
                          input_names=["x"])
    assert not report.ok and "axis 1 of input 'x'" in str(report)


def test_cli_checks_a_model_script(tmp_path, capsys):
    script = tmp_path / "net.py"
    script.write_text(textwrap.dedent("""
        import torch.nn as nn

        class Good(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(6, 2)

            def forward(self, x):
                return self.fc(x)

        class Bad(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(6, 6)
                self.act = nn.Softplus()

            def forward(self, x):
                return self.act(self.fc(x))
        """))
    assert cli_main(["check", f"{script}:Good", "--input-shape", "2,6"]) == 0
    assert "fits target venus" in capsys.readouterr().out
    assert cli_main(["check", f"{script}:Bad", "--input-shape", "2,6"]) == 1
    assert "act: Softplus" in capsys.readouterr().out
    assert cli_main(["check", f"{script}:Missing", "--input-shape", "2,6"]) == 2
    assert cli_main(["check", f"{script}:Good"]) == 2  # no input shape, no example_input()
