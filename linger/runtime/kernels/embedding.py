"""Table lookup on an integer weight."""

from __future__ import annotations

import numpy as np

from ...errors import InputError, ModelFileError
from .. import schema as S
from . import kernel
from ._common import check_dtype


def _embedding_memory(attrs, ins, fast):
    """``W[indices]``: one table row per index."""
    indices, w = ins
    return S.nbytes([*indices.shape, *w.shape[1:]], w.dtype.itemsize) + S.nbytes(indices.shape)


S.schema("EmbeddingInt", inputs=(2, 2), memory=_embedding_memory, exp_w=S.Exp(), bits_w=S.Bits())


@kernel("EmbeddingInt")
def embedding_int(inputs, *, exp_w, bits_w):
    """``y = W[indices]``: the integers of the table at its exponent ``exp_w`` (no rounding)."""
    indices, w = inputs
    check_dtype(w, bits_w, "weight W")
    if not np.issubdtype(indices.dtype, np.integer):
        raise ModelFileError(f"EmbeddingInt indices must be integers, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= w.shape[0]):
        bad = indices[(indices < 0) | (indices >= w.shape[0])].flat[0]
        raise InputError(f"embedding index {int(bad)} is outside [0, {w.shape[0]}) (the table"
                         f" has {w.shape[0]} rows)")
    return [w[indices]]
