"""The supported-ops table of docs/ops.md is generated from the code and cannot drift."""

from __future__ import annotations

import os
import re

import linger.quant  # noqa: F401  (registers every handler)
from linger.quant import registry
from linger.quant.qtensor import HANDLERS
from linger.runtime.kernels import KERNELS

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


def _read(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return f.read()


def test_docs_table_is_the_generated_one():
    text = _read("ops.md")
    start, stop = text.index(registry.BEGIN), text.index(registry.END) + len(registry.END)
    assert text[start:stop] == registry.markdown(), \
        "docs/ops.md is stale: run `python -m linger.quant.registry docs/ops.md`"


def test_every_handler_family_is_described():
    families = {registry._family(h) for h in HANDLERS.values()}
    assert families <= set(registry.FAMILIES), sorted(families - set(registry.FAMILIES))


def test_every_op_named_has_a_runtime_kernel_and_a_spec():
    """The ONNX ops the table promises exist in the runtime and in docs/onnx_ops.md."""
    spec = _read("onnx_ops.md")
    kernels = {op for _, op in KERNELS}
    onnx_column = [row.rsplit("|", 2)[1] for row in registry.markdown().splitlines()
                   if row.startswith("| ")]
    names = " ".join(onnx_column)
    ops = set(re.findall(r"\b(iq[A-Z]\w+|[A-Z][a-z]+[A-Z]\w*Int|[A-Z]\w*Int|Upsample\w+|"
                         r"Adaptive\w+|Reduce\w+|Arg\w+)\b", names))
    assert ops and ops <= kernels, sorted(ops - kernels)
    assert all(f"`{op}`" in spec for op in ops), sorted(op for op in ops if f"`{op}`" not in spec)
