"""Resampling and adaptive pooling: UpsampleNearest, UpsampleLinearInt, AdaptiveAvgPoolInt,
AdaptiveMaxPool. Thin wrappers around :mod:`linger.iqops`, shared with the PyTorch eval path;
output lengths are computed from the actual input, so they follow a dynamic axis."""

from __future__ import annotations

import numpy as np

from ... import iqops, numerics
from ...errors import ModelFileError
from .. import schema as S
from . import LINGER_DOMAIN, fast, kernel
from .layout import _layout_fast
from ._common import check_dtype


class _Scales(S.Spec):
    """One or two positive decimal numbers, as strings (the float64 scale factors)."""

    def describe(self) -> str:
        return "1..2 strings holding positive decimal numbers (at most 2**16)"

    def check(self, value):
        try:
            vals = [float(v.decode() if isinstance(v, bytes) else v) for v in value]
        except (TypeError, ValueError, AttributeError):
            return f"must be {self.describe()}, got {value!r:.60}"
        if not 1 <= len(vals) <= 2 or not all(0 < v <= 1 << 16 for v in vals):
            return f"must be {self.describe()}, got {value!r:.60}"
        return None


_SIZES = S.Ints(1, S.MAX_SPATIAL, (1, 2))


def _resample_memory(attrs, ins, fast):
    """int64 input copy and output (linear: three int64 temporaries of the output)."""
    x = ins[0]
    nd = len(attrs.get("sizes") or attrs.get("scales") or [])
    S.need(1 <= nd <= 2 and len(x.shape) == nd + 2, "resampling",
           f"{nd} resampled axes do not fit input shape {list(x.shape)}")
    if attrs.get("sizes") is not None:
        out = [int(v) for v in attrs["sizes"]]
    else:
        out = [iqops.out_size(x.shape[2 + k], None, float(v.decode() if isinstance(v, bytes)
                                                          else v))
               for k, v in enumerate(attrs["scales"])]
    return S.nbytes(x.shape) + 4 * S.nbytes(list(x.shape[:2]) + [max(o, 1) for o in out])


def _adaptive_memory(attrs, ins, fast):
    """int64 copies of the input (windows may overlap: at most twice) and the output."""
    x = ins[0]
    return 3 * S.nbytes(x.shape) + S.nbytes(list(x.shape[:2]) + list(attrs["output_size"]))


S.schema("UpsampleNearest", inputs=(1, 1), memory=_resample_memory, sizes=_SIZES,
         scales=_Scales())
S.schema("UpsampleLinearInt", inputs=(1, 1), memory=_resample_memory, sizes=_SIZES,
         scales=_Scales(), align_corners=S.Flag(), bits=S.Bits())
S.schema("AdaptiveAvgPoolInt", inputs=(1, 1), memory=_adaptive_memory, output_size=_SIZES,
         bits=S.Bits())
S.schema("AdaptiveMaxPool", inputs=(1, 1), memory=_adaptive_memory, output_size=_SIZES)


def _geometry(x, sizes, scales, what):
    """Output sizes and float64 scale factors (or None) of the last ``nd`` axes of ``x``."""
    if (sizes is None) == (scales is None):
        raise ModelFileError(f"{what} needs exactly one of the attributes 'sizes' and 'scales'")
    nd = len(sizes if sizes is not None else scales)
    if not 1 <= nd <= 2 or x.ndim != nd + 2:
        raise ModelFileError(f"{what} resamples 1 or 2 trailing axes of an (N, C, ...) input;"
                             f" got {nd} axes for input shape {list(x.shape)}")
    if sizes is not None:
        out = [int(v) for v in sizes]
        factors = None
    else:
        try:
            factors = [float(v.decode() if isinstance(v, bytes) else v) for v in scales]
        except ValueError:
            raise ModelFileError(f"{what} scales must be decimal numbers, got {scales}") from None
        out = [iqops.out_size(x.shape[2 + k], None, f) for k, f in enumerate(factors)]
    if min(out) < 1 or (factors is not None and min(factors) <= 0):
        raise ModelFileError(f"{what} output size {out} from input shape {list(x.shape)}")
    return out, factors


@kernel("UpsampleNearest")
def upsample_nearest(inputs, *, sizes=None, scales=None):
    """Gather along each resampled axis at ``min(floor(f32(dst) * s), L - 1)``, ``s = f32(1 /
    scale)`` (or ``f32(L) / f32(out)``); PyTorch's ``nearest`` indices. Values and dtype kept."""
    (x,) = inputs
    out, factors = _geometry(x, sizes, scales, "UpsampleNearest")
    return [iqops.upsample_nearest(x, out, factors)]


@kernel("UpsampleLinearInt")
def upsample_linear_int(inputs, *, bits, align_corners=0, sizes=None, scales=None):
    """Separable linear interpolation with Q15 weights from exact rational source coordinates,
    ``sat_bits(rshift(sum w q, 15 * nd))``; exponent unchanged."""
    (x,) = inputs
    check_dtype(x, bits, "UpsampleLinearInt input")
    out, _ = _geometry(x, sizes, scales, "UpsampleLinearInt")
    q = iqops.upsample_linear(x, out, bool(align_corners), int(bits))
    return [q.astype(numerics.int_dtype(int(bits)))]


def _adaptive_sizes(x, output_size, what):
    nd = len(output_size)
    if not 1 <= nd <= 2 or x.ndim != nd + 2 or min(int(v) for v in output_size) < 1:
        raise ModelFileError(f"{what} output_size {list(output_size)} does not fit input shape"
                             f" {list(x.shape)}")
    return [int(v) for v in output_size]


@kernel("AdaptiveAvgPoolInt")
def adaptive_avg_pool_int(inputs, *, output_size, bits):
    """Windows ``[floor(i L / O), ceil((i + 1) L / O))`` over the actual length ``L``; each mean
    ``floor((2 s + k) / (2 k))``; exponent unchanged."""
    (x,) = inputs
    check_dtype(x, bits, "AdaptiveAvgPoolInt input")
    q = iqops.adaptive_avg_pool(x, _adaptive_sizes(x, output_size, "AdaptiveAvgPoolInt"),
                                int(bits))
    return [np.asarray(q).astype(numerics.int_dtype(int(bits)))]


@kernel("AdaptiveMaxPool")
def adaptive_max_pool(inputs, *, output_size):
    """The maximum of each adaptive window (windows as AdaptiveAvgPoolInt); dtype kept."""
    (x,) = inputs
    return [iqops.adaptive_max_pool(x, _adaptive_sizes(x, output_size, "AdaptiveMaxPool"))]


for _op in ("UpsampleNearest", "AdaptiveMaxPool"):  # pick values: no round trip in the fast form
    fast(_op)(lambda attrs, args, _op=_op: _layout_fast(attrs, args, op_type=_op,
                                                      domain=LINGER_DOMAIN))
