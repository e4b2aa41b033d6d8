"""QAT on a CUDA device: every zoo model trains there, and its eval on the GPU equals its eval on the
CPU bit for bit (the integer semantics do not depend on the device), and the GPU-trained model's
export runs bit-exact in the runtime.

Skipped without a CUDA device (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import pytest
import torch

import linger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zoo import ZOO  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _outputs(y):
    y = y[0] if isinstance(y, tuple) else y
    return y.plain() if hasattr(y, "plain") else y


@pytest.mark.parametrize("name", sorted(ZOO))
def test_qat_on_cuda_then_eval_equals_cpu(name, tmp_path):
    entry = ZOO[name]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = linger.init(entry.make()).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for batch in (4, 64, 64):  # large batches take other CUDA BatchNorm kernels
        args = [a.cuda() if a.is_floating_point() else a
                for a in entry.inputs(batch, generator=gen)]
        loss = _outputs(model(*args)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(p.device.type == "cuda" for p in model.parameters())
    model.eval()
    args = entry.inputs(3, generator=gen)
    sat = tuple(a * 1000.0 if a.is_floating_point() else a for a in args)
    with torch.no_grad():
        for batch in (args, sat):
            gpu_args = [a.cuda() if a.is_floating_point() else a for a in batch]
            gpu = _outputs(model(*gpu_args)).cpu()
            cpu = _outputs(copy.deepcopy(model).cpu()(*batch))
            assert torch.equal(gpu, cpu), f"{name}: CUDA eval differs from CPU eval"
    cpu_model = copy.deepcopy(model).cpu()
    path = str(tmp_path / f"{name}.onnx")
    try:
        linger.onnx.export(cpu_model, args, path)
    except linger.ExportError as e:  # an op this build cannot export yet: the CUDA part still ran
        pytest.skip(f"export not available for {name}: {e}")
    sess = linger.runtime.InferenceSession(path)
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    with torch.no_grad():
        ref = _outputs(cpu_model(*args)).numpy()
    assert np.array_equal(sess.run(None, feeds)[0], ref)
