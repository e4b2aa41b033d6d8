"""The C engine: runs a packed model (``linger pack``) the way the microcontroller does.

The C99 sources ship in ``linger/engine/csrc`` (no malloc, no libc beyond ``memcpy``/``memset``,
integer kernels without floating point; see ``docs/engine.md``). They build with the system C
compiler in one command::

    python -m linger.engine build          # shared library + the linger-engine program

and :class:`Engine` runs a packed file through the shared library with ``ctypes``, shaped like
:class:`linger.runtime.InferenceSession`. Its outputs equal the numpy runtime's (and PyTorch
``eval()``'s) bit for bit. Builds are cached (``~/.cache/linger/engine``, or
``$LINGER_ENGINE_CACHE``) by a hash of the sources, the compiler and the flags.

This module imports numpy and the standard library only.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping

import numpy as np

from ..errors import InputError, LingerError, ModelFileError

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
#: warnings are errors: CI builds with these
WARNINGS = ("-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror")
#: AddressSanitizer + UndefinedBehaviorSanitizer, every report fatal
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer", "-g")

#: status codes of linger_engine.h
STATUS = {0: "ok", 1: "bad argument", 2: "truncated file", 3: "not a linger packed model",
          4: "unsupported format version", 5: "packed for another target",
          6: "checksum mismatch", 7: "damaged file", 8: "unsupported op", 9: "bad attribute",
          10: "bad dtype or shape", 11: "bad input value", 12: "not bound"}
LE_ERR_UNSUPPORTED_OP, LE_ERR_INPUT = 8, 11
MEM_COUNT = 3

_DTYPES = {1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float32, 6: np.float64,
           7: np.bool_, 8: np.uint8, 9: np.uint16, 10: np.uint32, 11: np.uint64, 12: np.float16}


class EngineBuildError(LingerError, RuntimeError):
    """The C compiler is missing or failed on the engine's sources."""


def engine_sources() -> list[str]:
    """The engine's C files (everything in csrc but the host program ``main.c``)."""
    return sorted(os.path.join(CSRC, f) for f in os.listdir(CSRC)
                  if f.endswith(".c") and f != "main.c")


def compiler() -> str | None:
    """``$CC``, else ``cc``/``gcc``/``clang`` found on PATH, else None."""
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _cache_dir() -> str:
    return os.environ.get("LINGER_ENGINE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "linger", "engine")


def _build(kind: str, flags: tuple, sources: list[str]) -> str:
    cc = compiler()
    if cc is None:
        raise EngineBuildError("no C compiler found (set CC, or install gcc or clang) to build"
                               " the linger C engine")
    h = hashlib.sha256(" ".join((cc, kind) + flags).encode())
    for path in sorted(os.listdir(CSRC)):
        with open(os.path.join(CSRC, path), "rb") as f:
            h.update(path.encode() + f.read())
    name = {"lib": "liblinger_engine.so", "cli": "linger-engine"}[kind]
    out = os.path.join(_cache_dir(), h.hexdigest()[:16], name)
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".build-")
    os.close(fd)
    cmd = [cc, *flags, "-I", CSRC, *sources, "-o", tmp]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        os.unlink(tmp)
        raise EngineBuildError(f"building the C engine failed:\n$ {' '.join(cmd)}\n"
                               f"{res.stderr}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)   # atomic: parallel builds of the same hash agree
    return out


def build(sanitize: bool = False, native: bool = False) -> str:
    """Build (or find cached) the shared library; returns its path.

    Flags: ``-std=c99 -pedantic -Wall -Wextra -Werror -O2``; ``native`` adds ``-march=native``
    (benchmarks), ``sanitize`` builds with AddressSanitizer and UBSan (load it with libasan
    preloaded; the tests use the sanitized :func:`build_cli` program instead).
    """
    flags = WARNINGS + ("-O2", "-fPIC", "-shared") + (("-march=native",) if native else ()) \
        + (SANITIZE if sanitize else ())
    return _build("lib", flags, engine_sources())


def build_cli(sanitize: bool = False, native: bool = False) -> str:
    """Build (or find cached) the ``linger-engine`` program; returns its path."""
    flags = WARNINGS + (("-O1",) if sanitize else ("-O2",)) \
        + (("-march=native",) if native else ()) + (SANITIZE if sanitize else ())
    return _build("cli", flags, engine_sources() + [os.path.join(CSRC, "main.c")])


class _IoInfo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("nbytes", ctypes.c_size_t),
                ("dtype", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("dims", ctypes.c_int64 * 8), ("name", ctypes.c_void_p),
                ("name_len", ctypes.c_uint32)]


_LIBS: dict = {}


def load_library(path: str | None = None):
    """The engine's shared library through ctypes (built on first use)."""
    path = path or build()
    if path not in _LIBS:
        lib = ctypes.CDLL(path)
        P, U32, I32, S = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int32, ctypes.c_size_t
        for name, res, args in (
                ("le_open", I32, [P, P, S, I32]), ("le_arena_size", S, [P, ctypes.c_int]),
                ("le_scratch_size", S, [P]), ("le_bind", I32, [P, P, P]),
                ("le_num_io", U32, [P, ctypes.c_int]),
                ("le_io", I32, [P, ctypes.c_int, U32, ctypes.POINTER(_IoInfo)]),
                ("le_run", I32, [P]), ("le_failed_op", I32, [P]),
                ("le_op_info", I32, [P, U32, ctypes.POINTER(ctypes.c_char_p),
                                     ctypes.POINTER(U32), ctypes.POINTER(ctypes.c_char_p),
                                     ctypes.POINTER(U32)]),
                ("le_sizeof_model", S, []), ("le_num_supported_ops", U32, []),
                ("le_fast_paths", U32, []),
                ("le_supported_op", ctypes.c_char_p, [U32, ctypes.POINTER(ctypes.c_char_p)])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _LIBS[path] = lib
    return _LIBS[path]


def supported_ops(lib=None) -> list[str]:
    """``domain::op_type`` of every op the C engine implements."""
    lib = lib or load_library()
    out = []
    for k in range(lib.le_num_supported_ops()):
        dom = ctypes.c_char_p()
        op = lib.le_supported_op(k, ctypes.byref(dom))
        out.append(f"{dom.value.decode()}::{op.decode()}")
    return out


def fast_paths(lib=None) -> list[str]:
    """The optional fast paths compiled into the engine library ``lib`` (default: the plain
    build): ``"x86-conv"`` when int8 convolutions run as an AVX2 GEMM (a ``native=True`` build
    on a CPU with AVX2). They compute the same integers as the portable kernels."""
    lib = lib or load_library()
    return ["x86-conv"] if lib.le_fast_paths() & 1 else []


def _aligned(nbytes: int) -> np.ndarray:
    """A zeroed uint8 buffer whose address is a multiple of 16."""
    raw = np.zeros(nbytes + 16, np.uint8)
    skip = (-raw.ctypes.data) % 16
    return raw[skip:skip + nbytes]


class Engine:
    """A packed model opened in the C engine.

    ``source``: path or bytes of a file written by ``linger pack``. ``target``: the target id
    the file must be packed for (``None``: any). Raises :class:`~linger.errors.ModelFileError`
    naming the status (and the op, where one is at fault) for a file the engine refuses, e.g.
    an op it does not implement.

    ``run(None, {"input": x})`` returns the outputs as numpy arrays, like
    :meth:`linger.runtime.InferenceSession.run`; inputs must have the exact dtype and shape the
    model was packed for.
    """

    def __init__(self, source, target: int | None = None, library: str | None = None):
        if isinstance(source, (bytes, bytearray, memoryview)):
            data, self.where = bytes(source), "<bytes>"
        else:
            self.where = f"'{os.fspath(source)}'"
            try:
                with open(source, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ModelFileError(f"cannot read packed model {self.where}: {e}") from None
        self._lib = lib = load_library(library)
        self._file = _aligned(len(data))            # the engine reads parameters in place
        self._file[:] = np.frombuffer(data, np.uint8)
        self._model = _aligned(lib.le_sizeof_model())
        m = self._model.ctypes.data
        status = lib.le_open(m, self._file.ctypes.data, len(data),
                             -1 if target is None else int(target))
        if status:
            raise self._error(status, "refuses")
        self.arena_sizes = [lib.le_arena_size(m, k) for k in range(MEM_COUNT)]
        self.scratch_size = lib.le_scratch_size(m)
        self._arenas = [_aligned(n) if n else None for n in self.arena_sizes]
        self._scratch = _aligned(max(self.scratch_size, 1))
        ptrs = (ctypes.c_void_p * MEM_COUNT)(*[a.ctypes.data if a is not None else None
                                               for a in self._arenas])
        status = lib.le_bind(m, ptrs, self._scratch.ctypes.data)
        if status:
            raise self._error(status, "cannot bind memory for")
        self._inputs = [self._io(0, k) for k in range(lib.le_num_io(m, 0))]
        self._outputs = [self._io(1, k) for k in range(lib.le_num_io(m, 1))]

    def _io(self, which, k):
        info = _IoInfo()
        self._lib.le_io(self._model.ctypes.data, which, k, ctypes.byref(info))
        name = ctypes.string_at(info.name, info.name_len).decode("utf-8")
        dtype = np.dtype(_DTYPES[info.dtype])
        shape = tuple(info.dims[:info.ndim])
        view = np.ctypeslib.as_array((ctypes.c_uint8 * info.nbytes).from_address(info.data)) \
            if info.nbytes else np.zeros(0, np.uint8)
        return name, dtype, shape, view

    def _error(self, status, doing):
        m = self._model.ctypes.data
        k = self._lib.le_failed_op(m)
        what = STATUS.get(status, f"status {status}")
        where = ""
        if k >= 0:
            t, n = ctypes.c_char_p(), ctypes.c_char_p()
            tl, nl = ctypes.c_uint32(), ctypes.c_uint32()
            if self._lib.le_op_info(m, k, ctypes.byref(t), ctypes.byref(tl), ctypes.byref(n),
                                    ctypes.byref(nl)) == 0:
                op_type = ctypes.string_at(t, tl.value).decode("utf-8", "replace")
                name = ctypes.string_at(n, nl.value).decode("utf-8", "replace")
                where = f" at op {k} '{name}' ({op_type})"
        msg = f"the C engine {doing} {self.where}: {what} (status {status}){where}"
        if status == LE_ERR_UNSUPPORTED_OP:
            msg += (". The C engine does not implement this op; it runs: "
                    + ", ".join(supported_ops(self._lib)))
        elif status not in (LE_ERR_INPUT,):
            msg += ". Re-create the file with linger pack"
        return (InputError if status == LE_ERR_INPUT else ModelFileError)(msg)

    def get_inputs(self) -> list[tuple]:
        """``(name, dtype, shape)`` of each input, in order."""
        return [(n, d, s) for n, d, s, _ in self._inputs]

    def get_outputs(self) -> list[tuple]:
        return [(n, d, s) for n, d, s, _ in self._outputs]

    def run(self, output_names, input_feed) -> list[np.ndarray]:
        """Copy the inputs in, run every op, return copies of the outputs (all outputs when
        ``output_names`` is None, else those named)."""
        if not isinstance(input_feed, Mapping):
            raise InputError("input_feed must be a dict {name: numpy array}")
        names = [n for n, *_ in self._inputs]
        extra = sorted(set(input_feed) - set(names))
        missing = [n for n in names if n not in input_feed]
        if extra or missing:
            raise InputError(f"the packed model's inputs are {names}; unknown {extra}, missing"
                             f" {missing}")
        for name, dtype, shape, view in self._inputs:
            x = np.asarray(input_feed[name])
            if x.dtype != dtype or x.shape != shape:
                raise InputError(f"input '{name}': the packed model takes {dtype}{list(shape)}"
                                 f" (its shape is fixed when packing: linger pack --dim), got"
                                 f" {x.dtype}{list(x.shape)}")
            view[:] = np.ascontiguousarray(x).view(np.uint8).reshape(-1)
        status = self._lib.le_run(self._model.ctypes.data)
        if status:
            raise self._error(status, "failed running")
        outs = {n: v.view(d).reshape(s).copy() for n, d, s, v in self._outputs}
        if output_names is None:
            return list(outs.values())
        unknown = [n for n in output_names if n not in outs]
        if unknown:
            raise InputError(f"unknown output names {unknown}; outputs are {list(outs)}")
        return [outs[n] for n in output_names]


def run_cli(model: str, inputs: list, outputs: list, sanitize: bool = False,
            timeout: float = 60, native: bool = False) -> subprocess.CompletedProcess:
    """Run the ``linger-engine`` program (built on first use) on files."""
    args = [build_cli(sanitize, native), model] + list(inputs)
    if len(inputs) != 1 or len(outputs) != 1:
        args.append("--")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    return subprocess.run(args + list(outputs), capture_output=True, text=True, errors="replace",
                          timeout=timeout, env=env)
