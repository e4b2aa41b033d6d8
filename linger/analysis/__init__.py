"""Analysis tools: where does quantization hurt, and why?

- :func:`wb_analyse` (also ``linger.wb_analyse``): range statistics of every weight tensor, with
  the tensors whose max is over 10x their 99% range flagged (they waste int8 resolution);
- :class:`Dumper` (also ``linger.Dumper``): the same statistics for every layer's output;
- :func:`layer_sqnr`: each quantized layer's own SQNR against its float op;
- :func:`sensitivity`: the model-level cost of quantizing each layer alone, worst first;
- :func:`calibrate`: gather quantization statistics without training (post-training quantization);
- :func:`write_report`: all of it as one HTML page with histograms and bar charts (matplotlib).

Everything here imports torch (on first use of a name); ``linger.runtime`` does not depend
on it.
"""

from .._lazy import lazy

# name -> submodule, imported on first use: `linger --help` builds the parser of `linger analyse`
# without importing torch.
_NAMES = {
    "Dumper": ".dumper",
    **dict.fromkeys(["LayerSensitivity", "LayerSQNR", "accuracy", "calibrate", "layer_sqnr",
                     "quantized_layers", "sensitivity", "sqnr_db"], ".error"),
    "write_report": ".report",
    **dict.fromkeys(["OUTLIER_RATIO", "RunningStats", "TensorStats", "format_table",
                     "tensor_stats"], ".stats"),
    **dict.fromkeys(["extract_state_dict", "load_checkpoint", "wb_analyse"], ".weights"),
}
__getattr__ = lazy(__name__, _NAMES)

__all__ = ["wb_analyse", "Dumper", "layer_sqnr", "sensitivity", "calibrate", "accuracy",
           "write_report", "load_checkpoint", "extract_state_dict", "tensor_stats",
           "format_table", "sqnr_db", "quantized_layers", "TensorStats", "RunningStats",
           "LayerSQNR", "LayerSensitivity", "OUTLIER_RATIO"]


def __dir__():
    return __all__
