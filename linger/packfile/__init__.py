"""The packed model file (``model.bin``): the contract between its three implementations.

:mod:`.format` holds the layout (constants, record structs, the in-memory
:class:`~.format.PackedModel`) and the writer; :mod:`.reader` the validating reader. The packer
(:mod:`linger.packer`) writes these files, the numpy runtime (:mod:`linger.runtime`) and the C
engine (:mod:`linger.engine`, which parses the same layout in C) run them. This package imports
numpy and the standard library only (``to_model_proto`` imports onnx when called).
"""

from .format import FORMAT_VERSION, MAGIC, PackedModel
from .reader import is_packed, load_model_proto, read, read_file

__all__ = ["FORMAT_VERSION", "MAGIC", "PackedModel", "is_packed", "load_model_proto", "read",
           "read_file"]
