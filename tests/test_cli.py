"""The ``linger`` command line (through ``main([...])``) and the demo's accuracy promise."""

import pytest

from linger.cli import COMMANDS, main
from linger.demo import run_demo


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"usage: linger {name}" in capsys.readouterr().out


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--no-such-option"])
    assert e.value.code == 2


def test_demo_command_runs_and_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--epochs", "2", "--qat-epochs", "1", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "float accuracy" in out and "int8 accuracy (eval)" in out
    assert (tmp_path / "digits_float.pt").exists() and (tmp_path / "digits_qat.pt").exists()


def test_demo_int8_accuracy_within_one_point_of_float(tmp_path):
    r = run_demo(out_dir=str(tmp_path), quiet=True)  # the default settings `linger demo` uses
    assert r["float_acc"] > 95.0
    assert abs(r["int8_acc"] - r["float_acc"]) <= 1.0, (r["float_acc"], r["int8_acc"])
    assert set(r["times"]) >= {"float accuracy", "int8 accuracy (eval)"}
    from linger.engine import compiler
    if compiler() is not None:  # the demo's last stage: the packed file in the C engine
        assert r["c_bit_exact"] == len(r["x_test"]) == r["bit_exact"]


def _exported_digits(tmp_path):
    import torch

    import linger
    from linger.examples_models import DigitsCNN, set_seed

    set_seed(0)
    model = linger.init(DigitsCNN())
    for _ in range(3):
        model(torch.randn(8, 1, 8, 8))
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    path = tmp_path / "m.onnx"
    linger.onnx.export(model, x, path)
    return model, x, path


def test_run_command_writes_the_runtime_outputs(tmp_path, capsys):
    import numpy as np

    model, x, path = _exported_digits(tmp_path)
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["run", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    assert "output: shape [4, 10], float32" in capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "y.npy"), model(x).detach().numpy())


def test_run_command_missing_input_file_is_a_clear_error(tmp_path, capsys):
    _, _, path = _exported_digits(tmp_path)
    assert main(["run", str(path), str(tmp_path / "nope.npy")]) == 2
    assert "nope.npy" in capsys.readouterr().err


def test_validate_command_passes_and_catches_a_tampered_reference(tmp_path, capsys):
    import numpy as np

    from linger.validate import save_reference

    model, x, _ = _exported_digits(tmp_path)
    save_reference(model, x, tmp_path / "ref")
    assert main(["validate", str(tmp_path / "ref.onnx"), str(tmp_path / "ref.npz")]) == 0
    assert "bit-exact" in capsys.readouterr().out
    ref = dict(np.load(tmp_path / "ref.npz"))
    key = next(k for k in ref if k.startswith("value:features.3.0:"))
    ref[key] = ref[key].copy()
    ref[key].flat[3] += 1  # one integer off in the last conv's output
    np.savez(tmp_path / "bad.npz", **ref)
    assert main(["validate", str(tmp_path / "ref.onnx"), str(tmp_path / "bad.npz")]) == 1
    out = capsys.readouterr().out
    assert "first difference at 'features.3.0:out'" in out and "1 of" in out
