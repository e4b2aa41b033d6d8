"""Training side: quantized values, layers and the ``init`` entry point (imports torch)."""

from . import functional  # noqa: F401  (registers the QTensor handlers of functional ops)
from . import ops_elementwise, ops_layernorm, ops_matmul, ops_nonlinear  # noqa: F401,E402
from . import ops_act, ops_reduce, ops_resample  # noqa: F401,E402  (added ops, docs/ops.md)
from . import attention  # noqa: F401,E402  (MultiheadAttention, TransformerEncoderLayer)
from . import rnn  # noqa: F401,E402  (QGRU/QLSTM in QUANT_CLASSES, packed-sequence handlers)
