"""The packer end to end: pack -> load -> run equals the ONNX runtime bit for bit, the CLI, the
memory report (golden file), and a reader that refuses damaged files cleanly (hypothesis).

Golden files are regenerated only on purpose: ``LINGER_REGEN_GOLDEN=1 pytest tests/test_packer.py``.
"""

import importlib.util
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import linger
from linger import packer
from linger.errors import InputError, LingerError, ModelFileError, TargetError
from linger.packfile import format as F
from linger.packer.cli import main
from linger.packfile.reader import load_model_proto, read, to_model_proto
from linger.runtime import InferenceSession
from linger.runtime.graph import load_graph

GOLDEN = Path(__file__).with_name("golden")
REGEN = os.environ.get("LINGER_REGEN_GOLDEN") == "1"


# -- a small linger graph built without torch ----------------------------------------------------
def tiny_model(time_dim=False) -> onnx.ModelProto:
    """Quant -> Conv2dInt -> Relu -> MaxPool -> Reshape -> LinearInt -> Dequant -> output."""
    rng = np.random.default_rng(0)
    L = "ai.linger"
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (4, 1, 3, 3)).astype(np.int8),
                                     "conv.weight"),
             numpy_helper.from_array(rng.integers(-500, 500, 4).astype(np.int32), "conv.bias"),
             numpy_helper.from_array(np.array([0, 36], np.int64), "flatten.shape"),
             numpy_helper.from_array(rng.integers(-127, 128, (3, 36)).astype(np.int8),
                                     "fc.weight"),
             numpy_helper.from_array(rng.integers(-900, 900, 3).astype(np.int32), "fc.bias")]
    layer = dict(exp_w=6, bits_x=8, bits_w=8, bits_o=8)
    nodes = [
        helper.make_node("Quant", ["input"], ["conv.quant:out"], "conv.quant", domain=L, exp=4,
                         bits=8),
        helper.make_node("Conv2dInt", ["conv.quant:out", "conv.weight", "conv.bias"],
                         ["conv:out"], "conv", domain=L, kernel_shape=[3, 3], strides=[1, 1],
                         pads=[1, 1, 1, 1], dilations=[1, 1], group=1, exp_x=4, exp_o=3,
                         **layer),
        helper.make_node("Relu", ["conv:out"], ["relu:out"], "relu"),
        helper.make_node("MaxPool", ["relu:out"], ["pool:out"], "pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Reshape", ["pool:out", "flatten.shape"], ["flatten:out"], "flatten"),
        helper.make_node("LinearInt", ["flatten:out", "fc.weight", "fc.bias"], ["fc:out"], "fc",
                         domain=L, exp_x=3, exp_o=2, **layer),
        helper.make_node("Dequant", ["fc:out"], ["fc.dequant:out"], "fc.dequant", domain=L, exp=2,
                         bits=8),
        helper.make_node("Identity", ["fc.dequant:out"], ["output"], "output.identity"),
    ]
    g = helper.make_graph(nodes, "tiny",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["batch", 1, 6, 6])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                         ["batch", 3])], initializer=inits)
    m = helper.make_model(g, producer_name="test",
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(L, 1)])
    m.ir_version = 8
    return m


def seq_model() -> onnx.ModelProto:
    """Quant -> Conv1dInt over an input with a symbolic time axis 'T'."""
    w = numpy_helper.from_array(np.ones((2, 3, 3), np.int8), "c.weight")
    nodes = [helper.make_node("Quant", ["x"], ["q"], "q", domain="ai.linger", exp=3, bits=8),
             helper.make_node("Conv1dInt", ["q", "c.weight"], ["y"], "c", domain="ai.linger",
                              kernel_shape=[3], strides=[1], pads=[1, 1], dilations=[1], group=1,
                              exp_x=3, exp_w=0, exp_o=1, bits_x=8, bits_w=8, bits_o=8)]
    g = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, "T"])], [helper.make_tensor_value_info(
            "y", TensorProto.INT8, ["N", 2, "T"])], initializer=[w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid("ai.linger", 1)])


_PACKED = {}


def tiny_packed() -> bytes:
    if "tiny" not in _PACKED:
        _PACKED["tiny"] = packer.pack(tiny_model()).data
    return _PACKED["tiny"]


def refresh_crc(data: bytes) -> bytes:
    """Recompute both checksums, so that a test reaches the structural checks behind them."""
    data = bytearray(data)
    data[56:60] = struct.pack("<I", zlib.crc32(bytes(data[64:])))
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60])))
    return bytes(data)


def run_both(model, packed, x):
    a = InferenceSession(model).run(None, {"input": x})
    b = InferenceSession(packed).run(None, {"input": x})
    assert len(a) == len(b) and all(u.dtype == v.dtype and np.array_equal(u, v)
                                    for u, v in zip(a, b))
    return a


# -- round trip --------------------------------------------------------------------------------
def test_tiny_round_trip_file_and_session_api(tmp_path):
    model = tiny_model()
    res = packer.pack(model, tmp_path / "tiny.bin", report_html=tmp_path / "tiny.html")
    assert res.path and Path(res.path).read_bytes() == res.data and res.violations == []
    sess_onnx, sess_bin = InferenceSession(model), InferenceSession(str(tmp_path / "tiny.bin"))
    assert sess_bin.get_inputs() == sess_onnx.get_inputs()
    assert sess_bin.get_outputs() == sess_onnx.get_outputs()
    x = np.random.default_rng(1).normal(size=(5, 1, 6, 6)).astype(np.float32)
    for batch in (x, x * 1000, x[:1]):
        run_both(model, res.data, batch)
    # the packed file holds the same graph, intermediates included
    a = sess_onnx.run_with_intermediates({"input": x})
    b = sess_bin.run_with_intermediates({"input": x})
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_pack_is_deterministic_and_reads_back():
    data = tiny_packed()
    assert packer.pack(tiny_model()).data == data
    pm = read(data)
    assert pm.target_name == "venus" and pm.target_id == 0 and pm.format_version == 1
    assert pm.graph_name == "tiny" and pm.dims == {"batch": 1}
    assert [t.name for t in pm.tensors][:2] == ["input", "conv.weight"]
    assert F.write(pm) == data  # read -> write gives the same bytes


def test_params_in_flash_and_tensor_records():
    res = packer.pack(tiny_model(), params="flash")
    pm = read(res.data)
    mem = {t.name: t.memory for t in pm.tensors}
    assert mem["conv.weight"] == mem["fc.bias"] == "flash" and mem["conv:out"] == "share"
    flags = {t.name: t.flags for t in pm.tensors}
    assert flags["input"] & F.F_INPUT and flags["output"] & F.F_OUTPUT | F.F_ALIAS
    assert pm.tensors[[t.name for t in pm.tensors].index("flatten:out")].alias_of >= 0
    x = np.ones((2, 1, 6, 6), np.float32)
    run_both(tiny_model(), res.data, x)


def test_symbolic_dimensions_need_a_size():
    with pytest.raises(InputError, match=r"--dim T=100"):
        packer.pack(seq_model())
    res = packer.pack(seq_model(), dims={"T": 50})
    assert read(res.data).dims == {"N": 1, "T": 50}
    assert res.plan.placements["y"].nbytes == 2 * 50
    x = np.random.default_rng(0).normal(size=(2, 3, 17)).astype(np.float32)  # any T runs
    a = InferenceSession(seq_model()).run(None, {"x": x})[0]
    assert np.array_equal(a, InferenceSession(res.data).run(None, {"x": x})[0])


# -- the models of the bit-exact table -----------------------------------------------------------
_spec = importlib.util.spec_from_file_location("_bitexact_table",
                                               Path(__file__).with_name("test_bitexact.py"))
_bitexact = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bitexact)
MODEL_TABLE = _bitexact.MODEL_TABLE


@pytest.mark.parametrize("name,factory,shape,kwargs", MODEL_TABLE, ids=[r[0] for r in MODEL_TABLE])
def test_model_table_packs_and_runs_bitexact(name, factory, shape, kwargs):
    model = _bitexact._calibrated(factory, shape, kwargs)
    x = torch.randn(*shape)
    graph = linger.onnx.export(model, x, None, input_names=["input"],
                               dynamic_axes={"input": {0: "batch"}})
    fits = packer.check(graph, "venus")
    res = packer.pack(graph, target="venus", force=not fits.ok)
    if name == "digits_cnn_16bit":  # 16-bit data: venus convolutions take 8-bit data only
        assert {v.rule for v in res.violations} >= {"Conv2dInt.data_bits"}
    else:
        assert res.violations == [], [str(v) for v in res.violations]
    for batch in (x, x * 1000.0, x[:1]):
        got = run_both(graph, res.data, batch.numpy())
        out = model(batch)
        wants = out if isinstance(out, tuple) else (out,)
        assert len(got) == len(wants)
        assert all(np.array_equal(g, w.detach().numpy()) for g, w in zip(got, wants))
    share = res.plan.memories["share"]
    assert share.lower_bound <= share.peak <= 1.1 * share.lower_bound <= share.capacity


def test_pack_refuses_a_model_that_does_not_fit_and_lists_every_violation(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 7), torch.nn.Conv2d(4, 4, 3, dilation=2),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    model = _bitexact._calibrated(lambda: model, (2, 1, 16, 16), {})
    path = tmp_path / "big.onnx"
    linger.onnx.export(model, torch.randn(2, 1, 16, 16), str(path))
    with pytest.raises(TargetError) as e:
        packer.pack(path, tmp_path / "big.bin", lower=False)
    assert sorted(v.rule for v in e.value.violations) == ["Conv2dInt.dilation",
                                                          "Conv2dInt.kernel"]
    assert "Conv2d `0` (kernel 7x7) exceeds target venus" in str(e.value)
    assert not (tmp_path / "big.bin").exists()
    res = packer.pack(path, tmp_path / "big.bin", force=True, lower=False)
    assert len(res.violations) == 2 and (tmp_path / "big.bin").exists()
    assert packer.check(path, "arcs", lower=False).violations[0].rule == "Conv2dInt.kernel"
    # lowered (the default): both layers are rewritten exactly and the file runs bit-exactly
    res = packer.pack(path, tmp_path / "low.bin")
    assert not res.violations and [lw.node for lw in res.lowerings] == ["0", "1"]
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32) * 4
    want = InferenceSession(str(path)).run(None, {"input": x})[0]
    assert np.array_equal(InferenceSession(str(tmp_path / "low.bin")).run(None, {"input": x})[0],
                          want)


# -- memory violations and the report ----------------------------------------------------------
def test_memory_capacity_violation_names_the_layers_at_the_peak(tmp_path):
    prof = tmp_path / "small.toml"
    prof.write_text('extends = "venus"\nname = "small"\n[memory.share]\ncapacity = 256\n'
                    '[memory.psram]\ncapacity = 300\n')
    res = packer.check(tiny_model(), str(prof))
    [v] = [v for v in res.violations if v.rule.startswith("memory.")]
    assert v.rule == "memory.psram" and "PSRAM needs" in v.message
    assert "has 300 bytes: 208 bytes of parameters and activations peak at step 2" in v.message
    assert "`relu:out` (144 bytes)" in v.message
    assert res.plan.spilled  # share-memory overflowed first: activations moved to PSRAM
    with pytest.raises(TargetError, match="PSRAM needs"):
        packer.pack(tiny_model(), target=str(prof))


def test_golden_memory_report(tmp_path):
    res = packer.pack(tiny_model(), report_html=tmp_path / "r.html")
    text = res.report()
    golden = GOLDEN / "packer_tiny_report.txt"
    if REGEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), "report changed: regenerate on purpose (see module doc)"
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3  # + cycles plot
    assert "src=" not in page and "href=" not in page and "<script" not in page
    for name in ("conv:out", "fc.weight", "share-memory", "MACs", "peak"):
        assert name in page
    assert "share-memory peak" in res.report(full=False) and "tensors:" not in res.report(False)


# -- command line --------------------------------------------------------------------------------
def test_cli_check_and_pack(tmp_path, capsys):
    onnx.save(tiny_model(), str(tmp_path / "tiny.onnx"))
    assert main(["check", str(tmp_path / "tiny.onnx")]) == 0
    assert "fits target venus" in capsys.readouterr().out
    assert main(["pack", str(tmp_path / "tiny.onnx"), "--target", "arcs", "--report"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "tensors:" in out and (tmp_path / "tiny.bin").exists()
    assert (tmp_path / "tiny.memory.html").exists()
    assert read((tmp_path / "tiny.bin").read_bytes()).target_name == "arcs"
    bad = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 7, stride=3), torch.nn.MaxPool2d(6))
    bad = _bitexact._calibrated(lambda: bad, (1, 1, 40, 40), {"parameter_bits": 4})
    linger.onnx.export(bad, torch.randn(1, 1, 40, 40), str(tmp_path / "bad.onnx"))
    assert main(["check", str(tmp_path / "bad.onnx"), "--target", "venus", "--no-lower"]) == 1
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[error]")]
    assert len(lines) == 4  # kernel, stride, weight bits, pooling kernel: all of them
    assert main(["check", str(tmp_path / "bad.onnx"), "--target", "venus"]) == 1
    out = capsys.readouterr().out.splitlines()
    # the 7x7 stride-3 kernel could be lowered, its 4-bit weights and the 6x6 pooling window
    # cannot: the layers stay as exported and only what lowering cannot fix is reported
    assert not [x for x in out if x.startswith("[lowered]")]
    errors = [x for x in out if x.startswith("[error]")]
    assert len(errors) == 2 and "weight bits 4" in errors[0] and "MaxPool" in errors[1]
    assert main(["pack", str(tmp_path / "bad.onnx")]) == 1  # does not fit, as check says
    assert "2 violations of target venus" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "tiny.onnx"), "--dim", "oops"]) == 2
    for cmd in ("pack", "check"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    assert "--target" in capsys.readouterr().out


# -- damaged files -------------------------------------------------------------------------------
def _refused(data):
    with pytest.raises(ModelFileError):
        read(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_truncated_files_are_refused(data):
    blob = tiny_packed()
    _refused(blob[:data.draw(st.integers(0, len(blob) - 1))])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_flipped_bits_are_refused(data):
    blob = bytearray(tiny_packed())
    for _ in range(data.draw(st.integers(1, 4))):
        bit = data.draw(st.integers(0, 8 * len(blob) - 1))
        blob[bit // 8] ^= 1 << (bit % 8)
    if bytes(blob) != tiny_packed():
        with pytest.raises(ModelFileError):
            InferenceSession(bytes(blob))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damage_behind_valid_checksums_is_refused_or_harmless(data):
    """Corrupt bytes and fix the checksums: the structural checks must hold alone. Loading
    either works or raises ModelFileError; nothing else (no IndexError, no MemoryError...)."""
    blob = bytearray(tiny_packed())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(64, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    try:
        load_graph(refresh_crc(bytes(blob)))
    except ModelFileError:
        pass


@pytest.mark.parametrize("edit,expected", [
    (lambda b: b[:8] + struct.pack("<H", 2) + b[10:], "newer linger (packed format version 2)"),
    (lambda b: b"NOTLINGR" + b[8:], None),
    (lambda b: b + b"\0" * 16, "longer than written"),
    (lambda b: b[:12] + struct.pack("<I", 0x0D0C0B0A) + b[16:], "byte-order mark"),
])
def test_header_problems_have_clear_messages(edit, expected):
    data = refresh_crc(edit(tiny_packed()))
    if expected is None:  # not our magic: the runtime then tries ONNX and says so
        with pytest.raises(ModelFileError, match="not a readable ONNX model"):
            InferenceSession(data)
        with pytest.raises(ModelFileError, match="is not a linger packed model"):
            read(data)
        return
    with pytest.raises(ModelFileError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read(data)


def _sections(data):
    n = struct.unpack_from("<I", data, 36)[0]
    return [(i, *F.SECTION.unpack_from(data, 64 + 24 * i)) for i in range(n)]


def _set_section(data, index, kind=None, flags=None, offset=None, length=None):
    _, k, fl, off, ln = _sections(data)[index]
    entry = F.SECTION.pack(kind or k, fl if flags is None else flags,
                           off if offset is None else offset, ln if length is None else length)
    pos = 64 + 24 * index
    return refresh_crc(data[:pos] + entry + data[pos + 24:])


def test_section_table_problems():
    data = tiny_packed()
    secs = {k: i for i, k, *_ in _sections(data)}
    cases = [
        (_set_section(data, secs[b"PARM"], length=1 << 40), "outside the file"),
        (_set_section(data, secs[b"TENS"], offset=_sections(data)[secs[b"TENS"]][3] + 1),
         "misaligned"),
        (_set_section(data, secs[b"PLAN"], kind=b"XTRA"), "unknown required section"),
        (_set_section(data, secs[b"OPER"], offset=_sections(data)[secs[b"TENS"]][3]), "overlap"),
    ]
    for bad, expected in cases:
        with pytest.raises(ModelFileError, match=expected):
            read(bad)
    # an unknown *optional* section is skipped, but a required one it replaces is then missing
    with pytest.raises(ModelFileError, match=r"sections \['PLAN'\] are missing"):
        read(_set_section(data, secs[b"PLAN"], kind=b"XTRA", flags=F.OPTIONAL))


def test_records_pointing_outside_are_refused():
    pm = read(tiny_packed())
    pm.ops[1].inputs[1] = 999
    with pytest.raises(ModelFileError, match="tensor id 999"):
        read(F.write(pm))
    pm = read(tiny_packed())
    wid = [t.name for t in pm.tensors].index("conv.weight")
    data = bytearray(tiny_packed())  # the writer would grow the blob: edit the bytes instead
    tens = next(s[3] for s in _sections(bytes(data)) if s[1] == b"TENS")
    field = tens + 8 + wid * F.TENSOR.size + 24  # TensorRecord.offset
    data[field:field + 8] = struct.pack("<Q", 1 << 20)
    with pytest.raises(ModelFileError, match="parameter 'conv.weight' .* lies outside the psram"):
        read(refresh_crc(bytes(data)))
    pm = read(tiny_packed())
    pm.tensors[wid].shape = (4, 1, 3, 4)
    with pytest.raises(ModelFileError, match="claims 36 bytes"):
        read(F.write(pm))


def test_huge_counts_do_not_allocate_or_loop():
    data = bytearray(tiny_packed())
    _, _, _, off, _ = next(s for s in _sections(bytes(data)) if s[1] == b"TENS")
    data[off:off + 4] = struct.pack("<I", 0xFFFFFFFF)
    with pytest.raises(ModelFileError, match="cannot fit"):
        read(refresh_crc(bytes(data)))


def test_rebuilt_graph_errors_are_model_file_errors():
    pm = read(tiny_packed())
    pm.inputs[0].elem_type = 999
    with pytest.raises(ModelFileError, match="element type 999"):
        load_model_proto(F.write(pm))
    assert to_model_proto(read(tiny_packed())).graph.node[1].op_type == "Conv2dInt"


def test_packer_never_imports_torch(tmp_path):
    onnx.save(tiny_model(), str(tmp_path / "t.onnx"))
    code = ("import sys, numpy as np; from linger import packer; import linger.runtime as rt;"
            f"r = packer.pack({str(tmp_path / 't.onnx')!r}, {str(tmp_path / 't.bin')!r});"
            f"rt.InferenceSession({str(tmp_path / 't.bin')!r}).run(None,"
            " {'input': np.zeros((1, 1, 6, 6), np.float32)});"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(linger.__file__).resolve().parents[1])


def test_linger_errors_only():
    assert issubclass(TargetError, LingerError) and issubclass(ModelFileError, LingerError)
