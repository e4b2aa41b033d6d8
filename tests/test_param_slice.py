"""A parameter sliced to the input's length (``table[:, :t]``, a learned positional table) is one
constant at every length: it is quantized with the exponent of the whole parameter (a weight
operand) or the op's stored output exponent (add), in training and in eval, and exported as the
whole parameter's integers cut by a Slice whose end the graph computes, so a dynamic time axis
gives eval's bits at every length the model accepts."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

import linger
from linger.runtime import InferenceSession


class Table(nn.Module):
    """Rows 0..6 small, row 7 large: a slice that stops before row 7 has a smaller range than
    the whole table, so an exponent taken from the slice would change with the length."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        table = torch.full((1, 8, 4), 0.1)
        table[0, 7] = 3.0
        self.table = nn.Parameter(table)
        self.lin = nn.Linear(4, 4)

    def forward(self, x):                                    # (N, T, 4), T <= 8
        t = x.size(1)
        if self.op == "cat":                                 # batch 1: the table joins x's rows
            return torch.cat([self.lin(x) * 0.001, self.table[:, :t]], dim=2)
        y = self.lin(x)
        return y * self.table[:, :t] + self.table[:, :t]


def _trained(op):
    torch.manual_seed(0)
    model = linger.init(Table(op))
    for _ in range(2):
        model(torch.randn(3, 8, 4) if op != "cat" else torch.ones(1, 8, 4))
    return model


def _plain(y):
    return y.plain() if hasattr(y, "plain") else y


def test_slice_quantized_with_whole_parameter_exponent_in_training_and_eval():
    model = _trained("cat")
    x = torch.ones(1, 8, 4)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            full = _plain(model(x))
            for t in (2, 5):
                short = _plain(model(x[:, :t]))
                assert torch.equal(short, full[:, :t]), (train, t)
        # 0.1 on the whole table's grid (exponent 5, for the 3.0 in row 7), not the slice's
        assert full[0, 0, 4].item() == 3 / 32


def test_dynamic_length_exports_whole_table_and_is_bit_exact():
    model = _trained("mul_add").eval()
    graph = linger.onnx.export(model, (torch.randn(2, 6, 4),), None, input_names=["x"],
                               dynamic_axes={"x": {1: "T"}})
    inits = {t.name: tuple(t.dims) for t in graph.graph.initializer}
    cut = [n for n in graph.graph.node if n.op_type == "Slice" and n.input[0] in inits]
    assert [inits[n.input[0]] for n in cut] == [(1, 8, 4)] * 2
    sess = InferenceSession(graph)
    gen = torch.Generator().manual_seed(3)
    for t in (1, 3, 7, 8):
        for n in (1, 3):
            for scale in (1.0, 1000.0):
                x = torch.randn(n, t, 4, generator=gen) * scale
                with torch.no_grad():
                    want = _plain(model(x)).numpy()
                got = sess.run(None, {"x": x.numpy()})[0]
                assert got.shape == want.shape and np.array_equal(got, want), (t, n, scale)


class Shifted(nn.Module):
    """Row 0 of the table belongs to a token added elsewhere: the frames take rows 1..T."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(0.1 * torch.randn(1, 9, 4))
        self.lin = nn.Linear(4, 4)

    def forward(self, x):                                    # (N, T, 4), T <= 8
        return self.lin(x) + self.pos[:, 1:x.size(1) + 1]


def test_slice_end_is_the_input_length_plus_a_constant():
    torch.manual_seed(0)
    model = linger.init(Shifted())
    model(torch.randn(3, 8, 4))
    model.eval()
    graph = linger.onnx.export(model, (torch.randn(2, 6, 4),), None, input_names=["x"],
                               dynamic_axes={"x": {1: "T"}})
    adds = [n for n in graph.graph.node if n.op_type == "Add"]
    assert len(adds) == 1  # Gather(Shape(x), [1]) + 1
    sess = InferenceSession(graph)
    for t in (1, 4, 8):
        x = torch.randn(3, t, 4)
        with torch.no_grad():
            want = _plain(model(x)).numpy()
        assert np.array_equal(sess.run(None, {"x": x.numpy()})[0], want), t
