"""``linger demo``: the whole flow on a small CNN and scikit-learn's digits, in well under a minute.

Stages: train in float -> ``linger.init`` + quantization-aware fine-tuning -> evaluate the int8
model (``model.eval()`` computes with integers). Every stage is timed and ends up as one row of the
printed table. Later stages (export, runtime, bit-exactness) are added as further
``with stages.run(...)`` blocks in :func:`run_demo`.

>>> r = run_demo(epochs=1, qat_epochs=1, quiet=True)   # doctest: +SKIP
>>> sorted(k for k in r if k.endswith("acc"))           # doctest: +SKIP
['float_acc', 'int8_acc']
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn

from .examples_models import DigitsCNN, load_digits_data, set_seed


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                 batch_size: int = 64, seed: int = 0, desc: str = "train",
                 quiet: bool = False) -> list:
    """Plain PyTorch training loop (Adam, cross-entropy, shuffled mini-batches).

    The same loop serves float training and QAT: that is the point of ``linger.init``.
    Returns the mean loss of every epoch.
    """
    from tqdm import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    model.train()
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=quiet, leave=False):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss = loss_fn(_as_float(model(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        losses.append(total / len(x))
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent, with the model in eval mode (integer arithmetic once init-ed)."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = _as_float(model(x[i:i + batch_size]))
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    return 100.0 * correct / len(x)


def _epochs_and_loss(epochs: int, losses: list) -> str:
    return f"{epochs} epochs, loss {losses[-1]:.3f}" if losses else "0 epochs"


def _as_float(out: torch.Tensor) -> torch.Tensor:
    """A quantized model's output (a QTensor) as the plain float tensor it holds (autograd kept),
    so the loss and argmax work under ``on_unsupported="error"`` too."""
    from .quant.qtensor import QTensor

    return out.plain() if isinstance(out, QTensor) else out


class Stages:
    """Times named stages and collects the rows of the result table."""

    def __init__(self):
        self.rows = []  # (stage, result text, seconds)

    @contextmanager
    def run(self, name: str):
        """``with stages.run("float training") as row: ...; row["result"] = "98.0 %"``."""
        row = {"result": ""}
        t0 = time.perf_counter()
        yield row
        self.rows.append((name, row["result"], time.perf_counter() - t0))

    def table(self) -> str:
        w = max(len("stage"), *(len(n) for n, _, _ in self.rows))
        rw = max(len("result"), *(len(r) for _, r, _ in self.rows))
        lines = [f"{'stage':<{w}}  {'result':>{rw}}  {'time':>8}", "-" * (w + rw + 12)]
        lines += [f"{n:<{w}}  {r:>{rw}}  {s:7.2f}s" for n, r, s in self.rows]
        return "\n".join(lines)


def _c_engine_stage(bin_path: str, images: np.ndarray, torch_out: np.ndarray, row: dict):
    """The packed file in the C engine (linger.engine, built with the system C compiler), one
    image at a time as on the microcontroller; number of outputs equal to PyTorch's, or None
    where no C compiler is installed (the row says so)."""
    from linger.engine import Engine, EngineBuildError

    try:
        eng = Engine(bin_path)
    except EngineBuildError as e:
        row["result"] = f"skipped: {str(e).splitlines()[0]}"
        return None
    outs = np.concatenate([eng.run(None, {"image": images[i:i + 1]})[0]
                           for i in range(len(images))])
    exact = int(np.all(outs == torch_out, axis=1).sum())
    row["result"] = f"bit-exact: {exact}/{len(images)} samples (batch 1, as on the device)"
    return exact


def run_demo(out_dir: str | None = None, epochs: int = 20, qat_epochs: int | None = None,
             quiet: bool = False, seed: int = 0) -> dict:
    """Train a :class:`~linger.examples_models.DigitsCNN` in float, then QAT; report accuracies.

    ``epochs``: float training epochs; ``qat_epochs``: fine-tuning epochs (default
    ``max(1, epochs // 2)``). Checkpoints (``digits_float.pt``, ``digits_qat.pt``), the ONNX
    export and the packed file are written to ``out_dir``; when it is None they go to a
    temporary directory that is removed before returning (``out_dir`` in the result then names
    a directory that no longer exists).

    Returns a dict with ``float_acc`` and ``int8_acc`` (percent on the 450 test images),
    ``times`` (stage -> seconds), ``table`` (the printed text), ``model`` (the QAT model, in
    eval mode), ``x_test``/``y_test`` and ``out_dir``.
    """
    if out_dir is not None:
        return _run_demo(out_dir, epochs, qat_epochs, quiet, seed, kept=True)
    with tempfile.TemporaryDirectory(prefix="linger-demo-") as tmp:
        return _run_demo(tmp, epochs, qat_epochs, quiet, seed, kept=False)


def _run_demo(out_dir: str, epochs: int, qat_epochs: int | None, quiet: bool, seed: int,
              kept: bool) -> dict:
    import linger

    qat_epochs = max(1, epochs // 2) if qat_epochs is None else qat_epochs
    os.makedirs(out_dir, exist_ok=True)
    threads = torch.get_num_threads()
    stages = Stages()

    with stages.run("load digits") as row:
        xtr, ytr, xte, yte = load_digits_data(seed)
        row["result"] = f"{len(xtr)} train / {len(xte)} test"

    with stages.run("float training") as row:
        set_seed(seed)
        model = DigitsCNN()
        losses = train_epochs(model, xtr, ytr, epochs, lr=1e-2, seed=seed, desc="float",
                              quiet=quiet)
        torch.save(model.state_dict(), os.path.join(out_dir, "digits_float.pt"))
        row["result"] = _epochs_and_loss(epochs, losses)

    with stages.run("float accuracy") as row:
        float_acc = accuracy(model, xte, yte)
        row["result"] = f"{float_acc:.2f} %"

    with stages.run("linger.init + QAT") as row:
        model = linger.init(model)
        losses = train_epochs(model, xtr, ytr, qat_epochs, lr=1e-3, seed=seed + 1, desc="QAT",
                              quiet=quiet)
        torch.save(model.state_dict(), os.path.join(out_dir, "digits_qat.pt"))
        row["result"] = _epochs_and_loss(qat_epochs, losses)

    with stages.run("int8 accuracy (eval)") as row:
        int8_acc = accuracy(model, xte, yte)
        row["result"] = f"{int8_acc:.2f} %  ({int8_acc - float_acc:+.2f})"

    with stages.run("ONNX export") as row:
        onnx_path = os.path.join(out_dir, "digits_int8.onnx")
        graph = linger.onnx.export(model, xte[:1], onnx_path, input_names=["image"],
                                   output_names=["logits"],
                                   dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        row["result"] = f"{len(graph.graph.node)} nodes, {os.path.getsize(onnx_path) // 1024} KiB"

    with stages.run("pack for venus") as row:
        from linger.packer import pack

        bin_path = os.path.join(out_dir, "digits_int8.bin")
        packed = pack(onnx_path, bin_path, target="venus")
        sram = packed.plan.memories["share"]
        row["result"] = (f"{os.path.getsize(bin_path) // 1024} KiB file, share-memory peak"
                         f" {sram.peak / 1024:.1f} of {sram.capacity // 1024} KiB")

    with stages.run("integer runtime (.bin)") as row:
        from linger.runtime import InferenceSession

        runtime_out = InferenceSession(bin_path).run(None, {"image": xte.numpy()})[0]
        with torch.no_grad():
            torch_out = _as_float(model(xte)).numpy()
        exact = int(np.all(runtime_out == torch_out, axis=1).sum())
        runtime_acc = 100.0 * float((runtime_out.argmax(1) == yte.numpy()).mean())
        row["result"] = f"bit-exact: {exact}/{len(xte)} samples, accuracy {runtime_acc:.2f} %"

    with stages.run("C engine (.bin)") as row:
        c_exact = _c_engine_stage(bin_path, xte.numpy(), torch_out, row)

    table = stages.table()
    if not quiet:
        where = (f"files in {out_dir}" if kept else "files in a temporary directory, removed at"
                 " exit (keep them with --out-dir)")
        print(f"linger demo: DigitsCNN on scikit-learn digits ({threads} torch thread"
              f"{'s' if threads > 1 else ''}), {where}")
        print(table)
    return {"float_acc": float_acc, "int8_acc": int8_acc, "runtime_acc": runtime_acc,
            "bit_exact": exact, "c_bit_exact": c_exact, "onnx_path": onnx_path, "bin_path": bin_path,
            "times": {n: s for n, _, s in stages.rows}, "table": table, "model": model,
            "x_test": xte, "y_test": yte, "out_dir": out_dir}
