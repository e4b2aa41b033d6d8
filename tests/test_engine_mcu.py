"""The C engine on an emulated Cortex-M4 (QEMU mps2-an386, semihosting): the demo's DigitsCNN,
packed, gives the host engine's outputs (and the numpy runtime's, and PyTorch eval's) bit for
bit; the engine keeps no static RAM of its own. Skips, naming what is missing, without the
tools (``.ci/run`` installs them: gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)."""

import numpy as np
import pytest
import torch

import linger
from linger import engine, packer
from linger.engine import mcu
from linger.examples_models import DigitsCNN, set_seed
from linger.runtime import InferenceSession

_reason = mcu.missing_tools() or (None if engine.compiler() else "no host C compiler")
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return mcu.build_runner(str(tmp_path_factory.mktemp("mcu-build")))


def _digits_packed():
    set_seed(0)
    model = linger.init(DigitsCNN())
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 1, 8, 8))
    model.eval()
    graph = linger.onnx.export(model, torch.randn(1, 1, 8, 8), None, input_names=["image"])
    res = packer.pack(graph, target="venus")
    assert res.violations == []
    return model, res.data


def test_digits_cnn_on_emulated_cortex_m4_equals_host(runner, tmp_path):
    model, data = _digits_packed()
    (tmp_path / "model.bin").write_bytes(data)
    host = engine.Engine(data)
    gen = torch.Generator().manual_seed(5)
    for scale in (1.0, 1000.0):                  # ordinary, then saturating everywhere
        x = torch.randn(1, 1, 8, 8, generator=gen) * scale
        x.numpy().tofile(tmp_path / "input.bin")
        (tmp_path / "output.bin").unlink(missing_ok=True)
        res = mcu.run_qemu(runner, str(tmp_path))
        assert res.returncode == 0 and "mcu: ok" in res.stdout, res.stdout + res.stderr
        want = host.run(None, {"image": x.numpy()})[0]
        got = np.fromfile(tmp_path / "output.bin", want.dtype).reshape(want.shape)
        assert np.array_equal(got, want)
        assert np.array_equal(want, InferenceSession(data).run(None, {"image": x.numpy()})[0])
        with torch.no_grad():
            assert np.array_equal(want, model(x).plain().numpy())


def test_damaged_model_is_a_status_on_the_device(runner, tmp_path):
    _, data = _digits_packed()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x10
    (tmp_path / "model.bin").write_bytes(bytes(bad))
    res = mcu.run_qemu(runner, str(tmp_path))
    assert res.returncode == 1 and "checksum mismatch" in res.stdout, res.stdout + res.stderr


def test_code_size_per_op_set_and_no_static_ram(tmp_path):
    sizes = mcu.code_sizes(str(tmp_path))
    full = sizes["all ops"]
    assert full["data"] == 0                      # no initialized globals
    # .bss: only the caller's le_model in size_main.c; the engine itself has no globals
    from linger.engine import load_library
    assert full["bss"] <= load_library().le_sizeof_model()
    for label, s in sizes.items():
        assert 0 < s["text"] <= full["text"], label
