"""The toolchain around the core (issue 20): safe outputs, exit codes, the memory report's MACs,
title, lower bounds and cost estimate, `linger analyse` output, the demo's cleanup, and which
heavy modules each entry point imports."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import linger
from linger.cli import EXIT_DIFFER, EXIT_ERROR, EXIT_OK, main
from linger.errors import ConfigError
from linger.packer import pack
from linger.validate import save_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WakeWord(torch.nn.Module):
    """A small recurrent model: 2-layer bidirectional LSTM (or GRU) and a linear head."""

    def __init__(self, cell="LSTM"):
        super().__init__()
        self.rnn = getattr(torch.nn, cell)(8, 16, num_layers=2, bidirectional=True,
                                           batch_first=True)
        self.fc = torch.nn.Linear(32, 4)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


def _exported(model, shape, path, seed=0):
    torch.manual_seed(seed)
    model = linger.init(model)
    for _ in range(3):
        model(torch.randn(*shape))
    model.eval()
    x = torch.randn(*shape)
    linger.onnx.export(model, x, path)
    return model, x


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lstm")
    model, x = _exported(WakeWord("LSTM"), (2, 5, 8), d / "ww.onnx")
    return model, x, d / "ww.onnx"


# -- safe outputs ---------------------------------------------------------------------------------
def test_pack_refuses_to_overwrite_its_input(lstm, tmp_path, capsys):
    _, _, src = lstm
    onnx_copy = tmp_path / "m.onnx"
    onnx_copy.write_bytes(src.read_bytes())
    before = onnx_copy.read_bytes()
    assert main(["pack", str(onnx_copy), "-o", str(onnx_copy)]) == EXIT_ERROR
    assert "refusing to write the output over the input file" in capsys.readouterr().err
    assert onnx_copy.read_bytes() == before
    assert main(["pack", str(onnx_copy), "--no-html"]) == EXIT_OK   # writes m.bin
    packed = tmp_path / "m.bin"
    data = packed.read_bytes()
    assert main(["pack", str(packed)]) == EXIT_ERROR   # default output m.bin: its own input
    assert "over the input file" in capsys.readouterr().err
    assert packed.read_bytes() == data
    assert main(["pack", str(onnx_copy), "-o", str(tmp_path / "o.bin"),
                 "--html", str(onnx_copy)]) == EXIT_ERROR     # the report path too
    assert onnx_copy.read_bytes() == before and not (tmp_path / "o.bin").exists()
    with pytest.raises(ConfigError, match="over the input file"):
        pack(str(packed), str(packed))
    assert main(["pack", str(packed), "-o", str(tmp_path / "re.bin"), "--no-html"]) == EXIT_OK
    assert (tmp_path / "re.bin").read_bytes() == data   # repacking a .bin elsewhere is fine


def test_pack_writes_atomically(lstm, tmp_path, monkeypatch):
    _, _, src = lstm
    out = tmp_path / "m.bin"
    out.write_bytes(b"previous model")

    def no_replace(a, b):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError):
        pack(str(src), str(out))
    assert out.read_bytes() == b"previous model"          # untouched, not half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]   # no temporary left over
    monkeypatch.undo()
    pack(str(src), str(out))
    assert out.read_bytes()[:8] == b"LINGERPK"


def test_run_refuses_to_write_its_output_over_an_input(lstm, tmp_path, capsys):
    _, x, src = lstm
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["run", str(src), str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "x.npy")]) == EXIT_ERROR
    assert "over the input file" in capsys.readouterr().err
    assert np.array_equal(np.load(tmp_path / "x.npy"), x.numpy())


# -- exit codes -----------------------------------------------------------------------------------
def test_validate_exit_codes(tmp_path, capsys):
    model, x = _exported(WakeWord("GRU"), (2, 5, 8), tmp_path / "m.onnx")
    save_reference(model, x, tmp_path / "ref")
    onnx_path, ref = str(tmp_path / "ref.onnx"), tmp_path / "ref.npz"
    assert main(["validate", onnx_path, str(ref)]) == EXIT_OK
    values = dict(np.load(ref))
    key = next(k for k in values if k.startswith("value:fc:"))
    values[key] = values[key] + 1
    np.savez(tmp_path / "differs.npz", **values)
    assert main(["validate", onnx_path, str(tmp_path / "differs.npz")]) == EXIT_DIFFER
    capsys.readouterr()
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
    truncated = ref.read_bytes()[:-100]
    (tmp_path / "truncated.npz").write_bytes(truncated)
    np.save(tmp_path / "single.npy", x.numpy())
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    cases = {"missing.npz": "does not exist", "garbage.npz": "not a readable .npz",
             "truncated.npz": "not a readable .npz", "single.npy": "single array",
             "foreign.npz": "not written by linger.validate.save_reference"}
    for name, message in cases.items():
        assert main(["validate", onnx_path, str(tmp_path / name)]) == EXIT_ERROR, name
        err = capsys.readouterr().err
        assert err.startswith("linger validate: error: ") and message in err, (name, err)
        assert "Traceback" not in err
    assert main(["validate", str(tmp_path / "nope.onnx"), str(ref)]) == EXIT_ERROR
    assert main(["validate", onnx_path]) == EXIT_ERROR   # a usage error: no reference given


def test_check_and_pack_share_the_does_not_fit_status(lstm, tmp_path, capsys):
    _, _, src = lstm
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('extends = "venus"\nname = "tiny"\n[memory.share]\ncapacity = 64\n'
                    '[memory.psram]\ncapacity = 64\n')
    assert main(["check", str(src), "--target", str(tiny)]) == EXIT_DIFFER
    assert main(["pack", str(src), "--target", str(tiny), "-o",
                 str(tmp_path / "x.bin")]) == EXIT_DIFFER
    assert "needs" in capsys.readouterr().err and not (tmp_path / "x.bin").exists()
    assert main(["check", str(tmp_path / "missing.onnx")]) == EXIT_ERROR


def test_an_error_in_a_user_script_is_status_2_with_its_traceback(tmp_path, capsys):
    script = tmp_path / "s.py"
    script.write_text("def build_model():\n    raise RuntimeError('bad layer size')\n"
                      "def example_input():\n    return None\n")
    assert main(["validate", "--script", str(script)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "linger validate: error: RuntimeError: bad layer size" in err


def test_a_missing_optional_dependency_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert main(["demo", "--epochs", "1"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "needs torch, which is not installed" in err and "torch==2.13.0" in err


# -- memory report --------------------------------------------------------------------------------
def _rnn_macs(rnn, n, t):
    """Independent count from the PyTorch module: every weight element once per step/sequence."""
    return n * t * sum(p.numel() for name, p in rnn.named_parameters() if "weight" in name)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_macs(cell, tmp_path):
    model, _ = _exported(WakeWord(cell), (2, 5, 8), tmp_path / "m.onnx")
    res = pack(str(tmp_path / "m.onnx"), dims={"N": 2})  # the batch is dynamic: plan it at 2
    from linger.packer.report import layer_stats

    stats = {s.op_type: s.macs for s in layer_stats(res.graph)}
    rnn = _rnn_macs(model.rnn, 2, 5)   # batch 2, 5 steps, 2 layers x 2 directions
    assert stats[f"{cell}Int"] == rnn > 0
    total = f"{rnn + 2 * 32 * 4} MACs"  # + the linear head
    assert total in res.report(full=True) and total in res.report(full=False)


def test_report_title(lstm, tmp_path):
    _, _, src = lstm
    res = pack(str(src), report_html=tmp_path / "r.html")
    assert res.report().splitlines()[0] == "WakeWord: memory report on target venus (id 0)"
    assert "<title>WakeWord: memory report on target venus</title>" in (
        tmp_path / "r.html").read_text()
    # files exported before the graph carried the model's name fall back to the file name
    import onnx
    m = onnx.load(str(src))
    m.graph.name = "linger"
    onnx.save(m, str(tmp_path / "old_export.onnx"))
    assert pack(str(tmp_path / "old_export.onnx")).report().startswith("old_export: memory")


def test_report_lower_bounds_and_float_input_note(lstm):
    _, _, src = lstm
    res = pack(str(src))
    text = res.report(full=False)
    for kind in ("psram", "share"):
        u = res.plan.memories[kind]
        row = next(line.split() for line in text.splitlines()
                   if line.startswith({"psram": "PSRAM ", "share": "share-memory "}[kind]))
        lower, peak = int(row[4]), int(row[3])
        assert lower == u.params_bytes + u.lower_bound and 0 < lower <= peak
    assert "note: input 'input' is float32" in text and "share-memory" in text
    assert "SRAM" not in text.replace("PSRAM", "")   # one name for the on-chip memory


def test_cost_estimate_follows_the_targets_cost_model(lstm, tmp_path):
    from linger.packer.costs import op_costs
    from linger.packer.report import macs_of

    _, _, src = lstm
    res = pack(str(src))
    costs = op_costs(res.graph, res.plan, res.target, macs_of)
    c = res.target.cost
    for k in costs:
        if k.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
            assert k.cycles == 0 and not k.traffic
            continue
        compute = -(-k.macs // c.macs_per_cycle) if k.macs else -(-k.elements //
                                                                  c.elements_per_cycle)
        transfer = sum(-(-b // c.bytes_per_cycle[m]) for m, b in k.traffic.items())
        assert k.cycles == c.op_overhead_cycles + max(compute, transfer)
    lstm_cost = next(k for k in costs if k.op_type == "LSTMInt")
    assert lstm_cost.traffic["psram"] >= sum(
        res.graph.values[i].nbytes for i in res.graph.nodes[lstm_cost.step].inputs
        if i and res.graph.values[i].kind == "param")
    full = res.report(full=True)
    assert "cost estimate" in full and f"estimated {sum(k.cycles for k in costs)} cycles" in full
    # twice the MAC throughput: the compute-bound LSTM gets cheaper, nothing gets dearer
    fast = tmp_path / "fast.toml"
    fast.write_text(f'extends = "venus"\nname = "fast"\n[cost]\nmacs_per_cycle ='
                    f' {2 * c.macs_per_cycle}\n')
    faster = op_costs(res.graph, res.plan, linger.targets.load_target(str(fast)), macs_of)
    assert all(a.cycles <= b.cycles for a, b in zip(faster, costs))
    # a profile without a [cost] table: MACs and bytes, no cycles
    bare = tmp_path / "bare.toml"
    bare.write_text('name = "bare"\n[memory.share]\ncapacity = 1000000\n'
                    '[memory.psram]\ncapacity = 1000000\n[ops]\n'
                    + "".join(f'{op} = {{}}\n' for op in sorted({n.op_type
                                                                 for n in res.graph.nodes})))
    text = pack(str(src), target=str(bare)).report(full=False)
    assert "has no [cost] table: no cycle estimate" in text


def test_cost_table_is_validated(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "venus"\nname = "bad"\n[cost]\nmacs_per_cycle = 0\n')
    with pytest.raises(ConfigError, match="cost.macs_per_cycle must be a positive integer"):
        linger.targets.load_target(str(bad))
    bad.write_text('extends = "venus"\nname = "bad"\n[cost]\nbytes_per_cycle = { share = 8 }\n')
    with pytest.raises(ConfigError, match="bytes_per_cycle must give a positive integer"):
        linger.targets.load_target(str(bad))


# -- linger analyse -------------------------------------------------------------------------------
BN_MODEL = """
import torch.nn as nn

def build_model():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
"""


def test_analyse_header_once_and_random_data_warning(tmp_path, capsys):
    src = tmp_path / "bn.py"
    src.write_text(BN_MODEL)
    assert main(["analyse", "--model", str(src), "--input-shape", "4,1,6,6", "--log",
                 str(tmp_path / "wb.log")]) == EXIT_OK
    out, err = capsys.readouterr()
    header = next(line for line in out.split("Sensitivity")[1].splitlines()
                  if line.startswith("rank"))
    assert header.split() == ["rank", "layer", "type", "output", "SQNR", "dB"]
    assert "random normal data, which is not representative" in err
    assert "1 BatchNorm layer(s) (1)" in err and str(src) in err


# -- demo -----------------------------------------------------------------------------------------
def test_demo_removes_its_temporary_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["demo", "--epochs", "1", "--qat-epochs", "1", "--quiet"]) == EXIT_OK
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("linger-demo-")] == []
    kept = tmp_path / "kept"
    assert main(["demo", "--epochs", "1", "--qat-epochs", "1", "--out-dir", str(kept)]) == 0
    assert {"digits_int8.onnx", "digits_int8.bin"} <= {p.name for p in kept.iterdir()}
    assert "share-memory peak" in capsys.readouterr().out


# -- what each entry point imports ----------------------------------------------------------------
def _modules_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(m for m in"
                          " ('torch', 'onnx', 'matplotlib') if m in sys.modules))"],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_help_imports_neither_torch_nor_onnx():
    assert _modules_after("import linger.cli\nlinger.cli.build_parser()") == []


def test_running_a_packed_file_needs_numpy_only(lstm, tmp_path):
    model, x, src = lstm
    pack(str(src), str(tmp_path / "m.bin"))
    np.save(tmp_path / "x.npy", x.numpy())
    code = ("import numpy as np\nfrom linger.runtime import InferenceSession\n"
            f"s = InferenceSession({str(tmp_path / 'm.bin')!r})\n"
            f"y = s.run(None, {{'input': np.load({str(tmp_path / 'x.npy')!r})}})[0]\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, y)")
    assert _modules_after(code) == []
    with torch.no_grad():
        assert np.array_equal(np.load(tmp_path / "y.npy"), model(x).numpy())
