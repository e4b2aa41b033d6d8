"""The original toolchain's integer algorithms ("luna", linger 1.x / thinker on venus), for models
imported from its ONNX files (:mod:`linger.importers.thinker`).

linger's own ops use linger's tables (docs/onnx_ops.md). A model the original exported was
trained against *these* algorithms instead, so the importer maps its nodes onto the ops below
where linger's semantics differ. Every function is a pure numpy function on exact integers
(int64); where the original computed in IEEE double (its ``shift_rasym`` helper), the same double
operations are done here, which is what makes them bit-exact. Sources of each formula:
``reference/report_numerics.md`` sections 2.3-2.7 and ``reference/report_thinker.md`` section 7.
Op semantics: docs/onnx_ops.md, "Ops of imported original models".
"""

from __future__ import annotations

import math

import numpy as np

from ... import numerics
from ...errors import ModelFileError, NumericError
from .. import schema as S
from . import kernel
from ._common import check_dtype

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

# -- sigmoid / tanh: 16-segment piecewise linear on |x|, Q11 in, Q15 out ---------------------------
SIGMOID_BANDS = (0, 971, 1699, 2347, 2974, 3614, 4291, 5026, 5861, 6831, 7864, 8987, 10375,
                 11594, 13168, 14730, 32768)
SIGMOID_SLOPES = (32316, 29471, 25891, 22068, 18225, 29057, 22206, 16113, 10881, 27353, 16611,
                  9242, 4618, 20670, 8610, 693)
SIGMOID_BIAS_POS = (16384, 16721, 17464, 18559, 19954, 21585, 23380, 25249, 27121, 28807, 30096,
                    31107, 31839, 32199, 32502, 32724)
TANH_BANDS = (0, 512, 888, 1226, 1558, 1899, 2264, 2670, 3146, 3734, 4297, 4761, 5466, 6151,
              7193, 8093, 32768)
TANH_SLOPES = (32266, 29154, 25374, 21309, 17272, 26886, 19904, 13765, 8599, 19497, 12047, 7324,
               3373, 26820, 5531, 337)
TANH_BIAS = (0, 778, 2417, 4851, 7922, 11474, 15334, 19335, 23303, 26699, 28653, 30026, 31344,
             31981, 32565, 32725)
#: Right shift of ``slope * x`` per segment (segments 1-5, 6-9, 10-13, 14-16).
SIGMOID_SHIFTS = (13,) * 5 + (14,) * 4 + (16,) * 4 + (19,) * 3
TANH_SHIFTS = (11,) * 5 + (12,) * 4 + (14,) * 4 + (18,) * 3


def _segments(a, bands):
    """Index (0..15) of the first segment with ``a <= bands[j+1]``; 16 where none matches."""
    return np.searchsorted(np.asarray(bands[1:], np.int64), a, side="left")


def to_q11(q, exp: int):
    """The original's move to Q11: ``q << (11 - exp)`` when ``11 > exp``, else
    ``rhu(q / 2**(exp - 11))``. Not saturated (int64)."""
    q = np.asarray(q, np.int64)
    s = 11 - int(exp)
    return q << s if s > 0 else numerics.rounding_shift(q, -s)


def sigmoid_q15(x11):
    """``floor(slope_j * x / 2**sh_j) + (x >= 0 ? B0_j : 32768 - B0_j)`` on the signed Q11 ``x``;
    0 where ``|x| > 32768`` (no segment matches in the original either)."""
    x = np.asarray(x11, np.int64)
    seg = _segments(np.abs(x), SIGMOID_BANDS)
    j = np.minimum(seg, 15)
    slope = np.asarray(SIGMOID_SLOPES, np.int64)[j]
    sh = np.asarray(SIGMOID_SHIFTS, np.int64)[j]
    b0 = np.asarray(SIGMOID_BIAS_POS, np.int64)[j]
    y = ((slope * x) >> sh) + np.where(x < 0, 32768 - b0, b0)
    return np.where(seg < 16, y, 0)


def tanh_q15(x11):
    """Odd segments: ``floor(slope_j * |x| / 2**sh_j) + bias_j`` for ``x >= 0``,
    ``floor(-slope_j * |x| / 2**sh_j) - bias_j`` below; ``x = -32768`` counts as ``|x| = 32767``;
    0 where ``|x| > 32768``."""
    x = np.asarray(x11, np.int64)
    a = np.where(x == -32768, 32767, np.abs(x))
    seg = _segments(a, TANH_BANDS)
    j = np.minimum(seg, 15)
    slope = np.asarray(TANH_SLOPES, np.int64)[j]
    sh = np.asarray(TANH_SHIFTS, np.int64)[j]
    bias = np.asarray(TANH_BIAS, np.int64)[j]
    y = np.where(x < 0, ((-slope * a) >> sh) - bias, ((slope * a) >> sh) + bias)
    return np.where(seg < 16, y, 0)


def q15_to_q7(y15):
    """``sat8(floor(y15 / 256 + 0.5))``."""
    return numerics.requantize(np.asarray(y15, np.int64), 8, 8)


def sigmoid_q7(x11):
    """Sigmoid gate of the original: Q11 in, Q7 out in [0, 127]."""
    return np.maximum(q15_to_q7(sigmoid_q15(x11)), 0)


def tanh_q7(x11):
    """Tanh of the original: Q11 in, Q7 out in [-128, 127]."""
    return q15_to_q7(tanh_q15(x11))


# -- softmax: Q25 in, Q15 out (NatureDSP vec_softmax32x32 as the original ran it) ------------------
SOFTMAX_P23 = (57364, 446161, 2008107, 5813551, 8388575)
LOG2E_Q29 = 774541002


def _rasym(v, n: int, saturate: bool = False):
    """The original's ``shift_rasym(v, -n)``: ``floor(double(v) * 2**-n + 0.5)`` computed in IEEE
    double (``v`` int64 is first rounded to double, as C converts it), saturated to int32 when
    ``saturate``."""
    y = np.floor(np.asarray(v, np.int64).astype(np.float64) * (2.0 ** -n) + 0.5)
    if saturate:
        y = np.clip(y, INT32_MIN, INT32_MAX)
    return y.astype(np.int64)


def _shift_sat(v, n):
    """``v << n`` (``n >= 0``) or ``v >> -n`` (floor), saturated to int32."""
    v = np.asarray(v, np.int64)
    n = np.asarray(n, np.int64)
    out = np.where(n >= 0, v << np.clip(n, 0, 62), v >> np.clip(-n, 0, 63))
    big = (n > 0) & (np.abs(v) >= (np.int64(1) << np.clip(31 - n, 0, 62)))
    out = np.where(big, np.where(v > 0, INT32_MAX, INT32_MIN), out)
    return np.clip(out, INT32_MIN, INT32_MAX)


def softmax_q15(x25, axis: int = -1):
    """Softmax along ``axis`` of int32 Q25 values, Q15 result (int64), as the original computes:

    ``d = sat32(x - max)``; ``X = sat32(rasym(d * 774541002, 31))`` (Q23 base-2 exponent);
    ``E = (X >> 23) + 1``, ``f = (X & 0x7FFFFF) - 2**23``; ``Y = p0``, ``Y = rasym(Y*f, 23) + p_j``
    (j = 1..4); ``e = trunc(Y * 2**E)``; ``S = min(sum e, 2**31-1)``; ``n = nsa(S) - 8``,
    ``S' = sat32(S << n)`` (or ``S >> -n``), ``n += 1``; ``R = 0xBB5000 - S'`` and twice
    ``F = 2 * (2**22 - rasym(S'*R, 23))``, ``R += rasym(R*F, 23)``; ``R = sat32(R << n)`` (or
    ``>> -n``); ``y = sat32(rasym(R * e, 31))``. ``rasym`` is the double-precision rounding shift
    :func:`_rasym`; plain shifts are arithmetic (floor).
    """
    x = np.moveaxis(np.asarray(x25, np.int64), axis, -1)
    d = np.clip(x - x.max(axis=-1, keepdims=True), INT32_MIN, INT32_MAX)
    xx = _rasym(d * LOG2E_Q29, 31, saturate=True)
    e_exp = (xx >> 23) + 1
    f = (xx & 0x7FFFFF) - 0x800000
    y = np.full(x.shape, SOFTMAX_P23[0], np.int64)
    for p in SOFTMAX_P23[1:]:
        y = _rasym(y * f, 23) + p
    e = np.trunc(y.astype(np.float64) * np.ldexp(1.0, e_exp)).astype(np.int64)
    s = np.minimum(e.sum(axis=-1, keepdims=True), INT32_MAX)
    nsa = np.where(s == 0, 0, 31 - _bit_length(s))
    n = nsa - 8
    s = _shift_sat(s, n)
    n = n + 1
    r = 0xBB5000 - s
    for _ in range(2):
        g = 2 * (0x400000 - _rasym(s * r, 23))
        r = r + _rasym(r * g, 23)
    r = _shift_sat(r, n)
    out = _rasym(r * e, 31, saturate=True)
    return np.moveaxis(out, -1, axis)


def _bit_length(v):
    """Bit length of non-negative int64 values (exact: no float log)."""
    v = np.asarray(v, np.int64)
    out = np.zeros(v.shape, np.int64)
    for b in range(62, -1, -1):
        out = np.where((out == 0) & (v >= (np.int64(1) << b)), b + 1, out)
    return out


def to_q25(q, exp: int):
    """``sat32(q << (25 - exp))`` when ``25 > exp``, else ``sat32(rhu(q / 2**(exp - 25)))``."""
    q = np.asarray(q, np.int64)
    s = 25 - int(exp)
    if s > 0:
        return np.clip(q << min(s, 38), INT32_MIN, INT32_MAX)
    return np.clip(numerics.rounding_shift(q, -s), INT32_MIN, INT32_MAX)


# -- layer norm: Q10 normalised value through a 768-entry 1/sqrt table ------------------------------
#: The original's fixed epsilon (a float64 constant; the C engine reads its exact binary value).
LAYERNORM_EPS = 1e-5


def _rsqrt_table():
    """``T[i] = min(32767, floor(2**15 * sqrt(256 / (i + 256))))``, i = 0..767, exactly:
    ``floor(2**19 / sqrt(t)) = isqrt(floor(2**38 / t))``."""
    return np.array([min(32767, math.isqrt((1 << 38) // t)) for t in range(256, 1024)], np.int64)


RSQRT_Q15 = _rsqrt_table()


def layernorm_q10(x, k: int, exp_x: int):
    """The original's normalised value ``sat16(rhu((k*x - S1) * r, s))`` (Q10) over the last axis
    of ``x`` (int64, ``k`` elements per row).

    ``S1 = sum x``, ``S2 = sum x^2``; ``D = k*S2 - S1^2 + q_eps`` with
    ``q_eps = floor(1e-5 * 2**(2 exp_x) * k**2 + 0.5)`` (eps fixed at 1e-5, as the original);
    ``b`` = index of the top bit of ``D``, ``j = floor(b/2) - 4``, ``t = D >> 2j`` (``D << -2j``
    for ``j < 0``) in [256, 1024), ``r = RSQRT_Q15[t - 256]``, ``s = 9 + j``; ``D = 0`` uses
    ``r = RSQRT_Q15[0]``, ``s = 4``. The original multiplied ``k*S2`` and ``S1^2`` in int32: a row
    where they (or ``D``) leave int32 cannot be reproduced and is refused (NumericError).
    """
    x = np.asarray(x, np.int64)
    s1 = x.sum(axis=-1, keepdims=True)
    s2 = (x * x).sum(axis=-1, keepdims=True)
    q_eps = math.floor(LAYERNORM_EPS * 2.0 ** (2 * int(exp_x)) * k * k + 0.5)
    ks2, s1s1 = k * s2, s1 * s1
    d = ks2 - s1s1 + q_eps
    if max(int(ks2.max(initial=0)), int(s1s1.max(initial=0)), int(d.max(initial=0)),
           q_eps) > INT32_MAX:
        raise NumericError(f"a row of {k} elements gives N*sum(x^2) = {int(ks2.max())},"
                           f" sum(x)^2 = {int(s1s1.max())}, eps term {q_eps}: the original"
                           f" computed these in int32 and wrapped around here, so its result"
                           f" cannot be reproduced; re-train with a smaller input range")
    b = _bit_length(d) - 1
    j = b // 2 - 4
    t = np.where(j >= 0, d >> np.maximum(2 * j, 0), d << np.maximum(-2 * j, 0))
    zero = d == 0
    r = RSQRT_Q15[np.where(zero, 0, np.clip(t - 256, 0, 767))]
    s = np.where(zero, 4, 9 + j)
    v = (k * x - s1) * r
    y = (v + (np.int64(1) << (s - 1))) >> s
    return np.clip(y, -32768, 32767)


# -- kernels -------------------------------------------------------------------------------------
_ONE = dict(exp_x=S.Exp(), bits_x=S.Bits(), exp_o=S.Exp(), bits_o=S.Bits())
#: (x, T) or (x, y, T); the table holds at most 2**(bits_x + bits_y) <= 2**16 entries
def _lut_memory(attrs, ins, fast):
    """Index and output arrays of the broadcast data inputs (the table is the last input)."""
    return 2 * S.nbytes(S.broadcast([i.shape for i in ins[:-1] if i is not None], "inputs"))


S.schema("LutInt", inputs=(2, 3), memory=_lut_memory, bits_x=S.Int(2, 16),
         bits_y=S.Int(0, 16), bits_o=S.Bits())
S.schema("SoftmaxLuna", inputs=(1, 1), memory=S.sum_memory(8), axis=S.Axis(), **_ONE)
S.schema("LayerNormLuna", inputs=(3, 3), memory=S.sum_memory(10), exp_w=S.Exp(), **_ONE)


def _rnn_memory(attrs, ins, fast):
    """Input gates ``(T, N, 4H)``, outputs and a few per-step temporaries, int64."""
    x = ins[0]
    if len(x.shape) != 3:
        return 0  # the kernel explains the rank
    return 6 * S.nbytes([x.shape[0] * x.shape[1], 5 * int(attrs["hidden_size"])])


for _op in ("LSTMLuna", "GRULuna"):  # X, lengths, h0, c0/-, W_ih, W_hh, [B_ih, B_hh]
    S.schema(_op, inputs=(6, 8), memory=_rnn_memory, required=lambda a, n: [0, 4, 5],
             hidden_size=S.Int(1, S.MAX_SPATIAL), batch_first=S.Flag(), go_forward=S.Flag(),
             exp_iw=S.Exp(), exp_hw=S.Exp(), exp_h=S.Exp(), exp_x=S.Exp(), bits_x=S.Bits(),
             exp_o=S.Exp(), bits_o=S.Int(0, 32))  # bits_o = 0: float32 output


@kernel("LutInt")
def lut_int(inputs, *, bits_x, bits_o, bits_y=0):
    """Table lookup: ``y = T[x + 2**(bits_x-1)]``; with a second input ``y``:
    ``T[(x + 2**(bits_x-1)) * 2**bits_y + y + 2**(bits_y-1)]`` (numpy broadcasting of x, y).

    ``T`` (last input) is an int(bits_o) initializer of ``2**bits_x`` (times ``2**bits_y``)
    entries. The importer fills it with an original elementwise algorithm evaluated on every
    possible input.
    """
    *args, table = inputs
    bits_x, bits_y = int(bits_x), int(bits_y)
    check_dtype(table, bits_o, "table T")
    x = args[0]
    check_dtype(x, bits_x, "input x")
    idx = x.astype(np.int64) + (1 << (bits_x - 1))
    size = 1 << bits_x
    if len(args) == 2:
        check_dtype(args[1], bits_y, "input y")
        idx = idx * (1 << bits_y) + args[1].astype(np.int64) + (1 << (bits_y - 1))
        size <<= bits_y
    elif len(args) != 1 or bits_y:
        raise ModelFileError(f"LutInt takes (x, T) or (x, y, T) with bits_y; got {len(inputs)}"
                             f" inputs and bits_y={bits_y}")
    if table.shape != (size,):
        raise ModelFileError(f"table T must have shape ({size},), got {list(table.shape)}")
    return [table[idx]]


@kernel("SoftmaxLuna")
def softmax_luna(inputs, *, axis, exp_x, bits_x, exp_o, bits_o):
    """``sat_o(rshift(clip(softmax_q15(to_q25(x)), 0, 32767), 15 - exp_o))`` along ``axis``
    (:func:`softmax_q15`)."""
    (x,) = inputs
    check_dtype(x, bits_x, "input x")
    y15 = np.clip(softmax_q15(to_q25(x, exp_x), int(axis)), 0, 32767)
    q = numerics.requantize(y15, 15 - int(exp_o), int(bits_o))
    return [q.astype(numerics.int_dtype(bits_o))]


@kernel("LayerNormLuna")
def layernorm_luna(inputs, *, exp_x, bits_x, exp_w, exp_o, bits_o):
    """``sat_o(rshift(z * W + B, 10 + exp_w - exp_o))``, ``z`` = :func:`layernorm_q10` over the
    trailing axes of ``x`` holding ``W.size`` elements; ``W`` int16, ``B`` int32 at
    exponent ``10 + exp_w``."""
    x, w, b = inputs
    check_dtype(x, bits_x, "input x")
    check_dtype(w, 16, "weight W")
    check_dtype(b, numerics.BIAS_BITS, "bias B")
    k = int(w.size)
    lead, prod = x.ndim, 1
    while lead > 0 and prod < k:
        lead -= 1
        prod *= x.shape[lead]
    if prod != k or b.size != k:
        raise ModelFileError(f"weight W ({k} elements) and bias B ({b.size}) must match the"
                             f" trailing dims of x {list(x.shape)}")
    rows = x.reshape(x.shape[:lead] + (k,)).astype(np.int64)
    z = layernorm_q10(rows, k, exp_x)
    acc = z * w.reshape(-1).astype(np.int64) + b.reshape(-1).astype(np.int64)
    q = numerics.requantize(acc, 10 + int(exp_w) - int(exp_o), int(bits_o))
    return [q.reshape(x.shape).astype(numerics.int_dtype(bits_o))]


# -- recurrent layers: one direction of one layer per node ----------------------------------------
def _rnn_inputs(inputs, gates, bits_x, hidden_size):
    x, lengths, h0, s0, w_ih, w_hh, b_ih, b_hh = (list(inputs) + [None] * 8)[:8]
    check_dtype(x, bits_x, "input X")
    check_dtype(w_ih, 8, "weight W_ih")
    check_dtype(w_hh, 8, "weight W_hh")
    h = int(hidden_size)
    if x.ndim != 3 or w_ih.shape != (gates * h, x.shape[2]) or w_hh.shape != (gates * h, h):
        raise ModelFileError(f"X {list(x.shape)}, W_ih {list(w_ih.shape)}, W_hh"
                             f" {list(w_hh.shape)} do not fit hidden_size={h} with {gates}"
                             f" gates")
    for name, b in (("B_ih", b_ih), ("B_hh", b_hh)):
        if b is not None:
            check_dtype(b, numerics.BIAS_BITS, f"bias {name}")
            if b.shape != (gates * h,):
                raise ModelFileError(f"bias {name} must have shape ({gates * h},)")
    return x, lengths, h0, s0, w_ih, w_hh, b_ih, b_hh


def _gates(v, w, b):
    """``v @ w^T + b`` exactly (int64; the float64 products stay below 2**53)."""
    acc = np.matmul(v.astype(np.float64), w.astype(np.float64).T).astype(np.int64)
    return acc if b is None else acc + b.astype(np.int64)


def _run_rnn(inputs, gates, step, state0, *, hidden_size, batch_first, go_forward, exp_x,
             bits_x, exp_iw, exp_hw, exp_h, exp_o, bits_o):
    """Shared time loop of :func:`lstm_luna` / :func:`gru_luna`. ``state0(s0, n, h)``: the
    initial cell/hidden state array (last two axes ``(N, H)``) from the optional 4th input;
    ``step(gi11, gh11, state)``: the new state and the step's Q14 hidden ``h14``."""
    x, lengths, h0, s0, w_ih, w_hh, b_ih, b_hh = _rnn_inputs(inputs, gates, bits_x, hidden_size)
    if batch_first:
        x = x.transpose(1, 0, 2)
    t_len, n, h = x.shape[0], x.shape[1], int(hidden_size)
    if lengths is None:
        lengths = np.full(n, t_len, np.int64)
    lengths = np.asarray(lengths).astype(np.int64).reshape(-1)
    if lengths.shape != (n,) or lengths.min(initial=0) < 0 or lengths.max(initial=0) > t_len:
        raise ModelFileError(f"lengths {lengths.tolist()} must be {n} values in [0, {t_len}]")
    exp_h = int(exp_h)
    gi = to_q11(_gates(x, w_ih, b_ih), int(exp_x) + int(exp_iw))          # (T, N, G*H)
    q_h = np.zeros((n, h), np.int64) if h0 is None else h0.reshape(n, h).astype(np.int64)
    h14 = numerics.rounding_shift(q_h, exp_h - 14)     # h_n of a sequence of length 0
    state = state0(None if s0 is None else s0.reshape(n, h).astype(np.int64), n, h)
    ys = np.zeros((t_len, n, h), np.int64)
    batch = np.arange(n)
    for t in range(t_len):
        live = t < lengths                                                  # (N,)
        rows = np.full(n, t) if go_forward else np.clip(lengths - 1 - t, 0, t_len - 1)
        g_h = to_q11(_gates(q_h, w_hh, b_hh), exp_h + int(exp_hw))
        new_state, new_h14 = step(gi[rows, batch], g_h, state)
        keep = live[:, None]
        state = np.where(keep, new_state, state)
        h14 = np.where(keep, new_h14, h14)
        q_h = np.where(keep, numerics.requantize(new_h14, 14 - exp_h, 8), q_h)
        ys[rows[live], batch[live]] = new_h14[live]
    if bits_o:
        y = numerics.requantize(ys, 14 - int(exp_o), int(bits_o))
        y = y.astype(numerics.int_dtype(bits_o))
    else:
        y = (ys * 2.0 ** -14).astype(np.float32)
    if batch_first:
        y = y.transpose(1, 0, 2)
    return y, (h14 * 2.0 ** -14).astype(np.float32)[None], state


_RNN_DOC = """
    Inputs: ``X`` int(bits_x) (T, N, F) (``batch_first``: (N, T, F)); ``lengths`` int64 (N,)
    (optional: all T); ``h0`` int8 (1, N, H) at ``exp_h`` (optional: 0); a fourth state input
    (optional: 0); ``W_ih`` int8 (G*H, F) at ``exp_iw``; ``W_hh`` int8 (G*H, H) at ``exp_hw``;
    optional int32 ``B_ih`` (at ``exp_x + exp_iw``) and ``B_hh`` (at ``exp_h + exp_hw``).
    ``gi = to_q11(x W_ih^T + B_ih)``, ``gh = to_q11(h W_hh^T + B_hh)`` (:func:`to_q11`); after
    each step the next ``h = sat8(rshift(h14, 14 - exp_h))``. ``Y = sat_o(rshift(h14, 14 -
    exp_o))`` (``bits_o = 0``: float32 ``h14 / 2**14``), 0 at steps past a sequence's length;
    ``go_forward = 0`` runs a sequence from step ``lengths - 1`` down to 0. ``h_n`` = float32
    ``h14 / 2**14`` of each sequence's last step."""


@kernel("LSTMLuna")
def lstm_luna(inputs, *, hidden_size, batch_first, go_forward, exp_x, bits_x, exp_iw, exp_hw,
              exp_h, exp_o, bits_o):
    h = int(hidden_size)

    def state0(c7, n, hh):
        c7 = np.zeros((n, hh), np.int64) if c7 is None else c7
        return np.stack([c7, c7 << 7])          # (2, N, H): c in Q7 and Q14

    def step(gi, gh, state):
        v = np.clip(gi + gh, -32768, 32767)
        i, f, o = (sigmoid_q7(v[:, k * h:(k + 1) * h]) for k in (0, 1, 3))
        g = tanh_q7(v[:, 2 * h:3 * h])
        c14 = f * state[0] + i * g
        h14 = o * tanh_q7(np.clip(numerics.rounding_shift(c14, 3), -32768, 32767))
        return np.stack([numerics.rounding_shift(c14, 7), c14]), h14

    y, h_n, state = _run_rnn(inputs, 4, step, state0, hidden_size=h, batch_first=batch_first,
                             go_forward=go_forward, exp_x=exp_x, bits_x=bits_x, exp_iw=exp_iw,
                             exp_hw=exp_hw, exp_h=exp_h, exp_o=exp_o, bits_o=bits_o)
    return [y, h_n, (state[1] * 2.0 ** -14).astype(np.float32)[None]]


lstm_luna.__doc__ = """One direction of the original's LSTMInt (gates i, f, g, o).

    Per step: ``v = sat16(gi + gh)``; ``i, f, o = sigmoid_q7(v)``, ``g = tanh_q7(v)``;
    ``c14 = f * c7 + i * g`` and the next ``c7 = rhu(c14 / 2**7)``;
    ``h14 = o * tanh_q7(sat16(rhu(c14 / 2**3)))``. The fourth input is ``c0`` int16 in Q7;
    outputs ``Y``, ``h_n``, ``c_n`` = float32 ``c14 / 2**14``.""" + _RNN_DOC


@kernel("GRULuna")
def gru_luna(inputs, *, hidden_size, batch_first, go_forward, exp_x, bits_x, exp_iw, exp_hw,
             exp_h, exp_o, bits_o):
    h = int(hidden_size)

    def state0(h7, n, hh):
        return np.zeros((n, hh), np.int64) if h7 is None else h7

    def step(gi, gh, h7):
        r = sigmoid_q7(gi[:, :h] + gh[:, :h])
        z = sigmoid_q7(gi[:, h:2 * h] + gh[:, h:2 * h])
        nn = tanh_q7(gi[:, 2 * h:] + numerics.rounding_shift(r * gh[:, 2 * h:], 7))
        h14 = (nn << 7) + z * (h7 - nn)
        return numerics.rounding_shift(h14, 7), h14

    y, h_n, _ = _run_rnn(inputs, 3, step, state0, hidden_size=h, batch_first=batch_first,
                         go_forward=go_forward, exp_x=exp_x, bits_x=bits_x, exp_iw=exp_iw,
                         exp_hw=exp_hw, exp_h=exp_h, exp_o=exp_o, bits_o=bits_o)
    return [y, h_n]


gru_luna.__doc__ = """One direction of the original's GRUInt (gates r, z, n).

    Per step, without saturating the gate sums: ``r = sigmoid_q7(gi_r + gh_r)``,
    ``z = sigmoid_q7(gi_z + gh_z)``, ``n = tanh_q7(gi_n + rhu(r * gh_n / 2**7))``;
    ``h14 = n * 2**7 + z * (h7 - n)`` and the next ``h7 = rhu(h14 / 2**7)``. The fourth input
    is ``h0`` in Q7 (int16); outputs ``Y``, ``h_n``.""" + _RNN_DOC
