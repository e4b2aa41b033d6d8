"""``format="exact"``: standard ONNX that onnxruntime runs bit-identically to linger's integers.

Walks the bit-exact tables (layers and whole models of tests/test_bitexact.py, tensor ops of
tests/test_ops_table.py, the 64 recurrent configurations of tests/test_rnn.py): each row is exported with ``format="exact"``, checked to use the default
ONNX domain only, run in onnxruntime and compared with PyTorch eval by ``numpy.array_equal`` on
ordinary, saturating and tiny inputs. Rows whose ops the exporter cannot make exact must be
refused with an ExportError naming the node; the set of such ops is asserted, so it cannot grow
silently.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import linger
from linger.errors import ExportError

ort = pytest.importorskip("onnxruntime")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_bitexact as tb  # noqa: E402
import test_ops_table as to  # noqa: E402
import test_rnn as tr  # noqa: E402

#: ops the exact form refuses (docs/export.md says why and what to use instead)
REFUSED_OPS = {"LayerNormInt", "LogSoftmaxInt"}


def _session(graph):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(graph.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _export(model, args, names, dynamic=True):
    """The exact graph, or None after checking a refusal names one of REFUSED_OPS' nodes."""
    linger_graph = linger.onnx.export(model, args, None, input_names=names)
    ops = {n.op_type for n in linger_graph.graph.node}
    axes = {n: {0: "batch"} for n in names} if dynamic else None
    try:
        graph = linger.onnx.export(model, args, None, input_names=names, format="exact",
                                   dynamic_axes=axes)
    except ExportError as e:
        refused = ops & REFUSED_OPS
        assert refused, f"refused although every op has an exact form: {e}"
        assert any(op in str(e) for op in refused) and "node '" in str(e), str(e)
        return None
    assert not ops & REFUSED_OPS
    assert {n.domain for n in graph.graph.node} <= {""}, "non-standard domain in exact graph"
    return graph


def _compare(sess, model, batches, names):
    for xs in batches:
        with torch.no_grad():
            out = model(*xs)
        wants = out if isinstance(out, tuple) else (out,)
        gots = sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})
        for got, want in zip(gots, wants):
            want = to._plain(want).detach().numpy()
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want), f"max diff {np.abs(got - want).max()}"


@pytest.mark.parametrize("name,factory,shape,kwargs", tb.LAYER_TABLE + tb.MODEL_TABLE,
                         ids=[r[0] for r in tb.LAYER_TABLE + tb.MODEL_TABLE])
def test_layers_and_models_exact_in_onnxruntime(name, factory, shape, kwargs):
    model = tb._calibrated(factory, shape, kwargs)
    x = torch.randn(*shape) * 2.0
    graph = _export(model, (x,), ["input"])
    if graph is None:
        return
    _compare(_session(graph), model, [(x,), (x * 1000.0,), (x * 0.01,), (x[:1],)], ["input"])


@pytest.mark.parametrize("row", to.ROWS, ids=lambda r: r.name)
def test_tensor_ops_exact_in_onnxruntime(row):
    model, _ = to.build(row)
    xs = to._inputs(row)
    names = [f"x{i}" for i in range(len(xs))]
    graph = _export(model, tuple(xs), names, dynamic=False)
    if graph is None:
        return
    sess = _session(graph)
    _compare(sess, model, [to._inputs(row, k) for k in (1.0, 8.0, 0.05)], names)


def test_embedding_model_exact():
    torch.manual_seed(0)
    model = linger.init(tb.TextConv())
    for _ in range(3):
        model(torch.randint(0, 50, (4, 12)))
    model.eval()
    idx = torch.randint(0, 50, (3, 12))
    graph = _export(model, (idx,), ["input"])
    _compare(_session(graph), model, [(idx,)], ["input"])


def test_refusal_names_the_node():
    model = tb._calibrated(lambda: torch.nn.Sequential(torch.nn.Linear(4, 4),
                                                       torch.nn.LayerNorm(4)), (3, 4), {})
    with pytest.raises(ExportError, match=r"node '.*' \(LayerNormInt\).*format='linger'"):
        linger.onnx.export(model, torch.randn(3, 4), None, format="exact")


def test_wide_sums_take_limbs_and_stay_exact():
    """16-bit data and weights: every convolution needs limbs (bound far beyond 2**24)."""
    model = tb._calibrated(lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3),
                                                       torch.nn.ReLU(),
                                                       torch.nn.Conv2d(8, 4, 3)),
                           (2, 3, 8, 8), {"data_bits": 16, "parameter_bits": 16})
    x = torch.randn(2, 3, 8, 8)
    graph = _export(model, (x,), ["input"])
    assert sum(n.op_type == "Conv" for n in graph.graph.node) > 2   # split into limb convs
    _compare(_session(graph), model, [(x,), (x * 1000.0,)], ["input"])


@pytest.mark.parametrize("combo", tr.COMBOS, ids=[tr._id(c) for c in tr.COMBOS])
def test_recurrent_exact_in_onnxruntime(combo):
    """GRU/LSTM unrolled: every direction/layer/layout/packing/state combination of
    tests/test_rnn.py, bit-identical in onnxruntime, lengths changed after export too."""
    mode, bi, layers, bf, packed, state = combo
    tr.set_seed(1)
    model = linger.init(tr.SeqNet(*combo))
    args, names, _, _ = tr._data(model)
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(*args)
    model.eval()
    graph = _export(model, args, names, dynamic=False)
    sess = _session(graph)
    batches = [args, tr._saturating(args, names)]
    if packed:
        other = list(args)
        other[1] = torch.tensor([2, 6, 1, 5, 3, 3, 4, 1])
        batches.append(tuple(other))
    _compare(sess, model, batches, names)


def test_imported_original_tables_exact():
    """LutInt (the imported original's tanh and tensor division tables), one and two inputs."""
    import test_thinker_import as tt
    from linger.importers.thinker import import_thinker
    from linger.onnx.exact import to_exact
    from linger.runtime import InferenceSession
    f32 = tt.F32
    nodes = [tt.tnode("Quant", ["x"], ["q"], data_bits=8, scale_x=16.0),
             tt.tnode("iqTanh", ["q"], ["th"], scale_x=16.0, scale_o=128.0),
             tt.tnode("iqDiv", ["th", "q"], ["dv"], scale_x=128.0, scale_y=16.0, scale_o=8.0),
             tt.tnode("Dequant", ["dv"], ["out"], scale_o=8.0)]
    original = tt.model(nodes, [("x", f32, [2, 5])], [("out", f32, [2, 5])])
    graph = import_thinker(original)
    assert "LutInt" in {n.op_type for n in graph.graph.node}
    exact = to_exact(graph)
    x = np.random.default_rng(0).normal(0, 4, (2, 5)).astype(np.float32)
    for batch in (x, x * 100):
        want = InferenceSession(graph).run(None, {"x": batch})[0]
        got = _session(exact).run(None, {"x": batch})[0]
        assert np.array_equal(got, want)
