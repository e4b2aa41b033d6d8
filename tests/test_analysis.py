"""Analysis tools: statistics against hand-computed values, the 10x flag, checkpoint errors,
Dumper aggregates and hooks, per-layer SQNR against a float reference, the ranking of a layer made
hard to quantize, the HTML report and the ``analyse`` CLI."""

import copy
import math
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import linger
import linger.analysis as A
from linger.errors import ConfigError, ModelFileError
from linger.examples_models import set_seed

# ------------------------------------------------------------------------------------------------
# statistics


def test_tensor_stats_hand_computed():
    t = torch.arange(1.0, 101.0) * torch.tensor([1.0, -1.0]).repeat(50)  # +-1 .. +-100
    s = A.tensor_stats("w", t.reshape(10, 10))
    assert s.shape == (10, 10) and s.count == 100
    assert s.mean_abs == pytest.approx(50.5)
    assert s.max_abs == 100.0
    assert s.max_over_mean == pytest.approx(100 / 50.5)
    # 99th percentile, linear interpolation: position 0.99 * 99 = 98.01 -> 99 + 0.01 * (100 - 99)
    assert s.p99_abs == pytest.approx(99.01)
    assert s.max_over_p99 == pytest.approx(100 / 99.01)
    assert not s.outlier


def test_outlier_flag_is_max_over_10x_the_99_percent_range():
    ones = torch.ones(999)
    big = A.tensor_stats("big", torch.cat([ones, torch.tensor([1000.0])]))
    assert big.p99_abs == 1.0 and big.max_over_p99 == 1000.0 and big.outlier
    assert big.mean_abs == pytest.approx(1.999)
    edge = A.tensor_stats("edge", torch.cat([ones, torch.tensor([10.0])]))
    assert edge.max_over_p99 == 10.0 and not edge.outlier  # strictly over 10x
    assert A.tensor_stats("over", torch.cat([ones, torch.tensor([10.5])])).outlier


def test_degenerate_ratios():
    zero = A.tensor_stats("z", torch.zeros(5))
    assert (zero.max_over_mean, zero.max_over_p99, zero.outlier) == (1.0, 1.0, False)
    sparse = A.tensor_stats("s", torch.cat([torch.zeros(999), torch.ones(1)]))
    assert sparse.p99_abs == 0.0 and sparse.max_over_p99 == math.inf and sparse.outlier


def test_running_stats_exact_aggregates_bounded_sample():
    gen = torch.Generator().manual_seed(0)
    parts = [torch.rand(10_000, generator=gen) * 2 - 1 for _ in range(10)]
    r = A.RunningStats("x", size=2000)
    for p in parts:
        r.update(p)
    full = A.tensor_stats("x", torch.cat(parts))
    s = r.stats()
    assert s.count == 100_000 and len(r.sample()) == 2000
    assert s.mean_abs == pytest.approx(full.mean_abs, rel=1e-9)
    assert s.max_abs == pytest.approx(full.max_abs, rel=1e-6)
    assert s.p99_abs == pytest.approx(0.99, abs=0.01)  # |U(-1, 1)|: 99th percentile 0.99

# ------------------------------------------------------------------------------------------------
# wb_analyse


def _state():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(32, 32, generator=gen)
    bad = torch.randn(32, 32, generator=gen)  # >= 200 values: one outlier stays above the 99%
    bad[3, 3] = 50 * bad.abs().max()
    return {"a.weight": w, "a.bias": torch.zeros(8), "b.weight": bad,
            "bn.num_batches_tracked": torch.tensor(3), "a.input_range": torch.tensor(1.0)}


def test_wb_analyse_rows_table_and_log(tmp_path, capsys):
    log = tmp_path / "wb.log"
    rows = linger.wb_analyse(_state(), log_path=log)
    assert [r.name for r in rows] == ["a.weight", "a.bias", "b.weight"]  # floats, no linger state
    assert [r.outlier for r in rows] == [False, False, True]
    assert rows[0] == A.tensor_stats("a.weight", _state()["a.weight"])
    printed = capsys.readouterr().out
    text = log.read_text()
    assert printed.strip() == text.strip()
    flagged = [line for line in text.splitlines() if "<--" in line]
    assert len(flagged) == 1 and flagged[0].startswith("b.weight")
    assert "3 tensors, 1 with max > 10x" in text


def test_wb_analyse_accepts_module_and_wrapped_checkpoints(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    direct = A.wb_analyse(model, None, quiet=True)
    assert [r.name for r in direct] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                        "1.running_mean", "1.running_var"]
    for i, ckpt in enumerate([model.state_dict(),
                              {"epoch": torch.tensor(3), "state_dict": model.state_dict()},
                              {"model": model.state_dict(), "optimizer": {}}]):
        path = tmp_path / f"c{i}.pt"
        torch.save(ckpt, path)
        assert A.wb_analyse(path, None, quiet=True) == direct
        assert A.wb_analyse(str(path), None, quiet=True) == direct


class _NotATensor:
    pass


@pytest.mark.parametrize("kind", ["garbage", "truncated", "pickled_object", "no_tensors",
                                  "missing"])
def test_bad_checkpoint_gives_model_file_error(tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint\x00\x01" * 10)
    elif kind == "truncated":
        torch.save(nn.Linear(16, 16).state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "pickled_object":  # weights_only refuses arbitrary classes: nothing is executed
        torch.save({"w": torch.ones(2), "obj": _NotATensor()}, path)
    elif kind == "no_tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ModelFileError) as e:
        linger.wb_analyse(path, log_path=tmp_path / "wb.log")
    msg = str(e.value)
    assert str(path) in msg
    assert "torch.save" in msg or "state dict" in msg  # says what to do
    assert not (tmp_path / "wb.log").exists()


def test_pickle_error_is_not_leaked(tmp_path):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))  # a plain pickle, not a torch zip file
    with pytest.raises(ModelFileError, match="cannot read checkpoint"):
        A.load_checkpoint(path)

# ------------------------------------------------------------------------------------------------
# Dumper


def test_dumper_aggregates_over_batches_and_removes_hooks(tmp_path):
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    with linger.Dumper() as d:
        names = d.analyse_layer_output(model, match_pattern=r"0")
        model(torch.arange(1.0, 51.0))
        model(-torch.arange(51.0, 101.0))
        rows = d.save_out_analyse_log(tmp_path / "out.log")
    assert names == ["0"]
    (s,) = rows
    assert (s.name, s.count, s.max_abs) == ("0", 100, 100.0)
    assert s.mean_abs == pytest.approx(50.5) and s.p99_abs == pytest.approx(99.01)
    assert all(not m._forward_hooks for m in model.modules())
    model(torch.ones(3))
    assert d.stats()[0].count == 100  # no hook left behind
    assert re.search(r"^0\s", (tmp_path / "out.log").read_text(), re.M)


def test_dumper_pattern_and_quantized_outputs():
    model = _outlier_model(None)
    batches = _batches()
    A.calibrate(linger.init(model), batches)
    with linger.Dumper() as d:
        d.analyse_layer_output(model, r"[02]$")
        with torch.no_grad():
            model(batches[0])
    assert list(d.running) == ["0", "2"]
    assert d.quant["0"] == (int(model[0].output_exp), 8)  # exponent kept for the plot range

# ------------------------------------------------------------------------------------------------
# per-layer SQNR and sensitivity


def _outlier_model(index):
    """Conv-ReLU-Conv-ReLU-Linear; layer ``index`` (0, 2 or 5) gets one weight 30x its max."""
    set_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    if index is not None:
        with torch.no_grad():
            w = m[index].weight
            w.view(-1)[3] = 30 * w.abs().max()
    return m


def _batches(n=4):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 6, 6, generator=gen) for _ in range(n)]


def test_layer_sqnr_matches_float_reference_on_one_layer():
    set_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    float_w, float_b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    batches = _batches(2)
    xs = [b.reshape(16, 36)[:, :6] for b in batches]
    A.calibrate(linger.init(model), xs)
    (row,) = A.layer_sqnr(model, xs)
    with torch.no_grad():
        ref = torch.cat([F.linear(x, float_w, float_b) for x in xs]).double()
        got = torch.cat([model(x).plain() for x in xs]).double()
    noise = float(((ref - got) ** 2).mean())
    assert row.name == "0" and row.count == ref.numel()
    assert row.noise_power == pytest.approx(noise, rel=1e-9)
    assert row.sqnr_db == pytest.approx(10 * math.log10(float((ref ** 2).mean()) / noise))
    assert 25 < row.sqnr_db < 60


def test_layer_sqnr_is_inf_when_everything_is_on_the_grid():
    model = nn.Sequential(nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    x = torch.arange(-8.0, 9.0).reshape(-1, 1) / 8  # multiples of 1/8 in [-1, 1]
    A.calibrate(linger.init(model), [x])
    assert A.layer_sqnr(model, x)[0].sqnr_db == math.inf


def test_layer_sqnr_needs_a_quantized_model():
    with pytest.raises(ConfigError, match="linger.init"):
        A.layer_sqnr(nn.Sequential(nn.Linear(2, 2)), torch.ones(1, 2))


@pytest.mark.parametrize("index", [0, 2])
def test_layer_made_hard_to_quantize_ranks_first(index):
    float_model, batches = _outlier_model(index), _batches()
    before = copy.deepcopy(float_model.state_dict())

    wb = A.wb_analyse(float_model, None, quiet=True)
    assert max(wb, key=lambda r: r.max_over_p99).name == f"{index}.weight"
    # layer 0 has only 72 weights: its 99th percentile interpolates towards the outlier itself
    assert [r.name for r in wb if r.outlier] == (["2.weight"] if index == 2 else [])

    sens = A.sensitivity(lambda: float_model, batches)  # float path: quantize one layer alone
    assert [r.name for r in sens][0] == str(index)
    assert sens[0].value < sens[1].value - 3  # dB, clearly worse
    assert all(r.baseline == math.inf and r.higher_is_better for r in sens)
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) and not hasattr(m, "linger_cfg")
               for m in float_model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert all(torch.equal(v, before[k]) for k, v in float_model.state_dict().items())

    qmodel = A.calibrate(linger.init(copy.deepcopy(float_model)), batches)
    sqnr = A.layer_sqnr(qmodel, batches)
    assert sqnr[0].name == str(index) and sqnr[0].sqnr_db < sqnr[1].sqnr_db - 3
    assert sorted(r.order for r in sqnr) == [0, 1, 2]

    qstate = copy.deepcopy(qmodel.state_dict())
    qsens = A.sensitivity(qmodel, batches)  # quantized path: the others back to float
    assert qsens[0].name == str(index)
    assert all(torch.equal(v, qstate[k]) for k, v in qmodel.state_dict().items())


def test_sensitivity_with_a_loss_ranks_highest_loss_first():
    float_model, xs = _outlier_model(2), _batches()
    with torch.no_grad():
        batches = [(x, float_model(x).argmax(1)) for x in xs]  # labels = float predictions
    loss = nn.CrossEntropyLoss()
    rows = A.sensitivity(float_model, batches, loss)
    assert not rows[0].higher_is_better and rows[0].name == "2"
    assert rows[0].value == max(r.value for r in rows)
    acc = A.sensitivity(float_model, batches, A.accuracy)
    assert acc[0].baseline == 1.0 and acc[0].higher_is_better
    assert acc[0].value == min(r.value for r in acc)


def test_sensitivity_quantized_bn_gets_its_missing_input_range():
    """In a QAT model a BatchNorm after a conv never needed an input range; alone, it does."""
    set_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3))
    batches = _batches(2)
    linger.init(model).train()
    with torch.no_grad():
        for b in batches:
            model(b)
    assert not bool(model[1].input_ready)
    rows = A.sensitivity(model, batches)
    assert {r.name for r in rows} == {"0", "1", "4"}
    assert not bool(model[1].input_ready)  # the model itself is untouched

def test_calibrate_gathers_op_ranges_and_keeps_the_rest():
    """Residual adds (quantized tensor ops) get ranges too; BatchNorm statistics do not move."""
    from linger.examples_models import SmallResNet

    set_seed(0)
    model = linger.init(SmallResNet(widths=(4, 8, 8)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    A.calibrate(model, batches)
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()
               if not k.endswith(("_range", "_ready", "_exp")))
    assert any("linger_iq" in k for k in after)  # the residual adds' statistics
    assert len(A.layer_sqnr(model, batches)) == len(A.quantized_layers(model))


def test_fused_conv_bn_is_compared_with_its_folded_float_forward():
    """After trace_layers the conv computes conv+BN (folded) and feeds a ReLU (ahead ReLU): the
    float reference must do the same, or every conv would show about 0 dB."""
    from linger.examples_models import DigitsCNN

    set_seed(0)
    model = DigitsCNN()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(32, 1, 8, 8, generator=gen) for _ in range(2)]
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.momentum = None  # running statistics = average over the batches, as after training
    with torch.no_grad():
        for b in batches:
            model.train()(b)
    linger.trace_layers(model, model, torch.zeros(1, 1, 8, 8))
    sens = A.sensitivity(model, batches)  # float path finds the stage-1 convs too
    assert {r.name for r in sens} == {"features.0.0", "features.1.0", "features.3.0",
                                      "features.4", "classifier"}
    qmodel = A.calibrate(linger.init(model), batches)
    rows = A.layer_sqnr(qmodel, batches)
    convs = [r for r in rows if r.type == "QConv2d"]
    assert len(rows) == 5 and len(convs) == 3 and min(r.sqnr_db for r in convs) > 25

# ------------------------------------------------------------------------------------------------
# report and CLI


def test_report_references_its_images(tmp_path):
    pytest.importorskip("matplotlib")
    float_model, batches = _outlier_model(2), _batches(2)
    sens = A.sensitivity(float_model, batches)
    qmodel = A.calibrate(linger.init(float_model), batches)
    path = A.write_report(tmp_path / "out" / "report.html", qmodel, batches, sensitivity_rows=sens)
    page = path.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images == ["report_files/weights.png", "report_files/outputs.png",
                      "report_files/sqnr.png", "report_files/sensitivity.png"]
    for rel in images:
        data = (path.parent / rel).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert str(tmp_path) not in page  # relative references only
    assert "Per-layer SQNR" in page and 'class="flag"' in page  # the outlier row is marked


def test_report_without_matplotlib_has_tables_only(tmp_path, monkeypatch):
    from linger.analysis import plots

    def missing():
        raise ImportError("no matplotlib")
    monkeypatch.setattr(plots, "require_matplotlib", missing)
    path = A.write_report(tmp_path / "r.html", _outlier_model(None))
    page = path.read_text()
    assert "<img" not in page and "linger[plots]" in page and "<table>" in page


MODEL_FILE = """
import torch.nn as nn
import torch

def build_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    return m
"""


def test_cli_on_a_model_file_and_checkpoint(tmp_path, capsys):
    from linger.analysis.cli import main

    src = tmp_path / "net.py"
    src.write_text(MODEL_FILE)
    ckpt = tmp_path / "net.pt"
    torch.manual_seed(0)
    torch.save({"state_dict": _outlier_model(2).state_dict()}, ckpt)
    log = tmp_path / "wb.log"
    rc = main(["--model", str(src), "--checkpoint", str(ckpt), "--input-shape", "16,1,6,6",
               "--log", str(log)])
    out = capsys.readouterr().out
    assert rc == 0 and log.exists()
    sqnr = out.split("Per-layer SQNR")[1].split("Sensitivity")[0]
    sens = out.split("Sensitivity")[1]
    for section in (sqnr, sens):  # the outlier layer ranks first in both
        rank1 = next(line.split() for line in section.splitlines() if line.startswith("1 "))
        assert rank1[1] == "2"


def test_cli_errors_are_clear(tmp_path, capsys):
    from linger.analysis.cli import main

    src = tmp_path / "net.py"
    src.write_text(MODEL_FILE)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    assert main(["--model", str(src), "--checkpoint", str(bad), "--input-shape", "2,1,6,6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linger analyse: error: cannot read checkpoint") and str(bad) in err
    assert main(["--model", str(src)]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["--model", str(src), "--factory", "nope", "--input-shape", "2,1,6,6"]) == 2
    assert "'nope'" in capsys.readouterr().err


def test_cli_demo(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from linger.analysis.cli import main

    rc = main(["--demo", "--epochs", "1", "--no-sensitivity", "--log", str(tmp_path / "wb.log")])
    out = capsys.readouterr().out
    assert rc == 0 and "features.0.0.weight" in out and "Per-layer SQNR" in out
    assert len(re.findall(r"^\d+\s+\S+\s+Q\w+\s+[\d.]+$", out, re.M)) == 8  # 8 quantized layers


def test_top_level_names_are_lazy():
    assert linger.wb_analyse is A.wb_analyse and linger.Dumper is A.Dumper
    assert np.isfinite(A.sqnr_db(1.0, 0.5))
