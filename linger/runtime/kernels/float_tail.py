"""Float32 kernels of the *float tail*: layers kept float after the last quantized one
(``linger.disable_quant(model.last_fc)``, see :mod:`linger.onnx.float_tail`).

These compute in float32 with numpy's BLAS. PyTorch computes the same formulas with its own BLAS
and another summation order, so their results agree to a few ulps, **not bit for bit**; nothing
integer ever depends on them (the exporter refuses a float layer feeding a quantized one).
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelFileError
from .. import schema as S
from . import kernel


# -- schemas (linger/runtime/schema.py) -----------------------------------------------------------
def _gemm_memory(attrs, ins, fast):
    """The product ``(M, N)`` and its bias sum, float32 (reported as 8-byte elements)."""
    a, b = ins[0], ins[1]
    if b is None or len(a.shape) != 2 or len(b.shape) != 2:
        return 0  # the kernel explains the rank mismatch
    m = a.shape[1] if attrs.get("transA") else a.shape[0]
    n = b.shape[0] if attrs.get("transB") else b.shape[1]
    return 2 * S.nbytes([m, n])


def _matmul_memory(attrs, ins, fast):
    a, b = ins[0], ins[1]
    if b is None or len(a.shape) < 1 or len(b.shape) < 1:
        return 0
    batch = S.broadcast([a.shape[:-2], b.shape[:-2]], "inputs") if len(a.shape) > 2 or \
        len(b.shape) > 2 else ()
    return S.nbytes([*batch, a.shape[-2] if len(a.shape) > 1 else 1, b.shape[-1]])


def _float_conv_memory(attrs, ins, fast):
    """Padded input, one strided patch and the output (float32, reported as 8-byte elements)."""
    x, w = ins[0], ins[1]
    if w is None or len(x.shape) != len(w.shape) or len(x.shape) not in (3, 4):
        return 0
    nd = len(x.shape) - 2
    out = [S.window_out(L, pp, kd, s, d, "input x") for L, pp, kd, s, d in
           zip(x.shape[2:], S.pad_pairs(attrs, nd), w.shape[2:],
               S.per_axis(attrs, "strides", nd, 1), S.per_axis(attrs, "dilations", nd, 1))]
    padded = [L + a + b for L, (a, b) in zip(x.shape[2:], S.pad_pairs(attrs, nd))]
    return S.nbytes([*x.shape[:2], *padded]) + S.nbytes([x.shape[0], x.shape[1], *out]) + \
        2 * S.nbytes([x.shape[0], w.shape[0], *out])


def _float_conv_check(attrs, consts, where):
    w = consts[1]
    nd = len(w.shape) - 2 if w is not None else len(attrs.get("kernel_shape") or (0,))
    S.need(nd in (1, 2), where, f"Conv of {nd} spatial axes: the float tail runs 1-D and 2-D")
    S.spatial_lengths(attrs, nd, where)


S.schema("Gemm", "", inputs=(2, 3), memory=_gemm_memory, alpha=S.Float(), beta=S.Float(),
         transA=S.Flag(), transB=S.Flag())
S.schema("MatMul", "", inputs=(2, 2), memory=_matmul_memory)
S.schema("Conv", "", inputs=(2, 3), memory=_float_conv_memory, check=_float_conv_check,
         kernel_shape=S.Ints(1, S.MAX_SPATIAL, length=(1, 2)),
         strides=S.Ints(1, S.MAX_SPATIAL, length=(1, 2)),
         dilations=S.Ints(1, S.MAX_SPATIAL, length=(1, 2)),
         pads=S.Ints(0, S.MAX_SPATIAL, length=(2, 4)), group=S.Int(1, S.MAX_SPATIAL),
         auto_pad=S.Str(("NOTSET",)))
for _op in ("Sigmoid", "Tanh"):
    S.schema(_op, "", inputs=(1, 1), memory=S.broadcast_memory(3))
for _op in ("Softmax", "LogSoftmax"):
    S.schema(_op, "", inputs=(1, 1), memory=S.broadcast_memory(4), axis=S.Axis())


def _float(op, *arrays):
    for a in arrays:
        if a is not None and a.dtype != np.float32:
            raise ModelFileError(f"{op} expects float32 inputs (a float tail after a Dequant),"
                                 f" got {a.dtype}")


@kernel("Gemm", domain="")
def gemm(inputs, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    """``y = alpha * A' @ B' + beta * C`` (``A' = A^T`` if ``transA``...), float32."""
    a, b, c = (list(inputs) + [None])[:3]
    _float("Gemm", a, b, c)
    a = a.T if transA else a
    b = b.T if transB else b
    y = np.matmul(a, b)
    if alpha != 1.0:
        y = y * np.float32(alpha)
    if c is not None:
        y = y + (c if beta == 1.0 else np.float32(beta) * c)
    return [y.astype(np.float32, copy=False)]


@kernel("MatMul", domain="")
def matmul(inputs):
    """``y = a @ b`` (numpy matmul broadcasting), float32."""
    a, b = inputs
    _float("MatMul", a, b)
    return [np.matmul(a, b)]


@kernel("Conv", domain="")
def conv(inputs, *, kernel_shape=None, strides=None, pads=None, dilations=None, group=1,
         auto_pad="NOTSET"):
    """1-D/2-D float32 convolution: ``y[n,o,i,j] = b[o] + sum_{c,u,v} x_pad[n, g*Cg + c,
    i*s_h + u*d_h, j*s_w + v*d_w] * w[o,c,u,v]`` with ``g`` the group of output channel ``o``."""
    x, w, b = (list(inputs) + [None])[:3]
    _float("Conv", x, w, b)
    if auto_pad not in ("NOTSET", b"NOTSET"):
        raise ModelFileError(f"Conv auto_pad={auto_pad!r} is not supported; give pads")
    one_d = x.ndim == 3
    if one_d:
        x, w = x[:, :, None, :], w[:, :, None, :]
    nd = 1 if one_d else 2
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    if one_d:
        strides, dilations, pads = [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
    n, cin, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    if cin != cg * group or cout % group:
        raise ModelFileError(f"Conv: {cin} input channels, weight {list(w.shape)} and"
                             f" group={group} do not fit")
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (xp.shape[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (xp.shape[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    y = np.zeros((n, cout, ho, wo), np.float32)
    og = cout // group
    for g in range(group):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w[g * og:(g + 1) * og]
        for u in range(kh):
            for v in range(kw):
                r0, c0 = u * dilations[0], v * dilations[1]
                patch = xg[:, :, r0:r0 + strides[0] * (ho - 1) + 1:strides[0],
                           c0:c0 + strides[1] * (wo - 1) + 1:strides[1]]  # (N, Cg, Ho, Wo)
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, u, v])
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return [y[:, :, 0, :] if one_d else y]


@kernel("Sigmoid", domain="")
def sigmoid(inputs):
    """``1 / (1 + exp(-x))``, float32."""
    x = inputs[0]
    _float("Sigmoid", x)
    with np.errstate(over="ignore"):
        return [(1.0 / (1.0 + np.exp(-x))).astype(np.float32)]


@kernel("Tanh", domain="")
def tanh(inputs):
    """``tanh(x)``, float32."""
    _float("Tanh", inputs[0])
    return [np.tanh(inputs[0])]


@kernel("Softmax", domain="")
def softmax(inputs, *, axis=-1):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (opset-13 semantics), float32."""
    x = inputs[0]
    _float("Softmax", x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [(e / e.sum(axis=axis, keepdims=True)).astype(np.float32)]


@kernel("LogSoftmax", domain="")
def log_softmax(inputs, *, axis=-1):
    """``(x - max) - log(sum(exp(x - max)))`` along ``axis`` (opset-13 semantics), float32."""
    x = inputs[0]
    _float("LogSoftmax", x)
    s = x - x.max(axis=axis, keepdims=True)
    return [(s - np.log(np.exp(s).sum(axis=axis, keepdims=True))).astype(np.float32)]
