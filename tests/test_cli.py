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
