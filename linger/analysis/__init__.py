"""Analysis tools: where does quantization hurt, and why?

- :func:`wb_analyse` (also ``linger.wb_analyse``): range statistics of every weight tensor, with
  the tensors whose max is over 10x their 99% range flagged (they waste int8 resolution);
- :class:`Dumper` (also ``linger.Dumper``): the same statistics for every layer's output;
- :func:`layer_sqnr`: each quantized layer's own SQNR against its float op;
- :func:`sensitivity`: the model-level cost of quantizing each layer alone, worst first;
- :func:`calibrate`: gather quantization statistics without training (post-training quantization);
- :func:`write_report`: all of it as one HTML page with histograms and bar charts (matplotlib).

Everything here imports torch; ``linger.runtime`` does not depend on it.
"""

from .dumper import Dumper
from .error import (LayerSensitivity, LayerSQNR, accuracy, calibrate, layer_sqnr,
                    quantized_layers, sensitivity, sqnr_db)
from .report import write_report
from .stats import OUTLIER_RATIO, RunningStats, TensorStats, format_table, tensor_stats
from .weights import extract_state_dict, load_checkpoint, wb_analyse

__all__ = ["wb_analyse", "Dumper", "layer_sqnr", "sensitivity", "calibrate", "accuracy",
           "write_report", "load_checkpoint", "extract_state_dict", "tensor_stats",
           "format_table", "sqnr_db", "quantized_layers", "TensorStats", "RunningStats",
           "LayerSQNR", "LayerSensitivity", "OUTLIER_RATIO"]
