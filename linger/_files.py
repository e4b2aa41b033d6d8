"""Safe outputs for the commands that write files: never over an input, never half-written.

>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> src = os.path.join(d, "m.onnx"); write_atomic(src, b"model")
>>> refuse_overwrite([src], {"output": src})
Traceback (most recent call last):
...
linger.errors.ConfigError: refusing to write the output over the input file '...m.onnx'; give another path
"""

from __future__ import annotations

import os
import tempfile

from .errors import ConfigError


def refuse_overwrite(inputs, outputs: dict) -> None:
    """ConfigError if an output path (``{what: path or None}``) is one of the ``inputs`` files
    (paths; other objects such as bytes are ignored) or names the same file as another output."""
    paths = {what: os.fspath(p) for what, p in outputs.items() if p is not None}
    if len(set(map(os.path.realpath, paths.values()))) < len(paths):
        raise ConfigError(f"the output paths {paths} name the same file; give different ones")
    files = [os.fspath(i) for i in inputs
             if isinstance(i, (str, os.PathLike)) and os.path.isfile(i)]
    for what, path in paths.items():
        if os.path.exists(path) and any(os.path.samefile(i, path) for i in files):
            raise ConfigError(f"refusing to write the {what} over the input file '{path}'; give"
                              f" another path")


def write_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and
    ``os.replace``: readers see the old file or the new one, never a partial one."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
