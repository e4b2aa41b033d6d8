"""What a rule can measure: the named *quantities* of one op, from an ONNX node or a PyTorch layer.

The conformity checker (:mod:`linger.targets.check`) evaluates a profile's formulas on a dict of
quantities. Two sources produce the same names, so one rule serves both checks:

- :func:`from_node`: an exported graph node with the shapes and dtypes of its values (pack time,
  every quantity is known);
- :func:`from_module`: a PyTorch layer before training (``linger.init(..., target=...)``): the
  layer's parameters are known, activation shapes (``H``, ``W``, ``M``...) are not, so rules
  that need them wait for pack time.

Shapes are per sample where the chip works per sample: ``H, W`` are the input's spatial size,
``Ho, Wo`` the output's; a 1-d op has ``H = kernel_h = stride_h = 1``. ``bits_*`` are bit widths,
``bytes_*`` the bytes of one stored element (``ceil(bits / 8)``). Vocabulary per family in
:data:`VOCABULARY`; a profile naming anything else is refused when it is loaded.
"""

from __future__ import annotations

import math

#: ONNX op type -> quantity family (ops not listed measure only the COMMON quantities).
FAMILIES = {
    "Conv1dInt": "conv", "Conv2dInt": "conv",
    "ConvTranspose1dInt": "conv_transpose", "ConvTranspose2dInt": "conv_transpose",
    "LinearInt": "linear", "MatMulInt": "matmul",
    "AvgPoolInt": "pool", "GlobalAvgPoolInt": "pool", "MaxPool": "pool",
    "Transpose": "transpose",
    "SoftmaxInt": "softmax", "LogSoftmaxInt": "softmax", "SoftmaxLuna": "softmax",
    "iqAdd": "elementwise", "iqSub": "elementwise", "iqMul": "elementwise",
    "iqDiv": "elementwise",
}

_COMMON = {"n_inputs", "rank", "numel_in", "numel_out", "bits_x", "bits_o", "bytes_x", "bytes_o"}
_SPATIAL = {"kernel", "stride", "pads", "kernel_h", "kernel_w", "stride_h", "stride_w",
            "pad_top", "pad_left", "pad_bottom", "pad_right", "H", "W", "Ho", "Wo", "nd"}
_CONV = _SPATIAL | {"dilation", "dilation_h", "dilation_w", "groups", "Cin", "Cout", "Cin_g",
                    "Cout_g", "depthwise", "dilated", "bits_w", "bytes_w"}

#: family -> every quantity name a rule of that family may use.
VOCABULARY = {
    "common": _COMMON,
    "conv": _COMMON | _CONV,
    "conv_transpose": _COMMON | _CONV | {"output_padding"},
    "linear": _COMMON | {"M", "N", "L", "bits_w", "bytes_w"},
    "matmul": _COMMON | {"M", "N", "L", "batch", "bits_y", "bytes_y"},
    "pool": _COMMON | _SPATIAL | {"global_pool"},
    "transpose": _COMMON | {"perm", "C", "H", "W"},
    "softmax": _COMMON | {"axis_len"},
    "elementwise": _COMMON | {"broadcast_dims"},
}


def family(op_type: str) -> str:
    return FAMILIES.get(op_type, "common")


def vocabulary(op_type: str) -> set:
    return VOCABULARY[family(op_type)]


def _bytes(bits: int) -> int:
    return -(-int(bits) // 8)


_DTYPE_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64, "uint8": 8, "float32": 32,
               "float64": 64, "bool": 8, "float16": 16}


# -- shared geometry ------------------------------------------------------------------------------
def _spatial(kernel, stride, pads, nd) -> dict:
    """kernel/stride/pads of a 1-d or 2-d op as the names rules use (1-d: H axis of size 1)."""
    kernel, stride = [int(k) for k in kernel], [int(s) for s in stride]
    begins, ends = [int(p) for p in pads[:nd]], [int(p) for p in pads[nd:]]
    if nd == 1:
        kernel, stride, begins, ends = [1] + kernel, [1] + stride, [0] + begins, [0] + ends
    q = {"nd": nd, "kernel": tuple(kernel[-nd:]), "stride": tuple(stride[-nd:]),
         "pads": tuple(begins[-nd:] + ends[-nd:]),
         "kernel_h": kernel[0], "kernel_w": kernel[1], "stride_h": stride[0],
         "stride_w": stride[1], "pad_top": begins[0], "pad_left": begins[1],
         "pad_bottom": ends[0], "pad_right": ends[1]}
    return q


def _conv(kernel, stride, pads, dilation, groups, cin, cout, nd) -> dict:
    q = _spatial(kernel, stride, pads, nd)
    dil = [int(d) for d in dilation]
    dil2 = [1] + dil if nd == 1 else dil
    groups = int(groups)
    q.update({"dilation": tuple(dil), "dilation_h": dil2[0], "dilation_w": dil2[1],
              "groups": groups, "Cin": int(cin), "Cout": int(cout),
              "Cin_g": int(cin) // max(groups, 1), "Cout_g": int(cout) // max(groups, 1),
              "depthwise": int(groups > 1 and groups == int(cin)),
              "dilated": int(any(d != 1 for d in dil))})
    return q


def _hw(shape, nd) -> tuple:
    """(H, W) of an (N, C, [H,] W) shape."""
    return (1, int(shape[-1])) if nd == 1 else (int(shape[-2]), int(shape[-1]))


def _bits_names(q: dict, **bits) -> None:
    for role, b in bits.items():
        if b is not None:
            q[f"bits_{role}"] = int(b)
            q[f"bytes_{role}"] = _bytes(b)


# -- pack time: an ONNX node ----------------------------------------------------------------------
def from_node(op_type: str, attrs: dict, in_shapes, in_dtypes, out_shapes, out_dtypes) -> dict:
    """Quantities of one graph node. Shapes are tuples of ints (``None`` for an omitted input),
    dtypes numpy dtype names (``'int8'``)."""
    x = in_shapes[0] if in_shapes else None
    y = out_shapes[0] if out_shapes else None
    q = {"n_inputs": sum(s is not None for s in in_shapes),
         "rank": len(x) if x is not None else 0,
         "numel_in": math.prod(x) if x is not None else 0,
         "numel_out": math.prod(y) if y is not None else 0}
    bx = attrs.get("bits_x", attrs.get("bits_in", attrs.get("bits")))
    if bx is None and in_dtypes and in_dtypes[0] is not None:
        bx = _DTYPE_BITS.get(str(in_dtypes[0]))
    bo = attrs.get("bits_o", attrs.get("bits"))
    if bo is None and out_dtypes and out_dtypes[0] is not None:
        bo = _DTYPE_BITS.get(str(out_dtypes[0]))
    _bits_names(q, x=bx, o=bo)
    fam = family(op_type)
    if fam in ("conv", "conv_transpose"):
        w = in_shapes[1]
        nd = len(w) - 2
        groups = int(attrs.get("group", 1))
        cin = x[1]
        cout = w[0] if fam == "conv" else w[1] * groups
        pads = attrs.get("pads") or [0] * (2 * nd)
        q.update(_conv(w[2:], attrs.get("strides") or [1] * nd, pads,
                       attrs.get("dilations") or [1] * nd, groups, cin, cout, nd))
        q["H"], q["W"] = _hw(x, nd)
        q["Ho"], q["Wo"] = _hw(y, nd)
        _bits_names(q, w=attrs.get("bits_w"))
        if fam == "conv_transpose":
            q["output_padding"] = tuple(int(v) for v in attrs.get("output_padding") or [0] * nd)
    elif fam == "linear":
        q.update({"M": math.prod(x[:-1]), "N": int(x[-1]), "L": int(in_shapes[1][0])})
        _bits_names(q, w=attrs.get("bits_w"))
    elif fam == "matmul":
        b = in_shapes[1]
        q.update({"M": int(x[-2]) if len(x) > 1 else 1, "N": int(x[-1]), "L": int(b[-1]),
                  "batch": math.prod(x[:-2])})
        _bits_names(q, y=attrs.get("bits_y"))
    elif fam == "pool":
        if "kernel_shape" not in attrs:  # GlobalAvgPoolInt: the window is the whole input
            attrs = dict(attrs, kernel_shape=list(x[2:]), strides=list(x[2:]))
        nd = len(attrs["kernel_shape"])
        pads = attrs.get("pads") or [0] * (2 * nd)
        q.update(_spatial(attrs["kernel_shape"], attrs.get("strides") or [1] * nd, pads, nd))
        q["H"], q["W"] = _hw(x, nd)
        q["Ho"], q["Wo"] = _hw(y, nd)
        q["global_pool"] = int(q["kernel_h"] == q["H"] and q["kernel_w"] == q["W"]
                               and not any(q["pads"]))
    elif fam == "transpose":
        q.update(_transpose(x, attrs.get("perm")))
    elif fam == "softmax":
        axis = int(attrs.get("axis", -1))
        q["axis_len"] = int(x[axis]) if x else 0
    elif fam == "elementwise":
        # a one-element operand (``y + 3.0``) is a scalar the chip applies as a constant, not
        # a broadcast of a tensor
        shapes = [s for s in in_shapes if s is not None and math.prod(s) != 1] or [()]
        rank = max(len(s) for s in shapes)
        padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
        q["broadcast_dims"] = sum(len({s[i] for s in padded}) > 1 for i in range(rank))
    return q


def _transpose(shape, perm) -> dict:
    """A transpose with its size-1 axes removed (they move no data): effective perm and rank.

    For an effective 3-d transpose the input axes are named ``(C, H, W)``.
    """
    perm = list(range(len(shape)))[::-1] if perm is None else [int(p) for p in perm]
    kept = [a for a in range(len(shape)) if shape[a] != 1]
    rank_of = {a: i for i, a in enumerate(kept)}
    eff = tuple(rank_of[p] for p in perm if shape[p] != 1)
    dims = [int(shape[a]) for a in kept]
    q = {"perm": eff, "rank": len(eff)}
    c, h, w = ([1, 1, 1] + dims)[-3:]
    q.update({"C": c, "H": h, "W": w})
    return q


# -- init time: a PyTorch layer (duck-typed: this module never imports torch) -------------------
def _tuple(v, nd):
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def from_module(op_type: str, module, bits: dict) -> dict:
    """Quantities a layer's own parameters determine. ``bits``: ``{'x':, 'w':, 'o':}`` (a
    missing or ``None`` entry is unknown)."""
    q: dict = {}
    _bits_names(q, **{k: v for k, v in bits.items() if v is not None})
    fam = family(op_type)
    if fam in ("conv", "conv_transpose"):
        k = _tuple(module.kernel_size, 1)
        nd = len(k)
        dil = _tuple(module.dilation, nd)
        pad = module.padding
        if isinstance(pad, str):  # 'same' / 'valid', as the exporter writes them
            total = [0] * nd if pad == "valid" else [d * (kk - 1) for d, kk in zip(dil, k)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            pads = list(_tuple(pad, nd)) * 2
        q.update(_conv(k, _tuple(module.stride, nd), pads, dil, module.groups,
                       module.in_channels, module.out_channels, nd))
        if fam == "conv_transpose":
            q["output_padding"] = _tuple(module.output_padding, nd)
    elif fam == "linear":
        q.update({"N": int(module.in_features), "L": int(module.out_features)})
    elif fam == "pool" and hasattr(module, "kernel_size") and not hasattr(module, "output_size"):
        nd = 1 if type(module).__name__.endswith("1d") else 2
        k = _tuple(module.kernel_size, nd)
        stride = _tuple(module.stride if module.stride not in (None, ()) else k, nd)
        q.update(_spatial(k, stride, list(_tuple(module.padding, nd)) * 2, nd))
    return q
