"""The fast training paths compute what the reference formulas compute.

- scalar path (CPU: Python-int exponents, statistics read as Python numbers) against tensor path
  (GPU / torch.compile: exponents as device tensors, nothing read back) -- run here on the CPU
  with ``functions.tensor_path()``, which is how the GPU code path is covered without a GPU;
- the specialised fake quantizers (rounding only, clamp only, identity) against the general one;
- the fused BatchNorm training function against its definition written with autograd ops;
- exact batch statistics against float64 references.

Forward values and statistics are compared with exact equality; gradients that go through a
differently ordered float reduction with a relative tolerance.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import linger
from linger import numerics
from linger.errors import NumericError
from linger.examples_models import SmallResNet, set_seed
from linger.quant import functions as fn
from linger.quant import two_stage
from linger.quant.bn_train import _channel_reductions, batch_moments, batchnorm_train
from linger.quant.qtensor import QTensor


def _fq_both(x, exp, bits):
    """Forward and gradient of fake_quant on the scalar path and on the tensor path."""
    out = []
    for tensor_exp in (False, True):
        xi = x.clone().requires_grad_()
        e = torch.tensor(exp, dtype=torch.int32) if tensor_exp else exp
        with fn.tensor_path(tensor_exp):  # (a CPU tensor exponent is read on the CPU path)
            y = fn.fake_quant(xi, e, bits)
        y.backward(torch.arange(1.0, x.numel() + 1, dtype=x.dtype).view_as(x))
        out.append((y.detach(), xi.grad))
    return out


def _edge_values(exp, bits, dtype):
    s = 2.0 ** -exp
    qmin, qmax = numerics.qmin(bits), numerics.qmax(bits)
    base = [0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, qmax, qmin, qmax + 0.5, qmin - 0.5,
            qmax + 0.25, qmin - 0.75, qmax - 0.5, qmin + 0.5, 3 * qmax, 3 * qmin]
    vals = [v * s for v in base]
    vals += [float(np.nextafter(dtype(v), dtype(np.inf))) for v in vals]
    vals += [float(np.nextafter(dtype(v), dtype(-np.inf))) for v in vals]
    return vals


@pytest.mark.parametrize("bits", [4, 8, 16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exp", [-3, 0, 5, 20])
def test_fake_quant_scalar_and_tensor_exponents_agree_on_edges(bits, dtype, exp):
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    x = torch.tensor(_edge_values(exp, bits, np_dtype), dtype=dtype)
    (ys, gs), (yt, gt) = _fq_both(x, exp, bits)
    assert torch.equal(ys, yt)
    if bits <= 16:  # 32-bit bounds are not float32 numbers: both use the saved-mask path then
        assert torch.equal(gs, gt)


def test_fake_quant_ties_round_up_exactly():
    x = torch.tensor([0.5, -0.5, 1.5, -1.5, 126.5, -127.5, -128.5, 127.5]) / 8
    y = fn.fake_quant(x, 3, 8)
    assert (y * 8).tolist() == [1, 0, 2, -1, 127, -127, -128, 127]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=40),
       st.integers(-8, 12), st.sampled_from([4, 8, 16]))
def test_fake_quant_paths_agree_property(vals, exp, bits):
    x = torch.tensor(vals, dtype=torch.float32)
    (ys, gs), (yt, gt) = _fq_both(x, exp, bits)
    assert torch.equal(ys, yt) and torch.equal(gs, gt)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 40.0])
def test_known_bounds_take_the_rounding_path_with_the_same_result(scale):
    """After observe() read a tensor's min/max, fake_quant of that tensor skips the clamp and the
    gradient mask when nothing saturates -- same values, same gradient."""
    torch.manual_seed(0)
    x = torch.randn(64) * scale
    rng, ready, e = torch.zeros(()), torch.zeros((), dtype=torch.bool), torch.zeros((),
                                                                              dtype=torch.int32)
    fn.observe(rng, ready, e, x, 8, 0.1)
    x.mul_(1.0)  # (an in-place change must invalidate the remembered bounds)
    for exp in (int(e), int(e) + 1, int(e) + 3):
        fn.observe(rng, ready, e, x, 8, 0.1)  # remember x's bounds again
        xi = x.clone().requires_grad_()
        ref = fn._FakeQuantT.apply(xi, torch.tensor(exp), 8)
        ref.backward(torch.ones_like(ref))
        x.grad = None
        xr = x.requires_grad_()
        if exp == int(e) and scale != 40.0:  # exponent from this very batch: nothing saturates
            assert fn._inside(xr, exp, 8)
        got = fn.fake_quant(xr, exp, 8)
        got.backward(torch.ones_like(got))
        assert torch.equal(got, ref) and torch.equal(xr.grad, xi.grad)
        x = x.detach()


@pytest.mark.parametrize("owned", [False, True])
@pytest.mark.parametrize("kind", ["leaf", "result", "no_grad"])
def test_rounding_without_an_autograd_function(owned, kind):
    """A rounding that cannot saturate is written outside autograd: into ``x`` itself only when
    it is an owned (fresh, non-leaf) result, else into a clone; values are fake_quant's, the
    gradient is 1, and an input that is not owned is left alone."""
    torch.manual_seed(0)
    base = torch.randn(4, 3, 5) * 3
    w = base.clone().requires_grad_(kind != "no_grad")
    x = w * 1.0 if kind == "result" else w
    before = x.detach().clone()
    assert not fn.saturates(float(before.min()), float(before.max()), 3, 8)
    ref = fn._FakeQuantT.apply(before.clone().requires_grad_(), torch.tensor(3), 8)
    got = fn._round_untracked(x, 3, owned)
    assert torch.equal(got, ref.detach())
    assert (got is x) == (owned and kind == "result")
    if got is not x:
        assert torch.equal(x.detach(), before)
    if kind != "no_grad":
        g = torch.randn_like(base)
        got.backward(g)
        assert torch.equal(w.grad, g)


def test_adopt_turns_a_fresh_result_into_a_qtensor_without_an_alias():
    x = torch.randn(3, requires_grad=True)
    y = x * 2.0
    q = QTensor.adopt(y, 4, 8)
    assert q is y and isinstance(q, QTensor) and (q.raw_exp, q.bits) == (4, 8)
    assert type(q.grad_fn).__name__ == "MulBackward0"     # no AliasBackward in between
    q.plain().sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    p = nn.Parameter(torch.randn(2))                       # not a plain tensor: wrapped
    qp = QTensor.adopt(p, 1, 8)
    assert qp is not p and type(p) is nn.Parameter and isinstance(qp, QTensor)
    qq = QTensor.adopt(q, 2, 8)                            # already a QTensor: a new wrapper
    assert qq is not q and (q.raw_exp, qq.raw_exp) == (4, 2)


def test_power_of_two_scales_multiply_like_python_numbers():
    x = torch.tensor([1e-30, 3.0, -7.5, 1.5e30])
    for n in (-140, -130, -20, 0, 7, 100, 130):
        for dtype in (torch.float32, torch.float64):
            xd = x.to(dtype)
            assert torch.equal(xd.clone().mul_(fn.pow2(n, dtype)), xd.clone().mul_(2.0 ** n))
    assert fn.pow2(3, torch.float32) is fn.pow2(3, torch.float32)


def test_saturation_test_against_the_integer_range():
    for bits in (4, 8, 16, 32):
        qmin, qmax = numerics.qmin(bits), numerics.qmax(bits)
        for exp in (-3, 0, 5):
            s = 2.0 ** -exp
            for lo_q, hi_q, sat in [(qmin - 0.5, qmax + 0.25, False), (qmin - 0.75, 0, True),
                                    (0, qmax + 0.5, True), (qmin, qmax, False)]:
                assert fn.saturates(lo_q * s, hi_q * s, exp, bits) == sat


def test_bounds_are_forgotten_after_an_in_place_change():
    x = torch.tensor([0.1, 0.2])
    fn.observe(torch.zeros(()), torch.zeros((), dtype=torch.bool),
               torch.zeros((), dtype=torch.int32), x, 8, 0.1)
    assert fn._inside(x, 9, 8)
    x.mul_(100.0)
    assert not fn._inside(x, 9, 8)


@settings(max_examples=100, deadline=None)
@given(st.integers(-6, 6), st.sampled_from([4, 8, 16]), st.integers(-6, 6),
       st.sampled_from([4, 8, 16, 32]), st.integers(0, 2 ** 31))
def test_fake_requant_equals_fake_quant_on_grid_values(exp_from, bits_from, exp_to, bits_to, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(numerics.qmin(bits_from), numerics.qmax(bits_from) + 1, (50,), generator=g)
    x = (q.double() * 2.0 ** -exp_from).float()
    x = torch.cat([x, torch.tensor([numerics.qmin(bits_from) * 2.0 ** -exp_from,
                                    numerics.qmax(bits_from) * 2.0 ** -exp_from])])
    outs = []
    for f in (lambda t: fn._FakeQuantT.apply(t, torch.tensor(exp_to), bits_to),
              lambda t: fn.fake_requant(t, exp_from, bits_from, exp_to, bits_to)):
        xi = x.clone().requires_grad_()
        y = f(xi)
        y.backward(torch.arange(1.0, 53.0))
        outs.append((y.detach(), xi.grad))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_has_clamps_values_and_inclusive_gradient(dtype):
    lo, hi = 0.0, 6.0
    x = torch.tensor([-1.0, -0.0, 0.0, 0.125, 5.875, 6.0, 6.125, 100.0], dtype=dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fn.clip(xa, lo, hi), torch.clamp(xb, torch.tensor(lo, dtype=dtype),
                                               torch.tensor(hi, dtype=dtype))
    g = torch.arange(1.0, 9.0, dtype=dtype)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
    assert xa.grad.tolist() == [0, 2, 3, 4, 5, 6, 0, 0]


def test_exponent_value_twin_on_boundaries_and_random_values():
    rnd = np.random.default_rng(0)
    for bits in (4, 8, 16, 32):
        vals = [numerics.qmax(bits) * 2.0 ** k for k in range(-70, 70)]
        vals += [math.nextafter(v, 0.0) for v in vals] + [math.nextafter(v, 1e300) for v in vals]
        vals += list(rnd.random(2000) * 10.0 ** rnd.integers(-30, 30, 2000)) + [0.0, 5e-324]
        for v in vals:
            assert fn.exponent_for_range_value(v, bits) == numerics.exponent_for_range(v, bits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_range_blend_on_python_numbers_equals_the_tensor_formula(dtype):
    rnd = np.random.default_rng(1)
    for _ in range(3000):
        r = float(torch.tensor(rnd.random() * 10.0 ** rnd.integers(-6, 6), dtype=dtype))
        m = float(np.float32(rnd.random() * 10.0 ** rnd.integers(-6, 6)))
        mom = float(rnd.choice([0.1, 0.3, 0.01, 1.0, 0.25]))
        rt, ready = torch.tensor(r, dtype=dtype), torch.tensor(True)
        fn.update_range(rt, ready, torch.tensor(m), mom)
        assert float(rt) == fn._blend_value(r, True, m, mom, dtype)
    # the first batch, and values near the float32 overflow (numpy's branch)
    big = float(np.finfo(np.float32).max)
    for r, m in [(0.0, 0.0), (1e-30, 2.5), (big, big), (big, 1.0), (3e38, 3.3e38), (1.0, big)]:
        r, m = float(torch.tensor(r, dtype=dtype)), float(np.float32(m))  # as observe has them
        for ready in (False, True):
            for mom in (0.1, 1.0):
                rt = torch.tensor(r, dtype=dtype)
                with np.errstate(over="ignore"):
                    fn.update_range(rt, torch.tensor(ready), torch.tensor(m), mom)
                assert float(rt) == fn._blend_value(r, ready, m, mom, dtype)


def test_observe_scalar_and_tensor_paths_write_the_same_buffers():
    torch.manual_seed(0)
    bufs = [(torch.zeros(()), torch.zeros((), dtype=torch.bool),
             torch.zeros((), dtype=torch.int32)) for _ in range(2)]
    for step in range(20):
        x = torch.randn(100) * (1.5 ** step)
        e0 = fn.observe(*bufs[0], x, 8, 0.1, min_exp=-2 if step % 3 else None, nonneg=step % 2)
        with fn.tensor_path():
            e1 = fn.observe(*bufs[1], x, 8, 0.1, min_exp=-2 if step % 3 else None,
                            nonneg=step % 2)
        assert isinstance(e0, int) and isinstance(e1, torch.Tensor) and e0 == int(e1)
        assert all(torch.equal(a, b) for a, b in zip(*bufs))


def _bn_reference(bn, xq):
    """The quantized BatchNorm's training forward written with autograd ops (its definition)."""
    xf = xq.plain()
    shape = [1, -1] + [1] * (xq.dim() - 2)
    if two_stage.bn_stats_frozen():
        mean, var = bn.running_mean, bn.running_var
    else:
        mean, var, rm, rv, n = batch_moments(xf.detach(), None, False)
        dims = [d for d in range(xf.dim()) if d != 1]
        # exact values, autograd's gradient: mean(x) + (m - mean(x)).detach() style
        mean = xf.mean(dims) + (mean - xf.mean(dims)).detach()
        var = xf.var(dims, unbiased=False) + (var - xf.var(dims, unbiased=False)).detach()
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(rm * m)
            bn.running_var.mul_(1 - m).add_(rv * (n / (n - 1)) * m)
    a = bn.weight / torch.sqrt(var + bn.eps)
    c = two_stage.clamp_bias(bn, bn.bias - mean * a)
    aq, na = bn.fake_weight(a)
    cq = fn.fake_quant(c, xq.raw_exp + na, 32)
    return bn.quant_output_train(xf * aq.view(shape) + cq.view(shape))


@pytest.mark.parametrize("shape", [(8, 6, 5, 5), (16, 6), (4, 6, 8, 8), (2, 6, 64, 64)])
@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("clamps", [None, "bias", "weight"])
@pytest.mark.parametrize("tensor_path", [False, True])
def test_fused_batchnorm_matches_its_autograd_definition(shape, frozen, clamps, tensor_path):
    torch.manual_seed(0)
    bn0 = nn.BatchNorm2d(6) if len(shape) == 4 else nn.BatchNorm1d(6)
    with torch.no_grad():
        bn0.weight.uniform_(0.5, 2)
        bn0.bias.uniform_(-0.3, 0.3)
        bn0.running_mean.uniform_(-1, 1)
        bn0.running_var.uniform_(0.5, 2)
    bn = linger.init(nn.Sequential(bn0))[0]
    if clamps == "bias":   # normalize_bias_value clamps c (gradient 0 where clamped)
        bn.__dict__[two_stage.SPEC_ATTR] = two_stage.NormalizeSpec(None, 0.05, None)
    if clamps == "weight":  # a minimum weight exponent makes aq saturate
        bn.__dict__[two_stage.SPEC_ATTR] = two_stage.NormalizeSpec(0.25, None, None)
    ref_bn = copy.deepcopy(bn)
    for scale in (1.0, 3.0):  # the second batch is wider than the range: the output saturates
        with torch.no_grad():
            bn.weight.mul_(scale)
            ref_bn.weight.mul_(scale)
        q = torch.clamp(torch.floor((torch.randn(shape) * 3 + 1) * 16 + 0.5), -128, 127)
        q = q / 16
        x1, x2 = q.clone().requires_grad_(), q.clone().requires_grad_()
        linger.SetBnMomentumUpdate(frozen)
        try:
            with fn.tensor_path(tensor_path):
                y1 = batchnorm_train(bn, QTensor.wrap(x1, 4, 8))
                y2 = _bn_reference(ref_bn, QTensor.wrap(x2, 4, 8))
        finally:
            linger.SetBnMomentumUpdate(False)
        assert torch.equal(y1, y2) and y1.int_exp() == y2.int_exp()
        s1, s2 = bn.state_dict(), ref_bn.state_dict()
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
        g = torch.randn_like(y1)
        (y1 * g).sum().backward()
        (y2 * g).sum().backward()
        for a, b in ((x1.grad, x2.grad), (bn.weight.grad, ref_bn.weight.grad),
                     (bn.bias.grad, ref_bn.bias.grad)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("tensor_path", [False, True])
def test_cumulative_running_statistics_match_the_definition(tensor_path):
    """``momentum=None`` (cumulative average): the running statistics after three batches."""
    torch.manual_seed(0)
    bn = linger.init(nn.Sequential(nn.BatchNorm2d(6, momentum=None)))[0]
    ref_bn = copy.deepcopy(bn)
    for _ in range(3):
        q = torch.clamp(torch.floor(torch.randn(4, 6, 8, 8) * 16 + 0.5), -128, 127) / 16
        with fn.tensor_path(tensor_path):
            y1 = batchnorm_train(bn, QTensor.wrap(q.clone(), 4, 8))
            y2 = _bn_reference(ref_bn, QTensor.wrap(q.clone(), 4, 8))
        assert torch.equal(y1, y2)
    s1, s2 = bn.state_dict(), ref_bn.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1) and int(bn.num_batches_tracked) == 3


@pytest.mark.parametrize("tensor_path", [False, True])
def test_float64_batchnorm_leaves_its_input_alone(tensor_path):
    """The float64 sums of squares were taken in place on ``x.double()``, which for a float64
    input is ``x`` itself: the layer squared its input (and the model diverged to inf)."""
    torch.manual_seed(0)
    bn = linger.init(nn.Sequential(nn.BatchNorm2d(6).double()))[0]
    ref_bn = copy.deepcopy(bn)
    q = torch.clamp(torch.floor(torch.randn(4, 6, 5, 5, dtype=torch.float64) * 16 + 0.5),
                    -128, 127) / 16
    x = q.clone()
    with fn.tensor_path(tensor_path):
        y = batchnorm_train(bn, QTensor.wrap(x, 4, 8))
        y_ref = _bn_reference(ref_bn, QTensor.wrap(q.clone(), 4, 8))
    assert torch.equal(x, q)
    assert y.dtype == torch.float64 and torch.equal(y, y_ref)
    mean = q.mean((0, 2, 3))
    assert torch.allclose(bn.running_mean, 0.1 * mean.to(bn.running_mean.dtype))


@pytest.mark.parametrize("exp,bits", [(4, 8), (-3, 8), (9, 16), (0, 4)])
def test_batch_statistics_are_correctly_rounded(exp, bits):
    torch.manual_seed(0)
    q = torch.randint(numerics.qmin(bits), numerics.qmax(bits) + 1, (4, 5, 40, 40)).double()
    q[:, 2] = numerics.qmax(bits)  # a constant channel: variance exactly 0
    x = (q * 2.0 ** -exp).float()
    for on_cpu in (True, False):
        red = _channel_reductions(x, exp, bits, False) if on_cpu else None
        mean, var, *_ = batch_moments(x, red, on_cpu)
        mean, var = torch.as_tensor(mean), torch.as_tensor(var)
        # exact rational reference via Python integers
        for c in range(5):
            qs = q[:, c].flatten().long().tolist()
            n = len(qs)
            s1, s2 = sum(qs), sum(v * v for v in qs)
            from fractions import Fraction
            m_ref = Fraction(s1, n) * Fraction(2) ** -exp
            v_ref = Fraction(n * s2 - s1 * s1, n * n) * Fraction(2) ** (-2 * exp)
            assert float(mean[c]) == float(np.float32(float(m_ref)))
            assert float(var[c]) == float(np.float32(float(v_ref)))


def _train(model, steps, lr, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16, generator=g) * 2
        y = torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_whole_model_scalar_and_tensor_paths_keep_identical_state():
    """With a zero learning rate the weights stay put, so every buffer (ranges, exponents, BN
    running statistics, op sites) must come out bit-identical on both paths, and so must eval."""
    set_seed(0)
    base = linger.init(SmallResNet(widths=(4, 8, 8)))
    m_scalar, m_tensor = copy.deepcopy(base), copy.deepcopy(base)
    _train(m_scalar, 4, 0.0)
    with fn.tensor_path():
        _train(m_tensor, 4, 0.0)
    sa, sb = m_scalar.state_dict(), m_tensor.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(m_scalar.eval()(x), m_tensor.eval()(x))


def test_whole_model_gradients_agree_between_paths():
    set_seed(0)
    base = linger.init(SmallResNet(widths=(4, 8, 8)))
    _train(base, 2, 0.05)  # statistics with some history
    grads = []
    for tp in (False, True):
        m = copy.deepcopy(base)
        x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        with fn.tensor_path(tp):
            nn.functional.cross_entropy(m(x), torch.arange(8)).backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()) + 1e-12)


def test_nan_on_the_tensor_path_is_reported_at_eval_naming_the_layer():
    """On a GPU a NaN batch is not raised per step (that would synchronise); the range turns
    NaN and stays NaN, and the next eval forward (or export) raises NumericError."""
    set_seed(0)
    m = linger.init(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()))
    x = torch.randn(2, 1, 6, 6)
    m.train()(x)
    bad = x.clone()
    bad[0, 0, 1, 1] = float("nan")
    with fn.tensor_path():
        m.train()(bad)          # no error here
        m.train()(x)            # a clean batch does not wash the NaN out
    assert math.isnan(float(m[0].input_range))
    with pytest.raises(NumericError, match=r"QConv2d '0'.*input range is nan"):
        m.eval()(x)


def test_nan_on_the_scalar_path_raises_at_once():
    m = linger.init(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(NumericError, match=r"QLinear '0'.*NaN"):
        m.train()(torch.tensor([[1.0, float("nan"), 0.0]]))
    assert not bool(m[0].input_ready)  # nothing was written


class _AddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x, sub: bool = False):
        return self.a(x) - self.b(x) if sub else self.a(x) + self.b(x)


@pytest.mark.parametrize("sub", [False, True])
def test_add_on_the_output_grid_equals_the_general_path(monkeypatch, sub):
    """The fused add (operands rounded onto the output grid and summed in one go, unrecorded)
    gives the general path's values, gradients and statistics, whether it applies or not."""
    from linger.quant import ops_elementwise as oe
    torch.manual_seed(0)
    base = linger.init(_AddNet())
    taken = []
    fused = oe._sum_on_grid
    monkeypatch.setattr(oe, "_sum_on_grid", lambda *a: taken.append(fused(*a)) or taken[-1])
    runs = []
    for use in (True, False):
        if not use:
            monkeypatch.setattr(oe, "_sum_on_grid", lambda *a: False)
        m = copy.deepcopy(base).train()
        g = torch.Generator().manual_seed(1)
        outs = []
        for scale in (1.0, 1.0, 3.0, 0.2, 40.0):       # ranges that move: grids change
            x = torch.randn(4, 2, 6, 6, generator=g) * scale
            y = m(x, sub)
            y.plain().backward(torch.randn(y.shape, generator=g))
            outs.append((y.detach().clone(), [p.grad.clone() for p in m.parameters()]))
        runs.append((outs, m.state_dict()))
    assert True in taken and False in taken           # both cases met
    (o1, s1), (o2, s2) = runs
    for (y1, g1), (y2, g2) in zip(o1, o2):
        assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
